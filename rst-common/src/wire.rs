//! The layouts kernel and userspace exchange through BPF maps.
//!
//! Every type is `#[repr(C)]` with explicit padding, so the bytes the kernel hashes as a map key
//! are exactly the bytes userspace builds, and sizes are asserted at compile time.

pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;
pub const IPPROTO_TCP: u8 = 6;

/// Map names, shared so the loader cannot drift from the object.
/// Both epochs' flow tables in one mmap-able array (see [`crate::table`]).
pub const MAP_FLOW_TABLE: &str = "FLOW_TABLE";
/// The flow table's used-block bitmap (see [`crate::table::SLOTS_PER_BLOCK_LOG2`]).
pub const MAP_FLOW_BLOCKS: &str = "FLOW_BLOCKS";
/// The global holding log2 of one epoch's flow-table slots (and of the connection table's); the
/// loader sets it.
pub const GLOBAL_FLOW_TABLE_BITS: &str = "FLOW_TABLE_BITS";
pub const MAP_OVERFLOW_SOURCES: [&str; 2] = ["OVERFLOW_SOURCES_0", "OVERFLOW_SOURCES_1"];
pub const MAP_FLOW_CACHE: &str = "FLOW_CACHE";
/// The epoch is the object's only zero-initialized global (`EPOCH` in `rst-ebpf`), so the
/// loader makes the `.bss` section a one-entry array map holding just that u32.
pub const MAP_EPOCH: &str = ".bss";
pub const MAP_TRAFFIC: &str = "TRAFFIC";
pub const MAP_RESET_COUNTERS: &str = "RESET_COUNTERS";
pub const MAP_CONNECTIONS: &str = "CONNECTIONS";
pub const MAP_CONN_FINGERPRINTS: &str = "CONN_FINGERPRINTS";
pub const MAP_EVICTION_LOG: &str = "EVICTION_LOG";
/// The global holding each CPU's eviction-log entries per epoch; the loader sets it.
pub const GLOBAL_EVICTION_LOG_SLOTS: &str = "EVICTION_LOG_SLOTS";
pub const MAP_SERVICES: [&str; 2] = ["SERVICES_0", "SERVICES_1"];
pub const MAP_STACK_RESETS: [&str; 2] = ["STACK_RESETS_0", "STACK_RESETS_1"];
pub const PROG_XDP: &str = "rstwatch_xdp";
pub const PROG_TC: &str = "rstwatch_tc";
pub const PROG_TC_EGRESS: &str = "rstwatch_tc_egress";
/// The same three programs counting with atomic adds only and without the per-CPU flow cache,
/// for kernels where two programs on one CPU may interleave (PREEMPT_RT).
pub const PROG_XDP_ATOMIC: &str = "rstwatch_xdp_atomic";
pub const PROG_TC_ATOMIC: &str = "rstwatch_tc_atomic";
pub const PROG_TC_EGRESS_ATOMIC: &str = "rstwatch_tc_egress_atomic";

/// The names of one set of counting programs (XDP, TC ingress, TC egress).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CountingPrograms {
    pub xdp: &'static str,
    pub tc: &'static str,
    pub tc_egress: &'static str,
}

impl CountingPrograms {
    /// Per-CPU counting (the default), or atomic counting.
    pub const fn new(atomic: bool) -> CountingPrograms {
        if atomic {
            CountingPrograms { xdp: PROG_XDP_ATOMIC, tc: PROG_TC_ATOMIC, tc_egress: PROG_TC_EGRESS_ATOMIC }
        } else {
            CountingPrograms { xdp: PROG_XDP, tc: PROG_TC, tc_egress: PROG_TC_EGRESS }
        }
    }
}
/// Tracepoint `tcp:tcp_send_reset` (kernel ≥ 6.10 for its `reason`).
pub const PROG_SEND_RESET: &str = "rstwatch_send_reset";
/// Globals the loader sets from the tracepoint's format file before loading.
pub const GLOBAL_SEND_RESET_REASON_OFFSET: &str = "SEND_RESET_REASON_OFFSET";
pub const GLOBAL_SEND_RESET_SADDR_OFFSET: &str = "SEND_RESET_SADDR_OFFSET";
pub const GLOBAL_SEND_RESET_DADDR_OFFSET: &str = "SEND_RESET_DADDR_OFFSET";
/// An empty XDP_PASS program in the same object: the baseline for cost measurements.
pub const PROG_XDP_BASELINE: &str = "rstwatch_xdp_pass";
/// An empty TC program returning "next": the baseline for the TC programs.
pub const PROG_TC_BASELINE: &str = "rstwatch_tc_next";

