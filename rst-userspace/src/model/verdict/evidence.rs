//! What the run showed about each service, gathered interval by interval, and the rules that
//! read causes out of it.
//!
//! Memory is bounded: services, hosts and client–service pairs beyond their caps are not
//! tracked (they get no verdict rather than a partial one), and each keeps a fixed amount of
//! state however long the run.

use std::{
    collections::{hash_map::Entry, BTreeMap, HashMap, HashSet},
    hash::Hash,
    net::IpAddr,
};

use rst_common::wire::{DownRun, FlowKey, ResetClass, ResetContext, ResetKind};

use super::{
    act::Act,
    check::{health_check, CheckPattern},
    idle::{Cluster, IdleResets, IDLE_MIN_MS},
    scan::{scan, Answer, Probes, Scan},
    sort, Cause, Finding, NetfilterHook, ServiceAddr, ServiceTunnel, Side, Verdict,
};
use crate::model::{aggregate::tunnels::KnownTunnels, kernel_reason::KernelReason};

/// A client: its address, and the tunnel it was reached through (two tenants' clients at one
/// inner address are two clients, whose probes never add up to one scan).
type Client = (IpAddr, Option<ServiceTunnel>);

/// One service's handshake counts for one interval, as the tracker counted them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceSample {
    pub service: ServiceAddr,
    pub ifindex: u32,
    /// SYNs (retransmissions once).
    pub attempts: u64,
    /// SYN+ACKs: accepted handshakes.
    pub synacks: u64,
    /// Most connections the service held open at any accept of the interval (before it).
    pub open_at_accept: Option<u64>,
    /// Fewest and most connections it held open at the interval's turn-aways.
    pub open_at_turnaway: Option<(u64, u64)>,
    /// TTL / hop limit the service's own SYN+ACKs arrived with on this interface.
    pub synack_ttl: Option<u8>,
    /// The run of turn-aways (each with nothing else open) the service was in at the interval's
    /// end, begun after its latest accept, `since_ms` after the run started: what the tracker,
    /// which sees accepts and refusals in order, says ([`rst_common::services`]).
    pub down: Option<DownRun>,
}

/// How many resets and how many connections they ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Tally {
    pub resets: u64,
    pub connections: u64,
}

impl Tally {
    pub fn counts(self) -> (u64, u64) {
        (self.resets, self.connections)
    }

    fn minus(self, other: Tally) -> Tally {
        Tally {
            resets: self.resets.saturating_sub(other.resets),
            connections: self.connections.saturating_sub(other.connections),
        }
    }

    pub fn add(&mut self, other: Tally) {
        let Tally { resets, connections } = other;
        self.resets += resets;
        self.connections += connections;
    }
}

/// Most kernel reasons one service and act keep (there are a few dozen codes in all).
const MAX_REASONS: usize = 8;

/// One bucket of resets: what they did, and the TTL they carried against the one their claimed
/// sender's own packets carried (0: not known from the connection itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Bucket {
    act: Act,
    /// The RST's sender is the connection's server (else its client).
    by_server: bool,
    ifindex: u32,
    /// The address the RST claims as its sender.
    sender: IpAddr,
    rst_ttl: u8,
    peer_ttl: u8,
}

/// Turn-aways (and unanswered attempts) since the service's last accepted connection, while it
/// held none open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Down {
    since_ms: u64,
    turned_away: Tally,
    unanswered: u64,
    /// The latest interval's turn-aways and unanswered attempts after the last accept, for its
    /// own verdicts.
    latest_turned_away: Tally,
    latest_unanswered: u64,
}

#[derive(Clone, Debug, Default)]
struct ServiceEvidence {
    attempts: u64,
    synacks: u64,
    buckets: BTreeMap<Bucket, Tally>,
    last_accept: Option<u64>,
    down: Option<Down>,
    /// Intervals whose turn-aways all happened at or above the open count of every accept in
    /// them, and what they turned away; `limit` is the latest such threshold.
    limit_turned_away: Tally,
    limit: Option<u64>,
    /// An interval contradicted the limit: an accept at or above a turn-away's open count, or a
    /// turn-away with nothing open.
    limit_contradicted: bool,
    /// This interval's turn-aways (all TTLs), for the down/limit rules at its end.
    interval_turned_away: Tally,
    /// Some of them reset a connection right after its handshake (not refused at the SYN).
    interval_reset_after_accept: bool,
    /// Those refused at the SYN: only these say a service went down. One that accepts and then
    /// resets is up (an abort, a limit), whichever interval its accept fell in.
    interval_refused: Tally,
    interval: ServiceSampleSum,
    /// The resets of each cause in the latest interval (for the interval's verdicts).
    latest: BTreeMap<Bucket, Tally>,
    /// The longest time between a resetter's own FIN and its reset of a late segment (replay).
    close_gap_ms: Option<u64>,
    /// The idle gaps before its stateless resets and aborts, for the idle-timeout rule.
    idle: IdleResets<Bucket>,
    /// How long the connections a keep-alive race closed had gone without data before their
    /// closer's FIN (replay), the first few.
    race_idle_ms: Vec<u64>,
    /// Clients' resets of replies that reached them untranslated, by the backend they came
    /// from: the run's and the latest interval's.
    nat_lost: BTreeMap<ServiceAddr, Tally>,
    latest_nat_lost: BTreeMap<ServiceAddr, Tally>,
    /// Resets its listener sent while in LISTEN (its accept queue full), the run's and the
    /// latest interval's, and the queue's length at the latest.
    listen_overflow: Tally,
    latest_listen_overflow: Tally,
    listen_limit: u64,
    /// Resets this host's netfilter sent for it, by hook: the run's and the latest interval's.
    firewall: BTreeMap<NetfilterHook, Tally>,
    latest_firewall: BTreeMap<NetfilterHook, Tally>,
}

