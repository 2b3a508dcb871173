//! The run as rstwatch understands it: typed records the aggregator builds and every output
//! (table, JSON Lines, metrics, the TUI) reads. Domain values are enums; their serde names are
//! the strings the JSON contract has always carried.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use rst_common::{
    wire::{ResetKind, TunnelKind, DIRECTION_TX, FAMILY_IPV4},
    Counters, FlowKey,
};
use serde::{ser::SerializeMap as _, Serialize, Serializer};

pub use crate::model::verdict::Verdict;
use crate::{availability::Availability, cmd::replay::link::Link, load::Hook, model::kernel_reason::KernelReason};

/// Gives each enum one name a value, written once: `name()` returns it, and it is the value's
/// JSON form (the contract strings).
macro_rules! named {
    ($($enum:ident { $($variant:ident => $name:literal),+ })+) => {
        $(
            impl $enum {
                pub const fn name(self) -> &'static str {
                    match self {
                        $($enum::$variant => $name),+
                    }
                }
            }
        )+
        serialized_by_name!($($enum),+);
    };
}

/// Serializes each enum as its `name()`.
macro_rules! serialized_by_name {
    ($($enum:ident),+) => {
        $(
            impl Serialize for $enum {
                fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                    serializer.serialize_str(self.name())
                }
            }
        )+
    };
}

/// What a flow's tunnel was: one of the kinds the header walk knows (named in one place,
/// [`TunnelKind::name`]), or a tunnel the kernel's table had no room to number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TunnelType {
    Known(TunnelKind),
    Unrecorded,
}

impl TunnelType {
    pub const fn name(self) -> &'static str {
        match self {
            TunnelType::Known(kind) => kind.name(),
            TunnelType::Unrecorded => "unrecorded",
        }
    }
}

serialized_by_name!(TunnelType);

/// The tunnel a flow's segments came through: the flow's addresses and ports are the inner
/// ones. `vni` is the VXLAN / Geneve VNI or the GRE key (`None` when the tunnel has none); the
/// outer addresses are `None` only for an unrecorded tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct FlowTunnel {
    #[serde(rename = "type")]
    pub kind: TunnelType,
    pub vni: Option<u32>,
    pub outer_src: Option<IpAddr>,
    pub outer_dst: Option<IpAddr>,
}

named! {
    Origin { Application => "application", Kernel => "kernel" }
    Direction { Rx => "rx", Tx => "tx" }
    Side { Client => "client", Server => "server" }
    Family { Ipv4 => "ipv4", Ipv6 => "ipv6" }
}

/// Which way the RSTs went through the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// The interface received them.
    Rx,
    /// This host sent them (TC egress).
    Tx,
}

impl Direction {
    pub fn of(key: &FlowKey) -> Direction {
        if key.direction == DIRECTION_TX {
            Direction::Tx
        } else {
            Direction::Rx
        }
    }
}

/// The role of the RSTs' sender in the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    /// It sent the SYN.
    Client,
    Server,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn of(key: &FlowKey) -> Family {
        if key.family == FAMILY_IPV4 {
            Family::Ipv4
        } else {
            Family::Ipv6
        }
    }
}

/// How the kernel side counted (see `--counting`): decided once, when the programs were loaded.
pub use crate::load::CountingMode;

/// How an interface is watched: a live hook, or the link type of a capture file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Live(Hook),
    Capture(Link),
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Live(hook) => hook.as_str(),
            AttachMode::Capture(link) => link.as_str(),
        }
    }
}

serialized_by_name!(AttachMode);

/// An interface of the run.
#[derive(Debug, Clone)]
pub struct Interface {
    pub iface: String,
    pub ifindex: u32,
    pub mode: AttachMode,
    /// Where the other end of the link is, when it is in another network namespace (a veth's
    /// peer in a container's).
    pub peer_netns: Option<PeerNetns>,
}

impl Interface {
    /// A live interface; its peer's namespace is looked up by the caller (once, on attach).
    pub fn of(attachment: &crate::load::Attachment, peer_netns: Option<PeerNetns>) -> Self {
        Interface {
            iface: attachment.iface.clone(),
            ifindex: attachment.ifindex,
            mode: AttachMode::Live(attachment.hook),
            peer_netns,
        }
    }
}

/// The network namespace a link's peer is in, named as far as this host can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerNetns {
    /// The kernel's id of that namespace relative to ours (`IFLA_LINK_NETNSID`).
    pub nsid: i32,
    /// Its name under `/run/netns` (`ip netns`), if it has one.
    pub name: Option<String>,
    /// A process in it (the lowest pid) and its `comm`.
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// The container id in that process's cgroup path.
    pub container: Option<String>,
}

