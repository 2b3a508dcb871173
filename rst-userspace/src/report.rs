//! Turning samples into what an operator reads: ranked resetters and flows, as a table or as
//! JSON Lines (one `interval` object per interval, one `summary` object at the end).
//!
//! The JSON field names are a contract other tools parse: add fields, never rename or drop one.

use std::{
    collections::{BTreeMap, HashMap},
    io::{self, Write},
    net::IpAddr,
    time::{Duration, SystemTime},
};

use rst_common::{
    wire::{SourceKey, FAMILY_IPV4},
    Counters, FlowKey,
};
use serde::Serialize;

use crate::collector::Sample;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
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
    /// Most flows the run's summary keeps (memory stays bounded under a scan); resets of flows
    /// beyond it still count in the totals and for their source, as `summary.unlisted`.
    #[arg(long, default_value_t = DEFAULT_SUMMARY_FLOWS, value_parser = clap::value_parser!(u32).range(1..))]
    pub summary_flows: u32,
}

/// About 15 MiB of flow records at most.
pub const DEFAULT_SUMMARY_FLOWS: u32 = 65_536;

/// A positive duration in humantime syntax.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|error| format!("{error} (examples: 500ms, 10s, 5m)"))?;
    if duration.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(duration)
}

pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_duration(text)?;
    if interval < Duration::from_millis(10) {
        return Err("must be at least 10ms".into());
    }
    Ok(interval)
}

/// How many destinations / ports a resetter row lists.
const ROW_DETAIL: usize = 3;

#[derive(Debug, Clone, Serialize)]
pub struct InterfaceRecord {
    pub iface: String,
    pub ifindex: u32,
    pub mode: &'static str,
}

