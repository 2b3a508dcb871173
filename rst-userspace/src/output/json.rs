//! The `--format json` wire types: the contract other tools parse (add fields, never rename
//! or drop one; `tests/json_contract.rs` holds every key path). Built from the model, read by
//! nothing inside rstwatch.

use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;

use crate::model::aggregate::{
    diagnosis,
    model::{
        AttachMode, CaptureSummary, CountingMode, Destination, Direction, Family, Flow, FlowTunnel, Interface,
        Interval, KernelEvents, KindCounts, Middlebox, Origin, PayloadSummary, PeerNetns, Pod, Process, Run, Service,
        ServiceTunnel, Side, Source, Totals, Unlisted, Verdict, Workload, WorkloadResets,
    },
};
use crate::model::{
    kernel_reason::KernelReason,
    verdict::{Finding, ScanCounts},
};

fn ms(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

#[derive(Serialize)]
pub struct InterfaceRecord<'a> {
    iface: &'a str,
    ifindex: u32,
    mode: AttachMode,
    peer_netns: Option<PeerNetnsRecord<'a>>,
}

impl<'a> From<&'a Interface> for InterfaceRecord<'a> {
    fn from(interface: &'a Interface) -> Self {
        let Interface { iface, ifindex, mode, peer_netns } = interface;
        InterfaceRecord {
            iface,
            ifindex: *ifindex,
            mode: *mode,
            peer_netns: peer_netns.as_ref().map(PeerNetnsRecord::from),
        }
    }
}

/// An interface's `peer_netns`: `{nsid, name, pid, comm, container}`.
#[derive(Serialize)]
pub struct PeerNetnsRecord<'a> {
    nsid: i32,
    name: Option<&'a str>,
    pid: Option<u32>,
    comm: Option<&'a str>,
    container: Option<&'a str>,
}

impl<'a> From<&'a PeerNetns> for PeerNetnsRecord<'a> {
    fn from(peer: &'a PeerNetns) -> Self {
        let PeerNetns { nsid, name, pid, comm, container } = peer;
        PeerNetnsRecord {
            nsid: *nsid,
            name: name.as_deref(),
            pid: *pid,
            comm: comm.as_deref(),
            container: container.as_deref(),
        }
    }
}

#[derive(Serialize)]
pub struct FlowRecord<'a> {
    iface: &'a str,
    ifindex: u32,
    family: Family,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    resets: u64,
    direction: Direction,
    kinds: KindCounts,
    with_ack: u64,
    side: Side,
    side_observed: bool,
    first: bool,
    middlebox: Option<Middlebox>,
    reasons: ReasonCounts<'a>,
    no_kernel_event: Option<u64>,
    workload: Option<WorkloadRecord<'a>>,
    origin: Option<Origin>,
    rst_payload: Option<&'a str>,
    tunnel: Option<FlowTunnel>,
}

#[derive(Serialize)]
pub struct PodRecord<'a> {
    namespace: Option<&'a str>,
    name: Option<&'a str>,
    uid: &'a str,
}

impl<'a> From<&'a Pod> for PodRecord<'a> {
    fn from(pod: &'a Pod) -> Self {
        let Pod { namespace, name, uid } = pod;
        PodRecord { namespace: namespace.as_deref(), name: name.as_deref(), uid }
    }
}

#[derive(Serialize)]
pub struct ProcessRecord<'a> {
    pid: u32,
    comm: &'a str,
}

/// A flow's workload: `{cgroup, unit, pod, container, processes}`.
#[derive(Serialize)]
pub struct WorkloadRecord<'a> {
    cgroup: &'a str,
    unit: Option<&'a str>,
    pod: Option<PodRecord<'a>>,
    container: Option<&'a str>,
    processes: Vec<ProcessRecord<'a>>,
}

impl<'a> From<&'a Workload> for WorkloadRecord<'a> {
    fn from(workload: &'a Workload) -> Self {
        let Workload { cgroup, unit, pod, container, processes } = workload;
        WorkloadRecord {
            cgroup,
            unit: unit.as_deref(),
            pod: pod.as_ref().map(PodRecord::from),
            container: container.as_deref(),
            processes: processes.iter().map(|Process { pid, comm }| ProcessRecord { pid: *pid, comm }).collect(),
        }
    }
}

