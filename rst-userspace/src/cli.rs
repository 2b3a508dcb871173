//! Options shared by several commands, and their parsers.

use std::time::Duration;

use crate::{aggregate::DEFAULT_SUMMARY_FLOWS, output::Format, view::View};

/// Report options shared by live watching and replay.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportOptions {
    /// How often to report (e.g. 500ms, 1s, 1m); in replay, measured in capture time.
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// How many resetters and flows each report lists.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub top: u32,
    /// Output: a table for people, or JSON Lines for programs.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// What the table ranks: resetters, destinations, services or flows.
    #[arg(long, value_enum, default_value_t = View::Src)]
    pub by: View,
    /// Most flows the run's summary keeps (memory stays bounded under a scan); resets of flows
    /// beyond it still count in the totals and for their source, as `summary.unlisted`.
    #[arg(long, default_value_t = DEFAULT_SUMMARY_FLOWS, value_parser = clap::value_parser!(u32).range(1..))]
    pub summary_flows: u32,
}

/// Why a duration option was refused.
#[derive(Debug, thiserror::Error)]
pub enum DurationError {
    #[error("{0} (examples: 500ms, 10s, 5m)")]
    Syntax(#[from] humantime::DurationError),
    #[error("must be longer than zero")]
    Zero,
    #[error("must be at least 10ms")]
    TooShort,
}

/// A positive duration in humantime syntax.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let duration = humantime::parse_duration(text)?;
    if duration.is_zero() {
        return Err(DurationError::Zero);
    }
    Ok(duration)
}

/// A reporting interval: at least 10ms.
pub fn parse_interval(text: &str) -> Result<Duration, DurationError> {
    let interval = parse_duration(text)?;
    if interval < Duration::from_millis(10) {
        return Err(DurationError::TooShort);
    }
    Ok(interval)
}