/// Slots per CPU and epoch in the direct-mapped flow cache (a power of two).
pub const FLOW_CACHE_SLOTS: u32 = 1024;
/// Connection-table generations (map `CONN_GENERATIONS`), one per group of connections: a
/// change to one connection only invalidates cached verdicts of its group.
pub const CONN_GENERATIONS: u32 = 1024;

/// Default capacity of each of the two per-interval flow tables.
pub const DEFAULT_MAX_FLOWS: u32 = 65_536;
/// Default capacity of each of the two per-interval overflow tables (RSTs per source address
/// that found no room in the flow table): a scan floods flows, not sources.
pub const DEFAULT_MAX_OVERFLOW_SOURCES: u32 = 16_384;
/// Connections the host-side connection table (replay, tests) keeps by default; the kernel's
/// is sized with the flow table (see [`crate::table::ConnSlots`]). Forgotten connections'
/// resets are classified by inference.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 65_536;
/// Default capacity of each of the two per-interval service tables.
pub const DEFAULT_MAX_SERVICES: u32 = 16_384;

/// Which way a segment crossed the interface: received (XDP or TC ingress) or sent (TC egress).
pub const DIRECTION_RX: u8 = 0;
pub const DIRECTION_TX: u8 = 1;

/// One direction of a TCP connection on one interface: who sent the RST to whom, plus what the
/// classifier said about the RST.
///
/// The classification lives in the key, so RSTs of one flow that differ in kind, side or TTL
/// are separate entries, each an exact count; userspace folds them into one flow record. A
/// flow keeps to one or two entries in practice (its first RST, then the rest).
///
/// IPv4 addresses occupy the first 4 bytes of `src` / `dst`; the rest stays zero.
/// Ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub ifindex: u32,
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    pub protocol: u8,
    /// [`DIRECTION_RX`] or [`DIRECTION_TX`].
    pub direction: u8,
    /// A [`ResetClass`] as its byte; 0 until [`crate::diagnose`] classifies the RST.
    pub class: u8,
    /// TTL / hop limit the RST arrived with.
    pub rst_ttl: u8,
    /// TTL / hop limit the claimed sender used in its SYN or SYN+ACK on this interface; 0 when
    /// no handshake segment of it was seen.
    pub peer_ttl: u8,
    pub _pad: [u8; 2],
}

/// What kind of reset, by the state of its connection when it was seen.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResetKind {
    /// Answers a SYN: the server side turned the connection away (port closed, listener gone,
    /// a balancer at its limit).
    Refused = 0,
    /// After the SYN+ACK (or a SYN), before any byte moved.
    Handshake = 1,
    /// Data moved (or the connection predates what rstwatch saw).
    Established = 2,
    /// After a FIN was seen.
    Closing = 3,
}

impl ResetKind {
    pub const ALL: [ResetKind; 4] =
        [ResetKind::Refused, ResetKind::Handshake, ResetKind::Established, ResetKind::Closing];

    pub const fn name(self) -> &'static str {
        match self {
            ResetKind::Refused => "refused",
            ResetKind::Handshake => "handshake",
            ResetKind::Established => "established",
            ResetKind::Closing => "closing",
        }
    }
}

/// The classifier's verdict on one RST, packed into [`FlowKey::class`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResetClass(pub u8);