/// One entry of the summary's `workloads`.
#[derive(Serialize)]
pub struct WorkloadResetsRecord<'a> {
    cgroup: &'a str,
    unit: Option<&'a str>,
    pod: Option<PodRecord<'a>>,
    container: Option<&'a str>,
    sent: u64,
    received: u64,
}

impl<'a> From<&'a WorkloadResets> for WorkloadResetsRecord<'a> {
    fn from(resets: &'a WorkloadResets) -> Self {
        let WorkloadResets { workload, sent, received } = resets;
        let WorkloadRecord { cgroup, unit, pod, container, processes: _ } = WorkloadRecord::from(workload);
        WorkloadResetsRecord { cgroup, unit, pod, container, sent: *sent, received: *received }
    }
}

impl<'a> From<&'a Flow> for FlowRecord<'a> {
    fn from(flow: &'a Flow) -> Self {
        let Flow {
            iface,
            ifindex,
            family,
            src,
            sport,
            dst,
            dport,
            resets,
            direction,
            kinds,
            with_ack,
            side,
            side_observed,
            first,
            middlebox,
            reasons,
            no_kernel_event,
            workload,
            origin,
            rst_payload,
            tunnel,
        } = flow;
        FlowRecord {
            iface,
            ifindex: *ifindex,
            family: *family,
            src: *src,
            sport: *sport,
            dst: *dst,
            dport: *dport,
            resets: *resets,
            direction: *direction,
            kinds: *kinds,
            with_ack: *with_ack,
            side: *side,
            side_observed: *side_observed,
            first: *first,
            middlebox: *middlebox,
            reasons: ReasonCounts(reasons),
            no_kernel_event: *no_kernel_event,
            workload: workload.as_ref().map(WorkloadRecord::from),
            origin: *origin,
            rst_payload: rst_payload.as_deref(),
            tunnel: *tunnel,
        }
    }
}

#[derive(Serialize)]
pub struct ServiceRecord<'a> {
    iface: &'a str,
    ifindex: u32,
    addr: IpAddr,
    port: u16,
    attempts: u64,
    synacks: u64,
    resets: u64,
    refused: u64,
    refused_share: f64,
    kinds: KindCounts,
    /// Its resets by the pause before them: buckets with any, shortest first.
    idle_gaps: Vec<PauseBucket>,
    tunnel: Option<ServiceTunnel>,
}

/// Resets whose pause was at most `le_ms` (and more than the previous bucket's); `le_ms` null:
/// longer than the last bound.
#[derive(Serialize)]
pub struct PauseBucket {
    le_ms: Option<u64>,
    resets: u64,
}

impl<'a> From<&'a Service> for ServiceRecord<'a> {
    fn from(service: &'a Service) -> Self {
        let Service {
            iface,
            ifindex,
            addr,
            port,
            attempts,
            synacks,
            resets,
            refused,
            refused_share,
            kinds,
            pauses,
            tunnel,
        } = service;
        ServiceRecord {
            iface,
            ifindex: *ifindex,
            addr: *addr,
            port: *port,
            attempts: *attempts,
            synacks: *synacks,
            resets: *resets,
            refused: *refused,
            refused_share: *refused_share,
            kinds: *kinds,
            idle_gaps: pauses.buckets().map(|(le_ms, resets)| PauseBucket { le_ms, resets }).collect(),
            tunnel: *tunnel,
        }
    }
}

#[derive(Serialize)]
pub struct SenderCount {
    src: IpAddr,
    resets: u64,
}

#[derive(Serialize)]
pub struct DestinationRecord {
    dst: IpAddr,
    resets: u64,
    share: f64,
    flows: u64,
    senders: Vec<SenderCount>,
}

impl From<&Destination> for DestinationRecord {
    fn from(destination: &Destination) -> Self {
        let Destination { dst, resets, share, flows, senders } = destination;
        DestinationRecord {
            dst: *dst,
            resets: *resets,
            share: *share,
            flows: *flows,
            senders: senders.iter().map(|&(src, resets)| SenderCount { src, resets }).collect(),
        }
    }
}

