//! `rstwatch -i IFACE …`: a [`LiveSession`] reported every interval as a table or JSON Lines,
//! until `--duration`, SIGINT or SIGTERM; with `--metrics`, the program's run time sampled now
//! and then for the endpoint.

use std::{io, time::Duration};

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    cli::{ReportOptions, WatchArgs},
    cmd::live::{self, LiveSession, Settings},
    output::metrics::{self, Metrics, RunTimeWindow},
    output::{self, Printer},
};

pub fn run(args: WatchArgs) -> anyhow::Result<()> {
    let live = args.live();
    let targets = LiveSession::preflight(&live)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .enable_io()
        .build()
        .context("starting the runtime")?;
    let listener = args.metrics.map(|addr| live::bind_metrics(&runtime, addr)).transpose()?;
    let ReportOptions { interval, top, format, summary_flows, by } = args.report;
    let settings = Settings { max_flows: args.max_flows, top: top as usize, summary_flows, interval };
    let mut session =
        LiveSession::start(&live, &targets, settings, listener.map(|listener| (listener, runtime.handle())))?;
    session.add_output(Box::new(Printer::new(io::stdout().lock(), format, top as usize, by)));
    session.restart_clock();
    let outcome = runtime.block_on(watch(&args, &mut session));
    session.detach();
    let result = outcome.and_then(|()| {
        let finished = session.finish()?;
        // The counts are complete; the exit status says the file is not.
        match finished.run.capture.and_then(|capture| capture.error) {
            Some(error) => Err(crate::output::capture::Stopped(error).into()),
            None => Ok(()),
        }
    });
    match result {
        Err(error) if output::is_broken_pipe(&error) => Ok(()),
        other => other,
    }
}

/// Reports every interval (through the session's outputs) until a stop condition.
async fn watch(args: &WatchArgs, session: &mut LiveSession) -> anyhow::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let started = tokio::time::Instant::now();
    let deadline = args.duration.map(|d| started + d);
    let interval = args.report.interval;
    let mut ticks = tokio::time::interval_at(started + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Run-time sampling only feeds the metrics endpoint: without it, stats are never turned on.
    let mut sampling = session.metrics().is_some();
    let mut next_sample = started + Duration::from_secs(5);
    let mut window: Option<(RunTimeWindow, tokio::time::Instant)> = None;
    loop {
        let until_deadline = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        let window_ends = window.as_ref().map(|(_, ends)| *ends);
        let sample_due = async move {
            match (window_ends, sampling) {
                (Some(ends), _) => tokio::time::sleep_until(ends).await,
                (None, true) => tokio::time::sleep_until(next_sample).await,
                (None, false) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ticks.tick() => {
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    return Ok(());
                }
                session.tick()?;
            }
            _ = sample_due => {
                if let (Some(metrics), Some((name, program))) = (session.metrics(), session.counting_program()) {
                    sample_run_time(metrics, name, program, &mut window, &mut next_sample, &mut sampling);
                }
            }
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            _ = until_deadline => return Ok(()),
        }
    }
}

/// Opens a run-time sampling window, or closes the open one and publishes what it measured.
/// Turns sampling off for the rest of the run if the kernel refuses to enable stats.
fn sample_run_time(
    metrics: &Metrics,
    name: &'static str,
    program: &aya::programs::Program,
    window: &mut Option<(RunTimeWindow, tokio::time::Instant)>,
    next_sample: &mut tokio::time::Instant,
    sampling: &mut bool,
) {
    let now = tokio::time::Instant::now();
    match window.take() {
        None => match RunTimeWindow::open(program) {
            Ok(opened) => *window = Some((opened, now + metrics::RUN_TIME_WINDOW)),
            Err(error) => {
                tracing::warn!(
                    "program run time will not be sampled: {error:#} (BPF_ENABLE_STATS needs CAP_SYS_ADMIN)"
                );
                *sampling = false;
            }
        },
        Some((opened, _)) => {
            match opened.close(program) {
                Ok(Some(ns_per_packet)) => metrics.set_run_time(name, ns_per_packet),
                Ok(None) => {}
                Err(error) => tracing::warn!("reading the program's run time: {error:#}"),
            }
            *next_sample = now + metrics::RUN_TIME_EVERY;
        }
    }
}