impl ResetClass {
    const KIND: u8 = 0b11;
    /// The RST had ACK set.
    const ACK: u8 = 1 << 2;
    /// Its sender is the connection's server (else the client).
    const SERVER: u8 = 1 << 3;
    /// The side is known from a SYN / SYN+ACK seen, not inferred from the ports.
    const SIDE_OBSERVED: u8 = 1 << 4;
    /// The first RST rstwatch saw in this connection on this interface.
    const FIRST: u8 = 1 << 5;

    #[inline(always)]
    pub const fn new(kind: ResetKind, ack: bool, server: bool, side_observed: bool, first: bool) -> Self {
        ResetClass(
            kind as u8
                | if ack { Self::ACK } else { 0 }
                | if server { Self::SERVER } else { 0 }
                | if side_observed { Self::SIDE_OBSERVED } else { 0 }
                | if first { Self::FIRST } else { 0 },
        )
    }

    pub const fn kind(self) -> ResetKind {
        match self.0 & Self::KIND {
            0 => ResetKind::Refused,
            1 => ResetKind::Handshake,
            2 => ResetKind::Established,
            _ => ResetKind::Closing,
        }
    }

    pub const fn ack(self) -> bool {
        self.0 & Self::ACK != 0
    }

    pub const fn server(self) -> bool {
        self.0 & Self::SERVER != 0
    }

    pub const fn side_observed(self) -> bool {
        self.0 & Self::SIDE_OBSERVED != 0
    }

    pub const fn first(self) -> bool {
        self.0 & Self::FIRST != 0
    }
}

/// A TCP connection on one interface, the same whichever way a segment goes: endpoints in a
/// canonical order (`lo` the smaller address-and-port). Addresses as in [`FlowKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub lo: [u8; 16],
    pub hi: [u8; 16],
    pub ifindex: u32,
    pub lo_port: u16,
    pub hi_port: u16,
    pub family: u8,
    pub _pad: [u8; 3],
}

impl ConnKey {
    /// See [`FlowKey::generation_slot`].
    #[inline(always)]
    pub fn generation_slot(&self) -> u32 {
        // SAFETY: ConnKey is repr(C), 44 bytes without implicit padding (asserted below).
        let w: [u32; 11] = unsafe { core::mem::transmute_copy(self) };
        generation_slot([w[0], w[1], w[2], w[3]], [w[4], w[5], w[6], w[7]], self.ifindex, self.lo_port ^ self.hi_port)
    }
}

/// Symmetric in the two endpoints: XOR does not care which is which.
#[inline(always)]
fn generation_slot(a: [u32; 4], b: [u32; 4], ifindex: u32, ports: u16) -> u32 {
    generation_of_fold(address_fold(&[a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]]), ifindex, ports)
}

/// The XOR of the eight address words, which both slots of a flow start from.
#[inline(always)]
fn address_fold(addresses: &[u32; 8]) -> u32 {
    let mut fold = 0;
    for word in addresses {
        fold ^= word;
    }
    fold
}

#[inline(always)]
fn generation_of_fold(addresses: u32, ifindex: u32, ports: u16) -> u32 {
    (addresses ^ ifindex ^ u32::from(ports)).wrapping_mul(0x9e37_79b1) >> (32 - CONN_GENERATIONS.trailing_zeros())
}

/// What the handshake told about a connection (map `CONNECTIONS`, see [`crate::table::ConnSlots`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnState {
    pub client_isn: u32,
    pub server_isn: u32,
    pub client_ttl: u8,
    pub server_ttl: u8,
    /// `CONN_*` bits.
    pub flags: u8,
    pub _pad: u8,
}

/// The client is the `lo` endpoint of the [`ConnKey`].
pub const CONN_CLIENT_IS_LO: u8 = 1 << 0;
pub const CONN_SYN: u8 = 1 << 1;
pub const CONN_SYNACK: u8 = 1 << 2;
pub const CONN_FIN: u8 = 1 << 3;
pub const CONN_RESET: u8 = 1 << 4;