/// An RST's addresses and ports as it went (sender first): what replay's and the kernel's
/// per-reset times are keyed by.
pub type RstTuple = ([u8; 16], [u8; 16], u16, u16);

pub fn rst_tuple(key: &FlowKey) -> RstTuple {
    (key.src, key.dst, key.sport, key.dport)
}

/// Keep-alive races whose idle time a service keeps.
const MAX_RACE_IDLE: usize = 64;

/// What replay measured per flow for the next interval (see [`Evidence::timings`]); the kernel
/// keeps no time per connection, so live runs hand over empty lists.
#[derive(Clone, Copy, Debug, Default)]
pub struct FlowTimings<'a> {
    /// Flows whose RSTs followed their sender's own FIN: the longest time since it, ms.
    pub close_gaps: &'a [(FlowKey, u64)],
    /// The same flows: how long their connection had gone without data at that FIN, ms.
    pub idle_before_close: &'a [(FlowKey, u64)],
    /// The pause before each RST tuple's first RST, ms (replay's from segment times; live, the
    /// kernel's for local sockets).
    pub pauses: &'a [(RstTuple, u64)],
    /// RSTs (their flow's addresses and ports) whose sender answered a segment from an address
    /// it never opened a connection to, while its endpoint held a live one elsewhere: that
    /// connection's service (replay's from the capture; live, this host's own sockets').
    pub nat_lost: &'a [(FlowKey, ([u8; 16], u16))],
    /// RSTs that answered their peer's data on a connection their sender had closed, as a
    /// kernel tells it live: the sender's reason (`TCP_ABORT_ON_DATA`, a time-wait socket's
    /// `TCP_TIMEWAIT_SOCKET`), or the peer's socket, which had just sent data when the reset
    /// came after a longer silence.
    pub late_data: &'a [RstTuple],
}

/// A service's samples of one interval summed over interfaces.
#[derive(Clone, Copy, Debug, Default)]
struct ServiceSampleSum {
    attempts: u64,
    synacks: u64,
    open_at_accept: Option<u64>,
    open_at_turnaway: Option<(u64, u64)>,
    /// The latest run of turn-aways any interface's tracker saw the service end the interval in.
    down: Option<DownRun>,
    /// An interface saw an accept and no run after it: the interfaces disagree whether the
    /// service ended the interval down, so it is not claimed.
    up_at_end: bool,
}

/// Everything the run showed, fed one interval at a time.
#[derive(Debug)]
pub struct Evidence {
    services: HashMap<ServiceAddr, ServiceEvidence>,
    checks: HashMap<(IpAddr, ServiceAddr), CheckPattern>,
    /// What each flow's first RST did, so the same side's further RSTs on the connection (its
    /// answers to the peer's late segments) go with it; forgotten all at once when full.
    /// Each kept with the interval and the RST's key it came from: when two connections on
    /// one 5-tuple (a refused attempt, then an accepted one from the same port) both begin in
    /// one interval, the larger key's act holds, whatever order the flows come in.
    first_acts: HashMap<FlowKey, (u64, FlowKey, Act)>,
    /// Per client: the services that turned it away and those it reset right after their
    /// SYN+ACK, for the scan rule.
    probes: HashMap<Client, Probes>,
    /// The next interval's flows whose RSTs followed their sender's own FIN, and the longest
    /// time since it (replay's; see [`Evidence::timings`]).
    close_gaps: HashMap<FlowKey, u64>,
    /// The next interval's per-flow idle times and lost translations (replay's).
    idle_before_close: HashMap<FlowKey, u64>,
    pauses: HashMap<RstTuple, u64>,
    late_data: HashSet<RstTuple>,
    nat_lost: HashMap<RstTuple, ServiceAddr>,
    host_ttls: HashMap<(u32, IpAddr), u8>,
    /// The kernel's reasons for the resets this host's stack sent, per service and act.
    reasons: HashMap<(ServiceAddr, Act), BTreeMap<KernelReason, u64>>,
    max_entries: usize,
    interval: u64,
    interval_start_ms: u64,
}

impl Evidence {
    /// `max_entries` bounds each of the maps (services, client–service pairs, host TTLs).
    pub fn new(max_entries: usize) -> Self {
        Evidence {
            services: HashMap::new(),
            checks: HashMap::new(),
            first_acts: HashMap::new(),
            probes: HashMap::new(),
            close_gaps: HashMap::new(),
            idle_before_close: HashMap::new(),
            pauses: HashMap::new(),
            late_data: HashSet::new(),
            nat_lost: HashMap::new(),
            host_ttls: HashMap::new(),
            reasons: HashMap::new(),
            max_entries,
            interval: 0,
            interval_start_ms: 0,
        }
    }