/// RSTs by [`ResetKind`]: one slot per kind, so a new kind needs no new field anywhere.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindCounts([u64; ResetKind::ALL.len()]);

impl KindCounts {
    pub fn get(&self, kind: ResetKind) -> u64 {
        self.0[kind as usize]
    }

    pub fn add(&mut self, kind: ResetKind, resets: u64) {
        self.0[kind as usize] += resets;
    }

    pub fn merge(&mut self, other: &KindCounts) {
        for kind in ResetKind::ALL {
            self.add(kind, other.get(kind));
        }
    }

    /// The kinds with a count, in handshake order.
    pub fn present(&self) -> impl Iterator<Item = (ResetKind, u64)> + '_ {
        ResetKind::ALL.into_iter().map(|kind| (kind, self.get(kind))).filter(|(_, count)| *count > 0)
    }

    /// The kind most of the resets were; ties go to the earlier in the handshake.
    pub fn dominant(&self) -> Option<ResetKind> {
        let mut best: Option<(ResetKind, u64)> = None;
        for (kind, count) in self.present() {
            if best.is_none_or(|(_, most)| count > most) {
                best = Some((kind, count));
            }
        }
        best.map(|(kind, _)| kind)
    }
}

impl Serialize for KindCounts {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(ResetKind::ALL.len()))?;
        for kind in ResetKind::ALL {
            map.serialize_entry(kind.name(), &self.get(kind))?;
        }
        map.end()
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

/// RSTs that claim to come from a peer but arrived with another TTL than its handshake.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Middlebox {
    pub rst_ttl: u8,
    pub peer_ttl: u8,
    pub resets: u64,
}

/// One directional 5-tuple on one interface.
#[derive(Debug, Clone)]
pub struct Flow {
    pub iface: String,
    pub ifindex: u32,
    pub family: Family,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub resets: u64,
    pub direction: Direction,
    pub kinds: KindCounts,
    /// RSTs with ACK set.
    pub with_ack: u64,
    pub side: Side,
    /// The side comes from a SYN / SYN+ACK seen, not from the ports.
    pub side_observed: bool,
    /// This flow's RST came first in its connection.
    pub first: bool,
    pub middlebox: Option<Middlebox>,
    /// The kernel's reasons for the RSTs this host's stack sent (tx flows).
    pub reasons: BTreeMap<KernelReason, u64>,
    /// tx RSTs with no kernel event: made by something else on the host (netfilter, a proxy).
    /// `None` when kernel events are unavailable, and for rx flows.
    pub no_kernel_event: Option<u64>,
    /// The workload of the local socket that sent (tx) or received (rx) the RSTs; `None` when
    /// no local socket was involved (forwarded traffic, a kernel answer) or workloads are off.
    pub workload: Option<Workload>,
    /// tx flows: whether a socket sent them or the kernel answered for nobody; `None` for rx
    /// flows, for tx RSTs this host's TCP stack did not send (forwarded, netfilter) and when
    /// workloads are off.
    pub origin: Option<Origin>,
    /// The first bytes of the last RST payload, printable-escaped; `None` when no RST of the
    /// flow carried data (or, live, without `--capture`, which is what reads them).
    pub rst_payload: Option<String>,
    /// The tunnel the flow was inside (its tuple is the inner one); `None` on the link itself.
    pub tunnel: Option<FlowTunnel>,
}

/// Who sent a tx RST (see [`rst_common::wire::ORIGIN_APPLICATION`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// A socket: abort, linger 0, close with unread data, a listener's answer.
    Application,
    /// No socket: a closed port, an unknown connection (or only TIME_WAIT remains).
    Kernel,
}

/// A cgroup (v2) resolved to what it names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workload {
    /// The path under the cgroup2 root (`/system.slice/nginx.service`).
    pub cgroup: String,
    /// The last `*.service` / `*.scope` component.
    pub unit: Option<String>,
    pub pod: Option<Pod>,
    /// The container id of a kubelet container cgroup.
    pub container: Option<String>,
    /// The processes in the cgroup when it was resolved.
    pub processes: Vec<Process>,
}

