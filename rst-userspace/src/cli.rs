//! The command line: every clap struct, the options shared by several commands, and their
//! parsers.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use rst_common::wire::{CAPTURE_DEFAULT_BUDGET, CAPTURE_DEFAULT_SNAPLEN, CAPTURE_MAX_SNAPLEN, DEFAULT_MAX_FLOWS};

use crate::{
    cmd::replay::ReplayArgs,
    load::{AttachOptions, Counting, HookChoice, TcLinkChoice, XdpModeChoice},
    model::aggregate::DEFAULT_SUMMARY_FLOWS,
    output::metrics,
    output::view::View,
    output::Format,
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
    /// Interface to watch; repeat for several. A pattern (`'veth*'`, `'cali?'`, `'eth[01]'`) watches every
    /// matching interface, those that appear later included; no pattern matches `lo`, which is
    /// watched only when named (`-i lo`).
    #[arg(short = 'i', long = "iface", value_name = "IFACE", required = true)]
    pub ifaces: Vec<String>,
    /// Do not name the workload (cgroup, unit, pod) behind each reset, nor attach
    /// tcp:tcp_receive_reset for it.
    #[arg(long)]
    pub no_workloads: bool,
    /// The kubelet's pod log directory, where pod names and namespaces come from.
    #[arg(long, value_name = "DIR", default_value = crate::model::workload::DEFAULT_POD_LOGS)]
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
    /// How the TC programs attach: tcx links (kernel ≥ 6.6; gone with the process, even after
    /// kill -9), clsact qdisc filters (the only way before 6.6; removed at exit, but they outlive
    /// kill -9), or auto: tcx where the kernel has it.
    #[arg(long, value_enum, default_value_t = TcLinkChoice::Auto)]
    pub tc_link: TcLinkChoice,
    /// Also time every connection's pauses (programs of their own on TC ingress and egress),
    /// for the idle gap before resets of connections that have no socket on this host: a
    /// router's, a gateway's, a mirror port's. This host's own sockets are timed without it.
    /// Costs each TCP segment of a known connection tens of ns (BENCHMARKS.md).
    #[arg(long)]
    pub idle_gaps: bool,
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

/// UDP ports that carry VXLAN or Geneve besides the well-known ones (4789 and 8472, 6081).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct TunnelPorts {
    /// Also walk into UDP to PORT as VXLAN (besides 4789 and 8472); repeatable, up to 4.
    #[arg(long = "vxlan-port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub vxlan: Vec<u16>,
    /// Also walk into UDP to PORT as Geneve (besides 6081); repeatable, up to 4.
    #[arg(long = "geneve-port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub geneve: Vec<u16>,
}

/// What every live command asks for: where to count and how. Its parts are flattened apart
/// because each command interleaves its own options between them (`--help`, the man page and
/// the completions list options in declaration order, and that order is part of the CLI).
#[derive(Debug, Clone)]
pub struct LiveOptions {
    pub ifaces: Vec<String>,
    pub attach: AttachOptions,
    pub counting: Counting,
    pub workloads: crate::model::workload::Setting,
    /// `--capture`.
    pub capture: Option<crate::output::capture::Options>,
    /// `--vxlan-port`, `--geneve-port`.
    pub tunnel_ports: TunnelPorts,
}

impl LiveOptions {
    pub fn new(interfaces: &Interfaces, hooks: Hooks, counting: CountingChoice) -> Self {
        LiveOptions {
            ifaces: interfaces.ifaces.clone(),
            attach: AttachOptions {
                hook: hooks.hook,
                xdp_mode: hooks.xdp_mode,
                tc_link: hooks.tc_link,
                idle_gaps: hooks.idle_gaps,
            },
            counting: counting.counting,
            workloads: if interfaces.no_workloads {
                crate::model::workload::Setting::Off
            } else {
                crate::model::workload::Setting::On {
                    pod_logs: interfaces.pod_logs.clone(),
                    cgroup_root: interfaces.cgroup_root.clone(),
                }
            },
            capture: None,
            tunnel_ports: TunnelPorts::default(),
        }
    }

    pub fn with_tunnel_ports(mut self, ports: &TunnelPorts) -> Self {
        self.tunnel_ports = ports.clone();
        self
    }

    pub fn with_capture(mut self, capture: &CaptureArgs) -> Self {
        self.capture = capture.options();
        self
    }
}

