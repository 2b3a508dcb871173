//! The header walk: Ethernet → VLAN tags → IPv4/IPv6 (+ extension headers) → TCP, and one
//! level into a tunnel on the way (VXLAN, Geneve, GRE, IP-in-IP; see [`TunnelKind`]).
//!
//! Written once for the kernel and the host. Rules that keep it verifier-friendly: offsets only
//! grow by bounded amounts, loops have constant trip counts, and nothing is read except through
//! [`Cursor::header`]. What the walk accepts mirrors Wireshark's dissector for the cases rstwatch
//! counts: a TCP header directly on Ethernet / 802.1Q / 802.1ad / IPv4 / IPv6, or on the same
//! inside one tunnel. The tunnel decode sits only where the outer IP header says "not TCP", so
//! a plain TCP frame runs the walk it always ran; the inner headers are walked by the same code
//! again (`INNER`), which calls a tunnel inside the tunnel malformed instead of going deeper.

use crate::{
    cursor::{Cursor, Header},
    wire::{
        native_words, FlowKey, TunnelKey, TunnelKind, DIRECTION_RX, FAMILY_IPV4, FAMILY_IPV6, IPPROTO_TCP,
        TUNNEL_INTERFACE, TUNNEL_UNRECORDED,
    },
};

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// Pre-standard QinQ outer tag still emitted by some switches.
pub const ETH_P_QINQ_LEGACY: u16 = 0x9100;
/// Transparent Ethernet bridging: an Ethernet frame inside GRE (gretap) or Geneve.
pub const ETH_P_TEB: u16 = 0x6558;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_DSTOPTS: u8 = 60;
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_IPV6: u8 = 41;
pub const IPPROTO_GRE: u8 = 47;

/// VXLAN's IANA port, and Linux's default before it had one (Flannel still uses it).
pub const VXLAN_PORTS: [u16; 2] = [4789, 8472];
pub const GENEVE_PORT: u16 = 6081;

/// GRE flags (RFC 2784, RFC 2890): checksum, routing, key and sequence present; version.
pub const GRE_CSUM: u16 = 0x8000;
pub const GRE_ROUTING: u16 = 0x4000;
pub const GRE_KEY: u16 = 0x2000;
pub const GRE_SEQ: u16 = 0x1000;
pub const GRE_VERSION: u16 = 0x0007;

/// Stacked VLAN tags we walk through; deeper stacks are reported as malformed.
pub const MAX_VLAN_TAGS: usize = 3;
/// IPv6 extension headers we walk through before giving up (reported as malformed). Real
/// traffic carries at most two or three; the bound keeps the verifier's work fixed.
pub const MAX_IPV6_EXT_HEADERS: usize = 8;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: [u8; 2],
}