    /// One interval, started `start_ms` after the run: each service's handshake counts and
    /// every flow entry (key and resets) the interval counted; `tunnels`, the run's numbering of
    /// the tunnels flows were counted in, scopes each to its tenant.
    pub fn interval<'a>(
        &mut self,
        start_ms: u64,
        services: &[ServiceSample],
        flows: impl Iterator<Item = (&'a FlowKey, u64)> + Clone,
        tunnels: &KnownTunnels,
    ) {
        self.interval += 1;
        self.interval_start_ms = start_ms;
        for evidence in self.services.values_mut() {
            evidence.interval = ServiceSampleSum::default();
            evidence.interval_turned_away = Tally::default();
            evidence.interval_reset_after_accept = false;
            evidence.interval_refused = Tally::default();
            evidence.latest.clear();
            evidence.latest_nat_lost.clear();
            evidence.latest_listen_overflow = Tally::default();
            evidence.latest_firewall.clear();
        }
        for pattern in self.checks.values_mut() {
            pattern.latest = Tally::default();
        }
        for probes in self.probes.values_mut() {
            probes.new_interval();
        }
        // TTLs first: a forged reset is told by the host's own TTL, which this very interval
        // may be the first to show.
        for sample in services {
            if let Some(ttl) = sample.synack_ttl {
                self.learn_ttl(sample.ifindex, sample.service.addr, ttl);
            }
        }
        for (key, _) in flows.clone() {
            if key.peer_ttl != 0 {
                self.learn_ttl(key.ifindex, key.src_ip(), key.peer_ttl);
            }
        }
        for sample in services {
            self.add_sample(sample);
        }
        // Each side's first RST of a connection before its further ones, which go with it.
        for (key, resets) in flows.clone().filter(|(key, _)| !ResetContext(key.context).sender_reset()) {
            self.add_reset(key, resets, tunnels.of_service(key.ifindex));
        }
        for (key, resets) in flows.filter(|(key, _)| ResetContext(key.context).sender_reset()) {
            self.add_reset(key, resets, tunnels.of_service(key.ifindex));
        }
        self.close_interval();
    }

    /// For the next interval: what replay measured per flow (see [`FlowTimings`]). A teardown
    /// says how long after its close, a keep-alive race how idle the connection was, an idle
    /// timeout its gap; a lost translation names the service behind the client's resets.
    pub fn timings(&mut self, timings: FlowTimings<'_>) {
        let FlowTimings { close_gaps, idle_before_close, pauses, nat_lost, late_data } = timings;
        self.late_data.clear();
        self.late_data.extend(late_data.iter().copied());
        self.close_gaps.clear();
        self.close_gaps.extend(close_gaps.iter().copied());
        self.idle_before_close.clear();
        self.idle_before_close.extend(idle_before_close.iter().copied());
        self.pauses.clear();
        self.pauses.extend(pauses.iter().copied());
        self.nat_lost.clear();
        self.nat_lost.extend(nat_lost.iter().map(|(key, (addr, port))| {
            let service = FlowKey { dst: *addr, dport: *port, ..*key };
            // Scoped to the RST's tunnel where it is used ([`Evidence::add_reset`]).
            (rst_tuple(key), ServiceAddr::on_link(service.dst_ip(), *port))
        }));
    }

    /// `resets` RSTs a listener of this host sent while in LISTEN, to connections its full
    /// accept queue had no room for (`tcp_abort_on_overflow`), its queue `limit` long: the
    /// kernel's own account, from `tcp:tcp_send_reset`'s socket.
    pub fn listen_overflow(&mut self, service: ServiceAddr, resets: u64, limit: u64) {
        let Some(evidence) = self.service_mut(service) else { return };
        let tally = Tally { resets, connections: resets };
        evidence.listen_overflow.add(tally);
        evidence.latest_listen_overflow.add(tally);
        evidence.listen_limit = limit;
    }

    /// `resets` RSTs this host's netfilter sent at `hook` (`reject with tcp reset`) in the name
    /// of `service` (the RST's sender: what the rejected segment was for), each answering one
    /// segment: the reject path's own event, joined to an RST this host sent.
    pub fn local_firewall(&mut self, service: ServiceAddr, hook: NetfilterHook, resets: u64) {
        let Some(evidence) = self.service_mut(service) else { return };
        let tally = Tally { resets, connections: resets };
        evidence.firewall.entry(hook).or_default().add(tally);
        evidence.latest_firewall.entry(hook).or_default().add(tally);
    }

    /// `resets` RSTs this host's TCP stack sent (`tcp:tcp_send_reset`) on the flow `flow` (its
    /// 4-tuple; the classification cleared), for kernel reason `reason`: `server` whether the
    /// connection's server sent them, `kind` and `ack` what most of the flow's RSTs were. They
    /// corroborate the cause of the same act (see [`Verdict::kernel_reason`]).
    pub fn stack_resets(
        &mut self,
        flow: &FlowKey,
        server: bool,
        kind: ResetKind,
        ack: bool,
        reason: &KernelReason,
        resets: u64,
    ) {
        let Some(act) = Act::of_sent(kind, server, ack) else { return };
        let (addr, port) = if server { (flow.src_ip(), flow.sport) } else { (flow.dst_ip(), flow.dport) };
        // The stack's own sockets: a tunnelled service's resets it sent are not told apart by
        // tenant here, so they corroborate only a service outside tunnels.
        let key = (ServiceAddr::on_link(addr, port), act);
        // Data on a connection this host had closed (a full socket's abort on data, or its
        // time-wait socket's answer): the reason of a keep-alive race's resets.
        let on_data = matches!(reason.name().as_ref(), "TCP_ABORT_ON_DATA" | "TCP_TIMEWAIT_SOCKET");
        let key = if kind == ResetKind::Closing && on_data { (key.0, Act::Race) } else { key };
        let Some(reasons) = bounded_entry(&mut self.reasons, key, self.max_entries) else { return };
        if let Some(count) = reasons.get_mut(reason) {
            *count += resets;
        } else if reasons.len() < MAX_REASONS {
            reasons.insert(reason.clone(), resets);
        }
    }

