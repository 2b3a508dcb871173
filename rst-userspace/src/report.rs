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
    wire::{ResetClass, ResetKind, ServiceKey, ServiceValue, SourceKey, StackResetKey, DIRECTION_TX, FAMILY_IPV4},
    Counters, FlowKey,
};
use serde::Serialize;

use crate::collector::Sample;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// What the table ranks. The JSON summary always holds every view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum View {
    /// Resetters: the addresses that send RSTs.
    #[default]
    Src,
    /// The addresses RSTs are sent to.
    Dst,
    /// Server address and port: attempts, accepted handshakes, resets, refusals.
    Service,
    /// Single flows.
    Flow,
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
    /// SYNs and SYN+ACKs whose service found no room in the service table: in no service.
    pub service_overflow: u64,
    /// Kernel reset events that found no room in their table: in no flow's `reasons`.
    pub stack_overflow: u64,
    /// The part of `frames`, `tcp` and `resets` this host sent (TC egress); the rest it received.
    pub tx: DirectionTotals,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct DirectionTotals {
    pub frames: u64,
    pub tcp: u64,
    pub resets: u64,
}

impl From<&Counters> for Totals {
    fn from(counters: &Counters) -> Self {
        let Counters {
            frames,
            tcp,
            resets,
            malformed,
            fragments,
            overflow,
            source_overflow,
            service_overflow,
            stack_overflow,
            tx_frames,
            tx_tcp,
            tx_resets,
        } = *counters;
        Totals {
            frames,
            tcp,
            resets,
            malformed,
            fragments,
            overflow,
            source_overflow,
            service_overflow,
            stack_overflow,
            tx: DirectionTotals { frames: tx_frames, tcp: tx_tcp, resets: tx_resets },
        }
    }
}

/// RSTs by [`ResetKind`].
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Kinds {
    pub refused: u64,
    pub handshake: u64,
    pub established: u64,
    pub closing: u64,
}

impl Kinds {
    /// The kind most of the resets were ("" for none); ties go to the earlier in the
    /// handshake.
    pub fn dominant(&self) -> &'static str {
        let Kinds { refused, handshake, established, closing } = *self;
        let mut best = ("", 0);
        for (name, count) in
            [("refused", refused), ("handshake", handshake), ("established", established), ("closing", closing)]
        {
            if count > best.1 {
                best = (name, count);
            }
        }
        best.0
    }

    fn add(&mut self, kind: ResetKind, resets: u64) {
        *match kind {
            ResetKind::Refused => &mut self.refused,
            ResetKind::Handshake => &mut self.handshake,
            ResetKind::Established => &mut self.established,
            ResetKind::Closing => &mut self.closing,
        } += resets;
    }

    fn merge(&mut self, other: &Kinds) {
        for kind in ResetKind::ALL {
            self.add(kind, other.get(kind));
        }
    }

    pub fn get(&self, kind: ResetKind) -> u64 {
        match kind {
            ResetKind::Refused => self.refused,
            ResetKind::Handshake => self.handshake,
            ResetKind::Established => self.established,
            ResetKind::Closing => self.closing,
        }
    }
}

/// RSTs that claim to come from a peer but arrived with another TTL than its handshake.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Middlebox {
    pub rst_ttl: u8,
    pub peer_ttl: u8,
    pub resets: u64,
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
    /// "rx": the interface received these RSTs; "tx": this host sent them.
    pub direction: &'static str,
    pub kinds: Kinds,
    /// RSTs with ACK set.
    pub with_ack: u64,
    /// The role of the RSTs' sender in the connection: "client" (sent the SYN) or "server".
    pub side: &'static str,
    /// The side comes from a SYN / SYN+ACK seen, not from the ports.
    pub side_observed: bool,
    /// This flow's RST came first in its connection.
    pub first: bool,
    pub middlebox: Option<Middlebox>,
    /// The kernel's reasons for the RSTs this host's stack sent (tx flows).
    pub reasons: BTreeMap<String, u64>,
    /// tx RSTs with no kernel event: made by something else on the host (netfilter, a proxy).
    /// Null when kernel events are unavailable, and for rx flows.
    pub no_kernel_event: Option<u64>,
}