impl Workload {
    /// The workload in words: the pod (`cart-7d9f (shop)`), else the unit, else the cgroup.
    pub fn describe(&self) -> String {
        match &self.pod {
            Some(Pod { namespace: Some(namespace), name: Some(name), .. }) => format!("{name} ({namespace})"),
            Some(Pod { uid, .. }) => format!("pod {uid}"),
            None if self.unit.is_none() && self.cgroup == "/" => "host processes (root cgroup)".to_owned(),
            None => self.unit.clone().unwrap_or_else(|| self.cgroup.clone()),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pod {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub uid: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
}

/// One workload's resets over the run or an interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadResets {
    pub workload: Workload,
    /// RSTs its sockets sent (tx flows).
    pub sent: u64,
    /// RSTs its sockets received (rx flows).
    pub received: u64,
}

/// A server address and port, on one interface.
#[derive(Debug, Clone)]
pub struct Service {
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
    pub kinds: KindCounts,
    /// Its resets by the pause before them, where measured (replay; live, local sockets').
    pub pauses: Pauses,
    /// The tunnel the service was reached through (its address is the inner one); `None` on
    /// the link itself.
    pub tunnel: Option<ServiceTunnel>,
}

/// A service's tunnel: what tells a tenant's service from another's at the same address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ServiceTunnel {
    #[serde(rename = "type")]
    pub kind: TunnelType,
    pub vni: Option<u32>,
}

impl ServiceTunnel {
    /// What of `tunnel` tells its tenant: the kind and the VNI or key, not the outer addresses.
    pub fn of(tunnel: &rst_common::wire::TunnelKey) -> Self {
        ServiceTunnel {
            kind: tunnel.tunnel_kind().map_or(TunnelType::Unrecorded, TunnelType::Known),
            vni: (tunnel.keyed != 0).then_some(tunnel.key),
        }
    }

    /// For people: "vxlan 42", "gre key 7", "ipip".
    pub fn describe(&self) -> String {
        match (self.kind, self.vni) {
            (TunnelType::Known(TunnelKind::Vxlan | TunnelKind::Geneve), Some(vni)) => {
                format!("{} {vni}", self.kind.name())
            }
            (kind, Some(key)) => format!("{} key {key}", kind.name()),
            (kind, None) => kind.name().to_owned(),
        }
    }
}

impl FlowTunnel {
    pub fn describe(&self) -> String {
        ServiceTunnel { kind: self.kind, vni: self.vni }.describe()
    }
}

/// Upper bounds (ms, inclusive) of the idle-gap histogram's buckets; one more bucket holds the
/// longer ones. A second apart up to a minute, then the timeouts devices use (2, 5, 10, 30, 60
/// minutes): "they all come after ~350 s" falls in one bucket.
pub const PAUSE_BOUNDS_MS: [u64; 12] =
    [100, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000, 600_000, 1_800_000, 3_600_000];

/// Resets by the pause before them (see [`PAUSE_BOUNDS_MS`]): fixed size, however long the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pauses([u64; PAUSE_BOUNDS_MS.len() + 1]);

impl Pauses {
    pub fn add(&mut self, pause_ms: u64, resets: u64) {
        let bucket = PAUSE_BOUNDS_MS.iter().position(|bound| pause_ms <= *bound).unwrap_or(PAUSE_BOUNDS_MS.len());
        self.0[bucket] += resets;
    }

    pub fn merge(&mut self, other: &Pauses) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            *mine += theirs;
        }
    }

    /// The buckets with resets: (upper bound in ms, `None` past the last; resets).
    pub fn buckets(&self) -> impl Iterator<Item = (Option<u64>, u64)> + '_ {
        self.0.iter().enumerate().filter(|(_, n)| **n > 0).map(|(i, n)| (PAUSE_BOUNDS_MS.get(i).copied(), *n))
    }

    /// The bucket the middle reset fell in, `None` without any: its upper bound (`None` past
    /// the last bound).
    pub fn typical(&self) -> Option<Option<u64>> {
        let total: u64 = self.0.iter().sum();
        let mut seen = 0;
        for (i, n) in self.0.iter().enumerate() {
            seen += n;
            if *n > 0 && seen * 2 >= total {
                return Some(PAUSE_BOUNDS_MS.get(i).copied());
            }
        }
        None
    }
}

/// An address RSTs were sent to.
#[derive(Debug, Clone)]
pub struct Destination {
    pub dst: IpAddr,
    pub resets: u64,
    pub share: f64,
    pub flows: u64,
    /// The addresses that sent it most RSTs, with their counts.
    pub senders: Vec<(IpAddr, u64)>,
}

