//! The `cargo xtask` command line.

use std::{process::ExitCode, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand};

use rst_lab::{lab, verdict_lab};

use crate::{bench, build, demo, image, lint, reliability, setup, testrun};

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
    /// Build the container image with no registry (Debian base by debootstrap, cached under
    /// target/image): target/image/rstwatch-image.tar, for `docker load` and `ctr images import`.
    Image,
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
        Command::Image => {
            setup::run()?;
            image::run()?;
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