/// A server address and port, on one interface.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceRecord {
    pub iface: String,
    pub ifindex: u32,
    pub addr: IpAddr,
    pub port: u16,
    /// SYNs without ACK.
    pub attempts: u64,
    /// SYN+ACKs: handshakes the server accepted.
    pub synacks: u64,
    /// RSTs on its connections, from either side.
    pub resets: u64,
    /// Of those, RSTs that refused a connection attempt.
    pub refused: u64,
    /// Percent of attempts refused (0 without attempts).
    pub refused_share: f64,
    pub kinds: Kinds,
}

/// An address RSTs were sent to.
#[derive(Debug, Clone, Serialize)]
pub struct DestinationRecord {
    pub dst: IpAddr,
    pub resets: u64,
    pub share: f64,
    pub flows: u64,
    /// The addresses that sent it most RSTs.
    pub senders: Vec<SenderCount>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SenderCount {
    pub src: IpAddr,
    pub resets: u64,
}

/// Kernel reset events (tracepoint `tcp:tcp_send_reset`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct KernelEvents {
    pub available: bool,
    /// Why not, when unavailable.
    pub reason: Option<String>,
    /// Events joined to a tx flow on a watched interface.
    pub matched: u64,
    /// Events for resets that left through no watched interface (other namespaces, other
    /// interfaces).
    pub elsewhere: u64,
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
    /// RSTs it appears to send whose TTL differs from its handshake's: injected in between.
    pub middlebox: u64,
    pub kinds: Kinds,
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
    /// This interval's services (top N): attempts, SYN+ACKs and resets.
    pub services: Vec<ServiceRecord>,
    /// This interval's reset targets (top N).
    pub destinations: Vec<DestinationRecord>,
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
    /// How the kernel side counted: `"per-cpu"` or `"atomic"` (see `--counting`); null offline.
    pub counting: Option<&'static str>,
    pub totals: Totals,
    pub overflowed: bool,
    /// `flows` lists every flow of the run unless this is non-zero.
    pub unlisted: Unlisted,
    pub sources: Vec<SourceRecord>,
    pub flows: Vec<FlowRecord>,
    pub destinations: Vec<DestinationRecord>,
    pub services: Vec<ServiceRecord>,
    pub kernel_events: KernelEvents,
    /// The answers to "is it a lot, from whom, who resets first, why", in words.
    pub diagnosis: Vec<String>,
}

/// What the kernel's entries of one flow (one per classification) add up to.
#[derive(Debug, Clone, Default)]
struct FlowStats {
    resets: u64,
    kinds: Kinds,
    with_ack: u64,
    /// RSTs whose sender is the connection's server.
    from_server: u64,
    side_observed: bool,
    first: bool,
    middlebox: Option<Middlebox>,
    reasons: BTreeMap<u32, u64>,
}

impl FlowStats {
    fn add(&mut self, key: &FlowKey, resets: u64) {
        let class = ResetClass(key.class);
        self.resets += resets;
        self.kinds.add(class.kind(), resets);
        if class.ack() {
            self.with_ack += resets;
        }
        if class.server() {
            self.from_server += resets;
        }
        self.side_observed |= class.side_observed();
        self.first |= class.first();
        if key.peer_ttl != 0 && key.peer_ttl != key.rst_ttl {
            self.add_middlebox(Middlebox { rst_ttl: key.rst_ttl, peer_ttl: key.peer_ttl, resets });
        }
    }

    fn merge(&mut self, other: &FlowStats) {
        self.resets += other.resets;
        self.kinds.merge(&other.kinds);
        self.with_ack += other.with_ack;
        self.from_server += other.from_server;
        self.side_observed |= other.side_observed;
        self.first |= other.first;
        if let Some(theirs) = other.middlebox {
            self.add_middlebox(theirs);
        }
        for (reason, count) in &other.reasons {
            *self.reasons.entry(*reason).or_default() += count;
        }
    }

