//! The kernel side's rare events — an eviction log that fills, a flow table that overflows — at
//! `--log-level debug` (tracing target `rstwatch::kernel`), told by the collector from the
//! counters the programs keep. Needs root, like tests/kernel/.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::{
    io,
    sync::{Arc, Mutex},
};

use rst_common::{parse::TCP_RST, wire::FLOW_CACHE_SLOTS};
use rst_craft::tcp_v4;
use rstwatch::{collect::KERNEL_LOG_TARGET, load::testrun::Harness, load::Counting};

/// Everything a subscriber writes, kept for the test to read.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What this thread logs at `level` while a scan fills the smallest flow table (and so the
/// eviction log first) and the epoch is collected.
fn scan_logging_at(level: tracing::Level) -> anyhow::Result<String> {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber =
        tracing_subscriber::fmt().with_max_level(level).with_ansi(false).with_writer(move || writer.clone()).finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let mut kernel = Harness::load(2, Counting::Auto)?;
    for port in 0..3 * FLOW_CACHE_SLOTS as u16 {
        kernel.run(&tcp_v4().ports(10_000 + port, 443).flags(TCP_RST).build().bytes, 1)?;
    }
    let sample = kernel.collect()?;
    assert!(sample.counters.overflow > 0, "the scan overflows the table");
    Ok(captured.text())
}

#[test]
fn rare_kernel_events_are_logged_at_debug_only() -> anyhow::Result<()> {
    rst_lab::require!(rst_lab::Need::Bpf);
    let debug_log = scan_logging_at(tracing::Level::DEBUG)?;
    let lines: Vec<&str> = debug_log.lines().filter(|line| line.contains(KERNEL_LOG_TARGET)).collect();
    assert!(lines.iter().any(|line| line.contains("filled its eviction log")), "the log filling: {lines:#?}");
    assert!(lines.iter().any(|line| line.contains("found the flow table full")), "the overflow: {lines:#?}");
    // One line per CPU and event, not per reset: the scan overflowed hundreds of times.
    assert!(lines.len() <= 3 * std::thread::available_parallelism()?.get(), "{lines:#?}");

    let info_log = scan_logging_at(tracing::Level::INFO)?;
    assert!(!info_log.contains(KERNEL_LOG_TARGET), "nothing of them below debug: {info_log}");
    Ok(())
}