    /// The kernel reason most of `service`'s own resets of the act `cause` explains carried.
    fn kernel_reason(&self, service: ServiceAddr, cause: Cause) -> Option<KernelReason> {
        let reasons = self.reasons.get(&(service, Act::of_cause(cause)?))?;
        reasons.iter().max_by_key(|(_, count)| **count).map(|(reason, _)| reason.clone())
    }

    /// Names the kernel's reason on each verdict whose resets this host's stack sent.
    fn corroborate(&self, verdicts: &mut [Verdict]) {
        if self.reasons.is_empty() {
            return;
        }
        for verdict in verdicts {
            verdict.kernel_reason = self.kernel_reason(verdict.service, verdict.cause());
        }
    }

    fn learn_ttl(&mut self, ifindex: u32, addr: IpAddr, ttl: u8) {
        if self.host_ttls.len() < self.max_entries || self.host_ttls.contains_key(&(ifindex, addr)) {
            self.host_ttls.insert((ifindex, addr), ttl);
        }
    }

    fn service_mut(&mut self, service: ServiceAddr) -> Option<&mut ServiceEvidence> {
        bounded_entry(&mut self.services, service, self.max_entries)
    }

    fn add_sample(&mut self, sample: &ServiceSample) {
        let ServiceSample {
            service,
            ifindex: _,
            attempts,
            synacks,
            open_at_accept,
            open_at_turnaway,
            synack_ttl: _,
            down,
        } = *sample;
        let Some(evidence) = self.service_mut(service) else { return };
        evidence.attempts += attempts;
        evidence.synacks += synacks;
        let sum = &mut evidence.interval;
        sum.attempts += attempts;
        sum.synacks += synacks;
        sum.open_at_accept = max_option(sum.open_at_accept, open_at_accept);
        sum.open_at_turnaway = match (sum.open_at_turnaway, open_at_turnaway) {
            (Some((a_min, a_max)), Some((b_min, b_max))) => Some((a_min.min(b_min), a_max.max(b_max))),
            (a, b) => a.or(b),
        };
        sum.down = match (sum.down, down) {
            (Some(a), Some(b)) => Some(if (b.since_ms, b.turnaways) > (a.since_ms, a.turnaways) { b } else { a }),
            (a, b) => a.or(b),
        };
        sum.up_at_end |= synacks > 0 && down.is_none();
    }

    /// `tunnel`: the tunnel `key` was counted in (its tenant), from the run's numbering.
    fn add_reset(&mut self, key: &FlowKey, resets: u64, tunnel: Option<ServiceTunnel>) {
        let class = ResetClass(key.class);
        let context = ResetContext(key.context);
        let tally = Tally { resets, connections: if class.first() { resets.min(1) } else { 0 } };
        let (server, client) = if class.server() {
            ((key.src_ip(), key.sport), (key.dst_ip(), key.dport))
        } else {
            ((key.dst_ip(), key.dport), (key.src_ip(), key.sport))
        };
        let service = ServiceAddr { addr: server.0, port: server.1, tunnel };
        let client = (client.0, tunnel);
        if let Some(&talked_to) = self.nat_lost.get(&rst_tuple(key)) {
            // A client's answer to a reply that reached it untranslated: the lost NAT's, whatever
            // the reply looked like (a scan's probe answered, a check's handshake reset).
            let talked_to = ServiceAddr { tunnel, ..talked_to };
            let backend = ServiceAddr { addr: key.dst_ip(), port: key.dport, tunnel };
            let tally = Tally { resets, connections: resets.min(1) };
            if let Some(evidence) = self.service_mut(talked_to) {
                evidence.nat_lost.entry(backend).or_default().add(tally);
                evidence.latest_nat_lost.entry(backend).or_default().add(tally);
            }
            return;
        }
        let act = if context.sender_reset() {
            // An answer to what the peer still sent after this side's first RST.
            self.first_acts.get(&key.flow_id()).map_or(Act::Unexplained, |&(_, _, act)| act)
        } else {
            let Some(act) = Act::of(class, context) else { return };
            let act = self.race_or_not(key, class, context, act);
            if class.side_observed() {
                if self.first_acts.len() >= self.max_entries {
                    self.first_acts.clear();
                }
                let interval = self.interval;
                let first = self.first_acts.entry(key.flow_id()).or_insert((interval, *key, act));
                if first.0 < interval || (first.0 == interval && first.1 <= *key) {
                    *first = (interval, *key, act);
                }
            }
            act
        };
        match act {
            Act::TurnAway => self.add_probe(client, service, tally, Answer::Refused),
            Act::Check => self.add_probe(client, service, tally, Answer::Open),
            Act::Stateless | Act::Abort | Act::Teardown { .. } | Act::Race => self.add_completed(client, tally),
            // A closed port's answer to what opened no connection here: no cause of its own,
            // but what a FIN, NULL or Xmas scan leaves.
            Act::Unexplained if !class.side_observed() && class.kind() == ResetKind::Refused => {
                self.add_probe(client, service, tally, Answer::ClosedUnseen)
            }
            Act::Unexplained => {}
        }
        if act == Act::Check {
            self.add_check(client.0, service, tally);
            return;
        }
        let bucket = Bucket {
            act,
            by_server: class.server(),
            ifindex: key.ifindex,
            sender: key.src_ip(),
            rst_ttl: key.rst_ttl,
            peer_ttl: key.peer_ttl,
        };
        let flow = key.flow_id();
        let gap = match act {
            Act::Teardown { after_peer_fin: false } => self.close_gaps.get(&flow).copied(),
            _ => None,
        };
        let idle_gap =
            matches!(act, Act::Stateless | Act::Abort).then(|| self.pauses.get(&rst_tuple(key)).copied()).flatten();
        let race_idle = (act == Act::Race).then(|| self.idle_before_close.get(&flow).copied()).flatten();
        let interval = self.interval;
        // A timeout is the server side's, or a device's answering for either side (its TTL
        // tells it): a client's own reset after a pause answered a late reply.
        let idle_gap = idle_gap.filter(|_| bucket.by_server || self.forged_ttl(&bucket).is_some());
        let Some(evidence) = self.service_mut(service) else { return };
        if let Some(gap) = gap {
            evidence.close_gap_ms = Some(evidence.close_gap_ms.unwrap_or(0).max(gap));
        }
        if let Some(gap) = idle_gap {
            evidence.idle.add(interval, gap, bucket, tally.resets, tally.connections);
        }
        if let Some(idle) = race_idle.filter(|_| evidence.race_idle_ms.len() < MAX_RACE_IDLE) {
            evidence.race_idle_ms.push(idle);
        }
        evidence.buckets.entry(bucket).or_default().add(tally);
        evidence.latest.entry(bucket).or_default().add(tally);
        if act == Act::TurnAway {
            evidence.interval_turned_away.add(tally);
            evidence.interval_reset_after_accept |= class.kind() == ResetKind::Handshake;
            if class.kind() == ResetKind::Refused {
                evidence.interval_refused.add(tally);
            }
        }
    }