impl InterfaceRecord {
    pub fn of(attachment: &crate::loader::Attachment) -> Self {
        InterfaceRecord { iface: attachment.iface.clone(), ifindex: attachment.ifindex, mode: attachment.hook.as_str() }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Totals {
    pub frames: u64,
    pub tcp: u64,
    pub resets: u64,
    pub malformed: u64,
    pub fragments: u64,
    /// RSTs that found no room in the flow table: in `resets`, in no flow.
    pub overflow: u64,
    /// Of those, the RSTs that found no room in the per-source overflow table either: in no
    /// source's count.
    pub source_overflow: u64,
}

impl From<&Counters> for Totals {
    fn from(counters: &Counters) -> Self {
        let Counters { frames, tcp, resets, malformed, fragments, overflow, source_overflow } = *counters;
        Totals { frames, tcp, resets, malformed, fragments, overflow, source_overflow }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FlowRecord {
    pub iface: String,
    pub ifindex: u32,
    pub family: &'static str,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub resets: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PortCount {
    pub port: u16,
    pub resets: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DestinationCount {
    pub dst: IpAddr,
    pub resets: u64,
}

/// One resetter: an address that sent RSTs.
#[derive(Debug, Clone, Serialize)]
pub struct SourceRecord {
    pub src: IpAddr,
    pub resets: u64,
    /// Resets per second over the interval (or the whole run, in the summary).
    pub rate: f64,
    /// Percent of all resets attributed to a source in the same period.
    pub share: f64,
    pub flows: u64,
    /// Resets it sent that found no room in the flow table (included in `resets`, in no flow).
    pub overflow: u64,
    /// The source ports it sent most RSTs from (a server's service port stands out here).
    pub ports: Vec<PortCount>,
    pub destinations: Vec<DestinationCount>,
}

#[derive(Debug, Serialize)]
pub struct IntervalRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub seq: u64,
    pub time: String,
    pub elapsed_ms: f64,
    pub totals: Totals,
    pub rate: f64,
    pub flows_seen: usize,
    /// Resets in all of this interval's flows (not only the listed top N): with
    /// `totals.overflow` it adds up to `totals.resets`.
    pub flow_resets: u64,
    pub overflowed: bool,
    pub sources: Vec<SourceRecord>,
    pub flows: Vec<FlowRecord>,
}

/// Resets of flows the summary has no room for (beyond `--summary-flows`).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Unlisted {
    pub resets: u64,
    /// Per-interval flow records turned away (a flow active in several intervals counts in each).
    pub flow_records: u64,
}

#[derive(Debug, Serialize)]
pub struct SummaryRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub duration_ms: f64,
    pub intervals: u64,
    pub interfaces: Vec<InterfaceRecord>,
    pub totals: Totals,
    pub overflowed: bool,
    /// `flows` lists every flow of the run unless this is non-zero.
    pub unlisted: Unlisted,
    pub sources: Vec<SourceRecord>,
    pub flows: Vec<FlowRecord>,
}

/// Accumulates samples over the run.
pub struct Aggregator {
    interfaces: Vec<InterfaceRecord>,
    names: HashMap<u32, String>,
    top: usize,
    intervals: u64,
    elapsed: Duration,
    totals: Counters,
    flows: HashMap<FlowKey, u64>,
    overflow_sources: HashMap<SourceKey, u64>,
    flow_limit: usize,
    unlisted: Unlisted,
}

impl Aggregator {
    pub fn new(interfaces: Vec<InterfaceRecord>, top: usize) -> Self {
        let names = interfaces.iter().map(|i| (i.ifindex, i.iface.clone())).collect();
        Self {
            interfaces,
            names,
            top,
            intervals: 0,
            elapsed: Duration::ZERO,
            totals: Counters::default(),
            flows: HashMap::new(),
            overflow_sources: HashMap::new(),
            flow_limit: DEFAULT_SUMMARY_FLOWS as usize,
            unlisted: Unlisted::default(),
        }
    }

    /// Keeps at most `limit` flows for the summary; see [`ReportOptions::summary_flows`].
    pub fn limit_flows(mut self, limit: u32) -> Self {
        self.flow_limit = limit as usize;
        self
    }

    /// Makes an interface known after the start (replay meets pcapng interfaces as it reads).
    pub fn add_interface(&mut self, interface: InterfaceRecord) {
        self.names.insert(interface.ifindex, interface.iface.clone());
        self.interfaces.push(interface);
    }

    /// Folds one sample into the run and returns its interval view (top N only). `ended` is
    /// when the interval ended: wall-clock time live, capture time in replay.
    pub fn add(&mut self, sample: &Sample, elapsed: Duration, ended: SystemTime) -> IntervalRecord {
        self.intervals += 1;
        self.elapsed += elapsed;
        self.totals.accumulate(&sample.counters);
        for (key, resets) in &sample.flows {
            if let Some(count) = self.flows.get_mut(key) {
                *count += resets;
            } else if self.flows.len() < self.flow_limit {
                self.flows.insert(*key, *resets);
            } else {
                // Still the sender's: counted for its source, like a flow-table overflow.
                self.unlisted.resets += resets;
                self.unlisted.flow_records += 1;
                *self.overflow_sources.entry(SourceKey::of(key)).or_default() += resets;
            }
        }
        for (key, resets) in &sample.overflow_sources {
            *self.overflow_sources.entry(*key).or_default() += resets;
        }
        let totals = Totals::from(&sample.counters);
        let mut sources = rank_sources(
            sample.flows.iter().map(|(k, r)| (k, *r)),
            sample.overflow_sources.iter().map(|(k, r)| (k, *r)),
            elapsed,
        );
        sources.truncate(self.top);
        let mut flows = self.flow_records(sample.flows.iter().map(|(k, r)| (k, *r)));
        flows.truncate(self.top);
        IntervalRecord {
            kind: "interval",
            seq: self.intervals,
            time: humantime::format_rfc3339_millis(ended).to_string(),
            elapsed_ms: elapsed.as_secs_f64() * 1e3,
            rate: per_second(totals.resets, elapsed),
            totals,
            flows_seen: sample.flows.len(),
            flow_resets: sample.flows.iter().map(|(_, resets)| resets).sum(),
            overflowed: sample.counters.overflow > 0,
            sources,
            flows,
        }
    }

    /// The whole run: every flow, every source, cumulative.
    pub fn summary(&self) -> SummaryRecord {
        let flows_iter = || self.flows.iter().map(|(k, r)| (k, *r));
        SummaryRecord {
            kind: "summary",
            duration_ms: self.elapsed.as_secs_f64() * 1e3,
            intervals: self.intervals,
            interfaces: self.interfaces.clone(),
            totals: Totals::from(&self.totals),
            overflowed: self.totals.overflow > 0,
            unlisted: self.unlisted,
            sources: rank_sources(flows_iter(), self.overflow_sources.iter().map(|(k, r)| (k, *r)), self.elapsed),
            flows: self.flow_records(flows_iter()),
        }
    }

    fn flow_records<'a>(&self, flows: impl Iterator<Item = (&'a FlowKey, u64)>) -> Vec<FlowRecord> {
        let mut records: Vec<(FlowKey, FlowRecord)> = flows
            .map(|(key, resets)| {
                let record = FlowRecord {
                    iface: self.names.get(&key.ifindex).cloned().unwrap_or_else(|| format!("if{}", key.ifindex)),
                    ifindex: key.ifindex,
                    family: if key.family == FAMILY_IPV4 { "ipv4" } else { "ipv6" },
                    src: key.src_ip(),
                    sport: key.sport,
                    dst: key.dst_ip(),
                    dport: key.dport,
                    resets,
                };
                (*key, record)
            })
            .collect();
        // Largest first; ties in a stable, readable order.
        records.sort_by(|(ka, a), (kb, b)| b.resets.cmp(&a.resets).then_with(|| ka.cmp(kb)));
        records.into_iter().map(|(_, record)| record).collect()
    }
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

#[derive(Default)]
struct SourceTally {
    resets: u64,
    flows: u64,
    overflow: u64,
    ports: BTreeMap<u16, u64>,
    destinations: BTreeMap<IpAddr, u64>,
}

/// Groups flows (and the resets that overflowed the flow table) by the address that sent the
/// RSTs, largest first.
fn rank_sources<'a>(
    flows: impl Iterator<Item = (&'a FlowKey, u64)>,
    overflow_sources: impl Iterator<Item = (&'a SourceKey, u64)>,
    elapsed: Duration,
) -> Vec<SourceRecord> {
    let mut tallies: BTreeMap<IpAddr, SourceTally> = BTreeMap::new();
    let mut all = 0u64;
    for (key, resets) in flows {
        all += resets;
        let tally = tallies.entry(key.src_ip()).or_default();
        tally.resets += resets;
        tally.flows += 1;
        *tally.ports.entry(key.sport).or_default() += resets;
        *tally.destinations.entry(key.dst_ip()).or_default() += resets;
    }
    for (key, resets) in overflow_sources {
        all += resets;
        let tally = tallies.entry(key.src_ip()).or_default();
        tally.resets += resets;
        tally.overflow += resets;
    }
    let mut sources: Vec<SourceRecord> = tallies
        .into_iter()
        .map(|(src, tally)| SourceRecord {
            src,
            resets: tally.resets,
            rate: per_second(tally.resets, elapsed),
            share: if all > 0 { 100.0 * tally.resets as f64 / all as f64 } else { 0.0 },
            flows: tally.flows,
            overflow: tally.overflow,
            ports: top_n(tally.ports, ROW_DETAIL).into_iter().map(|(port, resets)| PortCount { port, resets }).collect(),
            destinations: top_n(tally.destinations, ROW_DETAIL)
                .into_iter()
                .map(|(dst, resets)| DestinationCount { dst, resets })
                .collect(),
        })
        .collect();
    sources.sort_by(|a, b| b.resets.cmp(&a.resets).then_with(|| a.src.cmp(&b.src)));
    sources
}

fn top_n<K: Ord + Copy>(counts: BTreeMap<K, u64>, n: usize) -> Vec<(K, u64)> {
    let mut counts: Vec<(K, u64)> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts.truncate(n);
    counts
}

/// Writes records in the chosen format. Errors are the output's (a closed pipe, a full disk).
pub struct Printer<W: Write> {
    out: W,
    format: Format,
    top: usize,
}

impl<W: Write> Printer<W> {
    pub fn new(out: W, format: Format, top: usize) -> Self {
        Self { out, format, top }
    }

    pub fn interval(&mut self, record: &IntervalRecord) -> io::Result<()> {
        match self.format {
            Format::Json => self.json_line(record),
            Format::Table => {
                let clock = record.time.get(11..19).unwrap_or(&record.time);
                let t = &record.totals;
                write!(
                    self.out,
                    "── {clock}  {:.2}s  RSTs {} ({:.1}/s)  flows {}  frames {}  tcp {}",
                    record.elapsed_ms / 1e3,
                    t.resets,
                    record.rate,
                    record.flows_seen,
                    t.frames,
                    t.tcp
                )?;
                if t.malformed > 0 || t.fragments > 0 {
                    write!(self.out, "  malformed {}  fragments {}", t.malformed, t.fragments)?;
                }
                writeln!(self.out)?;
                self.overflow_warning(t)?;
                if t.resets == 0 {
                    writeln!(self.out, "   no resets")?;
                } else {
                    self.sources_table(&record.sources)?;
                    self.flows_table(&record.flows, "TOP FLOWS")?;
                }
                self.out.flush()
            }
        }
    }

    pub fn summary(&mut self, record: &SummaryRecord) -> io::Result<()> {
        match self.format {
            Format::Json => self.json_line(record),
            Format::Table => {
                let t = &record.totals;
                let mut ifaces: Vec<String> =
                    record.interfaces.iter().map(|i| format!("{} ({})", i.iface, i.mode)).collect();
                if ifaces.is_empty() {
                    ifaces.push("no interface".into());
                }
                writeln!(self.out)?;
                writeln!(
                    self.out,
                    "══ SUMMARY  {:.1}s on {}  RSTs {} ({:.1}/s)  flows {}  frames {}  tcp {}  malformed {}  fragments {}",
                    record.duration_ms / 1e3,
                    ifaces.join(", "),
                    t.resets,
                    per_second(t.resets, Duration::from_secs_f64(record.duration_ms / 1e3)),
                    record.flows.len(),
                    t.frames,
                    t.tcp,
                    t.malformed,
                    t.fragments
                )?;
                self.overflow_warning(t)?;
                if t.resets == 0 {
                    writeln!(self.out, "   no resets seen")?;
                } else {
                    let sources: Vec<SourceRecord> = record.sources.iter().take(self.top).cloned().collect();
                    self.sources_table(&sources)?;
                    let flows: Vec<FlowRecord> = record.flows.iter().take(self.top).cloned().collect();
                    self.flows_table(&flows, "TOP FLOWS (whole run)")?;
                    if record.unlisted.resets > 0 {
                        writeln!(
                            self.out,
                            "   {} RSTs belong to flows beyond --summary-flows: counted for their sources, not listed",
                            record.unlisted.resets
                        )?;
                    }
                    if record.flows.len() > self.top {
                        writeln!(self.out, "   … {} more flows (--format json lists every flow)", record.flows.len() - self.top)?;
                    }
                }
                self.out.flush()
            }
        }
    }

    fn json_line(&mut self, record: &impl Serialize) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, record)?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }

    fn overflow_warning(&mut self, totals: &Totals) -> io::Result<()> {
        if totals.overflow > 0 {
            writeln!(
                self.out,
                "   WARNING: flow table full: {} RSTs are in the totals and their sources but in no flow (raise --max-flows)",
                totals.overflow
            )?;
        }
        if totals.source_overflow > 0 {
            writeln!(
                self.out,
                "   WARNING: source table full too: {} RSTs are in the totals only",
                totals.source_overflow
            )?;
        }
        Ok(())
    }

    fn sources_table(&mut self, sources: &[SourceRecord]) -> io::Result<()> {
        let width = sources.iter().map(|s| s.src.to_string().len()).max().unwrap_or(0).max(15);
        writeln!(
            self.out,
            "   {:<width$} {:>9} {:>9} {:>6}  {:<17} MAIN DESTINATIONS",
            "RESETTER", "RSTS", "RSTS/s", "SHARE", "FROM PORT"
        )?;
        for source in sources {
            let mut ports: Vec<String> = source.ports.iter().map(|p| p.port.to_string()).collect();
            if source.flows as usize > ROW_DETAIL && ports.len() == ROW_DETAIL {
                ports.push("…".into());
            }
            let destinations: Vec<String> =
                source.destinations.iter().map(|d| format!("{} ({})", d.dst, d.resets)).collect();
            writeln!(
                self.out,
                "   {:<width$} {:>9} {:>9.1} {:>5.0}%  {:<17} {}",
                source.src.to_string(),
                source.resets,
                source.rate,
                source.share,
                ports.join(","),
                destinations.join(", ")
            )?;
        }
        Ok(())
    }

    fn flows_table(&mut self, flows: &[FlowRecord], title: &str) -> io::Result<()> {
        let rows: Vec<(String, String, &FlowRecord)> =
            flows.iter().map(|f| (endpoint(f.src, f.sport), endpoint(f.dst, f.dport), f)).collect();
        let iface_width = flows.iter().map(|f| f.iface.len()).max().unwrap_or(0).max(5);
        let src_width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let dst_width = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
        writeln!(self.out, "   {title}")?;
        for (src, dst, flow) in &rows {
            writeln!(
                self.out,
                "   {:<iface_width$}  {:>src_width$} → {:<dst_width$} {:>9}",
                flow.iface, src, dst, flow.resets
            )?;
        }
        Ok(())
    }
}

fn endpoint(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}