#[derive(Serialize)]
pub struct PortCount {
    port: u16,
    resets: u64,
}

#[derive(Serialize)]
pub struct DestinationCount {
    dst: IpAddr,
    resets: u64,
}

#[derive(Serialize)]
pub struct SourceRecord {
    src: IpAddr,
    resets: u64,
    rate: f64,
    share: f64,
    flows: u64,
    overflow: u64,
    ports: Vec<PortCount>,
    destinations: Vec<DestinationCount>,
    middlebox: u64,
    kinds: KindCounts,
}

impl From<&Source> for SourceRecord {
    fn from(source: &Source) -> Self {
        let Source { src, resets, rate, share, flows, overflow, ports, destinations, middlebox, kinds } = source;
        SourceRecord {
            src: *src,
            resets: *resets,
            rate: *rate,
            share: *share,
            flows: *flows,
            overflow: *overflow,
            ports: ports.iter().map(|&(port, resets)| PortCount { port, resets }).collect(),
            destinations: destinations.iter().map(|&(dst, resets)| DestinationCount { dst, resets }).collect(),
            middlebox: *middlebox,
            kinds: *kinds,
        }
    }
}

/// A flow's kernel reasons as `{"NAME": count}`, in name order.
pub struct ReasonCounts<'a>(&'a BTreeMap<KernelReason, u64>);

impl Serialize for ReasonCounts<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(reason, count)| (reason.name(), count)))
    }
}

#[derive(Serialize)]
pub struct KernelEventsRecord<'a> {
    available: bool,
    /// Why not, when unavailable.
    reason: Option<&'a str>,
    matched: u64,
    elsewhere: u64,
}

impl<'a> From<&'a KernelEvents> for KernelEventsRecord<'a> {
    fn from(events: &'a KernelEvents) -> Self {
        let KernelEvents { availability, matched, elsewhere } = events;
        KernelEventsRecord {
            available: availability.is_available(),
            reason: availability.why_not(),
            matched: *matched,
            elsewhere: *elsewhere,
        }
    }
}

/// One cause of one service's resets (`verdicts`): the `cause` values are a contract.
#[derive(Serialize)]
pub struct VerdictRecord {
    cause: &'static str,
    /// The service (for `middlebox`, the address and port the forged resets claim).
    addr: IpAddr,
    port: u16,
    resets: u64,
    connections: u64,
    text: String,
    benign: bool,
    limit: Option<u64>,
    since_ms: Option<u64>,
    rst_ttl: Option<u8>,
    peer_ttl: Option<u8>,
    unanswered: u64,
    client: Option<IpAddr>,
    /// The kernel's reason where this host's stack sent the resets (`NO_SOCKET`, …).
    kernel_reason: Option<String>,
    /// Which side sent the resets where the cause depends on it (`app_abort`, `state_lost`,
    /// `teardown`): `"server"` or `"client"`; null otherwise.
    side: Option<Side>,
    /// `teardown`: connections reset after the peer's FIN, and after the resetter's own FIN
    /// (answering the peer's late segments); null otherwise.
    after_peer_fin: Option<u64>,
    after_own_fin: Option<u64>,
    /// `teardown`: the longest time between a resetter's own FIN and its reset of a late
    /// segment, ms, where it is seen (`replay`); null otherwise.
    after_close_ms: Option<u64>,
    /// `scan`: what the scanner (`client`) probed and how it was answered; null otherwise.
    scan: Option<ScanRecord>,
    /// `idle_timeout`: the typical idle gap before the resets; `keepalive_race`: how long the
    /// closing side's connections had been idle before its FIN, where seen; ms. Null otherwise.
    idle_ms: Option<u64>,
    /// `nat_lost`: the untranslated address and port the replies came from; null otherwise.
    backend: Option<EndpointRecord>,
    /// `local_firewall`: the netfilter hook that rejected (`prerouting`, `input`, `forward`,
    /// `output`, `postrouting`); null otherwise.
    hook: Option<&'static str>,
    /// The tunnel the service was reached through (`addr` is the inner address), as in
    /// `services[].tunnel`; null outside tunnels.
    tunnel: Option<ServiceTunnel>,
}

/// An address and port.
#[derive(Serialize)]
pub struct EndpointRecord {
    addr: IpAddr,
    port: u16,
}