#[repr(C)]
pub struct VlanTag {
    pub tci: [u8; 2],
    pub ether_type: [u8; 2],
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub version_class_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// The first 8 bytes every IPv6 extension header has (the whole of a fragment header).
#[repr(C)]
pub struct Ipv6ExtHdr {
    pub next_header: u8,
    pub len: u8,
    pub data: [u8; 6],
}

#[repr(C)]
pub struct TcpHdr {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub seq: [u8; 4],
    pub ack: [u8; 4],
    pub data_offset: u8,
    pub flags: u8,
    pub window: [u8; 2],
    pub check: [u8; 2],
    pub urgent: [u8; 2],
}

// SAFETY: repr(C), u8 and [u8; N] fields only (alignment 1, no padding, any bytes valid).
unsafe impl Header for EthHdr {}
// SAFETY: repr(C), u8 and [u8; N] fields only (alignment 1, no padding, any bytes valid).
unsafe impl Header for VlanTag {}
// SAFETY: repr(C), u8 and [u8; N] fields only (alignment 1, no padding, any bytes valid).
unsafe impl Header for Ipv4Hdr {}
// SAFETY: repr(C), u8 and [u8; N] fields only (alignment 1, no padding, any bytes valid).
unsafe impl Header for Ipv6Hdr {}
// SAFETY: repr(C), u8 and [u8; N] fields only (alignment 1, no padding, any bytes valid).
unsafe impl Header for Ipv6ExtHdr {}
// SAFETY: repr(C), u8 and [u8; N] fields only (alignment 1, no padding, any bytes valid).
unsafe impl Header for TcpHdr {}

#[repr(C)]
pub struct UdpHdr {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

/// The VXLAN header (RFC 7348) and the fixed part of Geneve's (RFC 8926) share a shape: a
/// first byte (VXLAN's flags; Geneve's version and option length in 4-byte units), a second,
/// two bytes (Geneve's protocol type), the 24-bit VNI and a reserved byte.
#[repr(C)]
pub struct OverlayHdr {
    pub first: u8,
    pub flags: u8,
    pub protocol: [u8; 2],
    pub vni: [u8; 3],
    pub reserved: u8,
}

#[repr(C)]
pub struct GreHdr {
    pub flags: [u8; 2],
    pub protocol: [u8; 2],
}

/// A GRE key (or checksum, or sequence number): one 32-bit field.
#[repr(C)]
pub struct Word32 {
    pub bytes: [u8; 4],
}

// SAFETY: repr(C), u8 and [u8; N] fields only (alignment 1, no padding, any bytes valid).
unsafe impl Header for UdpHdr {}
// SAFETY: repr(C), u8 and [u8; N] fields only (alignment 1, no padding, any bytes valid).
unsafe impl Header for OverlayHdr {}
// SAFETY: repr(C), u8 and [u8; N] fields only (alignment 1, no padding, any bytes valid).
unsafe impl Header for GreHdr {}
// SAFETY: repr(C), u8 and [u8; N] fields only (alignment 1, no padding, any bytes valid).
unsafe impl Header for Word32 {}

wire_sizes!(
    EthHdr: 14,
    VlanTag: 4,
    Ipv4Hdr: 20,
    Ipv6Hdr: 40,
    Ipv6ExtHdr: 8,
    TcpHdr: 20,
    UdpHdr: 8,
    OverlayHdr: 8,
    GreHdr: 4,
    Word32: 4
);

/// The tunnel a segment was found in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Encap {
    /// A [`TunnelKind`] as its byte; 0 outside tunnels.
    pub kind: u8,
    /// Whether the tunnel carries a VNI (VXLAN, Geneve) or a GRE key: `key`.
    pub keyed: bool,
    /// Offset of the outer IP header.
    pub outer: u16,
    pub key: u32,
}

impl Encap {
    pub const NONE: Encap = Encap { kind: 0, keyed: false, outer: 0, key: 0 };
}

/// Which UDP ports carry VXLAN and Geneve, and the number a tunnel's flows are counted under
/// (see [`crate::wire::TUNNEL_INTERFACE`]): the kernel keeps both in maps, replay and the tests
/// in memory.
pub trait Tunnels {
    /// Whether UDP to `port` is VXLAN. By default the two well-known ports.
    #[inline(always)]
    fn vxlan_port(&self, port: u16) -> bool {
        port == VXLAN_PORTS[0] || port == VXLAN_PORTS[1]
    }

    /// Whether UDP to `port` is Geneve. By default the well-known port.
    #[inline(always)]
    fn geneve_port(&self, port: u16) -> bool {
        port == GENEVE_PORT
    }

    /// What the walk found in a tunnel (the tunnel, then the segment inside), as the walk
    /// continues with it. The kernel passes the words through memory the verifier cannot see
    /// into, so that every way the headers can be laid out continues as one state instead of
    /// multiplying the states of everything after the walk; elsewhere they are returned as
    /// they are. `None` when that memory is not there (the frame counts as malformed).
    #[inline(always)]
    fn conceal(&self, words: [u64; 2]) -> Option<[u64; 2]> {
        Some(words)
    }

    /// The tunnel's number (below [`TUNNEL_INTERFACE`]), handed out on first sight and the same
    /// for the same key ever after; [`TUNNEL_UNRECORDED`] when there is no room for another.
    fn number(&mut self, tunnel: &TunnelKey) -> u32;
}

/// Well-known ports, and tunnels numbered in the order first seen, in a fixed table: for
/// tests and tools that see few tunnels. Beyond its room, tunnels are
/// [`TUNNEL_UNRECORDED`].
pub struct TunnelTable<const N: usize> {
    pub keys: [TunnelKey; N],
    pub len: usize,
}

impl<const N: usize> Default for TunnelTable<N> {
    fn default() -> Self {
        TunnelTable { keys: [TunnelKey::default(); N], len: 0 }
    }
}

impl<const N: usize> TunnelTable<N> {
    /// The tunnel a key's `ifindex` names, if it names one of this table's.
    pub fn get(&self, ifindex: u32) -> Option<&TunnelKey> {
        let number = crate::wire::tunnel_number(ifindex)? as usize;
        self.keys[..self.len].get(number)
    }
}

impl<const N: usize> Tunnels for TunnelTable<N> {
    fn number(&mut self, tunnel: &TunnelKey) -> u32 {
        if let Some(at) = self.keys[..self.len].iter().position(|known| known == tunnel) {
            return at as u32;
        }
        if self.len == N {
            return TUNNEL_UNRECORDED;
        }
        self.keys[self.len] = *tunnel;
        self.len += 1;
        (self.len - 1) as u32
    }
}

/// The default ports and no numbering: for walks that only need to know where the segment is
/// (every tunnel is [`TUNNEL_UNRECORDED`]).
pub struct DefaultPorts;

impl Tunnels for DefaultPorts {
    #[inline(always)]
    fn number(&mut self, _: &TunnelKey) -> u32 {
        TUNNEL_UNRECORDED
    }
}

/// Where a TCP segment's headers sit in the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the TCP header.
    pub l4: usize,
    /// The TCP flags byte (FIN, SYN, RST, PSH, ACK, URG, ECE, CWR).
    pub flags: u8,
    /// The tunnel around it; [`Encap::NONE`] for a segment on the link itself.
    pub tunnel: Encap,
}

