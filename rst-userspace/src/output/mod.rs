//! Where the model goes: one printer per `--format`, chosen once. [`table`] writes for people,
//! [`json`] is the JSON Lines contract. Beside the printer, the outputs a live run feeds
//! interval by interval ([`metrics`], [`capture`]) are each an [`Output`], registered once in
//! [`crate::cmd::live`].

pub mod capture;
pub mod json;
pub mod metrics;
pub mod table;
pub mod tui;
pub mod view;

use std::{
    io::{self, Write},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use self::{
    json::{IntervalRecord, SummaryRecord},
    table::TablePrinter,
};
use crate::{
    collect::Sample,
    model::aggregate::{
        model::{Interval, Run},
        Aggregator,
    },
    output::view::View,
};

/// One interval as an [`Output`] sees it: folded into the run already.
pub struct Tick<'a> {
    /// The kernel's read the interval came from (for what only it knows: the overflowed
    /// resets' interfaces, the kernel's reasons, the collector's own health).
    pub sample: &'a Sample,
    /// The interval's model.
    pub interval: &'a Interval,
    /// How long the interval lasted.
    pub elapsed: Duration,
    /// The run so far, the interval included.
    pub aggregator: &'a Aggregator,
    /// The run's last read, cut short by the stop, counted nothing and lasted under half an
    /// interval: folded in, but worth no line of its own.
    pub stub: bool,
}

/// An output that follows a live run: told of every interval, of every interface attached after
/// the start, and of the run's end. A new one is a type implementing this and one registration
/// in [`crate::cmd::live::LiveSession::start`].
pub trait Output {
    /// One interval, after it was folded into the run.
    ///
    /// # Errors
    /// The output's own (it stops the run).
    fn interval(&mut self, tick: &Tick<'_>) -> anyhow::Result<()>;

    /// An interface attached after the start (perhaps one back under a new ifindex).
    fn interface_added(&mut self, iface: &str, ifindex: u32);

    /// The run is over (detached, last interval read): the output's last word, which it may add
    /// to the run's summary.
    ///
    /// # Errors
    /// The output's own.
    fn finish(self: Box<Self>, run: &mut Run) -> anyhow::Result<()>;
}

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

/// The printer as an [`Output`]: each interval printed, the summary at the end (replay; the
/// watch mode prints itself, as its last interval is printed only when it counted anything).
impl<W: Write> Output for Printer<W> {
    fn interval(&mut self, tick: &Tick<'_>) -> anyhow::Result<()> {
        if tick.stub {
            return Ok(());
        }
        Ok(Printer::interval(self, tick.interval)?)
    }

    fn interface_added(&mut self, _iface: &str, _ifindex: u32) {}

    fn finish(mut self: Box<Self>, run: &mut Run) -> anyhow::Result<()> {
        Ok(self.summary(run)?)
    }
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