/// A service: a server address and port on one interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr: [u8; 16],
    pub ifindex: u32,
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
}

/// Per-service handshake counts for one interval (atomic adds, shared by all CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// SYNs without ACK: connection attempts.
    pub attempts: u64,
    /// SYN+ACKs: the server accepted the handshake.
    pub synacks: u64,
}

/// An RST this host's TCP stack decided to send (tracepoint `tcp:tcp_send_reset`), with the
/// kernel's reason (`enum sk_rst_reason`). Addresses as in [`FlowKey`]; `src` is this host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackResetKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    pub _pad: [u8; 3],
    pub reason: u32,
}

/// One slot of the per-CPU flow cache (map `FLOW_CACHE`, `2 * FLOW_CACHE_SLOTS` slots per CPU,
/// the half `epoch * FLOW_CACHE_SLOTS ..` belonging to each epoch). A repeated RST on a cached
/// flow is a per-CPU add: no hashing, no atomics. A slot is written back to the flow table when
/// another flow needs it, and userspace drains what is left at the end of the epoch.
/// `resets == 0` marks a free slot.
///
/// A slot also remembers what its key's classification was made from — the RST's sequence and
/// acknowledgment numbers and ACK flag, and the generation of the connection's group in the
/// connection table, read before the classifier ran. The classifier's only other input is
/// that table, and every change to a connection bumps its group's generation, so an RST that
/// matches all of these would be classified the same: it is counted without the connection
/// lookup. The slot index comes from the unclassified
/// key ([`FlowKey::cache_slot`] of the segment's key), which the RST knows before classifying.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheSlot {
    pub key: FlowKey,
    pub resets: u64,
    /// The generation (63 bits: it cannot come round again within an epoch, and slots are
    /// emptied every epoch) and, in the top bit, whether the RST carried an ACK — the only
    /// flag the classifier reads besides RST.
    pub verdict_tag: u64,
    pub seq: u32,
    pub ack: u32,
}

impl CacheSlot {
    // SAFETY: CacheSlot is repr(C) integers and byte arrays only: all-zero bytes are a valid
    // value, the free slot the kernel starts with.
    pub const EMPTY: CacheSlot = unsafe { core::mem::zeroed() };
}

impl FlowKey {
    /// The key as twelve 32-bit words: for hashing and comparing without byte loops on BPF.
    #[inline(always)]
    pub fn words(&self) -> [u32; 12] {
        // SAFETY: FlowKey is repr(C), 48 bytes without implicit padding (asserted below), so
        // all of its bytes are initialized and any 48 bytes form a valid [u32; 12].
        unsafe { core::mem::transmute_copy(self) }
    }

    /// Slot of this flow in one epoch's half of the flow cache.
    #[inline(always)]
    pub fn cache_slot(&self) -> u32 {
        self.cache_and_generation_slots().0
    }

    /// The connection's group in `CONN_GENERATIONS`: the same for both directions, and the same
    /// as [`ConnKey::generation_slot`] of [`FlowKey::connection`].
    #[inline(always)]
    pub fn generation_slot(&self) -> u32 {
        self.cache_and_generation_slots().1
    }

