//! Map keys: what the kernel hashes and userspace builds byte for byte, and the word-wise
//! builders that keep the verifier happy.

pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;
pub const IPPROTO_TCP: u8 = 6;

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
    /// A [`super::ResetContext`] as its byte: what the connection had seen when the RST came
    /// (whose FIN, whose earlier RST, the SYN+ACK); 0 until classified.
    pub context: u8,
    /// 1 when the segment came through a tunnel from its `hi` endpoint (see
    /// [`super::TunnelKey`]): which way round the tunnel's outer addresses were. 0 outside
    /// tunnels.
    pub outer_swapped: u8,
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

impl FlowKey {
    /// The key as twelve 32-bit words: for hashing and comparing without byte loops on BPF.
    #[inline(always)]
    pub fn words(&self) -> [u32; 12] {
        // SAFETY: FlowKey is repr(C), 48 bytes without implicit padding (asserted below), so
        // all of its bytes are initialized and any 48 bytes form a valid [u32; 12].
        unsafe { core::mem::transmute_copy(self) }
    }

    /// Whether this (classified) key is `segment`'s (as parsed, unclassified) but for the
    /// classifier's verdict: the class byte, the peer's TTL and the context byte.
    #[inline(always)]
    pub fn classifies(&self, segment: &FlowKey) -> bool {
        // The class is the fourth byte of word 10, the peer's TTL and the context the second
        // and third bytes of word 11.
        const CLASS: u32 = word([0, 0, 0, 0xff]);
        const PEER_TTL: u32 = word([0, 0xff, 0xff, 0]);
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
    pub fn classified(&self, class: u8, peer_ttl: u8, context: u8) -> FlowKey {
        let mut words = self.words();
        words[10] = word([self.family, self.protocol, self.direction, class]);
        // The TTL and the tunnel side stay as they are.
        words[11] = (words[11] & word([0xff, 0, 0, 0xff])) | word([0, peer_ttl, context, 0]);
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

    /// This key counted under a tunnel's `interface` (see [`super::TUNNEL_INTERFACE`]), its
    /// outer source the tunnel's `hi` endpoint if `swapped`; built word-wise (see [`word`]).
    #[inline(always)]
    pub fn in_tunnel(&self, interface: u32, swapped: bool) -> FlowKey {
        let mut words = self.words();
        words[8] = interface;
        words[11] = word([self.rst_ttl, self.peer_ttl, self.context, swapped as u8]);
        // SAFETY: as in `from_parts`.
        unsafe { core::mem::transmute::<[u32; 12], FlowKey>(words) }
    }

    /// The key as the header walk alone makes it: the classifier's `class`, `peer_ttl` and
    /// `context` cleared (`rst_ttl` is the segment's own).
    #[inline(always)]
    pub fn unclassified(&self) -> FlowKey {
        FlowKey { class: 0, peer_ttl: 0, context: 0, ..*self }
    }

    /// The same flow with the classification cleared: what a flow record is keyed by.
    #[inline(always)]
    pub fn flow_id(&self) -> FlowKey {
        FlowKey { class: 0, rst_ttl: 0, peer_ttl: 0, context: 0, ..*self }
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
pub(crate) const fn ports_word(a: u16, b: u16) -> u32 {
    let (a, b) = (a.to_ne_bytes(), b.to_ne_bytes());
    word([a[0], a[1], b[0], b[1]])
}

/// The words every key of a sent or received reset starts its tuple with: source and
/// destination addresses (as in [`FlowKey`], native-endian words), then both ports.
#[inline(always)]
pub(crate) const fn tuple_words(src: [u32; 4], dst: [u32; 4], sport: u16, dport: u16) -> [u32; 9] {
    [src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3], ports_word(sport, dport)]
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

impl StackResetKey {
    /// Built word-wise (see [`word`]); addresses as in [`FlowKey`], in native-endian words.
    #[inline(always)]
    pub fn new(src: [u32; 4], dst: [u32; 4], sport: u16, dport: u16, family: u8, reason: u32) -> Self {
        let [s0, s1, s2, s3, d0, d1, d2, d3, ports] = tuple_words(src, dst, sport, dport);
        let words = [s0, s1, s2, s3, d0, d1, d2, d3, ports, word([family, 0, 0, 0]), reason];
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

wire_sizes!(FlowKey: 48, ConnKey: 44, ServiceKey: 24, StackResetKey: 44, SourceKey: 24);