/// What the header walk found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    /// A TCP header with a valid data offset.
    Tcp(Segment),
    /// Not TCP over IP (ARP, UDP, ICMP, an unknown ethertype…): passes uncounted.
    NotTcp,
    /// An IPv4 or IPv6 fragment other than the first: it carries no TCP header.
    Fragment,
    /// Truncated inside a header, a bad IHL / data offset / IP version, deeper than the
    /// walk's bounds (VLAN stack or IPv6 extension chain), or a tunnel inside a tunnel.
    Malformed,
}

#[inline(always)]
fn is_vlan(ether_type: u16) -> bool {
    ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD || ether_type == ETH_P_QINQ_LEGACY
}

/// Walks the headers of one Ethernet frame down to TCP, with the well-known tunnel ports.
#[inline(always)]
pub fn walk<C: Cursor + ?Sized>(frame: &C) -> Walk {
    walk_with(frame, &DefaultPorts)
}

/// [`walk`] with the tunnel ports `tunnels` knows.
#[inline(always)]
pub fn walk_with<C: Cursor + ?Sized, T: Tunnels + ?Sized>(frame: &C, tunnels: &T) -> Walk {
    let Some(eth) = frame.header::<EthHdr>(0) else {
        return Walk::Malformed;
    };
    walk_level::<false, C, T>(frame, core::mem::size_of::<EthHdr>(), u16::from_be_bytes(eth.ether_type), tunnels)
}

/// Walks from the header at `offset`, whose type `ether_type` names: for link layers other
/// than Ethernet (Linux cooked capture, raw IP) that carry an ethertype of their own.
#[inline(always)]
pub fn walk_from<C: Cursor + ?Sized>(frame: &C, offset: usize, ether_type: u16) -> Walk {
    walk_from_with(frame, offset, ether_type, &DefaultPorts)
}

/// [`walk_from`] with the tunnel ports `tunnels` knows.
#[inline(always)]
pub fn walk_from_with<C: Cursor + ?Sized, T: Tunnels + ?Sized>(
    frame: &C,
    offset: usize,
    ether_type: u16,
    tunnels: &T,
) -> Walk {
    walk_level::<false, C, T>(frame, offset, ether_type, tunnels)
}

/// One level of the walk: the link's headers (`INNER` false) or a tunnel's payload.
#[inline(always)]
fn walk_level<const INNER: bool, C: Cursor + ?Sized, T: Tunnels + ?Sized>(
    frame: &C,
    offset: usize,
    ether_type: u16,
    tunnels: &T,
) -> Walk {
    let mut ether_type = ether_type;
    let mut offset = offset;
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(ether_type) {
            break;
        }
        let Some(tag) = frame.header::<VlanTag>(offset) else {
            return Walk::Malformed;
        };
        ether_type = u16::from_be_bytes(tag.ether_type);
        offset += core::mem::size_of::<VlanTag>();
    }
    match ether_type {
        ETH_P_IPV4 => walk_ipv4::<INNER, C, T>(frame, offset, tunnels),
        ETH_P_IPV6 => walk_ipv6::<INNER, C, T>(frame, offset, tunnels),
        t if is_vlan(t) => Walk::Malformed,
        _ => Walk::NotTcp,
    }
}

#[inline(always)]
fn walk_ipv4<const INNER: bool, C: Cursor + ?Sized, T: Tunnels + ?Sized>(frame: &C, l3: usize, tunnels: &T) -> Walk {
    let Some(ip) = frame.header::<Ipv4Hdr>(l3) else {
        return Walk::Malformed;
    };
    let ihl = (ip.version_ihl & 0x0f) as usize;
    if ip.version_ihl >> 4 != 4 || ihl < 5 {
        return Walk::Malformed;
    }
    if u16::from_be_bytes(ip.frag_off) & 0x1fff != 0 {
        return Walk::Fragment;
    }
    if ip.protocol != IPPROTO_TCP {
        return not_tcp::<INNER, C, T>(frame, FAMILY_IPV4, l3, l3 + ihl * 4, ip.protocol, tunnels);
    }
    walk_tcp(frame, FAMILY_IPV4, l3, l3 + ihl * 4)
}