    /// Whether a reset after its sender's own FIN, its peer not having closed, ended a
    /// keep-alive race: the closer had closed an idle connection and its peer used it after a
    /// pause. Where data is watched (replay) the peer's late data shows on the wire and the
    /// closer's idle time before its FIN must be a second or more (an FTP client closing right
    /// after `QUIT` and resetting the reply did not race); elsewhere (live) the pause before the
    /// reset — the local socket's, from the reset tracepoints — must be, and a kernel must say
    /// the peer's data came (a keep-alive probe or a late ACK after the close is a teardown's).
    fn race_or_not(&self, key: &FlowKey, class: ResetClass, context: ResetContext, act: Act) -> Act {
        let idle = |time: Option<&u64>| time.is_some_and(|&ms| ms >= IDLE_MIN_MS);
        let unwatched_race = class.kind() == ResetKind::Closing
            && class.side_observed()
            && context.sender_closed()
            && !context.peer_closed()
            && !context.data_watched();
        match act {
            Act::Race if !idle(self.idle_before_close.get(&key.flow_id())) => Act::Unexplained,
            Act::Unexplained
                if unwatched_race
                    && idle(self.pauses.get(&rst_tuple(key)))
                    && self.late_data.contains(&rst_tuple(key)) =>
            {
                Act::Race
            }
            act => act,
        }
    }

    fn probes_mut(&mut self, client: Client) -> Option<&mut Probes> {
        bounded_entry(&mut self.probes, client, self.max_entries)
    }

    /// A connection attempt of `client` and what `service` answered.
    fn add_probe(&mut self, client: Client, service: ServiceAddr, tally: Tally, answer: Answer) {
        if let Some(probes) = self.probes_mut(client) {
            probes.add(service, tally, answer);
        }
    }

    /// A connection of `client` that went past its handshake before it was reset.
    fn add_completed(&mut self, client: Client, tally: Tally) {
        if let Some(probes) = self.probes_mut(client) {
            probes.completed += tally.connections;
        }
    }

    fn add_check(&mut self, client: IpAddr, service: ServiceAddr, tally: Tally) {
        if let Some(pattern) = bounded_entry(&mut self.checks, (client, service), self.max_entries) {
            pattern.add(self.interval, tally);
        }
    }