    /// Counts every suspect RST; the TTL pair shown is the lowest of those seen (stable
    /// whatever order entries arrive in).
    fn add_middlebox(&mut self, seen: Middlebox) {
        match &mut self.middlebox {
            Some(ours) => {
                ours.resets += seen.resets;
                if (seen.rst_ttl, seen.peer_ttl) < (ours.rst_ttl, ours.peer_ttl) {
                    ours.rst_ttl = seen.rst_ttl;
                    ours.peer_ttl = seen.peer_ttl;
                }
            }
            None => self.middlebox = Some(seen),
        }
    }

    fn server_side(&self) -> bool {
        self.from_server * 2 >= self.resets && self.from_server > 0
    }
}

/// A tx flow's 4-tuple as the tracepoint reports it: what kernel events are joined by.
type FourTuple = ([u8; 16], [u8; 16], u16, u16, u8);

fn four_tuple_of_flow(key: &FlowKey) -> FourTuple {
    (key.src, key.dst, key.sport, key.dport, key.family)
}

fn four_tuple_of_event(key: &StackResetKey) -> FourTuple {
    (key.src, key.dst, key.sport, key.dport, key.family)
}

/// Accumulates samples over the run.
pub struct Aggregator {
    interfaces: Vec<InterfaceRecord>,
    names: HashMap<u32, String>,
    top: usize,
    intervals: u64,
    elapsed: Duration,
    totals: Counters,
    /// Keyed by [`FlowKey::flow_id`].
    flows: HashMap<FlowKey, FlowStats>,
    /// The last interval's flows (kept for its capacity).
    interval_flows: HashMap<FlowKey, FlowStats>,
    /// tx flows of the run by 4-tuple, for kernel events that arrive an interval late.
    tx_flows: HashMap<FourTuple, FlowKey>,
    /// Kernel events not matched in their interval: tried once more in the next.
    pending_events: Vec<(StackResetKey, u64)>,
    services: HashMap<ServiceKey, ServiceValue>,
    overflow_sources: HashMap<SourceKey, u64>,
    flow_limit: usize,
    unlisted: Unlisted,
    kernel_events: KernelEvents,
    reason_names: Vec<String>,
    counting: Option<&'static str>,
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
            interval_flows: HashMap::new(),
            tx_flows: HashMap::new(),
            pending_events: Vec::new(),
            services: HashMap::new(),
            overflow_sources: HashMap::new(),
            flow_limit: DEFAULT_SUMMARY_FLOWS as usize,
            unlisted: Unlisted::default(),
            kernel_events: KernelEvents {
                available: false,
                reason: Some("not watching a live host".into()),
                matched: 0,
                elsewhere: 0,
            },
            reason_names: Vec::new(),
            counting: None,
        }
    }

    /// Whether kernel reset events are coming (and why not), and the names of the kernel's
    /// reason codes, index = code.
    pub fn kernel_events(&mut self, available: Result<(), String>, reason_names: Vec<String>) {
        self.kernel_events.available = available.is_ok();
        self.kernel_events.reason = available.err();
        self.reason_names = reason_names;
    }

    /// How the kernel side counts (see [`crate::loader::CountingMode`]), for the summary.
    pub fn counting(&mut self, mode: &'static str) {
        self.counting = Some(mode);
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
        // Reused across intervals: a map of tens of thousands of flows allocated afresh every
        // interval leaves the allocator's heap higher each time.
        let mut interval = std::mem::take(&mut self.interval_flows);
        interval.clear();
        for (key, resets) in &sample.flows {
            interval.entry(key.flow_id()).or_default().add(key, *resets);
        }
        self.join_kernel_events(&mut interval, &sample.stack_resets);
        for (id, stats) in &interval {
            if let Some(run) = self.flows.get_mut(id) {
                run.merge(stats);
            } else if self.flows.len() < self.flow_limit {
                self.flows.insert(*id, stats.clone());
                if id.direction == DIRECTION_TX {
                    self.tx_flows.insert(four_tuple_of_flow(id), *id);
                }
            } else {
                // Still the sender's: counted for its source, like a flow-table overflow.
                self.unlisted.resets += stats.resets;
                self.unlisted.flow_records += 1;
                *self.overflow_sources.entry(SourceKey::of(id)).or_default() += stats.resets;
            }
        }
        for (key, resets) in &sample.overflow_sources {
            *self.overflow_sources.entry(*key).or_default() += resets;
        }
        for (key, value) in &sample.services {
            let run = self.services.entry(*key).or_default();
            run.attempts += value.attempts;
            run.synacks += value.synacks;
        }
        let totals = Totals::from(&sample.counters);
        let mut sources = rank_sources(interval.iter(), sample.overflow_sources.iter().map(|(k, r)| (k, *r)), elapsed);
        sources.truncate(self.top);
        let flows = self.flow_records(interval.iter(), self.top);
        let mut services = self.service_records(sample.services.iter().map(|(k, v)| (k, v)), interval.iter());
        services.truncate(self.top);
        let mut destinations = rank_destinations(interval.iter());
        destinations.truncate(self.top);
        let record = IntervalRecord {
            kind: "interval",
            seq: self.intervals,
            time: humantime::format_rfc3339_millis(ended).to_string(),
            elapsed_ms: elapsed.as_secs_f64() * 1e3,
            rate: per_second(totals.resets, elapsed),
            totals,
            flows_seen: interval.len(),
            flow_resets: sample.flows.iter().map(|(_, resets)| resets).sum(),
            overflowed: sample.counters.overflow > 0,
            sources,
            flows,
            services,
            destinations,
        };
        self.interval_flows = interval;
        record
    }

    /// Charges kernel reset events to the tx flows they explain: this interval's first, then the
    /// run's (the event and the segment can fall on either side of an epoch flip). An event
    /// that matches nothing gets one more interval.
    fn join_kernel_events(&mut self, interval: &mut HashMap<FlowKey, FlowStats>, events: &[(StackResetKey, u64)]) {
        if events.is_empty() && self.pending_events.is_empty() {
            return;
        }
        let interval_tx: HashMap<FourTuple, FlowKey> =
            interval.keys().filter(|id| id.direction == DIRECTION_TX).map(|id| (four_tuple_of_flow(id), *id)).collect();
        let pending = std::mem::take(&mut self.pending_events);
        let tries = pending.iter().map(|event| (event, true)).chain(events.iter().map(|event| (event, false)));
        for ((event, count), retried) in tries {
            let tuple = four_tuple_of_event(event);
            let stats = match interval_tx.get(&tuple) {
                Some(id) => interval.get_mut(id),
                None => self.tx_flows.get(&tuple).and_then(|id| self.flows.get_mut(id)),
            };
            match stats {
                Some(stats) => {
                    *stats.reasons.entry(event.reason).or_default() += count;
                    self.kernel_events.matched += count;
                }
                None if retried => self.kernel_events.elsewhere += count,
                None => self.pending_events.push((*event, *count)),
            }
        }
    }

    /// The whole run: every flow, every source, cumulative.
    pub fn summary(&self) -> SummaryRecord {
        let mut kernel_events = self.kernel_events.clone();
        // What is still pending has had its chance: the run is over.
        kernel_events.elsewhere += self.pending_events.iter().map(|(_, count)| count).sum::<u64>();
        let flows = self.flow_records(self.flows.iter(), usize::MAX);
        let sources = rank_sources(self.flows.iter(), self.overflow_sources.iter().map(|(k, r)| (k, *r)), self.elapsed);
        let destinations = rank_destinations(self.flows.iter());
        let services = self.service_records(self.services.iter(), self.flows.iter());
        let diagnosis = diagnose(&self.totals, &sources, &services, &flows, &kernel_events);
        SummaryRecord {
            kind: "summary",
            duration_ms: self.elapsed.as_secs_f64() * 1e3,
            intervals: self.intervals,
            interfaces: self.interfaces.clone(),
            counting: self.counting,
            totals: Totals::from(&self.totals),
            overflowed: self.totals.overflow > 0,
            unlisted: self.unlisted,
            sources,
            flows,
            destinations,
            services,
            kernel_events,
            diagnosis,
        }
    }

    /// The run's services so far, the top N by resets (then attempts): what `--metrics` exports.
    pub fn top_services(&self) -> Vec<ServiceRecord> {
        let mut services = self.service_records(self.services.iter(), self.flows.iter());
        services.truncate(self.top);
        services
    }

    fn iface_name(&self, ifindex: u32) -> String {
        self.names.get(&ifindex).cloned().unwrap_or_else(|| format!("if{ifindex}"))
    }

    fn reason_name(&self, code: u32) -> String {
        self.reason_names.get(code as usize).cloned().unwrap_or_else(|| format!("REASON_{code}"))
    }

    /// The `limit` largest flows as records, largest first; ties in a stable, readable order.
    fn flow_records<'a>(
        &self,
        flows: impl Iterator<Item = (&'a FlowKey, &'a FlowStats)>,
        limit: usize,
    ) -> Vec<FlowRecord> {
        let mut ranked: Vec<(&FlowKey, &FlowStats)> = flows.collect();
        ranked.sort_by(|(ka, a), (kb, b)| b.resets.cmp(&a.resets).then_with(|| ka.cmp(kb)));
        ranked.truncate(limit);
        ranked
            .into_iter()
            .map(|(key, stats)| {
                let tx = key.direction == DIRECTION_TX;
                let explained: u64 = stats.reasons.values().sum();
                FlowRecord {
                    iface: self.iface_name(key.ifindex),
                    ifindex: key.ifindex,
                    family: if key.family == FAMILY_IPV4 { "ipv4" } else { "ipv6" },
                    src: key.src_ip(),
                    sport: key.sport,
                    dst: key.dst_ip(),
                    dport: key.dport,
                    resets: stats.resets,
                    direction: if tx { "tx" } else { "rx" },
                    kinds: stats.kinds,
                    with_ack: stats.with_ack,
                    side: if stats.server_side() { "server" } else { "client" },
                    side_observed: stats.side_observed,
                    first: stats.first,
                    middlebox: stats.middlebox,
                    reasons: stats.reasons.iter().map(|(code, count)| (self.reason_name(*code), *count)).collect(),
                    no_kernel_event: (tx && self.kernel_events.available)
                        .then(|| stats.resets.saturating_sub(explained)),
                }
            })
            .collect()
    }

    /// Services from the handshakes counted in the kernel, with the resets of their flows: a
    /// flow's RSTs from the server side belong to its source's service, the others to its
    /// destination's.
    fn service_records<'a>(
        &self,
        handshakes: impl Iterator<Item = (&'a ServiceKey, &'a ServiceValue)>,
        flows: impl Iterator<Item = (&'a FlowKey, &'a FlowStats)>,
    ) -> Vec<ServiceRecord> {
        #[derive(Default)]
        struct Tally {
            handshakes: ServiceValue,
            resets: u64,
            kinds: Kinds,
        }
        let mut tallies: BTreeMap<ServiceKey, Tally> = BTreeMap::new();
        for (key, value) in handshakes {
            tallies.entry(*key).or_default().handshakes = *value;
        }
        for (key, stats) in flows {
            let from_client = stats.resets - stats.from_server;
            if stats.from_server > 0 {
                let tally = tallies.entry(ServiceKey::new(key.src, key.sport, key)).or_default();
                tally.resets += stats.from_server;
                // Refusals always come from the server side.
                tally.kinds.refused += stats.kinds.refused;
            }
            if from_client > 0 {
                let tally = tallies.entry(ServiceKey::new(key.dst, key.dport, key)).or_default();
                tally.resets += from_client;
            }
            // Kinds other than refused are charged to the side that sent most.
            let service = if stats.server_side() {
                ServiceKey::new(key.src, key.sport, key)
            } else {
                ServiceKey::new(key.dst, key.dport, key)
            };
            let tally = tallies.entry(service).or_default();
            tally.kinds.handshake += stats.kinds.handshake;
            tally.kinds.established += stats.kinds.established;
            tally.kinds.closing += stats.kinds.closing;
        }
        let mut records: Vec<ServiceRecord> = tallies
            .into_iter()
            .map(|(key, tally)| ServiceRecord {
                iface: self.iface_name(key.ifindex),
                ifindex: key.ifindex,
                addr: key.ip(),
                port: key.port,
                attempts: tally.handshakes.attempts,
                synacks: tally.handshakes.synacks,
                resets: tally.resets,
                refused: tally.kinds.refused,
                refused_share: percent(tally.kinds.refused, tally.handshakes.attempts),
                kinds: tally.kinds,
            })
            .collect();
        records.sort_by(|a, b| {
            b.resets
                .cmp(&a.resets)
                .then_with(|| b.attempts.cmp(&a.attempts))
                .then_with(|| (a.addr, a.port).cmp(&(b.addr, b.port)))
        });
        records
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole > 0 {
        (100.0 * part as f64 / whole as f64).min(100.0)
    } else {
        0.0
    }
}

