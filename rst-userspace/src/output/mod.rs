//! Where the model goes: one printer per `--format`, chosen once. [`table`] writes for people,
//! [`json`] is the JSON Lines contract.

pub mod capture;
pub mod json;
pub mod metrics;
pub mod table;
pub mod tui;
pub mod view;

use std::{
    io::{self, Write},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use self::{
    json::{IntervalRecord, SummaryRecord},
    table::TablePrinter,
};
use crate::{
    model::aggregate::model::{Interval, Run},
    output::view::View,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Writes intervals and the summary. Errors are the output's (a closed pipe, a full disk).
pub enum Printer<W: Write> {
    Table(TablePrinter<W>),
    JsonLines(W),
}

impl<W: Write> Printer<W> {
    /// `top` and `by` shape the table; JSON Lines always carries every ranking.
    pub fn new(out: W, format: Format, top: usize, by: View) -> Self {
        match format {
            Format::Table => Printer::Table(TablePrinter::new(out, top, by)),
            Format::Json => Printer::JsonLines(out),
        }
    }

    pub fn interval(&mut self, interval: &Interval) -> io::Result<()> {
        match self {
            Printer::Table(table) => table.interval(interval),
            Printer::JsonLines(out) => json_line(out, &IntervalRecord::from(interval)),
        }
    }

    pub fn summary(&mut self, run: &Run) -> io::Result<()> {
        match self {
            Printer::Table(table) => table.summary(run),
            Printer::JsonLines(out) => json_line(out, &SummaryRecord::from(run)),
        }
    }
}

fn json_line(out: &mut impl Write, record: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, record)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Whether `error` is a closed stdout (`rstwatch … | head`): not a failure.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| cause.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe))
}

/// `HH:MM:SS` (UTC) of a time: the interval's clock in the table and the TUI.
pub fn clock(time: SystemTime) -> String {
    let seconds = time.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() % 86_400;
    format!("{:02}:{:02}:{:02}", seconds / 3600, seconds / 60 % 60, seconds % 60)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_clock_is_utc_time_of_day() {
        let time = UNIX_EPOCH + Duration::from_millis(1_767_270_896_789);
        assert_eq!(clock(time), "12:34:56");
        assert_eq!(humantime::format_rfc3339_millis(time).to_string().get(11..19), Some("12:34:56"));
        assert_eq!(clock(UNIX_EPOCH), "00:00:00");
    }
}