/// `--capture FILE` and its limits.
#[derive(Debug, Clone, clap::Args)]
pub struct CaptureArgs {
    /// Write every RST rstwatch counts to FILE, a pcapng for Wireshark: one interface block per
    /// watched interface, each packet with its direction and a comment with rstwatch's reading.
    /// Created mode 0600; a FILE that exists (or is a symlink) is never opened.
    #[arg(long, value_name = "FILE")]
    pub capture: Option<PathBuf>,
    /// Bytes of each RST to keep (all headers fit in the default).
    #[arg(long, value_name = "BYTES", default_value_t = CAPTURE_DEFAULT_SNAPLEN,
          value_parser = clap::value_parser!(u32).range(54..=CAPTURE_MAX_SNAPLEN as i64))]
    pub snaplen: u32,
    /// Most RSTs written per second; the rest are counted (summary `capture.dropped`), not written.
    #[arg(long, value_name = "RSTS", default_value_t = CAPTURE_DEFAULT_BUDGET,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub capture_budget: u32,
    /// Start a new file when this one would pass SIZE (like tcpdump -C; 10M, 1G, 500k, 1MiB):
    /// FILE's name gets a number, `resets.0.pcapng`, `resets.1.pcapng`, ….
    #[arg(long, value_name = "SIZE", value_parser = parse_size, requires = "capture")]
    pub capture_max_size: Option<u64>,
    /// With --capture-max-size, keep at most N files, reusing the oldest name (like tcpdump -W).
    #[arg(long, value_name = "N", requires = "capture_max_size", value_parser = clap::value_parser!(u32).range(1..))]
    pub capture_files: Option<u32>,
    /// Also write the SYN and SYN+ACK of every connection that was then reset.
    #[arg(long, requires = "capture")]
    pub capture_handshakes: bool,
}

impl CaptureArgs {
    pub fn options(&self) -> Option<crate::output::capture::Options> {
        let CaptureArgs { capture, snaplen, capture_budget, capture_max_size, capture_files, capture_handshakes } =
            self;
        Some(crate::output::capture::Options {
            layout: crate::output::capture::files::Layout {
                path: capture.clone()?,
                max_size: *capture_max_size,
                files: *capture_files,
            },
            snaplen: *snaplen,
            budget: *capture_budget,
            handshakes: *capture_handshakes,
        })
    }
}

/// Why a size was refused.
#[derive(Debug, thiserror::Error)]
pub enum SizeError {
    #[error("expected a number of bytes with an optional k, M, G (1000s) or KiB, MiB, GiB suffix")]
    Syntax,
    #[error("must be at least 1 byte")]
    Zero,
}

/// `10M`, `1G`, `500k`, `1MiB`, `4096`.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let digits = text.trim().find(|c: char| !c.is_ascii_digit()).unwrap_or(text.trim().len());
    let (number, unit) = text.trim().split_at(digits);
    let number: u64 = number.parse().map_err(|_| SizeError::Syntax)?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "k" | "K" | "kB" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(SizeError::Syntax),
    };
    match number.checked_mul(scale) {
        Some(0) => Err(SizeError::Zero),
        Some(bytes) => Ok(bytes),
        None => Err(SizeError::Syntax),
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
    #[command(flatten)]
    pub capture: CaptureArgs,
    #[command(flatten)]
    pub tunnel_ports: TunnelPorts,
}

impl WatchArgs {
    pub fn live(&self) -> LiveOptions {
        LiveOptions::new(&self.interfaces, self.hooks, self.counting)
            .with_capture(&self.capture)
            .with_tunnel_ports(&self.tunnel_ports)
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
    #[command(flatten)]
    pub tunnel_ports: TunnelPorts,
}

impl TopArgs {
    pub fn live(&self) -> LiveOptions {
        LiveOptions::new(&self.interfaces, self.hooks, self.counting).with_tunnel_ports(&self.tunnel_ports)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_decimal_and_binary_suffixes() {
        assert_eq!(parse_size("4096").ok(), Some(4096));
        assert_eq!(parse_size("10M").ok(), Some(10_000_000));
        assert_eq!(parse_size("500k").ok(), Some(500_000));
        assert_eq!(parse_size("1MiB").ok(), Some(1 << 20));
        assert_eq!(parse_size("2G").ok(), Some(2_000_000_000));
        assert!(matches!(parse_size("0"), Err(SizeError::Zero)));
        assert!(matches!(parse_size("ten"), Err(SizeError::Syntax)));
        assert!(matches!(parse_size("1T"), Err(SizeError::Syntax)));
    }
}