#[inline(always)]
fn walk_ipv6<const INNER: bool, C: Cursor + ?Sized, T: Tunnels + ?Sized>(frame: &C, l3: usize, tunnels: &T) -> Walk {
    let Some(ip) = frame.header::<Ipv6Hdr>(l3) else {
        return Walk::Malformed;
    };
    if ip.version_class_flow[0] >> 4 != 6 {
        return Walk::Malformed;
    }
    let mut next_header = ip.next_header;
    let mut offset = l3 + core::mem::size_of::<Ipv6Hdr>();
    for _ in 0..=MAX_IPV6_EXT_HEADERS {
        let this_header = next_header;
        if this_header == IPPROTO_TCP {
            return walk_tcp(frame, FAMILY_IPV6, l3, offset);
        }
        if !matches!(this_header, IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT | IPPROTO_AH) {
            return not_tcp::<INNER, C, T>(frame, FAMILY_IPV6, l3, offset, this_header, tunnels);
        }
        let Some(ext) = frame.header::<Ipv6ExtHdr>(offset) else {
            return Walk::Malformed;
        };
        next_header = ext.next_header;
        // Lengths are bounded by the u8 length field: at most 2048 bytes per header.
        offset += match this_header {
            IPPROTO_FRAGMENT => {
                // Fragment offset (13 bits, in 8-byte units) sits above the 3 flag bits.
                if u16::from_be_bytes([ext.data[0], ext.data[1]]) >> 3 != 0 {
                    return Walk::Fragment;
                }
                8
            }
            // RFC 4302: AH length is in 4-byte units, minus 2; 0 would make it shorter than its
            // own fixed part, so such a header is malformed (as Wireshark and etherparse say).
            IPPROTO_AH if ext.len == 0 => return Walk::Malformed,
            IPPROTO_AH => (ext.len as usize + 2) * 4,
            _ => (ext.len as usize + 1) * 8,
        };
    }
    Walk::Malformed
}

/// An IP payload other than TCP at `l4`, protocol `protocol`: on the link, a tunnel to walk
/// into; inside one, a second tunnel is malformed (one level only, never misread).
///
/// Every frame that is not TCP comes here, by as many ways as the headers before can be laid
/// out, so what each way pays is kept to the protocol and a UDP port; the rest is walked once
/// the layout is concealed (see [`Tunnels::conceal`]).
#[inline(always)]
fn not_tcp<const INNER: bool, C: Cursor + ?Sized, T: Tunnels + ?Sized>(
    frame: &C,
    family: u8,
    l3: usize,
    l4: usize,
    protocol: u8,
    tunnels: &T,
) -> Walk {
    let vxlan = match protocol {
        IPPROTO_UDP => {
            // A UDP header cut short is no tunnel's: not TCP, as before tunnels were walked.
            let Some(udp) = frame.header::<UdpHdr>(l4) else {
                return Walk::NotTcp;
            };
            let dport = u16::from_be_bytes(udp.dport);
            if tunnels.vxlan_port(dport) {
                true
            } else if tunnels.geneve_port(dport) {
                false
            } else {
                return Walk::NotTcp;
            }
        }
        IPPROTO_GRE | IPPROTO_IPIP | IPPROTO_IPV6 => false,
        _ => return Walk::NotTcp,
    };
    if INNER || l4 > MAX_TUNNEL_OFFSET {
        return Walk::Malformed;
    }
    let Some(words) = tunnels.conceal(Outer { family, protocol, vxlan, l3: l3 as u16, l4: l4 as u16 }.words()) else {
        return Walk::Malformed;
    };
    let Outer { family, protocol, vxlan, l3, l4 } = Outer::from_words(words);
    let Some(tunnel) = tunnel_at(frame, family, usize::from(l4), protocol, vxlan) else {
        return Walk::Malformed;
    };
    let Some((kind, keyed, key, inner, ether_type)) = tunnel else {
        return Walk::NotTcp;
    };
    if inner > MAX_TUNNEL_OFFSET {
        return Walk::Malformed;
    }
    let found = Found { kind: kind as u8, keyed, key, outer: l3, inner: inner as u16, ether_type };
    let Some(words) = tunnels.conceal(found.words()) else {
        return Walk::Malformed;
    };
    let Found { kind, keyed, key, outer, inner, ether_type } = Found::from_words(words);
    match walk_level::<true, C, T>(frame, usize::from(inner), ether_type, tunnels) {
        Walk::Tcp(segment) if segment.l4 <= MAX_TUNNELLED_L4 => {
            let segment = Segment { tunnel: Encap { kind, keyed, outer, key }, ..segment };
            // Every inner layout continues as one state too.
            match tunnels.conceal(segment_words(&segment)) {
                Some(words) => Walk::Tcp(segment_from_words(words)),
                None => Walk::Malformed,
            }
        }
        Walk::Tcp(_) => Walk::Malformed,
        other => other,
    }
}

/// The outer IP header of a tunnel, as the walk goes on to the tunnel's own header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Outer {
    family: u8,
    protocol: u8,
    /// UDP to a VXLAN port (else to a Geneve one).
    vxlan: bool,
    l3: u16,
    l4: u16,
}