    /// [`FlowKey::cache_slot`] and [`FlowKey::generation_slot`] from one fold of the address
    /// words: every RST needs both, and on BPF each word of a key is a reload from the stack.
    #[inline(always)]
    pub fn cache_and_generation_slots(&self) -> (u32, u32) {
        let w = self.words();
        let addresses = address_fold(&[w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        // A cache collision only costs a write-back, so a fold of all twelve words and one
        // multiply are enough; the ports word keeps the two directions of a connection apart.
        let cache = (addresses ^ w[8] ^ w[9] ^ w[10] ^ w[11]).wrapping_mul(0x9e37_79b1)
            >> (32 - FLOW_CACHE_SLOTS.trailing_zeros());
        (cache, generation_of_fold(addresses, self.ifindex, self.sport ^ self.dport))
    }

    /// Whether this (classified) key is `segment`'s (as parsed, unclassified) but for the
    /// classifier's verdict: the class byte and the peer's TTL.
    #[inline(always)]
    pub fn classifies(&self, segment: &FlowKey) -> bool {
        // The class is the fourth byte of word 10, the peer's TTL the second byte of word 11.
        const CLASS: u32 = word([0, 0, 0, 0xff]);
        const PEER_TTL: u32 = word([0, 0xff, 0, 0]);
        let (a, b) = (self.words(), segment.words());
        let mut differ = 0;
        for i in 0..10 {
            differ |= a[i] ^ b[i];
        }
        differ |= (a[10] & !CLASS) ^ b[10];
        differ |= (a[11] & !PEER_TTL) ^ b[11];
        differ == 0
    }

    #[inline(always)]
    pub fn same_flow(&self, other: &FlowKey) -> bool {
        let (a, b) = (self.words(), other.words());
        let mut differ = 0;
        for i in 0..a.len() {
            differ |= a[i] ^ b[i];
        }
        differ == 0
    }

    /// Builds a key from whole words (see [`word`]); addresses as [`FlowKey::src`] holds them,
    /// in native-endian words.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub fn from_parts(
        src: [u32; 4],
        dst: [u32; 4],
        ifindex: u32,
        sport: u16,
        dport: u16,
        family: u8,
        direction: u8,
        rst_ttl: u8,
    ) -> FlowKey {
        let words = [
            src[0],
            src[1],
            src[2],
            src[3],
            dst[0],
            dst[1],
            dst[2],
            dst[3],
            ifindex,
            ports_word(sport, dport),
            word([family, IPPROTO_TCP, direction, 0]),
            word([rst_ttl, 0, 0, 0]),
        ];
        // SAFETY: FlowKey is repr(C), 48 bytes without implicit padding (asserted below).
        unsafe { core::mem::transmute::<[u32; 12], FlowKey>(words) }
    }

    /// This key with the classifier's verdict, built word-wise (see [`word`]).
    #[inline(always)]
    pub fn classified(&self, class: u8, peer_ttl: u8) -> FlowKey {
        let mut words = self.words();
        words[10] = word([self.family, self.protocol, self.direction, class]);
        words[11] = word([self.rst_ttl, peer_ttl, 0, 0]);
        // SAFETY: as in `from_parts`.
        unsafe { core::mem::transmute::<[u32; 12], FlowKey>(words) }
    }

    /// The connection this segment belongs to, and whether its sender is the `lo` endpoint.
    #[inline(always)]
    pub fn connection(&self) -> (ConnKey, bool) {
        let sender_is_lo = endpoint_le(&self.src, self.sport, &self.dst, self.dport);
        let (src, dst) = (native_words(&self.src), native_words(&self.dst));
        let (lo, lo_port, hi, hi_port) =
            if sender_is_lo { (src, self.sport, dst, self.dport) } else { (dst, self.dport, src, self.sport) };
        let words = [
            lo[0],
            lo[1],
            lo[2],
            lo[3],
            hi[0],
            hi[1],
            hi[2],
            hi[3],
            self.ifindex,
            ports_word(lo_port, hi_port),
            word([self.family, 0, 0, 0]),
        ];
        // SAFETY: ConnKey is repr(C), 44 bytes without implicit padding (asserted below).
        (unsafe { core::mem::transmute::<[u32; 11], ConnKey>(words) }, sender_is_lo)
    }

    /// The key as the header walk alone makes it: the classifier's `class` and `peer_ttl`
    /// cleared (`rst_ttl` is the segment's own).
    #[inline(always)]
    pub fn unclassified(&self) -> FlowKey {
        FlowKey { class: 0, peer_ttl: 0, ..*self }
    }

    /// The same flow with the classification cleared: what a flow record is keyed by.
    #[inline(always)]
    pub fn flow_id(&self) -> FlowKey {
        FlowKey { class: 0, rst_ttl: 0, peer_ttl: 0, ..*self }
    }
}

/// Four bytes as the word they occupy in memory.
///
/// Keys are built from whole 32-bit words: the eBPF object is compiled to allow misaligned
/// packet loads, and LLVM would otherwise merge neighbouring byte fields (a constant protocol
/// next to a direction, say) into 16-bit stores at odd stack offsets, which the verifier
/// rejects.
#[inline(always)]
pub const fn word(bytes: [u8; 4]) -> u32 {
    u32::from_ne_bytes(bytes)
}

#[inline(always)]
const fn ports_word(a: u16, b: u16) -> u32 {
    let (a, b) = (a.to_ne_bytes(), b.to_ne_bytes());
    word([a[0], a[1], b[0], b[1]])
}

/// An address as four native-endian words (its bytes in memory order).
#[inline(always)]
pub fn native_words(a: &[u8; 16]) -> [u32; 4] {
    // SAFETY: same size, every bit pattern valid for both.
    unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(*a) }
}

