//! The command line: every clap struct, the options shared by several commands, and their
//! parsers.

use std::{net::SocketAddr, time::Duration};

use rst_common::wire::DEFAULT_MAX_FLOWS;

use crate::{
    aggregate::DEFAULT_SUMMARY_FLOWS,
    loader::{Counting, HookChoice, XdpModeChoice},
    metrics,
    output::Format,
    replay::ReplayArgs,
    view::View,
};

/// Counts TCP resets per flow with XDP on the given interfaces and reports the top resetters.
///
/// Needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (or root). Nothing is changed or dropped:
/// the program only reads headers and always passes the frame on.
#[derive(Debug, clap::Parser)]
#[command(name = "rstwatch", version, args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Log level for stderr diagnostics (error, warn, info, debug, trace); RUST_LOG, when set,
    /// takes precedence and accepts per-module filters.
    #[arg(long, global = true, default_value = "info", value_parser = ["error", "warn", "info", "debug", "trace"])]
    pub log_level: String,
    /// Diagnostics as text lines or as JSON objects (reports always go to stdout).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub watch: WatchArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Report on pcap / pcapng files offline, with the same parser and the same output; needs no
    /// privileges.
    Replay(ReplayArgs),
    /// Print a shell completion script (e.g. `rstwatch completions bash > /etc/bash_completion.d/rstwatch`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), generated from these options: `rstwatch man | man -l -`.
    Man,
    /// Live view in the terminal: the top resetters, destinations, services or flows, refreshed
    /// every interval; keys sort, switch views, filter by address or port, and pause.
    Top(TopArgs),
}

/// The interfaces a live command watches.
#[derive(Debug, Clone, clap::Args)]
pub struct Interfaces {
    /// Interface to watch; repeat for several. A pattern (`'veth*'`, `'cali?'`) watches every
    /// matching interface, those that appear later included.
    #[arg(short = 'i', long = "iface", value_name = "IFACE", required = true)]
    pub ifaces: Vec<String>,
    /// Do not name the workload (cgroup, unit, pod) behind each reset, nor attach
    /// tcp:tcp_receive_reset for it.
    #[arg(long)]
    pub no_workloads: bool,
    /// The kubelet's pod log directory, where pod names and namespaces come from.
    #[arg(long, value_name = "DIR", default_value = crate::workload::DEFAULT_POD_LOGS)]
    pub pod_logs: std::path::PathBuf,
    /// The host's cgroup2 tree, where cgroup ids are named; default: the cgroup2 mount in
    /// /proc/self/mountinfo. In a container with its own cgroup namespace, mount the host's
    /// /sys/fs/cgroup somewhere and name it here.
    #[arg(long, value_name = "DIR")]
    pub cgroup_root: Option<std::path::PathBuf>,
}

/// Where a live command counts.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Hooks {
    /// Where to count: the XDP hook, or TC ingress (tcx, kernel ≥ 6.6) beside another XDP program.
    #[arg(long, value_enum, default_value_t = HookChoice::Xdp)]
    pub hook: HookChoice,
    /// Where to hook XDP.
    #[arg(long, value_enum, default_value_t = XdpModeChoice::Auto)]
    pub xdp_mode: XdpModeChoice,
}

/// How a live command's programs count.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct CountingChoice {
    /// How the programs count: `per-cpu` (plain per-CPU adds and a per-CPU flow cache, exact
    /// where programs on one CPU never preempt each other), `atomic` (atomic adds only, every RST
    /// into the shared flow table: exact on PREEMPT_RT too, dearer per RST), or `auto`: atomic
    /// on a PREEMPT_RT kernel.
    #[arg(long, value_enum, default_value_t = Counting::Auto)]
    pub counting: Counting,
}

/// What every live command asks for: where to count and how. Its parts are flattened apart
/// because each command interleaves its own options between them (`--help`, the man page and
/// the completions list options in declaration order, and that order is part of the CLI).
#[derive(Debug, Clone)]
pub struct LiveOptions {
    pub ifaces: Vec<String>,
    pub hook: HookChoice,
    pub xdp_mode: XdpModeChoice,
    pub counting: Counting,
    pub workloads: crate::workload::Setting,
}

impl LiveOptions {
    pub fn new(interfaces: &Interfaces, hooks: Hooks, counting: CountingChoice) -> Self {
        LiveOptions {
            ifaces: interfaces.ifaces.clone(),
            hook: hooks.hook,
            xdp_mode: hooks.xdp_mode,
            counting: counting.counting,
            workloads: if interfaces.no_workloads {
                crate::workload::Setting::Off
            } else {
                crate::workload::Setting::On {
                    pod_logs: interfaces.pod_logs.clone(),
                    cgroup_root: interfaces.cgroup_root.clone(),
                }
            },
        }
    }
}

/// `rstwatch -i IFACE …`: count and report every interval.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub interfaces: Interfaces,
    /// Stop after this long (e.g. 30s, 5m); default: until SIGINT or SIGTERM.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub hooks: Hooks,
    /// Serve Prometheus metrics on PORT (127.0.0.1) or ADDR:PORT; off by default.
    #[arg(long, value_name = "ADDR", value_parser = metrics::parse_listen)]
    pub metrics: Option<SocketAddr>,
    /// Capacity of each of the two per-interval flow tables (kernel memory, allocated at
    /// start: ~500 bytes per flow of it: flow tables, eviction logs and connection state). RSTs
    /// beyond it are still counted, as `overflow`.
    #[arg(long, default_value_t = DEFAULT_MAX_FLOWS, value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    pub max_flows: u32,
    #[command(flatten)]
    pub counting: CountingChoice,
    #[command(flatten)]
    pub report: ReportOptions,
}

impl WatchArgs {
    pub fn live(&self) -> LiveOptions {
        LiveOptions::new(&self.interfaces, self.hooks, self.counting)
    }
}

/// Options of `rstwatch top`.
#[derive(Debug, Clone, clap::Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub interfaces: Interfaces,
    /// How often to read the counts and refresh the table (e.g. 500ms, 1s, 5s).
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    #[command(flatten)]
    pub hooks: Hooks,
    /// Capacity of each of the two per-interval flow tables. RSTs beyond it are still counted,
    /// as `overflow`.
    #[arg(long, default_value_t = DEFAULT_MAX_FLOWS, value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    pub max_flows: u32,
    #[command(flatten)]
    pub counting: CountingChoice,
}

impl TopArgs {
    pub fn live(&self) -> LiveOptions {
        LiveOptions::new(&self.interfaces, self.hooks, self.counting)
    }
}

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