/// A scan verdict's counts.
#[derive(Serialize)]
pub struct ScanRecord {
    /// Distinct ports and hosts probed.
    ports: u64,
    hosts: u64,
    /// Targets (host and port) that refused, that answered and were reset by the scanner at
    /// once, and that stayed silent.
    refused: u64,
    open: u64,
    silent: u64,
    /// The scanner's connections that went past the handshake before a reset.
    completed: u64,
}

impl From<&Verdict> for VerdictRecord {
    fn from(verdict: &Verdict) -> Self {
        let Verdict { finding, service, resets, connections, side, kernel_reason } = verdict;
        let mut record = VerdictRecord {
            cause: finding.cause().name(),
            addr: service.addr,
            port: service.port,
            resets: *resets,
            connections: *connections,
            text: verdict.text(),
            benign: verdict.benign(),
            limit: None,
            since_ms: None,
            rst_ttl: None,
            peer_ttl: None,
            unanswered: 0,
            client: None,
            kernel_reason: kernel_reason.as_ref().map(ToString::to_string),
            side: *side,
            after_peer_fin: None,
            after_own_fin: None,
            after_close_ms: None,
            scan: None,
            idle_ms: None,
            backend: None,
            hook: None,
            tunnel: service.tunnel,
        };
        match *finding {
            Finding::NoListener | Finding::StateLost | Finding::AppAbort => {}
            Finding::ConnectionLimit { open } => record.limit = Some(open),
            Finding::WentDown { since_ms, unanswered } => {
                (record.since_ms, record.unanswered) = (Some(since_ms), unanswered)
            }
            Finding::Middlebox { rst_ttl, peer_ttl, claimed_client } => {
                (record.rst_ttl, record.peer_ttl, record.client) = (Some(rst_ttl), Some(peer_ttl), claimed_client)
            }
            Finding::HealthCheck { client } => record.client = Some(client),
            Finding::Teardown { after_peer_fin, after_own_fin, gap_ms } => {
                (record.after_peer_fin, record.after_own_fin) = (Some(after_peer_fin), Some(after_own_fin));
                record.after_close_ms = gap_ms;
            }
            Finding::Scan(ScanCounts { client, ports, hosts, refused, open, silent, completed }) => {
                record.client = Some(client);
                record.scan = Some(ScanRecord { ports, hosts, refused, open, silent, completed });
            }
            Finding::IdleTimeout { idle_ms, forged, hook } => {
                record.idle_ms = Some(idle_ms);
                (record.rst_ttl, record.peer_ttl) = (forged.map(|(rst, _)| rst), forged.map(|(_, peer)| peer));
                record.hook = hook.map(|hook| hook.name());
            }
            Finding::KeepaliveRace { idle_ms } => record.idle_ms = idle_ms,
            Finding::NatLost { backend } => {
                record.backend = Some(EndpointRecord { addr: backend.addr, port: backend.port })
            }
            Finding::ListenOverflow { limit } => record.limit = Some(limit),
            Finding::LocalFirewall { hook } => record.hook = Some(hook.name()),
        }
        record
    }
}

fn all<'a, T, R: From<&'a T>>(items: &'a [T]) -> Vec<R> {
    items.iter().map(R::from).collect()
}

/// One `interval` line.
#[derive(Serialize)]
pub struct IntervalRecord<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    seq: u64,
    time: String,
    elapsed_ms: f64,
    totals: Totals,
    rate: f64,
    flows_seen: usize,
    flow_resets: u64,
    overflowed: bool,
    sources: Vec<SourceRecord>,
    flows: Vec<FlowRecord<'a>>,
    services: Vec<ServiceRecord<'a>>,
    destinations: Vec<DestinationRecord>,
    verdicts: Vec<VerdictRecord>,
    workloads: Vec<WorkloadResetsRecord<'a>>,
}