    /// The down and limit rules need the whole interval: its accepts, its turn-aways and the
    /// open counts at both.
    fn close_interval(&mut self) {
        let (interval, start_ms) = (self.interval, self.interval_start_ms);
        for evidence in self.services.values_mut() {
            let ServiceSampleSum { attempts, synacks, open_at_accept, open_at_turnaway, down: run, up_at_end } =
                evidence.interval;
            let run = run.filter(|_| !up_at_end);
            let turned_away = evidence.interval_turned_away;
            let refused = evidence.interval_refused;
            if let Some(down) = &mut evidence.down {
                down.latest_turned_away = Tally::default();
                down.latest_unanswered = 0;
            }
            if turned_away.resets > 0 {
                match open_at_turnaway {
                    Some((min_open, _)) if min_open > 0 => {
                        // A balancer that accepts and then resets what is over its limit had the
                        // N held connections open at that connection's own accept too: an accept
                        // at N is then the turned-away one's, only one above N contradicts.
                        let reset_after_accept = evidence.interval_reset_after_accept;
                        let below_every_accept = open_at_accept
                            .is_none_or(|accept| accept < min_open || (reset_after_accept && accept == min_open));
                        if below_every_accept {
                            evidence.limit_turned_away.add(turned_away);
                            evidence.limit = Some(min_open);
                        } else {
                            evidence.limit_contradicted = true;
                        }
                    }
                    _ if synacks > 0 => evidence.limit_contradicted = true,
                    _ => {}
                }
            }
            if synacks > 0 {
                evidence.last_accept = Some(interval);
                // The interval's counts do not order its accepts and refusals; the tracker's run
                // does: begun after the interval's last accept, the service died inside it.
                evidence.down = run.filter(|_| refused.resets > 0).map(|run| {
                    let tally = died_after_accept(run, refused);
                    Down { since_ms: run.since_ms, turned_away: tally, latest_turned_away: tally, ..Down::default() }
                });
                continue;
            }
            if evidence.last_accept.is_none() {
                continue;
            }
            // Turn-aways with connections still open are the limit's, not a service gone down;
            // without open counts the two cannot be told apart, so neither is claimed.
            let nothing_open = matches!(open_at_turnaway, Some((_, 0)));
            let unanswered = attempts.saturating_sub(turned_away.connections);
            let refusing = refused.resets > 0 && nothing_open;
            if refusing || (turned_away.resets == 0 && unanswered > 0) {
                // When the tracker saw the first refusal, else (attempts left unanswered, which
                // it does not time) the interval's start.
                let since_ms = run.map_or(start_ms, |run| run.since_ms);
                let down = evidence.down.get_or_insert(Down { since_ms, ..Down::default() });
                if refusing {
                    down.turned_away.add(refused);
                    down.latest_turned_away = refused;
                }
                down.unanswered += unanswered;
                down.latest_unanswered = unanswered;
            }
        }
    }

    /// The verdicts that hold for the whole run so far, most resets first.
    pub fn verdicts(&self) -> Vec<Verdict> {
        self.all_verdicts(true)
    }

    /// The verdicts that hold for the latest interval: the run's causes, counting only the
    /// resets that interval saw.
    pub fn interval_verdicts(&self) -> Vec<Verdict> {
        self.all_verdicts(false)
    }

    fn all_verdicts(&self, whole_run: bool) -> Vec<Verdict> {
        let mut verdicts = Vec::new();
        let scans = self.scans(whole_run);
        let mut scanned: HashMap<ServiceAddr, Tally> = HashMap::new();
        for (found, tunnel) in &scans {
            for (service, tally) in &found.turned_away {
                scanned.entry(*service).or_default().add(*tally);
            }
            let Scan { counts, host, tally, turned_away: _ } = found;
            let service = ServiceAddr { addr: *host, port: 0, tunnel: *tunnel };
            verdicts.push(Verdict::new(Finding::Scan(*counts), service, tally.counts()));
        }
        for (service, evidence) in &self.services {
            let excluded = scanned.get(service).copied().unwrap_or_default();
            if whole_run {
                self.service_verdicts(*service, evidence, &evidence.buckets, true, excluded, &mut verdicts);
                continue;
            }
            // Most services are quiet in any one interval: only those with something new are
            // weighed again, so an interval costs what it brought, not what the run holds.
            let quiet = evidence.latest.is_empty()
                && evidence.down.is_none_or(|down| down.latest_unanswered == 0 && down.latest_turned_away.resets == 0);
            if !quiet {
                self.service_verdicts(*service, evidence, &evidence.latest, false, excluded, &mut verdicts);
            }
        }
        for ((client, service), pattern) in &self.checks {
            let tally = if whole_run {
                Tally { resets: pattern.resets, connections: pattern.connections }
            } else {
                pattern.latest
            };
            let scanner = |(found, tunnel): &(Scan, _)| (found.counts.client, *tunnel) == (*client, service.tunnel);
            if tally.resets == 0 || scans.iter().any(scanner) {
                continue;
            }
            if let Some(verdict) = health_check(*client, *service, pattern, tally) {
                verdicts.push(verdict);
            }
        }
        self.corroborate(&mut verdicts);
        sort(&mut verdicts);
        verdicts
    }

    /// The clients whose probes make a scan (see [`super::scan`]), each with its tunnel.
    fn scans(&self, whole_run: bool) -> Vec<(Scan, Option<ServiceTunnel>)> {
        // An interval weighs again only the clients it brought probes of.
        let mut candidates: Vec<(&Client, &Probes)> = self
            .probes
            .iter()
            .filter(|(_, probes)| probes.may_be_scan() && (whole_run || probes.probed_lately()))
            .collect();
        if candidates.is_empty() {
            return Vec::new();
        }
        candidates.sort_by_key(|(client, _)| **client);
        // The client each host turned away or answered, if only one: a silent port is a client's
        // only where it is the one client there. Hosts, like clients, are their tenant's.
        let mut sole_client: HashMap<Client, Option<Client>> = HashMap::new();
        for (client, probes) in &self.probes {
            for host in probes.hosts() {
                sole_client
                    .entry((host, client.1))
                    .and_modify(|sole| {
                        if *sole != Some(*client) {
                            *sole = None;
                        }
                    })
                    .or_insert(Some(*client));
            }
        }
        // The silent ports of those hosts, found in one pass over the services.
        let mut silent: HashMap<Client, Vec<ServiceAddr>> = HashMap::new();
        for (service, evidence) in &self.services {
            let unanswered = evidence.attempts > 0 && evidence.synacks == 0 && evidence.buckets.is_empty();
            let host = (service.addr, service.tunnel);
            if unanswered && sole_client.get(&host).is_some_and(Option::is_some) {
                silent.entry(host).or_default().push(*service);
            }
        }
        candidates
            .into_iter()
            .filter_map(|(client, probes)| {
                let theirs = |host: &IpAddr| match sole_client.get(&(*host, client.1)) {
                    Some(Some(sole)) if sole == client => silent.get(&(*host, client.1)).map_or(&[][..], Vec::as_slice),
                    _ => &[],
                };
                scan(client.0, probes, theirs, whole_run).map(|found| (found, client.1))
            })
            .collect()
    }