/// One resetter: an address that sent RSTs.
#[derive(Debug, Clone)]
pub struct Source {
    pub src: IpAddr,
    pub resets: u64,
    /// Resets per second over the interval (or the whole run).
    pub rate: f64,
    /// Percent of all resets attributed to a source in the same period.
    pub share: f64,
    pub flows: u64,
    /// Resets it sent that found no room in the flow table (included in `resets`, in no flow).
    pub overflow: u64,
    /// The source ports it sent most RSTs from (a server's service port stands out here).
    pub ports: Vec<(u16, u64)>,
    pub destinations: Vec<(IpAddr, u64)>,
    /// RSTs it appears to send whose TTL differs from its handshake's: injected in between.
    pub middlebox: u64,
    pub kinds: KindCounts,
}

/// Kernel reset events (tracepoint `tcp:tcp_send_reset`).
#[derive(Debug, Clone)]
pub struct KernelEvents {
    /// Whether they are coming, and why not.
    pub availability: Availability,
    /// Events joined to a tx flow on a watched interface.
    pub matched: u64,
    /// Events for resets that left through no watched interface (other namespaces, other
    /// interfaces).
    pub elsewhere: u64,
}

impl KernelEvents {
    pub fn available(&self) -> bool {
        self.availability.is_available()
    }
}

/// Resets of flows the run has no room for (beyond `--summary-flows`).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Unlisted {
    pub resets: u64,
    /// Per-interval flow records turned away (a flow active in several intervals counts in each).
    pub flow_records: u64,
}

/// One interval: its totals and its top N of each ranking.
#[derive(Debug, Clone)]
pub struct Interval {
    pub seq: u64,
    /// When it ended: wall-clock time live, capture time in replay.
    pub ended: SystemTime,
    pub elapsed: Duration,
    pub totals: Totals,
    /// Flows with resets in it (all of them, not only the listed top N).
    pub flows_seen: usize,
    /// Resets in all of its flows: with `totals.overflow` it adds up to `totals.resets`.
    pub flow_resets: u64,
    pub sources: Vec<Source>,
    pub flows: Vec<Flow>,
    pub services: Vec<Service>,
    pub destinations: Vec<Destination>,
    /// The causes that held for this interval, counting its resets only.
    pub verdicts: Vec<Verdict>,
    /// All of the interval's flows folded by conversation (top N), when most were reset once.
    pub conversations: Option<Vec<Conversation>>,
    /// The interval's top workloads (empty when workloads are off, and unranked intervals).
    pub workloads: Vec<WorkloadResets>,
}

impl Interval {
    pub fn rate(&self) -> f64 {
        per_second(self.totals.resets, self.elapsed)
    }
}

/// One end of a conversation: a service (address and port) or a client host (its ports vary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: Option<u16>,
}

impl Endpoint {
    pub const fn service(addr: IpAddr, port: u16) -> Self {
        Endpoint { addr, port: Some(port) }
    }

    pub const fn host(addr: IpAddr) -> Self {
        Endpoint { addr, port: None }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(port) => f.write_str(&endpoint(self.addr, port)),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// Flows between a service and one client host, whichever client ports they used: what the
/// table lists when most connections were reset once (see `aggregate::conversation`).
#[derive(Debug, Clone)]
pub struct Conversation {
    pub iface: String,
    pub direction: Direction,
    /// The role of the RSTs' sender.
    pub side: Side,
    pub sender: Endpoint,
    pub receiver: Endpoint,
    /// Flows folded in: one per connection (client port).
    pub connections: u64,
    pub resets: u64,
    pub kinds: KindCounts,
    /// Connections in which this side's RST came first.
    pub first: u64,
}

/// The whole run: every flow (up to `--summary-flows`), every source, cumulative.
#[derive(Debug, Clone)]
pub struct Run {
    pub elapsed: Duration,
    pub intervals: u64,
    pub interfaces: Vec<Interface>,
    /// `None` offline.
    pub counting: Option<CountingMode>,
    pub totals: Totals,
    /// `flows` lists every flow of the run unless this is non-zero.
    pub unlisted: Unlisted,
    pub sources: Vec<Source>,
    pub flows: Vec<Flow>,
    pub destinations: Vec<Destination>,
    pub services: Vec<Service>,
    pub kernel_events: KernelEvents,
    /// What is causing the resets, per service, most resets first.
    pub verdicts: Vec<Verdict>,
    /// The flows folded by conversation, when most were reset once.
    pub conversations: Option<Vec<Conversation>>,
    /// Resets per workload, most first (empty when workloads are off).
    pub workloads: Vec<WorkloadResets>,
    /// `--capture`: what went into the file; `None` without it.
    pub capture: Option<CaptureSummary>,
    /// Live runs without `--capture`: what the kernel handed over of RSTs with data.
    pub rst_payloads: Option<PayloadSummary>,
}

/// Every RST with data the counting programs saw is handed over or counted as not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PayloadSummary {
    pub handed_over: u64,
    /// The ring had no room (more RSTs with data in an interval than it holds).
    pub ring_full: u64,
    /// The frame's bytes could not be read.
    pub unreadable: u64,
}

/// `--capture`: every RST counted is either written or dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureSummary {
    /// The path `--capture` named.
    pub file: String,
    /// The files of the run still on disk (more than one with `--capture-max-size`), oldest first.
    pub files: Vec<String>,
    pub written: u64,
    /// `over_budget + ring_full + not_written`.
    pub dropped: u64,
    /// Beyond `--capture-budget` in their second.
    pub over_budget: u64,
    /// The ring buffer was full (rstwatch fell behind), or the frame could not be read.
    pub ring_full: u64,
    /// Handed over but not written: the capture had stopped.
    pub not_written: u64,
    /// Why the capture stopped early.
    pub error: Option<String>,
}

pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// `part` as a percentage of `whole`, at most 100 (0 without a whole).
pub fn percent(part: u64, whole: u64) -> f64 {
    if whole > 0 {
        (100.0 * part as f64 / whole as f64).min(100.0)
    } else {
        0.0
    }
}

/// A service as people write it, with its tunnel where it has one (`10.0.0.7:80 in vxlan 42`):
/// two tenants' services at one inner address read apart.
pub fn service_endpoint(ip: IpAddr, port: u16, tunnel: Option<&ServiceTunnel>) -> String {
    match tunnel {
        Some(tunnel) => format!("{} in {}", endpoint(ip, port), tunnel.describe()),
        None => endpoint(ip, port),
    }
}

/// An address and port as people write them: `[v6]:port` for IPv6.
pub fn endpoint(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pauses_fall_in_fixed_buckets_and_the_middle_reset_says_the_typical_one() {
        let mut pauses = Pauses::default();
        assert_eq!(pauses.typical(), None);
        pauses.add(350_000, 3);
        pauses.add(40, 1);
        pauses.add(7_200_000, 1);
        let buckets: Vec<_> = pauses.buckets().collect();
        assert_eq!(buckets, [(Some(100), 1), (Some(600_000), 3), (None, 1)]);
        assert_eq!(pauses.typical(), Some(Some(600_000)), "they come after 5 to 10 minutes");
        let mut more = Pauses::default();
        more.add(1_000, 1);
        more.merge(&pauses);
        assert_eq!(more.buckets().next(), Some((Some(100), 1)));
        assert_eq!(more.buckets().nth(1), Some((Some(1_000), 1)), "a bound is inclusive");
    }

    use super::*;

    fn json(value: impl Serialize) -> String {
        serde_json::to_string(&value).unwrap()
    }

    #[test]
    fn domain_values_serialize_to_the_contract_strings() {
        assert_eq!(json(Direction::Tx), "\"tx\"");
        assert_eq!(json(Direction::Rx), "\"rx\"");
        assert_eq!(json(Side::Client), "\"client\"");
        assert_eq!(json(Family::Ipv6), "\"ipv6\"");
        assert_eq!(json(Side::Server), "\"server\"");
        assert_eq!(json(Family::Ipv4), "\"ipv4\"");
        assert_eq!(json(CountingMode::PerCpu), "\"per-cpu\"");
        assert_eq!(json(CountingMode::Atomic), "\"atomic\"");
        assert_eq!(json(AttachMode::Capture(Link::LinuxSll2)), format!("\"{}\"", Link::LinuxSll2.as_str()));
    }

    #[test]
    fn kinds_are_one_slot_each_in_handshake_order() {
        let mut kinds = KindCounts::default();
        assert_eq!(kinds.dominant(), None);
        kinds.add(ResetKind::Closing, 2);
        kinds.add(ResetKind::Handshake, 2);
        assert_eq!(kinds.dominant(), Some(ResetKind::Handshake), "ties go to the earlier kind");
        kinds.add(ResetKind::Established, 3);
        assert_eq!(kinds.dominant(), Some(ResetKind::Established));
        assert_eq!(
            serde_json::to_string(&kinds).unwrap(),
            r#"{"refused":0,"handshake":2,"established":3,"closing":2}"#
        );
        let mut sum = kinds;
        sum.merge(&kinds);
        assert_eq!(sum.get(ResetKind::Established), 6);
        assert_eq!(
            sum.present().map(|(kind, _)| kind).collect::<Vec<_>>(),
            [ResetKind::Handshake, ResetKind::Established, ResetKind::Closing]
        );
    }
}