impl<'a> From<&'a Interval> for IntervalRecord<'a> {
    fn from(interval: &'a Interval) -> Self {
        let Interval {
            seq,
            ended,
            elapsed,
            totals,
            flows_seen,
            flow_resets,
            sources,
            flows,
            services,
            destinations,
            verdicts,
            // The table's folding; the JSON lists every flow as it is.
            conversations: _,
            workloads,
        } = interval;
        IntervalRecord {
            kind: "interval",
            seq: *seq,
            time: humantime::format_rfc3339_millis(*ended).to_string(),
            elapsed_ms: ms(*elapsed),
            totals: *totals,
            rate: interval.rate(),
            flows_seen: *flows_seen,
            flow_resets: *flow_resets,
            overflowed: totals.overflow > 0,
            sources: all(sources),
            flows: all(flows),
            services: all(services),
            destinations: all(destinations),
            verdicts: all(verdicts),
            workloads: all(workloads),
        }
    }
}

/// The `summary` line.
#[derive(Serialize)]
pub struct SummaryRecord<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    duration_ms: f64,
    intervals: u64,
    interfaces: Vec<InterfaceRecord<'a>>,
    /// How the kernel side counted: `"per-cpu"` or `"atomic"` (see `--counting`); null offline.
    counting: Option<CountingMode>,
    totals: Totals,
    overflowed: bool,
    unlisted: Unlisted,
    sources: Vec<SourceRecord>,
    flows: Vec<FlowRecord<'a>>,
    destinations: Vec<DestinationRecord>,
    services: Vec<ServiceRecord<'a>>,
    kernel_events: KernelEventsRecord<'a>,
    diagnosis: Vec<String>,
    verdicts: Vec<VerdictRecord>,
    workloads: Vec<WorkloadResetsRecord<'a>>,
    /// `--capture`: null without it.
    capture: Option<CaptureRecord<'a>>,
    /// Live runs without `--capture`: null in replay and with it.
    rst_payloads: Option<PayloadsRecord>,
}

/// The summary's `rst_payloads`: `handed_over + dropped` is the RSTs with data counted.
#[derive(Serialize)]
pub struct PayloadsRecord {
    handed_over: u64,
    dropped: u64,
    ring_full: u64,
    unreadable: u64,
}

impl From<&PayloadSummary> for PayloadsRecord {
    fn from(payloads: &PayloadSummary) -> Self {
        let PayloadSummary { handed_over, ring_full, unreadable } = *payloads;
        PayloadsRecord { handed_over, dropped: ring_full + unreadable, ring_full, unreadable }
    }
}

/// The summary's `capture`: `written + dropped` is the resets counted.
#[derive(Serialize)]
pub struct CaptureRecord<'a> {
    file: &'a str,
    files: &'a [String],
    written: u64,
    dropped: u64,
    over_budget: u64,
    ring_full: u64,
    not_written: u64,
    error: Option<&'a str>,
}

impl<'a> From<&'a CaptureSummary> for CaptureRecord<'a> {
    fn from(capture: &'a CaptureSummary) -> Self {
        let CaptureSummary { file, files, written, dropped, over_budget, ring_full, not_written, error } = capture;
        CaptureRecord {
            file,
            files,
            written: *written,
            dropped: *dropped,
            over_budget: *over_budget,
            ring_full: *ring_full,
            not_written: *not_written,
            error: error.as_deref(),
        }
    }
}

impl<'a> From<&'a Run> for SummaryRecord<'a> {
    fn from(run: &'a Run) -> Self {
        let Run {
            elapsed,
            intervals,
            interfaces,
            counting,
            totals,
            unlisted,
            sources,
            flows,
            destinations,
            services,
            kernel_events,
            verdicts,
            conversations: _,
            workloads,
            capture,
            rst_payloads,
        } = run;
        SummaryRecord {
            kind: "summary",
            duration_ms: ms(*elapsed),
            intervals: *intervals,
            interfaces: all(interfaces),
            counting: *counting,
            totals: *totals,
            overflowed: totals.overflow > 0,
            unlisted: *unlisted,
            sources: all(sources),
            flows: all(flows),
            destinations: all(destinations),
            services: all(services),
            kernel_events: kernel_events.into(),
            diagnosis: diagnosis::sentences(run),
            verdicts: all(verdicts),
            workloads: all(workloads),
            capture: capture.as_ref().map(CaptureRecord::from),
            rst_payloads: rst_payloads.as_ref().map(PayloadsRecord::from),
        }
    }
}