    /// The TTL the RST `key`'s claimed sender's own packets carry: its handshake's, or what the
    /// host showed on the interface in other connections; `None` when neither is known. Flow
    /// records tell forged resets by it, as the verdicts do.
    pub fn own_ttl(&self, key: &FlowKey) -> Option<u8> {
        match key.peer_ttl {
            0 => self.host_ttls.get(&(key.ifindex, key.src_ip())).copied(),
            ttl => Some(ttl),
        }
    }

    /// Whether `bucket`'s resets carry a TTL their claimed sender's own packets do not.
    fn forged_ttl(&self, bucket: &Bucket) -> Option<u8> {
        let own = match bucket.peer_ttl {
            0 => *self.host_ttls.get(&(bucket.ifindex, bucket.sender))?,
            ttl => ttl,
        };
        forged(bucket.rst_ttl, own).then_some(own)
    }

    /// The idle timeout a cluster of gaps shows: forged when its resets were (the device that
    /// forgot the connections answered for the server), else by the side that sent them. The
    /// forging device was this host's own firewall when it rejected segments of the service
    /// (`firewall`, per hook): the resets are then the firewall's, taken from its tallies, at
    /// the hook that rejected most.
    fn idle_timeout(
        &self,
        service: ServiceAddr,
        cluster: &Cluster<Bucket>,
        firewall: &mut BTreeMap<NetfilterHook, Tally>,
    ) -> Option<Verdict> {
        let mut tally = Tally::default();
        for (_, resets, connections) in &cluster.members {
            tally.add(Tally { resets: *resets, connections: *connections });
        }
        let (first, _, _) = cluster.members.first()?;
        let forged = self.forged_ttl(first).map(|own| (first.rst_ttl, own));
        let hook = forged.and_then(|_| {
            let (&hook, rejected) = firewall.iter_mut().filter(|(_, t)| t.resets > 0).max_by_key(|(_, t)| t.resets)?;
            *rejected = rejected.minus(tally);
            Some(hook)
        });
        let finding = Finding::IdleTimeout { idle_ms: cluster.idle_ms, forged, hook };
        let verdict = Verdict::new(finding, service, tally.counts());
        Some(match forged {
            Some(_) => verdict,
            None => verdict.by(if first.by_server { Side::Server } else { Side::Client }),
        })
    }