/// `(a, a_port) <= (b, b_port)`, comparing addresses as big-endian numbers word by word.
#[inline(always)]
fn endpoint_le(a: &[u8; 16], a_port: u16, b: &[u8; 16], b_port: u16) -> bool {
    let (a, b) = (address_words(a), address_words(b));
    for i in 0..4 {
        if a[i] != b[i] {
            return a[i] < b[i];
        }
    }
    a_port <= b_port
}

#[inline(always)]
fn address_words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_be_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_be_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_be_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_be_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

impl ServiceKey {
    #[inline(always)]
    pub fn new(addr: [u8; 16], port: u16, flow: &FlowKey) -> Self {
        let addr = native_words(&addr);
        let port = port.to_ne_bytes();
        let words = [addr[0], addr[1], addr[2], addr[3], flow.ifindex, word([port[0], port[1], flow.family, 0])];
        // SAFETY: ServiceKey is repr(C), 24 bytes without implicit padding (asserted below).
        unsafe { core::mem::transmute::<[u32; 6], ServiceKey>(words) }
    }
}

impl ConnState {
    /// Built word-wise (see [`word`]).
    #[inline(always)]
    pub fn new(client_isn: u32, server_isn: u32, client_ttl: u8, server_ttl: u8, flags: u8) -> Self {
        let words = [client_isn, server_isn, word([client_ttl, server_ttl, flags, 0])];
        // SAFETY: ConnState is repr(C), 12 bytes without implicit padding (asserted below).
        unsafe { core::mem::transmute::<[u32; 3], ConnState>(words) }
    }
}

impl StackResetKey {
    /// Built word-wise (see [`word`]); addresses as in [`FlowKey`], in native-endian words.
    #[inline(always)]
    pub fn new(src: [u32; 4], dst: [u32; 4], sport: u16, dport: u16, family: u8, reason: u32) -> Self {
        let words = [
            src[0],
            src[1],
            src[2],
            src[3],
            dst[0],
            dst[1],
            dst[2],
            dst[3],
            ports_word(sport, dport),
            word([family, 0, 0, 0]),
            reason,
        ];
        // SAFETY: StackResetKey is repr(C), 44 bytes without implicit padding (asserted below).
        unsafe { core::mem::transmute::<[u32; 11], StackResetKey>(words) }
    }
}

/// The sender of RSTs that found no room in the flow table, on one interface. Addresses as in
/// [`FlowKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey {
    pub src: [u8; 16],
    pub ifindex: u32,
    pub family: u8,
    pub _pad: [u8; 3],
}

impl SourceKey {
    #[inline(always)]
    pub fn of(flow: &FlowKey) -> Self {
        SourceKey { src: flow.src, ifindex: flow.ifindex, family: flow.family, _pad: [0; 3] }
    }
}

/// Per-flow counts for one interval.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// Updated with atomic adds: one entry is shared by all CPUs.
    pub resets: u64,
}

