//! `rstwatch`: who is resetting TCP connections, how often, and towards whom.

use std::{
    collections::HashMap,
    io::{self, IsTerminal as _, Write},
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use clap::Parser;
use rst_common::wire::DEFAULT_MAX_FLOWS;
use rstwatch::{
    aggregate::{
        model::{CountingMode, Interface},
        Aggregator,
    },
    cli::{parse_duration, ReportOptions},
    collector::Collector,
    loader::{self, Attachment, Counting, HookChoice, XdpModeChoice},
    metrics::{self, Metrics, RunTimeWindow},
    output::Printer,
    replay,
};
use tokio::signal::unix::{signal, SignalKind};

/// Counts TCP resets per flow with XDP on the given interfaces and reports the top resetters.
///
/// Needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (or root). Nothing is changed or dropped:
/// the program only reads headers and always passes the frame on.
#[derive(Debug, Parser)]
#[command(name = "rstwatch", version, args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Log level for stderr diagnostics (error, warn, info, debug, trace); RUST_LOG, when set,
    /// takes precedence and accepts per-module filters.
    #[arg(long, global = true, default_value = "info", value_parser = ["error", "warn", "info", "debug", "trace"])]
    log_level: String,
    /// Diagnostics as text lines or as JSON objects (reports always go to stdout).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(flatten)]
    watch: WatchArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

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

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Report on pcap / pcapng files offline, with the same parser and the same output; needs no
    /// privileges.
    Replay(replay::ReplayArgs),
    /// Print a shell completion script (e.g. `rstwatch completions bash > /etc/bash_completion.d/rstwatch`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), generated from these options: `rstwatch man | man -l -`.
    Man,
    /// Live view in the terminal: the top resetters, destinations, services or flows, refreshed
    /// every interval; keys sort, switch views, filter by address or port, and pause.
    Top(rstwatch::tui::TopArgs),
}

#[derive(Debug, clap::Args)]
struct WatchArgs {
    /// Interface to watch; repeat for several.
    #[arg(short = 'i', long = "iface", value_name = "IFACE", required = true)]
    ifaces: Vec<String>,
    /// Stop after this long (e.g. 30s, 5m); default: until SIGINT or SIGTERM.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Where to count: the XDP hook, or TC ingress (tcx, kernel ≥ 6.6) beside another XDP program.
    #[arg(long, value_enum, default_value_t = HookChoice::Xdp)]
    hook: HookChoice,
    /// Where to hook XDP.
    #[arg(long, value_enum, default_value_t = XdpModeChoice::Auto)]
    xdp_mode: XdpModeChoice,
    /// Serve Prometheus metrics on PORT (127.0.0.1) or ADDR:PORT; off by default.
    #[arg(long, value_name = "ADDR", value_parser = metrics::parse_listen)]
    metrics: Option<std::net::SocketAddr>,
    /// Capacity of each of the two per-interval flow tables (kernel memory, allocated at
    /// start: ~500 bytes per flow of it: flow tables, eviction logs and connection state). RSTs
    /// beyond it are still counted, as `overflow`.
    #[arg(long, default_value_t = DEFAULT_MAX_FLOWS, value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    max_flows: u32,
    /// How the programs count: `per-cpu` (plain per-CPU adds and a per-CPU flow cache, exact
    /// where programs on one CPU never preempt each other), `atomic` (atomic adds only, every RST
    /// into the shared flow table: exact on PREEMPT_RT too, dearer per RST), or `auto`: atomic
    /// on a PREEMPT_RT kernel.
    #[arg(long, value_enum, default_value_t = Counting::Auto)]
    counting: Counting,
    #[command(flatten)]
    report: ReportOptions,
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
        Some(Command::Replay(args)) => replay::run(&args),
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
        Some(Command::Top(args)) => rstwatch::tui::run(&args),
        None => run(cli.watch),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("rstwatch: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: WatchArgs) -> anyhow::Result<()> {
    // Everything that can be checked without touching the kernel is checked first.
    let targets = loader::resolve_targets(&cli.ifaces)?;
    loader::check_capabilities()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .enable_io()
        .build()
        .context("starting the runtime")?;
    let listener = match cli.metrics {
        Some(addr) => Some(
            runtime
                .block_on(tokio::net::TcpListener::bind(addr))
                .with_context(|| format!("binding the metrics endpoint to {addr}"))?,
        ),
        None => None,
    };

    let mut ebpf = loader::load_counting(cli.max_flows, cli.counting)?;
    let mut collector = Collector::new(&mut ebpf)?;
    // Before the interfaces: once "attached to" is logged, every reset's reason is recorded.
    let (kernel_events, reason_names) = loader::start_kernel_events(&mut ebpf);
    let mut attachments: Vec<Option<Attachment>> =
        loader::attach_all(&mut ebpf, cli.hook, cli.xdp_mode, &targets)?.into_iter().map(Some).collect();
    let interfaces: Vec<Interface> = attachments.iter().flatten().map(Interface::of).collect();
    let metrics = listener.map(|listener| {
        let names: HashMap<u32, String> = interfaces.iter().map(|i| (i.ifindex, i.iface.clone())).collect();
        let metrics = Arc::new(Metrics::new(names, cli.max_flows, reason_names.clone()));
        if let Ok(addr) = listener.local_addr() {
            tracing::info!("serving metrics on http://{addr}/metrics");
        }
        runtime.spawn(metrics::serve(listener, Arc::clone(&metrics)));
        metrics
    });

    let ReportOptions { interval, top, format, summary_flows, by } = cli.report;
    let mut aggregator = Aggregator::new(interfaces, top as usize).limit_flows(summary_flows);
    loader::warn_kernel_events(&kernel_events);
    aggregator.kernel_events(kernel_events, reason_names);
    aggregator.counting(CountingMode::from_loaded(loader::counting_mode(&ebpf)));
    let mut printer = Printer::new(io::stdout().lock(), format, top as usize, by);
    let mut watch_state = Watch {
        collector: &mut collector,
        aggregator: &mut aggregator,
        printer: &mut printer,
        metrics: metrics.as_deref(),
        ebpf: &mut ebpf,
        attachments: &mut attachments,
        missing_since: vec![None; targets.len()],
    };
    let outcome = runtime.block_on(watch(&cli, &mut watch_state));

    // Detach before the last read, so the summary holds every RST that crossed the hook.
    let detached: Vec<String> = attachments.iter().flatten().map(|a| a.iface.clone()).collect();
    drop(attachments);
    tracing::info!("detached from {}", detached.join(", "));
    let result = outcome.and_then(|last_interval_start| {
        let sample = collector.collect()?;
        let elapsed = last_interval_start.elapsed();
        let record = aggregator.add(&sample, elapsed, SystemTime::now());
        if let Some(metrics) = &metrics {
            metrics.observe(&sample, &record, &aggregator.interval_by_interface(), &aggregator.top_services());
        }
        if sample.counted_anything() || elapsed >= interval / 2 {
            printer.interval(&record)?;
        }
        printer.summary(&aggregator.summary())?;
        Ok(())
    });
    match result {
        Err(error) if is_broken_pipe(&error) => Ok(()),
        other => other,
    }
}

fn program_name(ebpf: &aya::Ebpf, hook: HookChoice) -> &'static str {
    let programs = loader::counting_programs(ebpf);
    match hook {
        HookChoice::Xdp => programs.xdp,
        HookChoice::Tc => programs.tc,
    }
}