impl Outer {
    #[inline(always)]
    fn words(&self) -> [u64; 2] {
        [
            u64::from(self.family) | (u64::from(self.protocol) << 8) | (u64::from(self.vxlan) << 16),
            u64::from(self.l3) | (u64::from(self.l4) << 16),
        ]
    }

    #[inline(always)]
    fn from_words(words: [u64; 2]) -> Outer {
        let bound = MAX_TUNNEL_OFFSET as u64;
        Outer {
            family: words[0] as u8,
            protocol: (words[0] >> 8) as u8,
            vxlan: (words[0] >> 16) & 1 != 0,
            l3: (words[1] & bound) as u16,
            l4: ((words[1] >> 16) & bound) as u16,
        }
    }
}

/// How far into a frame a tunnelled segment's TCP header may start (its IP header starts
/// before it): deeper is malformed. A bound the kernel's verifier can work with.
pub const MAX_TUNNELLED_L4: usize = 4095;

/// A tunnelled segment as two words (see [`Tunnels::conceal`]).
#[inline(always)]
fn segment_words(segment: &Segment) -> [u64; 2] {
    let Encap { kind, keyed, outer, key } = segment.tunnel;
    // The kind less one: read back plus one, it is known not to be 0 (not "outside a
    // tunnel"), so the verifier does not walk the rest of the program for that too.
    [
        u64::from(key)
            | (u64::from(kind.wrapping_sub(1) & 0x7f) << 32)
            | (u64::from(keyed) << 40)
            | (u64::from(segment.family) << 48)
            | (u64::from(segment.flags) << 56),
        u64::from(outer) | ((segment.l3 as u64) << 16) | ((segment.l4 as u64) << 32),
    ]
}

/// Back from [`segment_words`], every offset bounded whatever the words say.
#[inline(always)]
fn segment_from_words(words: [u64; 2]) -> Segment {
    let bound = MAX_TUNNELLED_L4 as u64;
    Segment {
        family: (words[0] >> 48) as u8,
        flags: (words[0] >> 56) as u8,
        l3: ((words[1] >> 16) & bound) as usize,
        l4: ((words[1] >> 32) & bound) as usize,
        tunnel: Encap {
            kind: ((words[0] >> 32) & 0x7f) as u8 + 1,
            keyed: (words[0] >> 40) & 1 != 0,
            outer: (words[1] & MAX_TUNNEL_OFFSET as u64) as u16,
            key: words[0] as u32,
        },
    }
}

/// How far into a frame a tunnel's outer IP header and its payload may start: far beyond any
/// real stack of headers (the deepest legitimate one, IPv6 with a few extension headers and
/// Geneve options, is under 400 bytes), and a bound the kernel's verifier can work with. Deeper
/// is malformed.
pub const MAX_TUNNEL_OFFSET: usize = 1023;

/// A tunnel the walk found, as it continues into its payload (see [`Tunnels::conceal`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub kind: u8,
    pub keyed: bool,
    pub key: u32,
    /// Offsets of the outer IP header and of the payload, both at most [`MAX_TUNNEL_OFFSET`].
    pub outer: u16,
    pub inner: u16,
    /// What the payload starts with (an inner Ethernet header's type once it is read).
    pub ether_type: u16,
}

impl Found {
    /// As two words: the key, then the kind, keyed, both offsets and the ethertype.
    #[inline(always)]
    pub fn words(&self) -> [u64; 2] {
        [
            u64::from(self.key) | (u64::from(self.kind) << 32) | (u64::from(self.keyed) << 40),
            u64::from(self.outer) | (u64::from(self.inner) << 16) | (u64::from(self.ether_type) << 32),
        ]
    }

    /// Back from [`Found::words`], the offsets bounded by [`MAX_TUNNEL_OFFSET`] whatever the
    /// words say.
    #[inline(always)]
    pub fn from_words(words: [u64; 2]) -> Found {
        let offset_mask = MAX_TUNNEL_OFFSET as u64;
        Found {
            key: words[0] as u32,
            kind: (words[0] >> 32) as u8,
            keyed: (words[0] >> 40) & 1 != 0,
            outer: (words[1] & offset_mask) as u16,
            inner: ((words[1] >> 16) & offset_mask) as u16,
            ether_type: (words[1] >> 32) as u16,
        }
    }
}

/// A tunnel's kind, whether it has a key, the key, and where its payload starts with which
/// ethertype.
type TunnelAt = (TunnelKind, bool, u32, usize, u16);