/// Per-CPU, cumulative counts of everything the programs see (map `TRAFFIC`, one slot per
/// direction). Kept apart from the per-epoch reset counts so the path non-RST frames take never
/// reads the epoch. Each frame lands in exactly one field — one add per frame on the path
/// all traffic takes — and the frame count is their sum ([`TrafficCounters::frames`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub not_tcp: u64,
    pub tcp: u64,
    pub malformed: u64,
    pub fragments: u64,
}

impl TrafficCounters {
    /// Every frame counted (wrapping, like the counters).
    pub fn frames(&self) -> u64 {
        let TrafficCounters { not_tcp, tcp, malformed, fragments } = *self;
        not_tcp.wrapping_add(tcp).wrapping_add(malformed).wrapping_add(fragments)
    }

    /// Adds `other` field by field (wrapping).
    pub fn accumulate(&mut self, other: &TrafficCounters) {
        let TrafficCounters { not_tcp, tcp, malformed, fragments } = *other;
        self.not_tcp = self.not_tcp.wrapping_add(not_tcp);
        self.tcp = self.tcp.wrapping_add(tcp);
        self.malformed = self.malformed.wrapping_add(malformed);
        self.fragments = self.fragments.wrapping_add(fragments);
    }

    /// `self - before`, field by field (wrapping).
    pub fn since(&self, before: &TrafficCounters) -> TrafficCounters {
        TrafficCounters {
            not_tcp: self.not_tcp.wrapping_sub(before.not_tcp),
            tcp: self.tcp.wrapping_sub(before.tcp),
            malformed: self.malformed.wrapping_sub(before.malformed),
            fragments: self.fragments.wrapping_sub(before.fragments),
        }
    }
}

/// Per-CPU reset counts of one epoch (map `RESET_COUNTERS`, indexed by epoch). `overflow`
/// counts the resets that found no room in the flow table (they are in `resets` too);
/// `source_overflow` those of them that found no room in the overflow-source table either.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResetCounters {
    pub resets: u64,
    pub overflow: u64,
    pub source_overflow: u64,
    /// Handshake segments whose service found no room in the service table.
    pub service_overflow: u64,
    /// Kernel reset events that found no room in the stack-reset table.
    pub stack_overflow: u64,
    /// Of `resets`, those this host sent (TC egress).
    pub tx_resets: u64,
    /// Flow-table writes that passed a slot another CPU was filling (see
    /// [`crate::table::Added::Raced`]): while 0, every flow sits in one slot at most.
    pub table_races: u64,
    /// Entries of this CPU's run of `EVICTION_LOG` for this epoch in use (see [`LoggedFlow`]).
    pub logged: u64,
}

/// One entry of a CPU's eviction log (map `EVICTION_LOG`, entry `n` of CPU `c` in epoch `e` at
/// `(c * 2 + e) * slots + n`): resets a flow had when the flow cache gave its slot to another flow.
/// Appending here is a few stores to memory this CPU wrote a moment ago; the flow table would
/// take a random line, a cache miss for every new flow. Userspace sums the entries by key with
/// the table's when it drains the epoch; when a CPU's log is full, evicted flows go to the
/// table as before.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoggedFlow {
    pub key: FlowKey,
    pub resets: u64,
}

/// What userspace reports for a period: traffic deltas plus that period's reset counts.
/// Each frame lands in at most one of `tcp`, `malformed`, `fragments`; RSTs are TCP segments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub frames: u64,
    pub tcp: u64,
    pub resets: u64,
    pub malformed: u64,
    pub fragments: u64,
    pub overflow: u64,
    pub source_overflow: u64,
    pub service_overflow: u64,
    pub stack_overflow: u64,
    /// Of `frames`, `tcp` and `resets`: what this host sent (TC egress).
    pub tx_frames: u64,
    pub tx_tcp: u64,
    pub tx_resets: u64,
}

