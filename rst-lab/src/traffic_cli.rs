//! The traffic generator's command line, `rst-traffic` (a binary of rst-e2e, which its suites
//! run): what `traffic::run` does between two existing lab namespaces, its account as JSON.

use std::{process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
use clap::Parser as _;

use crate::{lab, signal, traffic};

/// `rst-traffic`: generate resets between two lab namespaces and print what was done as JSON.
#[derive(clap::Parser)]
#[command(name = "rst-traffic")]
struct Args {
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

/// Parses the command line, runs the plan, prints the account; fails on any error it lists.
pub fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rst-traffic: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<ExitCode> {
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
            eprintln!("rst-traffic: {e}");
        }
        Ok(ExitCode::FAILURE)
    }
}
