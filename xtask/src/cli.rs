//! The `cargo xtask` command line.

use std::{process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use crate::{bench, build, demo, lab, lint, reliability, setup, signal, testrun, traffic, verdict_lab};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "rstwatch developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the eBPF toolchain, bpf-linker and the lab's apt packages (only what is missing).
    Setup,
    /// Build target/release/rstwatch.
    Build,
    /// Replay the forum case in a namespace lab and watch it with rstwatch.
    Demo {
        /// How long rstwatch watches (and traffic runs), in seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// rustfmt check and clippy -D warnings on the host crates and the eBPF crate.
    Lint,
    /// Setup, lint, build, then run the whole test suite (needs root: BPF and network namespaces).
    Test {
        /// Passed on to the test runner.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Remove lab namespaces left behind by processes that are gone.
    Sweep,
    /// Measure what BENCHMARKS.md reports (needs root); prints Markdown tables.
    Bench {
        /// Only these parts (default: all).
        #[arg(long, value_enum, value_delimiter = ',')]
        parts: Vec<bench::Part>,
        /// Fewer trials, shorter floods: a smoke run.
        #[arg(long)]
        quick: bool,
        /// Raw JSON results (default target/bench/results.json).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Differential fuzzing: the XDP object against an etherparse reference (needs root).
    Fuzz {
        /// Passed on to the fuzzer: --frames N (default 10000000), --seed N, --findings DIR, --json.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Flood rstwatch with RSTs across churning flows and check every interval (needs root).
    Soak {
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Flows per round (each round of 10 s moves to a new set).
        #[arg(long, default_value_t = 4096)]
        flows: u32,
        /// Frames per live test run.
        #[arg(long, default_value_t = 4096)]
        repeat: u32,
        /// JSON report (default target/reliability/soak.json).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Services that each reset for one known reason (issue 18's causes), made by real stacks and
    /// tools in a namespace lab (needs root); prints the lab's account as JSON.
    VerdictLab {
        /// The run lasts at least this long (HAProxy's health checks need time to show).
        #[arg(long, default_value_t = 4)]
        seconds: u64,
        /// Write a pcap of the client's veth here (what `rstwatch replay` reads).
        #[arg(long)]
        capture: Option<std::path::PathBuf>,
    },
    /// Generate resets between two lab namespaces and print what was done as JSON.
    #[command(hide = true)]
    Traffic(TrafficArgs),
}

#[derive(clap::Args)]
struct TrafficArgs {
    #[arg(long)]
    client_ns: String,
    #[arg(long)]
    server_ns: String,
    /// Number of rounds (each round runs every step once).
    #[arg(long)]
    rounds: Option<u32>,
    /// Or: run for this many milliseconds.
    #[arg(long)]
    duration_ms: Option<u64>,
    /// Pause after each round, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pace_ms: u64,
    /// Connections the balancer keeps before it resets new ones.
    #[arg(long, default_value_t = 4)]
    balancer_limit: usize,
    /// How long a client keeps a connection the balancer accepted (default: until the end).
    #[arg(long)]
    hold_ms: Option<u64>,
    /// KIND[/EVERY]:SRC->DST:PORT, KIND one of refused, server-abort, client-abort, balancer.
    #[arg(required = true)]
    steps: Vec<traffic::Step>,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Setup => setup::run()?,
        Command::Build => {
            build::run()?;
        }
        Command::Demo { seconds } => demo::run(Duration::from_secs(seconds))?,
        Command::Lint => {
            setup::run()?;
            lint::run()?
        }
        Command::Test { args } => return testrun::run(&args),
        Command::Sweep => {
            for name in lab::sweep_stale()? {
                println!("removed {name}");
            }
        }
        Command::Traffic(args) => return run_traffic(args),
        Command::VerdictLab { seconds, capture } => {
            let account = verdict_lab::run_command(Duration::from_secs(seconds), capture.as_deref())?;
            println!("{account:#}");
        }
        Command::Fuzz { args } => {
            setup::run()?;
            return reliability::fuzz(&args);
        }
        Command::Soak { minutes, flows, repeat, out } => {
            setup::run()?;
            build::run()?;
            let options = reliability::SoakOptions { flows, repeat, ..reliability::SoakOptions::minutes(minutes) };
            return reliability::soak_command(&options, out);
        }
        Command::Bench { parts, quick, out } => {
            setup::run()?;
            bench::run(&bench::Options { parts, quick, out })?
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_traffic(args: TrafficArgs) -> Result<ExitCode> {
    signal::install()?;
    let plan = traffic::Plan {
        client_ns: lab::Netns::open(&args.client_ns)?,
        server_ns: lab::Netns::open(&args.server_ns)?,
        steps: args.steps,
        rounds: args.rounds,
        duration: args.duration_ms.map(Duration::from_millis),
        pace: Duration::from_millis(args.pace_ms),
        balancer_limit: args.balancer_limit,
        hold: args.hold_ms.map(Duration::from_millis),
    };
    let report = traffic::run(&plan, &signal::stop_requested).context("traffic")?;
    println!("{}", report.to_json());
    if report.errors.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for e in &report.errors {
            eprintln!("xtask traffic: {e}");
        }
        Ok(ExitCode::FAILURE)
    }
}