/// The tunnel whose header is at `l4` inside an IP header of `family` that says `protocol`
/// (UDP: to a VXLAN port if `vxlan`, else to a Geneve one): `Some(None)` if it is none, `None`
/// if its headers are cut short.
#[inline(always)]
fn tunnel_at<C: Cursor + ?Sized>(
    frame: &C,
    family: u8,
    l4: usize,
    protocol: u8,
    vxlan: bool,
) -> Option<Option<TunnelAt>> {
    let v6 = family == FAMILY_IPV6;
    // Ethertype 0: an Ethernet header comes first.
    let found = match protocol {
        IPPROTO_UDP => {
            let at = l4 + core::mem::size_of::<UdpHdr>();
            let overlay = frame.header::<OverlayHdr>(at)?;
            let vni = u32::from_be_bytes([0, overlay.vni[0], overlay.vni[1], overlay.vni[2]]);
            let at = at + core::mem::size_of::<OverlayHdr>();
            if vxlan {
                (TunnelKind::Vxlan, true, vni, at, 0)
            } else if overlay.first >> 6 != 0 {
                // A Geneve version this walk does not know (Wireshark stops there too).
                return Some(None);
            } else {
                let at = at + usize::from(overlay.first & 0x3f) * 4;
                match u16::from_be_bytes(overlay.protocol) {
                    ETH_P_TEB => (TunnelKind::Geneve, true, vni, at, 0),
                    t @ (ETH_P_IPV4 | ETH_P_IPV6) => (TunnelKind::Geneve, true, vni, at, t),
                    _ => return Some(None),
                }
            }
        }
        IPPROTO_GRE => {
            let gre = frame.header::<GreHdr>(l4)?;
            let flags = u16::from_be_bytes(gre.flags);
            // Version 1 is PPTP's enhanced GRE; source routing went with RFC 2784.
            if flags & (GRE_VERSION | GRE_ROUTING) != 0 {
                return Some(None);
            }
            let mut at = l4 + core::mem::size_of::<GreHdr>();
            if flags & GRE_CSUM != 0 {
                at += 4;
            }
            let keyed = flags & GRE_KEY != 0;
            let key = if keyed {
                let key = u32::from_be_bytes(frame.header::<Word32>(at)?.bytes);
                at += 4;
                key
            } else {
                0
            };
            if flags & GRE_SEQ != 0 {
                at += 4;
            }
            match u16::from_be_bytes(gre.protocol) {
                ETH_P_TEB => (if v6 { TunnelKind::Ip6gretap } else { TunnelKind::Gretap }, keyed, key, at, 0),
                t @ (ETH_P_IPV4 | ETH_P_IPV6) => {
                    (if v6 { TunnelKind::Ip6gre } else { TunnelKind::Gre }, keyed, key, at, t)
                }
                _ => return Some(None),
            }
        }
        IPPROTO_IPIP => (if v6 { TunnelKind::Ipip6 } else { TunnelKind::Ipip }, false, 0, l4, ETH_P_IPV4),
        IPPROTO_IPV6 => (if v6 { TunnelKind::Ip6ip6 } else { TunnelKind::Sit }, false, 0, l4, ETH_P_IPV6),
        _ => return Some(None),
    };
    let (kind, keyed, key, at, ether_type) = found;
    if ether_type != 0 {
        return Some(Some(found));
    }
    let eth = frame.header::<EthHdr>(at)?;
    Some(Some((kind, keyed, key, at + core::mem::size_of::<EthHdr>(), u16::from_be_bytes(eth.ether_type))))
}

#[inline(always)]
fn walk_tcp<C: Cursor + ?Sized>(frame: &C, family: u8, l3: usize, l4: usize) -> Walk {
    let Some(tcp) = frame.header::<TcpHdr>(l4) else {
        return Walk::Malformed;
    };
    if tcp.data_offset >> 4 < 5 {
        return Walk::Malformed;
    }
    Walk::Tcp(Segment { family, l3, l4, flags: tcp.flags, tunnel: Encap::NONE })
}

/// Where a TCP segment's payload starts and how long the IP header says it is (0 for the bare
/// RST almost every stack sends). `None` if the headers the walk saw are gone.
#[inline(always)]
pub fn tcp_payload<C: Cursor + ?Sized>(frame: &C, segment: &Segment) -> Option<(usize, usize)> {
    let tcp = frame.header::<TcpHdr>(segment.l4)?;
    let start = segment.l4 + usize::from(tcp.data_offset >> 4) * 4;
    // Where the IP datagram ends, by its own length field.
    let end = if segment.family == FAMILY_IPV4 {
        segment.l3 + usize::from(u16::from_be_bytes(frame.header::<Ipv4Hdr>(segment.l3)?.total_len))
    } else {
        segment.l3
            + core::mem::size_of::<Ipv6Hdr>()
            + usize::from(u16::from_be_bytes(frame.header::<Ipv6Hdr>(segment.l3)?.payload_len))
    };
    Some((start, end.saturating_sub(start)))
}

