//! Samples → the run's typed model ([`model`]): what the kernel's entries of each flow add up
//! to, over an interval and over the run, joined with the kernel's reasons; ranked in
//! [`rank`], explained in words in [`diagnosis`].

pub mod conversation;
pub mod diagnosis;
pub mod model;
pub mod payload;
pub mod rank;
pub mod tunnels;

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::{Duration, SystemTime},
};

use rst_common::{
    wire::{
        DownRun, FirewallResetKey, ResetClass, ServiceCounts, ServiceKey, ServiceValue, SourceKey, StackResetKey,
        WorkloadKey, DIRECTION_RX, DIRECTION_TX, ORIGIN_APPLICATION, ORIGIN_KERNEL,
    },
    Counters, FlowKey,
};

use self::model::{
    CountingMode, Direction, Family, Flow, Interface, Interval, KernelEvents, KindCounts, Middlebox, Origin, Pauses,
    Run, Service, ServiceTunnel, Side, Totals, Unlisted, Workload, WorkloadResets,
};
use crate::{
    availability::Availability,
    collect::Sample,
    model::{
        kernel_reason::ReasonNames,
        verdict::{rst_tuple, Evidence, FlowTimings, NetfilterHook, RstTuple, ServiceAddr, ServiceSample},
    },
};

/// Tens of thousands of flow keys per interval go through these maps: a fast,
/// non-cryptographic hasher, as in the collector.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// About 15 MiB of flow records at most.
pub const DEFAULT_SUMMARY_FLOWS: u32 = 65_536;

/// What the kernel's entries of one flow (one per classification) add up to.
#[derive(Debug, Clone, Default)]
pub struct FlowStats {
    pub resets: u64,
    pub kinds: KindCounts,
    pub with_ack: u64,
    /// RSTs whose sender is the connection's server.
    pub from_server: u64,
    pub side_observed: bool,
    pub first: bool,
    pub middlebox: Option<Middlebox>,
    /// Kernel reason code → events.
    pub reasons: BTreeMap<u32, u64>,
    pub owners: Owners,
    /// The last RST payload seen, escaped (see [`payload`]).
    pub rst_payload: Option<String>,
    /// Its resets by the pause before them, where measured.
    pub pauses: Pauses,
}

/// The sockets behind a flow's RSTs, from the workload events joined to it.
#[derive(Debug, Clone, Default)]
pub struct Owners {
    /// Cgroup id → RSTs (0: a socket without a cgroup, or no socket).
    pub cgroups: BTreeMap<u64, u64>,
    /// tx RSTs a socket sent.
    pub application: u64,
    /// tx RSTs the kernel sent for nobody.
    pub kernel: u64,
}

impl Owners {
    fn add(&mut self, event: &WorkloadKey, count: u64) {
        *self.cgroups.entry(event.cgroup).or_default() += count;
        match event.origin {
            ORIGIN_APPLICATION => self.application += count,
            ORIGIN_KERNEL => self.kernel += count,
            _ => {}
        }
    }

    fn merge(&mut self, other: &Owners) {
        let Owners { cgroups, application, kernel } = other;
        for (cgroup, count) in cgroups {
            *self.cgroups.entry(*cgroup).or_default() += count;
        }
        self.application += application;
        self.kernel += kernel;
    }

    /// The cgroup most of the flow's RSTs had (ties: the lower id).
    pub fn cgroup(&self) -> Option<u64> {
        let mut best: Option<(u64, u64)> = None;
        for (&cgroup, &count) in self.cgroups.iter().filter(|(cgroup, _)| **cgroup != 0) {
            if best.is_none_or(|(_, most)| count > most) {
                best = Some((cgroup, count));
            }
        }
        best.map(|(cgroup, _)| cgroup)
    }

    /// A socket sent any of them (the kernel's answers that follow an abort are its aftermath),
    /// else the kernel alone; `None` when this host's TCP stack sent none of them (forwarded,
    /// netfilter's REJECT, a raw socket).
    pub fn origin(&self) -> Option<Origin> {
        if self.application > 0 {
            Some(Origin::Application)
        } else if self.kernel > 0 {
            Some(Origin::Kernel)
        } else {
            None
        }
    }
}