impl Counters {
    /// Adds `other` field by field (wrapping: kernel counters never reset but may wrap).
    pub fn accumulate(&mut self, other: &Counters) {
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
        } = other;
        self.frames = self.frames.wrapping_add(*frames);
        self.tcp = self.tcp.wrapping_add(*tcp);
        self.resets = self.resets.wrapping_add(*resets);
        self.malformed = self.malformed.wrapping_add(*malformed);
        self.fragments = self.fragments.wrapping_add(*fragments);
        self.overflow = self.overflow.wrapping_add(*overflow);
        self.source_overflow = self.source_overflow.wrapping_add(*source_overflow);
        self.service_overflow = self.service_overflow.wrapping_add(*service_overflow);
        self.stack_overflow = self.stack_overflow.wrapping_add(*stack_overflow);
        self.tx_frames = self.tx_frames.wrapping_add(*tx_frames);
        self.tx_tcp = self.tx_tcp.wrapping_add(*tx_tcp);
        self.tx_resets = self.tx_resets.wrapping_add(*tx_resets);
    }

    /// `self - earlier`, field by field.
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            frames: self.frames.wrapping_sub(earlier.frames),
            tcp: self.tcp.wrapping_sub(earlier.tcp),
            resets: self.resets.wrapping_sub(earlier.resets),
            malformed: self.malformed.wrapping_sub(earlier.malformed),
            fragments: self.fragments.wrapping_sub(earlier.fragments),
            overflow: self.overflow.wrapping_sub(earlier.overflow),
            source_overflow: self.source_overflow.wrapping_sub(earlier.source_overflow),
            service_overflow: self.service_overflow.wrapping_sub(earlier.service_overflow),
            stack_overflow: self.stack_overflow.wrapping_sub(earlier.stack_overflow),
            tx_frames: self.tx_frames.wrapping_sub(earlier.tx_frames),
            tx_tcp: self.tx_tcp.wrapping_sub(earlier.tx_tcp),
            tx_resets: self.tx_resets.wrapping_sub(earlier.tx_resets),
        }
    }
}

const _: () = {
    assert!(core::mem::size_of::<FlowKey>() == 48);
    assert!(core::mem::size_of::<FlowValue>() == 8);
    assert!(core::mem::size_of::<SourceKey>() == 24);
    assert!(core::mem::size_of::<CacheSlot>() == 72);
    assert!(CONN_GENERATIONS.is_power_of_two());
    assert!(core::mem::size_of::<ConnKey>() == 44);
    assert!(core::mem::size_of::<ConnState>() == 12);
    assert!(core::mem::size_of::<ServiceKey>() == 24);
    assert!(core::mem::size_of::<ServiceValue>() == 16);
    assert!(core::mem::size_of::<StackResetKey>() == 44);
    assert!(FLOW_CACHE_SLOTS.is_power_of_two());
    assert!(core::mem::size_of::<Counters>() == 96);
    assert!(core::mem::size_of::<TrafficCounters>() == 32);
    assert!(core::mem::size_of::<ResetCounters>() == 64);
    assert!(core::mem::size_of::<LoggedFlow>() == 56);
};

impl crate::parse::FrameCounters for TrafficCounters {
    #[inline(always)]
    fn not_tcp(&mut self) {
        self.not_tcp += 1;
    }
    #[inline(always)]
    fn tcp(&mut self) {
        self.tcp += 1;
    }
    #[inline(always)]
    fn malformed(&mut self) {
        self.malformed += 1;
    }
    #[inline(always)]
    fn fragment(&mut self) {
        self.fragments += 1;
    }
}

impl crate::parse::FrameCounters for Counters {
    fn not_tcp(&mut self) {
        self.frames += 1;
    }
    fn tcp(&mut self) {
        self.frames += 1;
        self.tcp += 1;
    }
    fn malformed(&mut self) {
        self.frames += 1;
        self.malformed += 1;
    }
    fn fragment(&mut self) {
        self.frames += 1;
        self.fragments += 1;
    }
}