/// A TCP segment rstwatch acts on, read once from the frame: an RST, or a segment that
/// opens or closes a connection (SYN, SYN+ACK, FIN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpEvent {
    /// The directional 5-tuple plus interface and direction, `rst_ttl` set to the segment's TTL
    /// / hop limit; `class` and `peer_ttl` are left for [`crate::diagnose`].
    pub key: FlowKey,
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    /// An RST's payload: where it starts in the frame and how long the IP header says it is
    /// (see [`tcp_payload`]); both 0 for a bare RST and for every other event, whose payload
    /// nothing reads.
    pub payload_at: u16,
    pub payload_len: u16,
}

/// Reads the [`TcpEvent`] of a segment the walk found.
///
/// Returns `None` only if the cursor no longer yields the headers the walk saw.
#[inline(always)]
pub fn tcp_event<C: Cursor + ?Sized>(frame: &C, segment: &Segment, direction: u8, ifindex: u32) -> Option<TcpEvent> {
    let tcp = frame.header::<TcpHdr>(segment.l4)?;
    // Addresses move as 32-bit words: byte-array copies become a load and a stack spill per
    // byte on BPF.
    let (src, dst, ttl) = if segment.family == FAMILY_IPV4 {
        let ip = frame.header::<Ipv4Hdr>(segment.l3)?;
        ([u32::from_ne_bytes(ip.src), 0, 0, 0], [u32::from_ne_bytes(ip.dst), 0, 0, 0], ip.ttl)
    } else {
        let ip = frame.header::<Ipv6Hdr>(segment.l3)?;
        (native_words(&ip.src), native_words(&ip.dst), ip.hop_limit)
    };
    Some(TcpEvent {
        key: FlowKey::from_parts(
            src,
            dst,
            ifindex,
            u16::from_be_bytes(tcp.sport),
            u16::from_be_bytes(tcp.dport),
            segment.family,
            direction,
            ttl,
        ),
        flags: tcp.flags,
        seq: u32::from_be_bytes(tcp.seq),
        ack: u32::from_be_bytes(tcp.ack),
        payload_at: 0,
        payload_len: 0,
    })
}

/// `event` with its payload's place, for an RST: only resets read it, so only they pay the
/// second look at the headers. Offsets beyond a u16 (no frame has them) read as no payload.
#[inline(always)]
fn with_payload<C: Cursor + ?Sized>(frame: &C, segment: &Segment, event: TcpEvent) -> TcpEvent {
    // The family as the event holds it, not the walk's: kept live from the walk to here, it
    // cost every IPv4 TCP frame a stack spill in the kernel programs.
    match tcp_payload(frame, &Segment { family: event.key.family, ..*segment }) {
        Some((at, len)) if len != 0 && at <= usize::from(u16::MAX) && len <= usize::from(u16::MAX) => {
            TcpEvent { payload_at: at as u16, payload_len: len as u16, ..event }
        }
        _ => event,
    }
}

/// What one frame means to rstwatch's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observation {
    NotTcp,
    Malformed,
    Fragment,
    /// A TCP segment without RST, SYN or FIN: the common case, which costs nothing more.
    Segment,
    /// A SYN, SYN+ACK or FIN without RST: it tells the connection's state.
    Control(TcpEvent),
    /// A TCP segment with RST (alone or with ACK, SYN, FIN…).
    Reset(TcpEvent),
}

/// The classification every consumer shares: the XDP program, replay and the tests. The frame
/// was received ([`DIRECTION_RX`]) on interface `ifindex`. Tunnels have the well-known ports
/// and are not numbered (see [`inspect_tunnels`]).
#[inline(always)]
pub fn inspect<C: Cursor + ?Sized>(frame: &C, ifindex: u32) -> Observation {
    inspect_with(frame, DIRECTION_RX, || ifindex)
}

/// [`inspect`] for either direction, asking for the interface only when an event needs it: in
/// the kernel the ingress ifindex is three dependent loads, which plain segments should not pay
/// for.
#[inline(always)]
pub fn inspect_with<C: Cursor + ?Sized>(frame: &C, direction: u8, ifindex: impl FnOnce() -> u32) -> Observation {
    inspect_tunnels(frame, direction, ifindex, &mut DefaultPorts)
}

/// [`inspect_with`] with `tunnels`' ports, an event inside a tunnel counted under the number
/// `tunnels` gives it (see [`crate::wire::TUNNEL_INTERFACE`]).
#[inline(always)]
pub fn inspect_tunnels<C: Cursor + ?Sized, T: Tunnels + ?Sized>(
    frame: &C,
    direction: u8,
    ifindex: impl FnOnce() -> u32,
    tunnels: &mut T,
) -> Observation {
    let walked = walk_with(frame, tunnels);
    observe(frame, walked, direction, ifindex, tunnels)
}