impl FlowStats {
    /// `own_ttl`: the TTL the RST's claimed sender's own packets carry (its handshake's, or
    /// what the host showed elsewhere on the interface), if known.
    fn add(&mut self, key: &FlowKey, resets: u64, own_ttl: Option<u8>) {
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
        if let Some(peer_ttl) = own_ttl.filter(|&ttl| crate::model::verdict::forged(key.rst_ttl, ttl)) {
            self.add_middlebox(Middlebox { rst_ttl: key.rst_ttl, peer_ttl, resets });
        }
    }

    fn merge(&mut self, other: &FlowStats) {
        let FlowStats {
            resets,
            kinds,
            with_ack,
            from_server,
            side_observed,
            first,
            middlebox,
            reasons,
            owners,
            rst_payload,
            pauses,
        } = other;
        self.owners.merge(owners);
        self.pauses.merge(pauses);
        if rst_payload.is_some() {
            self.rst_payload.clone_from(rst_payload);
        }
        self.resets += resets;
        self.kinds.merge(kinds);
        self.with_ack += with_ack;
        self.from_server += from_server;
        self.side_observed |= side_observed;
        self.first |= first;
        if let Some(theirs) = middlebox {
            self.add_middlebox(*theirs);
        }
        for (reason, count) in reasons {
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

    /// Most of its RSTs came from the connection's server.
    pub fn server_side(&self) -> bool {
        self.from_server * 2 >= self.resets && self.from_server > 0
    }

    pub fn side(&self) -> Side {
        if self.server_side() {
            Side::Server
        } else {
            Side::Client
        }
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

/// A service's handshakes of one interval as the verdict evidence takes them; `origin_ms`: the
/// run's start on the tracker's clock.
fn service_sample(
    (key, value): &(ServiceKey, ServiceValue),
    origin_ms: u64,
    tunnels: &tunnels::KnownTunnels,
) -> ServiceSample {
    let ServiceCounts {
        attempts,
        synacks,
        accept_open_max,
        turnaway_open_min,
        turnaway_open_max,
        synack_ttl,
        down_turnaways: _,
    } = value.decoded();
    ServiceSample {
        service: ServiceAddr { addr: key.ip(), port: key.port, tunnel: tunnels.of_service(key.ifindex) },
        ifindex: key.ifindex,
        attempts,
        synacks,
        open_at_accept: accept_open_max,
        open_at_turnaway: turnaway_open_min.zip(turnaway_open_max),
        synack_ttl,
        down: value
            .down()
            .map(|DownRun { since_ms, turnaways }| DownRun { since_ms: since_ms.saturating_sub(origin_ms), turnaways }),
    }
}

/// One flow of the last interval: its counts then, and over the run (`None` for a flow the run
/// had no room for).
pub struct IntervalFlow<'a> {
    pub key: &'a FlowKey,
    pub interval: &'a FlowStats,
    pub run: Option<&'a FlowStats>,
}

/// The last interval's flow resets on one interface in one direction: what `--metrics` counts
/// (every flow, not only the top N).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceResets {
    pub iface: String,
    pub direction: Direction,
    pub kinds: KindCounts,
    /// RSTs whose TTL differs from the claimed sender's handshake.
    pub middlebox: u64,
}

/// Accumulates samples over the run.
pub struct Aggregator {
    interfaces: Vec<Interface>,
    names: HashMap<u32, String>,
    top: usize,
    intervals: u64,
    elapsed: Duration,
    totals: Counters,
    /// Keyed by [`FlowKey::flow_id`].
    flows: FastMap<FlowKey, FlowStats>,
    /// The last interval's flows (also kept for its capacity).
    interval_flows: FastMap<FlowKey, FlowStats>,
    /// The last interval's handshakes per service.
    interval_handshakes: Vec<(ServiceKey, ServiceValue)>,
    /// The last interval's resets that overflowed the flow table, by sender.
    interval_overflow: Vec<(IpAddr, u64)>,
    /// tx flows of the run by 4-tuple, for kernel events that arrive an interval late.
    tx_flows: FastMap<FourTuple, FlowKey>,
    /// Kernel events not matched in their interval: tried once more in the next.
    pending_events: Vec<(StackResetKey, u64)>,
    /// rx flows of the run by 4-tuple, for workload events.
    rx_flows: FastMap<FourTuple, FlowKey>,
    /// Workload events not matched in their interval: tried once more in the next.
    pending_workloads: Vec<(WorkloadKey, u64)>,
    /// Names cgroups; `None` when workloads are off or unavailable.
    resolver: Option<crate::model::workload::Resolver>,
    services: FastMap<ServiceKey, ServiceValue>,
    overflow_sources: FastMap<SourceKey, u64>,
    flow_limit: usize,
    unlisted: Unlisted,
    kernel_events: KernelEvents,
    reason_names: ReasonNames,
    counting: Option<CountingMode>,
    /// What the run showed about each service's causes ([`crate::model::verdict`]).
    evidence: Evidence,
    /// The last interval's handshakes as the evidence takes them (kept for its capacity).
    service_samples: Vec<ServiceSample>,
    /// The interval's pauses before resets, for the evidence (kept for its capacity).
    pauses: Vec<(RstTuple, u64)>,
    /// The interval's RSTs a kernel says answered data after their sender's close.
    late_data: Vec<RstTuple>,
    /// The run's start on the service tracker's clock, in ms (see [`Aggregator::tracker_origin`]).
    tracker_origin_ms: u64,
    /// The tunnels flows were counted inside, by number.
    tunnels: tunnels::KnownTunnels,
}

/// Services, client–service pairs and hosts the verdict evidence follows at most.
const MAX_EVIDENCE_ENTRIES: usize = rst_common::wire::DEFAULT_MAX_SERVICES as usize;

impl Aggregator {
    pub fn new(interfaces: Vec<Interface>, top: usize) -> Self {
        let names = interfaces.iter().map(|i| (i.ifindex, i.iface.clone())).collect();
        Self {
            interfaces,
            names,
            top,
            intervals: 0,
            elapsed: Duration::ZERO,
            totals: Counters::default(),
            flows: FastMap::default(),
            interval_flows: FastMap::default(),
            interval_handshakes: Vec::new(),
            interval_overflow: Vec::new(),
            tx_flows: FastMap::default(),
            pending_events: Vec::new(),
            rx_flows: FastMap::default(),
            pending_workloads: Vec::new(),
            resolver: None,
            services: FastMap::default(),
            overflow_sources: FastMap::default(),
            flow_limit: DEFAULT_SUMMARY_FLOWS as usize,
            unlisted: Unlisted::default(),
            kernel_events: KernelEvents {
                availability: Availability::Unavailable("not watching a live host".into()),
                matched: 0,
                elsewhere: 0,
            },
            reason_names: ReasonNames::default(),
            counting: None,
            evidence: Evidence::new(MAX_EVIDENCE_ENTRIES),
            service_samples: Vec::new(),
            pauses: Vec::new(),
            late_data: Vec::new(),
            tracker_origin_ms: 0,
            tunnels: tunnels::KnownTunnels::default(),
        }
    }

    /// When the run started on the clock the service tracker stamps its down runs with (the
    /// kernel's monotonic clock live, capture time in replay), so verdicts say when in the run.
    pub fn tracker_origin(&mut self, origin_ms: u64) {
        self.tracker_origin_ms = origin_ms;
    }

    /// Whether kernel reset events are coming, and this kernel's names of their reasons.
    pub fn kernel_events(&mut self, available: Availability, reason_names: ReasonNames) {
        self.kernel_events.availability = available;
        self.reason_names = reason_names;
    }

    /// Names the workloads of the run's resets with `resolver` (live runs with workloads on).
    pub fn workloads(&mut self, resolver: crate::model::workload::Resolver) {
        self.resolver = Some(resolver);
    }

    /// How the kernel side counts, for the summary.
    pub fn counting(&mut self, mode: CountingMode) {
        self.counting = Some(mode);
    }

    /// Keeps at most `limit` flows for the summary; see `ReportOptions::summary_flows`.
    pub fn limit_flows(mut self, limit: u32) -> Self {
        self.flow_limit = limit as usize;
        self
    }

    /// Makes an interface known after the start (replay meets pcapng interfaces as it reads; a
    /// live interface may come back under a new ifindex).
    /// The tunnels the kernel (or replay) numbered: flows inside them are reported with the
    /// tunnel, on its underlay interface.
    pub fn learn_tunnels(&mut self, tunnels: &[(u32, rst_common::wire::TunnelKey)]) {
        self.tunnels.learn(tunnels);
    }

    pub fn add_interface(&mut self, interface: Interface) {
        self.names.insert(interface.ifindex, interface.iface.clone());
        self.interfaces.push(interface);
    }

    /// Folds one sample into the run and returns its interval (top N only). `ended` is when
    /// the interval ended: wall-clock time live, capture time in replay.
    pub fn add(&mut self, sample: &Sample, elapsed: Duration, ended: SystemTime) -> Interval {
        let mut interval = self.fold(sample, elapsed, ended);
        let flows = &self.interval_flows;
        interval.sources = rank::sources(flows.iter(), sample.overflow_sources.iter().map(|(k, r)| (k, *r)), elapsed);
        interval.sources.truncate(self.top);
        interval.flows = self.flow_records(flows.iter(), self.top);
        interval.services = self.interval_services();
        interval.services.truncate(self.top);
        interval.destinations = rank::destinations(flows.iter());
        interval.destinations.truncate(self.top);
        interval.conversations = conversation::conversations(flows.iter(), |ifindex| self.iface_label(ifindex));
        if let Some(list) = &mut interval.conversations {
            list.truncate(self.top);
        }
        interval.workloads = self.workload_records(flows.iter());
        interval.workloads.truncate(self.top);
        interval
    }

    /// Folds one sample into the run like [`Aggregator::add`], without ranking the interval:
    /// its record has the totals and empty rankings, for a reader that follows the run through
    /// [`Aggregator::interval_flows`] instead.
    pub fn fold(&mut self, sample: &Sample, elapsed: Duration, ended: SystemTime) -> Interval {
        let started_ms = self.elapsed.as_millis() as u64;
        self.tunnels.learn(&sample.tunnels);
        self.intervals += 1;
        self.elapsed += elapsed;
        self.totals.accumulate(&sample.counters);
        // Reused across intervals: a map of tens of thousands of flows allocated afresh every
        // interval leaves the allocator's heap higher each time.
        self.service_samples.clear();
        let origin_ms = self.tracker_origin_ms;
        let tunnels = &self.tunnels;
        self.service_samples.extend(sample.services.iter().map(|service| service_sample(service, origin_ms, tunnels)));
        // The evidence first: it learns each host's own TTL, which a flow's forged resets are
        // told by when their connection showed none.
        // Replay's pauses by segment times, the kernel's by its sockets' (one or the other).
        self.pauses.clear();
        self.pauses.extend(sample.pauses.iter().map(|(key, pause)| (rst_tuple(key), *pause)));
        self.pauses.extend(
            sample.idle_gaps.iter().map(|(key, gap)| ((key.src, key.dst, key.sport, key.dport), gap.pause_ms())),
        );
        self.late_data.clear();
        let on_data = ["TCP_ABORT_ON_DATA", "TCP_TIMEWAIT_SOCKET"].map(|name| self.reason_names.code_of(name));
        self.late_data.extend(
            sample
                .stack_resets
                .iter()
                .filter(|(key, _)| on_data.contains(&Some(key.reason)))
                .map(|(key, _)| (key.src, key.dst, key.sport, key.dport)),
        );
        // The peer's socket had just sent when the reset came, after a longer silence.
        self.late_data.extend(
            sample
                .idle_gaps
                .iter()
                .filter(|(key, gap)| key.direction == DIRECTION_RX && gap.since_sent_ms < gap.since_received_ms)
                .map(|(key, _)| (key.src, key.dst, key.sport, key.dport)),
        );
        self.evidence.timings(FlowTimings {
            close_gaps: &sample.close_gaps,
            idle_before_close: &sample.idle_before_close,
            pauses: &self.pauses,
            nat_lost: &sample.nat_lost,
            late_data: &self.late_data,
        });
        self.evidence.interval(
            started_ms,
            &self.service_samples,
            sample.flows.iter().map(|(key, resets)| (key, *resets)),
            &self.tunnels,
        );
        // After the interval's start: the kernel's own account of what overflowed, for the
        // listeners whose resets crossed a watched interface (the tracepoint sees every
        // namespace of the machine).
        if !sample.listen_resets.is_empty() {
            // The listener's socket does not say which tenant it serves: its resets go to the
            // service whose RSTs crossed in one tunnel (or none), never to one of several.
            let mut resetters: HashMap<(IpAddr, u16), Option<Option<ServiceTunnel>>> = HashMap::new();
            for (key, _) in &sample.flows {
                let tunnel = self.tunnels.of_service(key.ifindex);
                resetters
                    .entry((key.src_ip(), key.sport))
                    .and_modify(|sole| *sole = sole.filter(|sole| *sole == tunnel))
                    .or_insert(Some(tunnel));
            }
            for (key, value) in &sample.listen_resets {
                if let Some(&Some(tunnel)) = resetters.get(&(key.ip(), key.port)) {
                    let service = ServiceAddr { addr: key.ip(), port: key.port, tunnel };
                    self.evidence.listen_overflow(service, value.resets, u64::from(value.max_backlog));
                }
            }
        }
        let mut interval = std::mem::take(&mut self.interval_flows);
        interval.clear();
        for (key, resets) in &sample.flows {
            let own_ttl = self.evidence.own_ttl(key);
            interval.entry(key.flow_id()).or_default().add(key, *resets, own_ttl);
        }
        self.join_pauses(&mut interval);
        self.join_kernel_events(&mut interval, &sample.stack_resets);
        // The firewall's resets this host really sent (the interval's tx flows confirm them).
        self.join_firewall(&interval, &sample.firewall_resets);
        self.join_workloads(&mut interval, &sample.workloads);
        for (id, stats) in &interval {
            if let Some(run) = self.flows.get_mut(id) {
                run.merge(stats);
            } else if self.flows.len() < self.flow_limit {
                self.flows.insert(*id, stats.clone());
                match Direction::of(id) {
                    Direction::Tx => self.tx_flows.insert(four_tuple_of_flow(id), *id),
                    Direction::Rx => self.rx_flows.insert(four_tuple_of_flow(id), *id),
                };
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
        if let Some(resolver) = self.resolver.as_mut() {
            // The summary names the run's flows' workloads at the end: theirs stay in use.
            let in_use = self.flows.values().flat_map(|stats| stats.owners.cgroups.keys().copied());
            resolver.trim(self.elapsed, in_use.filter(|cgroup| *cgroup != 0));
        }
        for (key, value) in &sample.services {
            self.services.entry(*key).or_default().merge(value);
        }
        self.interval_handshakes.clear();
        self.interval_handshakes.extend_from_slice(&sample.services);
        self.interval_overflow.clear();
        self.interval_overflow.extend(sample.overflow_sources.iter().map(|(key, resets)| (key.src_ip(), *resets)));
        let record = Interval {
            seq: self.intervals,
            ended,
            elapsed,
            totals: Totals::from(&sample.counters),
            flows_seen: interval.len(),
            flow_resets: sample.flows.iter().map(|(_, resets)| resets).sum(),
            sources: Vec::new(),
            flows: Vec::new(),
            services: Vec::new(),
            destinations: Vec::new(),
            verdicts: self.evidence.interval_verdicts(),
            conversations: None,
            workloads: Vec::new(),
        };
        self.interval_flows = interval;
        record
    }

    /// The resets this host's netfilter sent: its events (or, where only netfilter's drops are
    /// traced, its candidates: a plain drop looks the same) that an RST this host sent on the
    /// same addresses and ports confirms, each for the service the RST speaks for.
    fn join_firewall(&mut self, interval: &FastMap<FlowKey, FlowStats>, events: &[(FirewallResetKey, u64)]) {
        if events.is_empty() {
            return;
        }
        let sent: FastMap<RstTuple, (u64, u32)> = interval
            .iter()
            .filter(|(id, _)| Direction::of(id) == Direction::Tx)
            .map(|(id, stats)| (rst_tuple(id), (stats.resets, id.ifindex)))
            .collect();
        for (key, count) in events {
            let Some(hook) = NetfilterHook::of_code(u32::from(key.hook)) else { continue };
            let Some((resets, ifindex)) = sent.get(&(key.src, key.dst, key.sport, key.dport)) else { continue };
            // The service of the tenant whose RST it was, when this host sent it into a tunnel.
            let service =
                ServiceAddr { addr: key.src_ip(), port: key.sport, tunnel: self.tunnels.of_service(*ifindex) };
            self.evidence.local_firewall(service, hook, (*count).min(*resets));
        }
    }

    /// Charges the interval's pauses to the flows whose resets they came before.
    fn join_pauses(&self, interval: &mut FastMap<FlowKey, FlowStats>) {
        if self.pauses.is_empty() {
            return;
        }
        let pauses: FastMap<RstTuple, u64> = self.pauses.iter().copied().collect();
        for (id, stats) in interval.iter_mut() {
            if let Some(pause) = pauses.get(&rst_tuple(id)) {
                stats.pauses.add(*pause, stats.resets);
            }
        }
    }

    /// Charges kernel reset events to the tx flows they explain: this interval's first, then the
    /// run's (the event and the segment can fall on either side of an epoch flip). An event
    /// that matches nothing gets one more interval.
    fn join_kernel_events(&mut self, interval: &mut FastMap<FlowKey, FlowStats>, events: &[(StackResetKey, u64)]) {
        if events.is_empty() && self.pending_events.is_empty() {
            return;
        }
        let interval_tx: FastMap<FourTuple, FlowKey> = interval
            .keys()
            .filter(|id| Direction::of(id) == Direction::Tx)
            .map(|id| (four_tuple_of_flow(id), *id))
            .collect();
        let pending = std::mem::take(&mut self.pending_events);
        let tries = pending.iter().map(|event| (event, true)).chain(events.iter().map(|event| (event, false)));
        for ((event, count), retried) in tries {
            let tuple = four_tuple_of_event(event);
            let (id, stats) = match interval_tx.get(&tuple) {
                Some(id) => (Some(*id), interval.get_mut(id)),
                None => match self.tx_flows.get(&tuple) {
                    Some(id) => (Some(*id), self.flows.get_mut(id)),
                    None => (None, None),
                },
            };
            match (id, stats) {
                (Some(id), Some(stats)) => {
                    *stats.reasons.entry(event.reason).or_default() += count;
                    self.kernel_events.matched += count;
                    if let Some(kind) = stats.kinds.dominant() {
                        let reason = self.reason_names.reason(event.reason);
                        let ack = stats.with_ack * 2 >= stats.resets;
                        self.evidence.stack_resets(&id, stats.server_side(), kind, ack, &reason, *count);
                    }
                }
                _ if retried => self.kernel_events.elsewhere += count,
                _ => self.pending_events.push((*event, *count)),
            }
        }
    }

    /// Charges workload events to the flows (either direction) they explain, as
    /// [`Aggregator::join_kernel_events`] does; each event's cgroup is named now, while it
    /// still exists. An event no watched flow has (another interface, another namespace with
    /// the same addresses' traffic unwatched) is dropped after its second interval.
    fn join_workloads(&mut self, interval: &mut FastMap<FlowKey, FlowStats>, events: &[(WorkloadKey, u64)]) {
        if events.is_empty() && self.pending_workloads.is_empty() {
            return;
        }
        let Some(resolver) = self.resolver.as_mut() else {
            return;
        };
        resolver.new_round(self.elapsed);
        let by_tuple: FastMap<(FourTuple, bool), FlowKey> =
            interval.keys().map(|id| ((four_tuple_of_flow(id), Direction::of(id) == Direction::Tx), *id)).collect();
        let pending = std::mem::take(&mut self.pending_workloads);
        let tries = pending.iter().map(|event| (event, true)).chain(events.iter().map(|event| (event, false)));
        for ((event, count), retried) in tries {
            if event.cgroup != 0 && resolver.resolve(event.cgroup).is_none() {
                tracing::debug!("cgroup {} vanished before it could be named", event.cgroup);
            }
            let tuple = (event.src, event.dst, event.sport, event.dport, event.family);
            let tx = event.direction == DIRECTION_TX;
            let stats = match by_tuple.get(&(tuple, tx)) {
                Some(id) => interval.get_mut(id),
                None => {
                    let run = if tx { &self.tx_flows } else { &self.rx_flows };
                    run.get(&tuple).and_then(|id| self.flows.get_mut(id))
                }
            };
            match stats {
                Some(stats) => stats.owners.add(event, *count),
                None if retried => {}
                None => self.pending_workloads.push((*event, *count)),
            }
        }
    }

    /// Resets per workload over `flows`, most first.
    fn workload_records<'a>(&self, flows: impl Iterator<Item = (&'a FlowKey, &'a FlowStats)>) -> Vec<WorkloadResets> {
        let Some(resolver) = &self.resolver else {
            return Vec::new();
        };
        let mut by_cgroup: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        for (key, stats) in flows {
            let Some(cgroup) = stats.owners.cgroup() else { continue };
            let counts = by_cgroup.entry(cgroup).or_default();
            match Direction::of(key) {
                Direction::Tx => counts.0 += stats.resets,
                Direction::Rx => counts.1 += stats.resets,
            }
        }
        let mut records: Vec<WorkloadResets> = by_cgroup
            .into_iter()
            .filter_map(|(cgroup, (sent, received))| {
                Some(WorkloadResets { workload: resolver.known(cgroup)?.clone(), sent, received })
            })
            .collect();
        records.sort_by(|a, b| {
            (b.sent + b.received).cmp(&(a.sent + a.received)).then_with(|| a.workload.cgroup.cmp(&b.workload.cgroup))
        });
        records
    }

    /// The run's workloads so far, the top N by resets: what `--metrics` exports.
    pub fn top_workloads(&self) -> Vec<WorkloadResets> {
        let mut workloads = self.workload_records(self.flows.iter());
        workloads.truncate(self.top);
        workloads
    }

    /// The workload of cgroup `id`, when it was named.
    pub fn workload_name(&self, id: u64) -> Option<&Workload> {
        self.resolver.as_ref()?.known(id)
    }

    /// The workload of a flow's sockets, as far as it could be named.
    fn workload_of(&self, stats: &FlowStats) -> Option<Workload> {
        let cgroup = stats.owners.cgroup()?;
        self.resolver.as_ref()?.known(cgroup).cloned()
    }

    /// The payload of the last RST of the flow `id` (its [`FlowKey::flow_id`]) that had one:
    /// the first bytes (at most [`payload::RST_PAYLOAD_BYTES`]) and the payload's length. A
    /// flow the run does not list keeps none. Returns whether the run lists the flow.
    /// [`Aggregator::rst_payload`] for a flow read again from its frame: inside a tunnel, under
    /// the number the run's tunnel table gives it (false while the table has none).
    pub fn rst_payload_of(&mut self, (id, tunnel): &tunnels::FrameFlow, bytes: &[u8], len: usize) -> bool {
        let id = match tunnel {
            None => *id,
            Some(tunnel) => match self.tunnels.number_of(tunnel) {
                Some(number) => FlowKey { ifindex: rst_common::wire::TUNNEL_INTERFACE | number, ..*id },
                None => return false,
            },
        };
        self.rst_payload(&id, bytes, len)
    }

    pub fn rst_payload(&mut self, id: &FlowKey, bytes: &[u8], len: usize) -> bool {
        match self.flows.get_mut(id) {
            Some(stats) => {
                stats.rst_payload = Some(payload::escape(bytes, len));
                true
            }
            None => false,
        }
    }

    /// The whole run: every flow, every source, cumulative.
    pub fn summary(&self) -> Run {
        let mut kernel_events = self.kernel_events.clone();
        // What is still pending has had its chance: the run is over.
        kernel_events.elsewhere += self.pending_events.iter().map(|(_, count)| count).sum::<u64>();
        Run {
            elapsed: self.elapsed,
            intervals: self.intervals,
            interfaces: self.interfaces.clone(),
            counting: self.counting,
            totals: Totals::from(&self.totals),
            unlisted: self.unlisted,
            sources: rank::sources(self.flows.iter(), self.overflow_sources.iter().map(|(k, r)| (k, *r)), self.elapsed),
            flows: self.flow_records(self.flows.iter(), usize::MAX),
            destinations: rank::destinations(self.flows.iter()),
            services: self.service_records(self.services.iter(), self.flows.iter()),
            kernel_events,
            verdicts: self.evidence.verdicts(),
            conversations: conversation::conversations(self.flows.iter(), |ifindex| self.iface_label(ifindex)),
            workloads: self.workload_records(self.flows.iter()),
            capture: None,
            rst_payloads: None,
        }
    }

    /// What is causing the run's resets so far, per service, most resets first.
    pub fn verdicts(&self) -> Vec<crate::model::verdict::Verdict> {
        self.evidence.verdicts()
    }

    /// The run's services so far, the top N by resets (then attempts): what `--metrics` exports.
    pub fn top_services(&self) -> Vec<Service> {
        let mut services = self.service_records(self.services.iter(), self.flows.iter());
        services.truncate(self.top);
        services
    }

    /// The last interval's flows, each with its run so far (for a view that follows the run
    /// interval by interval instead of rebuilding it).
    pub fn interval_flows(&self) -> impl Iterator<Item = IntervalFlow<'_>> {
        self.interval_flows.iter().map(|(key, interval)| IntervalFlow { key, interval, run: self.flows.get(key) })
    }

    /// The last interval's flow resets per interface and direction, in ifindex order.
    pub fn interval_by_interface(&self) -> Vec<InterfaceResets> {
        let mut groups: BTreeMap<(u32, Direction), (KindCounts, u64)> = BTreeMap::new();
        for (key, stats) in &self.interval_flows {
            let group = groups.entry((key.ifindex, Direction::of(key))).or_default();
            group.0.merge(&stats.kinds);
            group.1 += stats.middlebox.map_or(0, |m| m.resets);
        }
        groups
            .into_iter()
            .map(|((ifindex, direction), (kinds, middlebox))| InterfaceResets {
                iface: self.iface_name(ifindex),
                direction,
                kinds,
                middlebox,
            })
            .collect()
    }

    /// The last interval's services, every one of them, ranked.
    pub fn interval_services(&self) -> Vec<Service> {
        self.service_records(self.interval_handshakes.iter().map(|(k, v)| (k, v)), self.interval_flows.iter())
    }

    /// The last interval's resets per sender, flows and overflow together, largest first.
    pub fn interval_source_resets(&self) -> Vec<(IpAddr, u64)> {
        let mut sources: HashMap<IpAddr, u64> = HashMap::new();
        for (key, stats) in &self.interval_flows {
            *sources.entry(key.src_ip()).or_default() += stats.resets;
        }
        for (src, resets) in &self.interval_overflow {
            *sources.entry(*src).or_default() += resets;
        }
        let mut sources: Vec<(IpAddr, u64)> = sources.into_iter().filter(|(_, resets)| *resets > 0).collect();
        sources.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        sources
    }

    /// The last interval's resets that overflowed the flow table, by sender.
    pub fn interval_overflow(&self) -> &[(IpAddr, u64)] {
        &self.interval_overflow
    }

    /// The run's counters so far.
    pub fn totals(&self) -> Totals {
        Totals::from(&self.totals)
    }

    /// Time covered by the run so far.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// The interface as the tables name it: a tunnel's after its underlay ("eth0 vxlan 42"),
    /// so that two tenants' flows with the same inner addresses read apart.
    pub fn iface_label(&self, ifindex: u32) -> String {
        match self.tunnels.of_service(ifindex) {
            Some(tunnel) => format!("{} {}", self.iface_name(ifindex), tunnel.describe()),
            None => self.iface_name(ifindex),
        }
    }

    pub fn iface_name(&self, ifindex: u32) -> String {
        let ifindex = self.tunnels.underlay(ifindex);
        self.names.get(&ifindex).cloned().unwrap_or_else(|| format!("if{ifindex}"))
    }

    /// The `limit` largest flows as records, largest first; ties in a stable, readable order.
    fn flow_records<'a>(&self, flows: impl Iterator<Item = (&'a FlowKey, &'a FlowStats)>, limit: usize) -> Vec<Flow> {
        let mut ranked: Vec<(&FlowKey, &FlowStats)> = flows.collect();
        ranked.sort_by(|(ka, a), (kb, b)| b.resets.cmp(&a.resets).then_with(|| ka.cmp(kb)));
        ranked.truncate(limit);
        ranked
            .into_iter()
            .map(|(key, stats)| {
                let direction = Direction::of(key);
                let explained: u64 = stats.reasons.values().sum();
                Flow {
                    iface: self.iface_name(key.ifindex),
                    ifindex: self.tunnels.underlay(key.ifindex),
                    family: Family::of(key),
                    src: key.src_ip(),
                    sport: key.sport,
                    dst: key.dst_ip(),
                    dport: key.dport,
                    resets: stats.resets,
                    direction,
                    kinds: stats.kinds,
                    with_ack: stats.with_ack,
                    side: stats.side(),
                    side_observed: stats.side_observed,
                    first: stats.first,
                    middlebox: stats.middlebox,
                    reasons: stats
                        .reasons
                        .iter()
                        .map(|(code, count)| (self.reason_names.reason(*code), *count))
                        .collect(),
                    no_kernel_event: (direction == Direction::Tx && self.kernel_events.available())
                        .then(|| stats.resets.saturating_sub(explained)),
                    workload: self.workload_of(stats),
                    origin: if direction == Direction::Tx && self.resolver.is_some() {
                        stats.owners.origin()
                    } else {
                        None
                    },
                    rst_payload: stats.rst_payload.clone(),
                    tunnel: self.tunnels.of(key),
                }
            })
            .collect()
    }

    fn service_records<'a>(
        &self,
        handshakes: impl Iterator<Item = (&'a ServiceKey, &'a ServiceValue)>,
        flows: impl Iterator<Item = (&'a FlowKey, &'a FlowStats)>,
    ) -> Vec<Service> {
        let mut services = rank::services(handshakes, flows, |ifindex| self.iface_name(ifindex));
        for service in &mut services {
            service.tunnel = self.tunnels.of_service(service.ifindex);
            service.ifindex = self.tunnels.underlay(service.ifindex);
        }
        services
    }
}

#[cfg(test)]
mod agreement_tests;
#[cfg(test)]
mod workload_tests;
