//! Tunnels: what the header walk recognises around a TCP segment, and the key a tunnel is
//! known by.
//!
//! A flow inside a tunnel is counted under an interface of its own: [`TUNNEL_INTERFACE`] with
//! the tunnel's number in the low bits, in place of the underlay's ifindex in every key
//! (flow, connection, service, workload). Linux ifindexes are positive `int`s, so bit 31 never
//! names a real interface. Keys keep their size and layout (the kernel programs' stack has no
//! room for a wider key), and two tenants with the same inner addresses in different VNIs, or
//! behind different tunnel endpoints, are different flows and connections by construction.
//! The number is handed out once per [`TunnelKey`] (see [`crate::parse::Tunnels`]); userspace
//! reads the tunnel back from it.

use super::keys::{word, FAMILY_IPV4};

/// Set in a key's `ifindex` when the flow is inside a tunnel: the low bits are the tunnel's
/// number, not an interface.
pub const TUNNEL_INTERFACE: u32 = 1 << 31;
/// The number of tunnels no table had room for: counted, under one number for all of them.
pub const TUNNEL_UNRECORDED: u32 = TUNNEL_INTERFACE - 1;
/// Tunnels the kernel's table numbers (each direction-free pair of outer endpoints, kind, key
/// and interface is one).
pub const MAX_TUNNELS: u32 = 65_536;

/// The tunnel encapsulations the header walk goes one level into. The byte is what
/// [`crate::parse::Encap::kind`] and [`TunnelKey::kind`] hold; the name is the contract's
/// `tunnel.type` (iproute2's name for the device that makes it).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TunnelKind {
    /// VXLAN (RFC 7348) over UDP: an Ethernet frame.
    Vxlan = 1,
    /// Geneve (RFC 8926) over UDP: an Ethernet frame or an IP packet.
    Geneve = 2,
    /// GRE over IPv4 carrying IPv4 or IPv6.
    Gre = 3,
    /// GRE over IPv4 carrying Ethernet (transparent Ethernet bridging).
    Gretap = 4,
    /// GRE over IPv6 carrying IPv4 or IPv6.
    Ip6gre = 5,
    /// GRE over IPv6 carrying Ethernet.
    Ip6gretap = 6,
    /// IPv4 in IPv4 (protocol 4).
    Ipip = 7,
    /// IPv6 in IPv4 (protocol 41).
    Sit = 8,
    /// IPv6 in IPv6 (next header 41).
    Ip6ip6 = 9,
    /// IPv4 in IPv6 (next header 4), iproute2's `ip6tnl mode ipip6`.
    Ipip6 = 10,
}

impl TunnelKind {
    pub const ALL: [TunnelKind; 10] = [
        TunnelKind::Vxlan,
        TunnelKind::Geneve,
        TunnelKind::Gre,
        TunnelKind::Gretap,
        TunnelKind::Ip6gre,
        TunnelKind::Ip6gretap,
        TunnelKind::Ipip,
        TunnelKind::Sit,
        TunnelKind::Ip6ip6,
        TunnelKind::Ipip6,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            TunnelKind::Vxlan => "vxlan",
            TunnelKind::Geneve => "geneve",
            TunnelKind::Gre => "gre",
            TunnelKind::Gretap => "gretap",
            TunnelKind::Ip6gre => "ip6gre",
            TunnelKind::Ip6gretap => "ip6gretap",
            TunnelKind::Ipip => "ipip",
            TunnelKind::Sit => "sit",
            TunnelKind::Ip6ip6 => "ip6ip6",
            TunnelKind::Ipip6 => "ipip6",
        }
    }

    pub const fn from_byte(byte: u8) -> Option<TunnelKind> {
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i] as u8 == byte {
                return Some(Self::ALL[i]);
            }
            i += 1;
        }
        None
    }
}

/// A tunnel as the kernel numbers it: its kind and key on one interface between two outer
/// endpoints, in a canonical order (`lo` the smaller address) so both directions of a
/// connection share it. Addresses as in [`super::FlowKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TunnelKey {
    pub lo: [u8; 16],
    pub hi: [u8; 16],
    /// The underlay interface.
    pub ifindex: u32,
    /// The VXLAN / Geneve VNI or the GRE key; 0 unless `keyed`.
    pub key: u32,
    /// A [`TunnelKind`] as its byte.
    pub kind: u8,
    /// The outer header's family.
    pub family: u8,
    /// 1 when the tunnel carries a VNI or GRE key.
    pub keyed: u8,
    pub _pad: u8,
}

impl TunnelKey {
    /// Built word-wise (see [`word`]) from the outer source and destination as native-endian
    /// words; also says whether the source is the `hi` endpoint.
    #[inline(always)]
    pub fn new(
        src: [u32; 4],
        dst: [u32; 4],
        ifindex: u32,
        kind: u8,
        family: u8,
        keyed: bool,
        key: u32,
    ) -> (Self, bool) {
        let swapped = !address_le(&src, &dst);
        let (lo, hi) = if swapped { (dst, src) } else { (src, dst) };
        let words = [
            lo[0],
            lo[1],
            lo[2],
            lo[3],
            hi[0],
            hi[1],
            hi[2],
            hi[3],
            ifindex,
            if keyed { key } else { 0 },
            word([kind, family, keyed as u8, 0]),
        ];
        // SAFETY: TunnelKey is repr(C), 44 bytes without implicit padding (asserted below).
        (unsafe { core::mem::transmute::<[u32; 11], TunnelKey>(words) }, swapped)
    }

    pub fn tunnel_kind(&self) -> Option<TunnelKind> {
        TunnelKind::from_byte(self.kind)
    }

    /// The outer (source, destination) of a segment whose flow key says `swapped`.
    pub fn outer(&self, swapped: bool) -> ([u8; 16], [u8; 16]) {
        if swapped {
            (self.hi, self.lo)
        } else {
            (self.lo, self.hi)
        }
    }

    pub fn is_ipv4(&self) -> bool {
        self.family == FAMILY_IPV4
    }
}

/// `a <= b`, comparing native-endian address words as big-endian numbers.
#[inline(always)]
fn address_le(a: &[u32; 4], b: &[u32; 4]) -> bool {
    for i in 0..4 {
        let (x, y) = (u32::from_be(a[i]), u32::from_be(b[i]));
        if x != y {
            return x < y;
        }
    }
    true
}

/// The tunnel number in a key's `ifindex`, if the key is a tunnelled flow's.
#[inline(always)]
pub const fn tunnel_number(ifindex: u32) -> Option<u32> {
    if ifindex & TUNNEL_INTERFACE != 0 {
        Some(ifindex & !TUNNEL_INTERFACE)
    } else {
        None
    }
}

wire_sizes!(TunnelKey: 44);