/// [`inspect`] for frames whose link layer is not Ethernet; see [`walk_from`].
#[inline(always)]
pub fn inspect_from<C: Cursor + ?Sized>(frame: &C, offset: usize, ether_type: u16, ifindex: u32) -> Observation {
    inspect_from_tunnels(frame, offset, ether_type, ifindex, &mut DefaultPorts)
}

/// [`inspect_from`] with `tunnels` (see [`inspect_tunnels`]).
#[inline(always)]
pub fn inspect_from_tunnels<C: Cursor + ?Sized, T: Tunnels + ?Sized>(
    frame: &C,
    offset: usize,
    ether_type: u16,
    ifindex: u32,
    tunnels: &mut T,
) -> Observation {
    let walked = walk_from_with(frame, offset, ether_type, tunnels);
    observe(frame, walked, DIRECTION_RX, || ifindex, tunnels)
}

#[inline(always)]
fn observe<C: Cursor + ?Sized, T: Tunnels + ?Sized>(
    frame: &C,
    walked: Walk,
    direction: u8,
    ifindex: impl FnOnce() -> u32,
    tunnels: &mut T,
) -> Observation {
    match walked {
        Walk::Tcp(segment) if segment.flags & (TCP_RST | TCP_SYN | TCP_FIN) != 0 => {
            let event = match tcp_event(frame, &segment, direction, ifindex()) {
                Some(event) if segment.tunnel.kind != 0 => in_tunnel(frame, &segment.tunnel, event, tunnels),
                event => event,
            };
            match event {
                Some(event) if segment.flags & TCP_RST != 0 => Observation::Reset(with_payload(frame, &segment, event)),
                Some(event) => Observation::Control(event),
                None => Observation::Malformed,
            }
        }
        Walk::Tcp(_) => Observation::Segment,
        Walk::NotTcp => Observation::NotTcp,
        Walk::Fragment => Observation::Fragment,
        Walk::Malformed => Observation::Malformed,
    }
}

/// The tunnel `encap` as a [`TunnelKey`] on the event's interface, and whether the outer
/// source is its `hi` endpoint. `None` if the outer header is gone.
#[inline(always)]
pub fn tunnel_key<C: Cursor + ?Sized>(frame: &C, encap: &Encap, ifindex: u32) -> Option<(TunnelKey, bool)> {
    let outer = usize::from(encap.outer);
    let (src, dst, family) = if frame.header::<Ipv4Hdr>(outer)?.version_ihl >> 4 == 4 {
        let ip = frame.header::<Ipv4Hdr>(outer)?;
        ([u32::from_ne_bytes(ip.src), 0, 0, 0], [u32::from_ne_bytes(ip.dst), 0, 0, 0], FAMILY_IPV4)
    } else {
        let ip = frame.header::<Ipv6Hdr>(outer)?;
        (native_words(&ip.src), native_words(&ip.dst), FAMILY_IPV6)
    };
    Some(TunnelKey::new(src, dst, ifindex, encap.kind, family, encap.keyed, encap.key))
}

/// `event` (inside `encap`) counted under its tunnel's number.
#[inline(always)]
pub fn in_tunnel<C: Cursor + ?Sized, T: Tunnels + ?Sized>(
    frame: &C,
    encap: &Encap,
    event: TcpEvent,
    tunnels: &mut T,
) -> Option<TcpEvent> {
    let (key, swapped) = tunnel_key(frame, encap, event.key.ifindex)?;
    let number = tunnels.number(&key);
    // However the number was had (found, handed out, raced for, none left), the rest of the
    // program goes on from one state (see `Tunnels::conceal`).
    let [word, _] = tunnels.conceal([u64::from(number) | (u64::from(swapped) << 32), 0])?;
    let number = word as u32 & TUNNEL_UNRECORDED;
    Some(TcpEvent { key: event.key.in_tunnel(TUNNEL_INTERFACE | number, (word >> 32) & 1 != 0), ..event })
}

/// The kinds of frame there are counters for; each method counts one frame of that kind.
/// [`count`] decides which; kernel and replay only say where their counters live.
pub trait FrameCounters {
    fn not_tcp(&mut self);
    fn tcp(&mut self);
    fn malformed(&mut self);
    fn fragment(&mut self);
}

/// Counts one observed frame as exactly one kind (a reset is a TCP segment). Returns the event
/// [`crate::diagnose::track`] must see.
#[inline(always)]
pub fn count<'a, C: FrameCounters>(counters: &mut C, observation: &'a Observation) -> Option<&'a TcpEvent> {
    match observation {
        Observation::NotTcp => {
            counters.not_tcp();
            None
        }
        Observation::Malformed => {
            counters.malformed();
            None
        }
        Observation::Fragment => {
            counters.fragment();
            None
        }
        Observation::Segment => {
            counters.tcp();
            None
        }
        Observation::Control(event) | Observation::Reset(event) => {
            counters.tcp();
            Some(event)
        }
    }
}