fn rank_destinations<'a>(flows: impl Iterator<Item = (&'a FlowKey, &'a FlowStats)>) -> Vec<DestinationRecord> {
    #[derive(Default)]
    struct Tally {
        resets: u64,
        flows: u64,
        senders: BTreeMap<IpAddr, u64>,
    }
    let mut tallies: BTreeMap<IpAddr, Tally> = BTreeMap::new();
    let mut all = 0;
    for (key, stats) in flows {
        all += stats.resets;
        let tally = tallies.entry(key.dst_ip()).or_default();
        tally.resets += stats.resets;
        tally.flows += 1;
        *tally.senders.entry(key.src_ip()).or_default() += stats.resets;
    }
    let mut records: Vec<DestinationRecord> = tallies
        .into_iter()
        .map(|(dst, tally)| DestinationRecord {
            dst,
            resets: tally.resets,
            share: percent(tally.resets, all),
            flows: tally.flows,
            senders: top_n(tally.senders, ROW_DETAIL)
                .into_iter()
                .map(|(src, resets)| SenderCount { src, resets })
                .collect(),
        })
        .collect();
    records.sort_by(|a, b| b.resets.cmp(&a.resets).then_with(|| a.dst.cmp(&b.dst)));
    records
}

/// The forum's questions, answered in sentences from the summary's own numbers.
fn diagnose(
    totals: &Counters,
    sources: &[SourceRecord],
    services: &[ServiceRecord],
    flows: &[FlowRecord],
    kernel_events: &KernelEvents,
) -> Vec<String> {
    let mut lines = Vec::new();
    if totals.resets == 0 {
        return lines;
    }
    if let Some(service) = services
        .iter()
        .filter(|s| s.attempts > 0 && s.refused > 0)
        .max_by(|a, b| a.refused_share.total_cmp(&b.refused_share).then_with(|| a.refused.cmp(&b.refused)))
    {
        lines.push(format!(
            "{:.0}% of connection attempts to {} were refused ({} of {})",
            service.refused_share,
            endpoint(service.addr, service.port),
            service.refused,
            service.attempts
        ));
    }
    // Accepted, then reset: a balancer or server shedding load after the handshake.
    if let Some(service) = services
        .iter()
        .filter(|s| s.synacks > 0 && s.resets > s.refused)
        .max_by(|a, b| (a.resets - a.refused).cmp(&(b.resets - b.refused)))
    {
        let reset = service.resets - service.refused;
        let (kind, _) = ResetKind::ALL
            .iter()
            .filter(|kind| **kind != ResetKind::Refused)
            .map(|kind| (kind.name(), service.kinds.get(*kind)))
            .max_by_key(|(_, count)| *count)
            .unwrap_or(("established", 0));
        lines.push(format!(
            "{:.0}% of accepted connections to {} were reset, mostly {kind} ({reset} resets, {} SYN+ACKs)",
            percent(reset, service.synacks),
            endpoint(service.addr, service.port),
            service.synacks
        ));
    }
    if let Some(top) = sources.first() {
        lines.push(format!("{:.0}% of resets come from {} ({} of {})", top.share, top.src, top.resets, totals.resets));
    }
    let firsts: Vec<&FlowRecord> = flows.iter().filter(|f| f.first).collect();
    if !firsts.is_empty() {
        let server = firsts.iter().filter(|f| f.side == "server").count();
        let (side, count) =
            if server * 2 >= firsts.len() { ("server", server) } else { ("client", firsts.len() - server) };
        let observed = firsts.iter().filter(|f| f.side_observed).count();
        lines.push(format!(
            "the {side} side resets first in {count} of {} connections{}",
            firsts.len(),
            if observed == firsts.len() {
                String::new()
            } else {
                format!(" ({} inferred from ports)", firsts.len() - observed)
            }
        ));
    }
    let mut injected: BTreeMap<IpAddr, (u64, u8, u8)> = BTreeMap::new();
    for flow in flows {
        if let Some(middlebox) = &flow.middlebox {
            let entry = injected.entry(flow.src).or_insert((0, middlebox.rst_ttl, middlebox.peer_ttl));
            entry.0 += middlebox.resets;
        }
    }
    for (src, (resets, rst_ttl, peer_ttl)) in &injected {
        lines.push(format!(
            "TTL says a middlebox sent {resets} resets claiming to be {src} (TTL {rst_ttl}; {src}'s handshake had {peer_ttl})"
        ));
    }
    let mut reasons: BTreeMap<&str, u64> = BTreeMap::new();
    let mut unexplained = 0;
    for flow in flows {
        for (reason, count) in &flow.reasons {
            *reasons.entry(reason.as_str()).or_default() += count;
        }
        unexplained += flow.no_kernel_event.unwrap_or(0);
    }
    if !reasons.is_empty() {
        let mut by_count: Vec<(&str, u64)> = reasons.into_iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let listed: Vec<String> = by_count.iter().map(|(reason, count)| format!("{reason} {count}")).collect();
        lines.push(format!("this host's TCP stack sent resets because: {}", listed.join(", ")));
    }
    if unexplained > 0 {
        lines.push(format!(
            "{unexplained} resets left this host with no TCP stack event: made by something else here (netfilter REJECT, a proxy) or forwarded through it"
        ));
    }
    if !kernel_events.available {
        if let Some(why) = &kernel_events.reason {
            if flows.iter().any(|f| f.direction == "tx") {
                lines.push(format!("no kernel reasons: {why}"));
            }
        }
    }
    lines
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
    middlebox: u64,
    kinds: Kinds,
    ports: BTreeMap<u16, u64>,
    destinations: BTreeMap<IpAddr, u64>,
}