    fn service_verdicts(
        &self,
        service: ServiceAddr,
        evidence: &ServiceEvidence,
        buckets: &BTreeMap<Bucket, Tally>,
        whole_run: bool,
        scanned: Tally,
        out: &mut Vec<Verdict>,
    ) {
        // An idle timeout's resets are its own, not a lost state's, an abort's or a forgery's.
        let cluster = evidence.idle.cluster((!whole_run).then_some(self.interval));
        let without_idle;
        let buckets = match &cluster {
            Some(Cluster { members, .. }) => {
                let mut rest = buckets.clone();
                for (bucket, resets, connections) in members {
                    if let Some(tally) = rest.get_mut(bucket) {
                        *tally = tally.minus(Tally { resets: *resets, connections: *connections });
                    }
                }
                without_idle = rest;
                &without_idle
            }
            None => buckets,
        };
        // The firewall's rejections, less those the idle timeout explains (this host forged
        // its resets).
        let mut firewall = if whole_run { evidence.firewall.clone() } else { evidence.latest_firewall.clone() };
        if let Some(cluster) = &cluster {
            out.extend(self.idle_timeout(service, cluster, &mut firewall));
        }
        let mut genuine: BTreeMap<(Act, bool), Tally> = BTreeMap::new();
        let mut forged: BTreeMap<(Option<IpAddr>, u8, u8), Tally> = BTreeMap::new();
        // (A bucket the idle timeout took whole is empty.)
        for (bucket, tally) in buckets.iter().filter(|(_, tally)| tally.resets > 0) {
            if let Some(own_ttl) = self.forged_ttl(bucket) {
                // A forged client RST is told by the service it cut, and the client it claims.
                let claimed_client = (!bucket.by_server).then_some(bucket.sender);
                forged.entry((claimed_client, bucket.rst_ttl, own_ttl)).or_default().add(*tally);
                continue;
            }
            genuine.entry((bucket.act, bucket.by_server)).or_default().add(*tally);
        }
        // A scanner's refusals are its verdict's, not the service's; an overflowing queue's
        // resets are the overflow's.
        let overflowed = if whole_run { evidence.listen_overflow } else { evidence.latest_listen_overflow };
        if overflowed.resets > 0 {
            let finding = Finding::ListenOverflow { limit: evidence.listen_limit };
            out.push(Verdict::new(finding, service, overflowed.counts()));
        }
        // The firewall's refusals are its own, not a closed port's.
        let mut rejected = Tally::default();
        for (&hook, tally) in firewall.iter().filter(|(_, tally)| tally.resets > 0) {
            rejected.add(*tally);
            out.push(Verdict::new(Finding::LocalFirewall { hook }, service, tally.counts()));
        }
        // The listener's resets of an overflow answer the client's first data on a connection
        // the queue had no room for: without ACK, they read as lost state on the wire.
        let mut overflow_left = overflowed;
        for act in [Act::Stateless, Act::TurnAway] {
            if let Some(tally) = genuine.get_mut(&(act, true)) {
                let taken = Tally {
                    resets: tally.resets.min(overflow_left.resets),
                    connections: tally.connections.min(overflow_left.connections),
                };
                *tally = tally.minus(taken);
                overflow_left = overflow_left.minus(taken);
            }
        }
        let turned_away =
            genuine.get(&(Act::TurnAway, true)).copied().unwrap_or_default().minus(scanned).minus(rejected);
        if turned_away.resets > 0 && evidence.synacks == 0 {
            out.push(Verdict::new(Finding::NoListener, service, turned_away.counts()));
        }
        if let Some(down) = evidence.down {
            let (tally, unanswered) = if whole_run {
                (down.turned_away, down.unanswered)
            } else {
                (down.latest_turned_away, down.latest_unanswered)
            };
            if tally.resets > 0 || unanswered > 0 {
                let finding = Finding::WentDown { since_ms: down.since_ms, unanswered };
                out.push(Verdict::new(finding, service, tally.counts()));
            }
        }
        if let (Some(limit), false) = (evidence.limit, evidence.limit_contradicted) {
            let tally = if whole_run { evidence.limit_turned_away } else { turned_away };
            if evidence.synacks > 0 && tally.resets > 0 {
                out.push(Verdict::new(Finding::ConnectionLimit { open: limit }, service, tally.counts()));
            }
        }
        // Per side: who aborted, lost the connection or reset it while closing.
        let mut teardowns: BTreeMap<bool, (Tally, Finding)> = BTreeMap::new();
        for (&(act, by_server), tally) in &genuine {
            let side = if by_server { Side::Server } else { Side::Client };
            match act {
                Act::Teardown { after_peer_fin } => {
                    let empty = Finding::Teardown { after_peer_fin: 0, after_own_fin: 0, gap_ms: None };
                    let (sum, finding) = teardowns.entry(by_server).or_insert((Tally::default(), empty));
                    sum.add(*tally);
                    if let Finding::Teardown { after_peer_fin: peer, after_own_fin: own, gap_ms } = finding {
                        *if after_peer_fin { peer } else { own } += tally.connections;
                        if !after_peer_fin {
                            *gap_ms = evidence.close_gap_ms;
                        }
                    }
                }
                Act::Race if tally.resets > 0 => {
                    let finding = Finding::KeepaliveRace { idle_ms: median(&evidence.race_idle_ms) };
                    out.push(Verdict::new(finding, service, tally.counts()).by(side));
                }
                _ => {
                    if let Some(finding) = act.finding().filter(|_| tally.resets > 0) {
                        out.push(Verdict::new(finding, service, tally.counts()).by(side));
                    }
                }
            }
        }
        let nat_lost = if whole_run { &evidence.nat_lost } else { &evidence.latest_nat_lost };
        for (&backend, tally) in nat_lost {
            out.push(Verdict::new(Finding::NatLost { backend }, service, tally.counts()));
        }
        for (by_server, (tally, finding)) in teardowns {
            if tally.resets > 0 {
                let side = if by_server { Side::Server } else { Side::Client };
                out.push(Verdict::new(finding, service, tally.counts()).by(side));
            }
        }
        for ((claimed_client, rst_ttl, own_ttl), tally) in forged {
            let finding = Finding::Middlebox { rst_ttl, peer_ttl: own_ttl, claimed_client };
            out.push(Verdict::new(finding, service, tally.counts()));
        }
    }
}

/// The median of `values`, `None` when there are none.
fn median(values: &[u64]) -> Option<u64> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied()
}

/// Whether an RST arriving with `rst_ttl` was forged in between, its claimed sender's own
/// packets arriving with `own_ttl`. A device in between is nearer than the sender: with the
/// same initial TTL its packets arrive with more, with another initial TTL far off. One less
/// is the sender's own RST seen again one hop on: a capture of several interfaces at once
/// (`tcpdump -i any` on a router) holds each forwarded segment twice.
pub fn forged(rst_ttl: u8, own_ttl: u8) -> bool {
    rst_ttl != own_ttl && rst_ttl != own_ttl.wrapping_sub(1)
}

/// `map`'s value for `key`, a new default one while `map` holds fewer than `max` entries; `None`
/// when it is full: what is not tracked gets no verdict rather than a partial one.
fn bounded_entry<K: Hash + Eq, V: Default>(map: &mut HashMap<K, V>, key: K, max: usize) -> Option<&mut V> {
    let room = map.len() < max;
    match map.entry(key) {
        Entry::Occupied(entry) => Some(entry.into_mut()),
        Entry::Vacant(entry) if room => Some(entry.insert(V::default())),
        Entry::Vacant(_) => None,
    }
}

/// The turn-aways of an interval with accepts that came after its last one: the run's, as the
/// tracker counted them (connections), out of the interval's (`turned_away`); their resets are
/// the interval's when the run holds all its turn-aways, else one each (a turn-away's first
/// RST: repeats are not told apart from earlier refusals').
fn died_after_accept(run: DownRun, turned_away: Tally) -> Tally {
    let connections = run.turnaways.min(turned_away.connections);
    let resets = if connections == turned_away.connections { turned_away.resets } else { connections };
    Tally { resets, connections }
}

fn max_option(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}