/// What the interval loop works on.
struct Watch<'a, W: Write> {
    collector: &'a mut Collector,
    aggregator: &'a mut Aggregator,
    printer: &'a mut Printer<W>,
    metrics: Option<&'a Metrics>,
    ebpf: &'a mut aya::Ebpf,
    /// One per `-i`, in order; `None` while that interface is gone.
    attachments: &'a mut Vec<Option<Attachment>>,
    /// Per `-i`: whether its disappearance was reported and a re-attach failure logged.
    missing_since: Vec<Option<bool>>,
}

impl<W: Write> Watch<'_, W> {
    /// Interfaces come and go: a deleted one is reported once and the others carry on; one that
    /// comes back under its name (with a new ifindex) is attached again.
    fn follow_interfaces(&mut self, cli: &WatchArgs) {
        for (index, name) in cli.ifaces.iter().enumerate() {
            let current = loader::resolve_interface(name).ok();
            let attached = self.attachments[index].as_ref().map(|a| a.ifindex);
            if attached.is_some() && attached == current {
                continue;
            }
            if let Some(gone) = attached {
                tracing::warn!("interface {name} (ifindex {gone}) disappeared; the others are still watched, and it will be attached again if it comes back");
                self.attachments[index] = None;
                self.missing_since[index] = Some(false);
            }
            let Some(ifindex) = current else { continue };
            match loader::attach(self.ebpf, cli.hook, cli.xdp_mode, name, ifindex) {
                Ok(attachment) => {
                    tracing::info!("interface {name} is back (ifindex {ifindex})");
                    self.aggregator.add_interface(Interface::of(&attachment));
                    if let Some(metrics) = self.metrics {
                        metrics.add_interface(ifindex, name);
                    }
                    self.attachments[index] = Some(attachment);
                    self.missing_since[index] = None;
                }
                Err(error) => {
                    if self.missing_since[index] != Some(true) {
                        tracing::warn!(
                            "interface {name} is back but attaching failed: {error:#}; retrying every interval"
                        );
                        self.missing_since[index] = Some(true);
                    }
                }
            }
        }
    }
}

/// Reports every interval until a stop condition; returns when the unreported interval began.
async fn watch<W: Write>(cli: &WatchArgs, state: &mut Watch<'_, W>) -> anyhow::Result<Instant> {
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let started = tokio::time::Instant::now();
    let deadline = cli.duration.map(|d| started + d);
    let interval = cli.report.interval;
    let mut ticks = tokio::time::interval_at(started + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Run-time sampling only feeds the metrics endpoint: without it, stats are never turned on.
    let program = program_name(state.ebpf, cli.hook);
    let mut sampling = state.metrics.is_some();
    let mut next_sample = started + Duration::from_secs(5);
    let mut window: Option<(RunTimeWindow, tokio::time::Instant)> = None;
    let mut interval_start = Instant::now();
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
                    return Ok(interval_start);
                }
                state.follow_interfaces(cli);
                let sample = state.collector.collect()?;
                tracing::debug!(read_ms = sample.read_time.as_secs_f64() * 1e3, flows = sample.flows.len(), "interval read");
                let now = Instant::now();
                let record = state.aggregator.add(&sample, now - interval_start, SystemTime::now());
                interval_start = now;
                if let Some(metrics) = state.metrics {
                    metrics.observe(
                        &sample,
                        &record,
                        &state.aggregator.interval_by_interface(),
                        &state.aggregator.top_services(),
                    );
                }
                state.printer.interval(&record)?;
            }
            _ = sample_due => {
                if let (Some(metrics), Some(loaded)) = (state.metrics, state.ebpf.program(program)) {
                    sample_run_time(metrics, program, loaded, &mut window, &mut next_sample, &mut sampling);
                }
            }
            _ = interrupt.recv() => return Ok(interval_start),
            _ = terminate.recv() => return Ok(interval_start),
            _ = until_deadline => return Ok(interval_start),
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

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| cause.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe))
}