/// Groups flows (and the resets that overflowed the flow table) by the address that sent the
/// RSTs, largest first.
fn rank_sources<'a>(
    flows: impl Iterator<Item = (&'a FlowKey, &'a FlowStats)>,
    overflow_sources: impl Iterator<Item = (&'a SourceKey, u64)>,
    elapsed: Duration,
) -> Vec<SourceRecord> {
    let mut tallies: BTreeMap<IpAddr, SourceTally> = BTreeMap::new();
    let mut all = 0u64;
    for (key, stats) in flows {
        let resets = stats.resets;
        all += resets;
        let tally = tallies.entry(key.src_ip()).or_default();
        tally.resets += resets;
        tally.flows += 1;
        tally.middlebox += stats.middlebox.map_or(0, |m| m.resets);
        tally.kinds.merge(&stats.kinds);
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
            ports: top_n(tally.ports, ROW_DETAIL)
                .into_iter()
                .map(|(port, resets)| PortCount { port, resets })
                .collect(),
            destinations: top_n(tally.destinations, ROW_DETAIL)
                .into_iter()
                .map(|(dst, resets)| DestinationCount { dst, resets })
                .collect(),
            middlebox: tally.middlebox,
            kinds: tally.kinds,
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
    by: View,
}

impl<W: Write> Printer<W> {
    pub fn new(out: W, format: Format, top: usize) -> Self {
        Self { out, format, top, by: View::Src }
    }

    /// What the summary table ranks first.
    pub fn by(mut self, view: View) -> Self {
        self.by = view;
        self
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
                    match self.by {
                        View::Src => self.sources_table(&record.sources)?,
                        View::Dst => self.destinations_table(&record.destinations)?,
                        View::Service => self.services_table(&record.services)?,
                        View::Flow => {}
                    }
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
                    for line in &record.diagnosis {
                        writeln!(self.out, "   » {line}")?;
                    }
                    match self.by {
                        View::Src => {
                            let sources: Vec<SourceRecord> = record.sources.iter().take(self.top).cloned().collect();
                            self.sources_table(&sources)?;
                        }
                        View::Dst => self.destinations_table(&record.destinations)?,
                        View::Service => self.services_table(&record.services)?,
                        View::Flow => {}
                    }
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
                        writeln!(
                            self.out,
                            "   … {} more flows (--format json lists every flow)",
                            record.flows.len() - self.top
                        )?;
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

    fn destinations_table(&mut self, destinations: &[DestinationRecord]) -> io::Result<()> {
        let width = destinations.iter().map(|d| d.dst.to_string().len()).max().unwrap_or(0).max(15);
        writeln!(self.out, "   {:<width$} {:>9} {:>6} {:>7}  MAIN SENDERS", "RESET TARGET", "RSTS", "SHARE", "FLOWS")?;
        for destination in destinations.iter().take(self.top) {
            let senders: Vec<String> =
                destination.senders.iter().map(|s| format!("{} ({})", s.src, s.resets)).collect();
            writeln!(
                self.out,
                "   {:<width$} {:>9} {:>5.0}% {:>7}  {}",
                destination.dst.to_string(),
                destination.resets,
                destination.share,
                destination.flows,
                senders.join(", ")
            )?;
        }
        Ok(())
    }

    fn services_table(&mut self, services: &[ServiceRecord]) -> io::Result<()> {
        let width = services.iter().map(|s| endpoint(s.addr, s.port).len()).max().unwrap_or(0).max(21);
        writeln!(
            self.out,
            "   {:<width$} {:>9} {:>8} {:>9} {:>8} {:>8}  RESETS BY KIND",
            "SERVICE", "ATTEMPTS", "SYN+ACK", "RSTS", "REFUSED", "REFUSED%"
        )?;
        for service in services.iter().take(self.top) {
            let kinds: Vec<String> = ResetKind::ALL
                .iter()
                .filter(|kind| service.kinds.get(**kind) > 0)
                .map(|kind| format!("{} {}", kind.name(), service.kinds.get(*kind)))
                .collect();
            writeln!(
                self.out,
                "   {:<width$} {:>9} {:>8} {:>9} {:>8} {:>7.0}%  {}",
                endpoint(service.addr, service.port),
                service.attempts,
                service.synacks,
                service.resets,
                service.refused,
                service.refused_share,
                kinds.join(", ")
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
            let kinds: Vec<&str> =
                ResetKind::ALL.iter().filter(|kind| flow.kinds.get(**kind) > 0).map(|kind| kind.name()).collect();
            let mut notes = format!("{} {} by the {}", flow.direction, kinds.join("+"), flow.side);
            if flow.first {
                notes.push_str(", first");
            }
            if let Some(middlebox) = &flow.middlebox {
                notes.push_str(&format!(", MIDDLEBOX? TTL {} vs {}", middlebox.rst_ttl, middlebox.peer_ttl));
            }
            if !flow.reasons.is_empty() {
                let reasons: Vec<&str> = flow.reasons.keys().map(String::as_str).collect();
                notes.push_str(&format!(", kernel: {}", reasons.join("+")));
            }
            if flow.no_kernel_event.unwrap_or(0) > 0 {
                notes.push_str(", not from the TCP stack");
            }
            writeln!(
                self.out,
                "   {:<iface_width$}  {:>src_width$} → {:<dst_width$} {:>9}  {notes}",
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
