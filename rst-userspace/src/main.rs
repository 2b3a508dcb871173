//! `rstwatch`: who is resetting TCP connections, how often, and towards whom. Parses the
//! command line and hands over to the command.

use std::{
    io::{self, IsTerminal as _},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::Parser;
use rstwatch::cli::{Cli, Command, LogFormat};

/// Diagnostics go to stderr through `tracing`; errors that end the run stay one plain line.
fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(rstwatch::logsink::writer())
        .with_target(false)
        .with_ansi(io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            use clap::error::ErrorKind;
            if matches!(error.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = error.print();
                return ExitCode::SUCCESS;
            }
            // One line, like every other rstwatch error; `--help` has the long story.
            let text = error.to_string();
            let message: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
                .filter(|line| !line.is_empty())
                .collect();
            eprintln!("rstwatch: {} (see --help)", message.join(" "));
            return ExitCode::from(2);
        }
    };
    init_logging(&cli.log_level, cli.log_format);
    let outcome = match cli.command {
        Some(Command::Replay(args)) => rstwatch::cmd::replay::run(&args),
        Some(Command::Completions { shell }) => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "rstwatch",
                &mut io::stdout(),
            );
            Ok(())
        }
        Some(Command::Man) => clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
            .render(&mut io::stdout())
            .context("writing the man page"),
        Some(Command::Top(args)) => rstwatch::cmd::top::run(&args),
        None => rstwatch::cmd::watch::run(cli.watch),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("rstwatch: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
