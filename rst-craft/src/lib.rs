//! Frames built to order for tests, fuzzers and benchmarks (std, host only: never in the eBPF build).
//!
//! [`FrameBuilder`] describes a frame layer by layer and lays it out with etherparse's header
//! types, so lengths, next-header chains and checksums are etherparse's, not ours. etherparse's
//! own `PacketBuilder` stops at two VLAN tags and a fixed IPv6 extension order; the walk in
//! [`rst_common::parse`] needs three tags and arbitrary (and overlong) chains, so we chain the
//! per-header writers ourselves.
//!
//! [`Crafted`] then breaks a well-formed frame in exactly one place (truncation, IHL, data
//! offset, IP version): etherparse refuses to write such headers, so those are byte edits.
//!
//! [`cases`] is the one table of frames and the [`Observation`] each must produce. The host
//! tests run it through [`rst_common::inspect`], the kernel tests through the XDP program: a case
//! added here is checked in both places.
//!
//! [`capture`] writes frames as the pcap and pcapng files `rstwatch replay` reads.

/// The etherparse this module builds with, for callers that name its types (TCP options).
pub use etherparse;

use etherparse::{
    EtherType, Ethernet2Header, IpAuthHeader, IpFragOffset, IpNumber, Ipv4Header, Ipv6FragmentHeader, Ipv6Header,
    Ipv6RawExtHeader, SingleVlanHeader, TcpHeader, TcpOptionElement, VlanId, VlanPcp,
};

use rst_common::{
    parse::{
        TcpHdr, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, ETH_P_QINQ_LEGACY, IPPROTO_AH, IPPROTO_DSTOPTS,
        IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ROUTING, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS, TCP_ACK, TCP_FIN,
        TCP_RST, TCP_SYN,
    },
    wire::{FlowKey, DIRECTION_RX, FAMILY_IPV4, FAMILY_IPV6, IPPROTO_TCP},
    Observation, TcpEvent,
};

pub const TCP_PSH: u8 = 0x08;

/// The shortest frame `BPF_PROG_TEST_RUN` accepts for XDP (`ETH_HLEN`); every [`cases`] frame is
/// at least this long so the kernel tests can replay all of them.
pub const MIN_TEST_RUN_FRAME: usize = 14;

/// Which tag protocol identifier a VLAN tag is announced with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VlanKind {
    /// 802.1Q customer tag, 0x8100.
    Dot1Q,
    /// 802.1ad service tag (QinQ outer), 0x88a8.
    Dot1Ad,
    /// Pre-standard QinQ outer tag, 0x9100.
    QinQLegacy,
}

impl VlanKind {
    pub fn tpid(self) -> u16 {
        match self {
            VlanKind::Dot1Q => ETH_P_8021Q,
            VlanKind::Dot1Ad => ETH_P_8021AD,
            VlanKind::QinQLegacy => ETH_P_QINQ_LEGACY,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vlan {
    pub kind: VlanKind,
    /// 12-bit VLAN identifier.
    pub id: u16,
}

/// One IPv6 extension header. Lengths use the header's own units, so a builder can produce every
/// length the wire format allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv6Ext {
    /// Hop-by-hop options, `8 * (len + 1)` bytes, padded with Pad1 options.
    HopByHop { len: u8 },
    /// Routing header (type 0, no segments left), `8 * (len + 1)` bytes.
    Routing { len: u8 },
    /// Destination options, `8 * (len + 1)` bytes, padded with Pad1 options.
    DestinationOptions { len: u8 },
    /// Fragment header; `offset` is in 8-byte units (13 bits).
    Fragment { offset: u16, more: bool },
    /// Authentication header with an ICV of `icv_len` bytes (a multiple of 4; for IPv6 the
    /// whole header, 12 + `icv_len`, should be a multiple of 8).
    Auth { icv_len: u16 },
}

impl Ipv6Ext {
    fn protocol(self) -> u8 {
        match self {
            Ipv6Ext::HopByHop { .. } => IPPROTO_HOPOPTS,
            Ipv6Ext::Routing { .. } => IPPROTO_ROUTING,
            Ipv6Ext::DestinationOptions { .. } => IPPROTO_DSTOPTS,
            Ipv6Ext::Fragment { .. } => IPPROTO_FRAGMENT,
            Ipv6Ext::Auth { .. } => IPPROTO_AH,
        }
    }

    fn write(self, next_header: u8, out: &mut Vec<u8>) {
        let next_header = IpNumber(next_header);
        let result = match self {
            Ipv6Ext::HopByHop { len } | Ipv6Ext::Routing { len } | Ipv6Ext::DestinationOptions { len } => {
                // All zeroes: Pad1 options, or routing type 0 with no segments left.
                let payload = vec![0u8; 6 + 8 * len as usize];
                Ipv6RawExtHeader::new_raw(next_header, &payload)
                    .expect("a payload of 6 + 8n bytes is always valid")
                    .write(out)
            }
            Ipv6Ext::Fragment { offset, more } => {
                let offset = IpFragOffset::try_new(offset).expect("fragment offset fits in 13 bits");
                Ipv6FragmentHeader::new(next_header, offset, more, 0x5eed).write(out)
            }
            Ipv6Ext::Auth { icv_len } => {
                let icv = vec![0xa5u8; icv_len as usize];
                IpAuthHeader::new(next_header, 0x1000, 1, &icv)
                    .expect("ICV length is a multiple of 4 and at most 1016 bytes")
                    .write(out)
            }
        };
        result.expect("writing to a Vec cannot fail");
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// Raw option bytes: a multiple of 4, at most 40.
    pub options: Vec<u8>,
    /// In 8-byte units (13 bits).
    pub fragment_offset: u16,
    pub more_fragments: bool,
    pub dont_fragment: bool,
    pub identification: u16,
    pub ttl: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// In wire order, each pointing at the next; the last one points at the transport.
    pub extensions: Vec<Ipv6Ext>,
    pub hop_limit: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Network {
    Ipv4(Ipv4),
    Ipv6(Ipv6),
    /// Any other ethertype (ARP, LLDP…) followed by raw bytes.
    Other {
        ether_type: u16,
        bytes: Vec<u8>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tcp {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    /// FIN, SYN, RST, PSH, ACK, URG, ECE, CWR as on the wire.
    pub flags: u8,
    pub window: u16,
    /// Options (padded with zeroes to a multiple of 4, at most 40 bytes): they set the data
    /// offset.
    pub options: Vec<TcpOptionElement>,
    pub payload: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp(Tcp),
    /// Another IP protocol (UDP, ICMPv6, none…), header and payload as raw bytes. Also what a
    /// non-first fragment carries.
    Other {
        protocol: u8,
        bytes: Vec<u8>,
    },
}

/// Where the layers of a built frame start, for the edits that break it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    Ipv4 { l3: usize, l4: usize },
    Ipv6 { l3: usize, l4: usize },
    Other,
}

/// A frame described layer by layer; [`FrameBuilder::build`] lays it out.
///
/// The setters panic when the frame has no such layer (e.g. IPv4 options on an IPv6 frame):
/// that is a mistake in the test, not in the code under test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameBuilder {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// Outermost first.
    pub vlans: Vec<Vlan>,
    pub network: Network,
    /// Ignored for [`Network::Other`].
    pub transport: Transport,
}

impl FrameBuilder {
    /// A TCP segment over IPv4 (ports 49152 → 443, flags ACK), no options, not fragmented.
    pub fn ipv4(src: [u8; 4], dst: [u8; 4]) -> Self {
        Self::with_network(Network::Ipv4(Ipv4 {
            src,
            dst,
            options: Vec::new(),
            fragment_offset: 0,
            more_fragments: false,
            dont_fragment: true,
            identification: 0x1234,
            ttl: 64,
        }))
    }

    /// A TCP segment over IPv6 (ports 49152 → 443, flags ACK), no extension headers.
    pub fn ipv6(src: [u8; 16], dst: [u8; 16]) -> Self {
        Self::with_network(Network::Ipv6(Ipv6 { src, dst, extensions: Vec::new(), hop_limit: 64 }))
    }

    /// A frame of another ethertype, `bytes` following the Ethernet header (and tags).
    pub fn ether_type(ether_type: u16, bytes: &[u8]) -> Self {
        Self::with_network(Network::Other { ether_type, bytes: bytes.to_owned() })
    }

    fn with_network(network: Network) -> Self {
        Self {
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            vlans: Vec::new(),
            network,
            transport: Transport::Tcp(Tcp {
                sport: 49152,
                dport: 443,
                seq: 0x0102_0304,
                ack: 0,
                flags: TCP_ACK,
                window: 64240,
                options: Vec::new(),
                payload: Vec::new(),
            }),
        }
    }

    /// Adds a VLAN tag inside the ones already there.
    pub fn vlan(mut self, kind: VlanKind, id: u16) -> Self {
        self.vlans.push(Vlan { kind, id });
        self
    }

    pub fn ipv4_options(mut self, options: &[u8]) -> Self {
        self.ipv4_mut().options = options.to_owned();
        self
    }

    /// IPv4 fragment fields; `offset` in 8-byte units.
    pub fn ipv4_fragment(mut self, offset: u16, more_fragments: bool) -> Self {
        let ip = self.ipv4_mut();
        ip.fragment_offset = offset;
        ip.more_fragments = more_fragments;
        ip.dont_fragment = false;
        self
    }

    /// Appends an IPv6 extension header after the ones already there.
    pub fn ipv6_ext(mut self, ext: Ipv6Ext) -> Self {
        self.ipv6_mut().extensions.push(ext);
        self
    }

    pub fn ports(mut self, sport: u16, dport: u16) -> Self {
        let tcp = self.tcp_mut();
        tcp.sport = sport;
        tcp.dport = dport;
        self
    }

    /// Replaces the TCP flags byte.
    pub fn flags(mut self, flags: u8) -> Self {
        self.tcp_mut().flags = flags;
        self
    }

    pub fn tcp_options(mut self, options: &[TcpOptionElement]) -> Self {
        self.tcp_mut().options = options.to_owned();
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.tcp_mut().payload = payload.to_owned();
        self
    }

    /// Replaces TCP with another IP protocol and its raw bytes.
    pub fn ip_payload(mut self, protocol: u8, bytes: &[u8]) -> Self {
        self.transport = Transport::Other { protocol, bytes: bytes.to_owned() };
        self
    }

    fn ipv4_mut(&mut self) -> &mut Ipv4 {
        match &mut self.network {
            Network::Ipv4(ip) => ip,
            other => panic!("not an IPv4 frame: {other:?}"),
        }
    }

    fn ipv6_mut(&mut self) -> &mut Ipv6 {
        match &mut self.network {
            Network::Ipv6(ip) => ip,
            other => panic!("not an IPv6 frame: {other:?}"),
        }
    }

    fn tcp_mut(&mut self) -> &mut Tcp {
        match &mut self.transport {
            Transport::Tcp(tcp) => tcp,
            other => panic!("not a TCP frame: {other:?}"),
        }
    }

    /// The key rstwatch should record for this frame if it is a RST, taken from the builder's
    /// fields (not from parsing the bytes).
    ///
    /// # Panics
    /// If the frame is not TCP over IP.
    pub fn flow_key(&self, ifindex: u32) -> FlowKey {
        let Transport::Tcp(tcp) = &self.transport else {
            panic!("not a TCP frame: {:?}", self.transport);
        };
        let (family, src, dst, ttl) = match &self.network {
            Network::Ipv4(ip) => (FAMILY_IPV4, widen(ip.src), widen(ip.dst), ip.ttl),
            Network::Ipv6(ip) => (FAMILY_IPV6, ip.src, ip.dst, ip.hop_limit),
            Network::Other { .. } => panic!("not an IP frame"),
        };
        received_key(family, src, dst, ifindex, (tcp.sport, tcp.dport), ttl)
    }

    /// The event the walk should report for this frame received on `ifindex`, from the
    /// builder's fields.
    ///
    /// # Panics
    /// If the frame is not TCP over IP.
    pub fn event(&self, ifindex: u32) -> TcpEvent {
        let Transport::Tcp(tcp) = &self.transport else {
            panic!("not a TCP frame: {:?}", self.transport);
        };
        // Only an RST's payload is located (see `rst_common::parse::TcpEvent`); it ends the
        // frame, which the builder does not pad.
        let (payload_at, payload_len) = if tcp.flags & TCP_RST != 0 && !tcp.payload.is_empty() {
            let at = self.build().bytes.len() - tcp.payload.len();
            (u16::try_from(at).expect("a frame under 64 KiB"), u16::try_from(tcp.payload.len()).expect("under 64 KiB"))
        } else {
            (0, 0)
        };
        TcpEvent { key: self.flow_key(ifindex), flags: tcp.flags, seq: tcp.seq, ack: tcp.ack, payload_at, payload_len }
    }

    /// Sets the IPv4 TTL or IPv6 hop limit.
    pub fn ttl(mut self, ttl: u8) -> Self {
        match &mut self.network {
            Network::Ipv4(ip) => ip.ttl = ttl,
            Network::Ipv6(ip) => ip.hop_limit = ttl,
            Network::Other { .. } => panic!("not an IP frame"),
        }
        self
    }

    /// Sets the TCP sequence and acknowledgment numbers.
    pub fn seq_ack(mut self, seq: u32, ack: u32) -> Self {
        let tcp = self.tcp_mut();
        tcp.seq = seq;
        tcp.ack = ack;
        self
    }

    /// Lays the frame out. No padding to Ethernet's 60-byte minimum: a test that wants it adds
    /// payload.
    pub fn build(&self) -> Crafted {
        let mut bytes = Vec::with_capacity(128);
        let network_type = match &self.network {
            Network::Ipv4(_) => ETH_P_IPV4,
            Network::Ipv6(_) => ETH_P_IPV6,
            Network::Other { ether_type, .. } => *ether_type,
        };
        // Each header announces the next one's type: Ethernet the first tag's TPID, each tag
        // the next tag's TPID, the innermost tag the network ethertype.
        let mut next_types: Vec<u16> = self.vlans.iter().map(|vlan| vlan.kind.tpid()).collect();
        next_types.push(network_type);
        Ethernet2Header { source: self.src_mac, destination: self.dst_mac, ether_type: EtherType(next_types[0]) }
            .write(&mut bytes)
            .expect("writing to a Vec cannot fail");
        for (vlan, next_type) in self.vlans.iter().zip(&next_types[1..]) {
            SingleVlanHeader {
                pcp: VlanPcp::ZERO,
                drop_eligible_indicator: false,
                vlan_id: VlanId::try_new(vlan.id).expect("VLAN id fits in 12 bits"),
                ether_type: EtherType(*next_type),
            }
            .write(&mut bytes)
            .expect("writing to a Vec cannot fail");
        }
        let l3 = bytes.len();
        let layout = match &self.network {
            Network::Ipv4(ip) => self.write_ipv4(ip, &mut bytes, l3),
            Network::Ipv6(ip) => self.write_ipv6(ip, &mut bytes, l3),
            Network::Other { bytes: rest, .. } => {
                bytes.extend_from_slice(rest);
                Layout::Other
            }
        };
        Crafted { bytes, layout }
    }

    fn write_ipv4(&self, ip: &Ipv4, bytes: &mut Vec<u8>, l3: usize) -> Layout {
        let (protocol, transport) = self.transport_bytes(|tcp, payload| {
            tcp.calc_checksum_ipv4_raw(ip.src, ip.dst, payload).expect("TCP segment fits in an IPv4 packet")
        });
        let mut header = Ipv4Header::new(0, ip.ttl, IpNumber(protocol), ip.src, ip.dst).expect("empty payload fits");
        header.options = ip.options[..].try_into().expect("IPv4 options are a multiple of 4, at most 40 bytes");
        header.identification = ip.identification;
        header.dont_fragment = ip.dont_fragment;
        header.more_fragments = ip.more_fragments;
        header.fragment_offset = IpFragOffset::try_new(ip.fragment_offset).expect("fragment offset fits in 13 bits");
        header.set_payload_len(transport.len()).expect("payload fits in an IPv4 packet");
        // `write` computes the header checksum.
        header.write(bytes).expect("writing to a Vec cannot fail");
        let l4 = bytes.len();
        bytes.extend_from_slice(&transport);
        Layout::Ipv4 { l3, l4 }
    }

    fn write_ipv6(&self, ip: &Ipv6, bytes: &mut Vec<u8>, l3: usize) -> Layout {
        let (protocol, transport) = self.transport_bytes(|tcp, payload| {
            tcp.calc_checksum_ipv6_raw(ip.src, ip.dst, payload).expect("TCP segment fits in an IPv6 packet")
        });
        let mut extensions = Vec::new();
        let next_headers = ip.extensions.iter().skip(1).map(|ext| ext.protocol()).chain([protocol]);
        for (ext, next_header) in ip.extensions.iter().zip(next_headers) {
            ext.write(next_header, &mut extensions);
        }
        let mut header = Ipv6Header {
            next_header: IpNumber(ip.extensions.first().map_or(protocol, |ext| ext.protocol())),
            hop_limit: ip.hop_limit,
            source: ip.src,
            destination: ip.dst,
            ..Default::default()
        };
        header
            .set_payload_length(extensions.len() + transport.len())
            .expect("payload fits in an IPv6 packet (no jumbograms)");
        header.write(bytes).expect("writing to a Vec cannot fail");
        bytes.extend_from_slice(&extensions);
        let l4 = bytes.len();
        bytes.extend_from_slice(&transport);
        Layout::Ipv6 { l3, l4 }
    }

    /// The transport's protocol number and bytes; `checksum` computes TCP's over the pseudo
    /// header of the enclosing IP version.
    fn transport_bytes(&self, checksum: impl Fn(&TcpHeader, &[u8]) -> u16) -> (u8, Vec<u8>) {
        match &self.transport {
            Transport::Tcp(tcp) => {
                let mut header = TcpHeader::new(tcp.sport, tcp.dport, tcp.seq, tcp.window);
                header.acknowledgment_number = tcp.ack;
                header.fin = tcp.flags & TCP_FIN != 0;
                header.syn = tcp.flags & TCP_SYN != 0;
                header.rst = tcp.flags & TCP_RST != 0;
                header.psh = tcp.flags & TCP_PSH != 0;
                header.ack = tcp.flags & TCP_ACK != 0;
                header.urg = tcp.flags & 0x20 != 0;
                header.ece = tcp.flags & 0x40 != 0;
                header.cwr = tcp.flags & 0x80 != 0;
                header.set_options(&tcp.options).expect("TCP options fit in 40 bytes");
                header.checksum = checksum(&header, &tcp.payload);
                let mut bytes = Vec::with_capacity(header.header_len() + tcp.payload.len());
                header.write(&mut bytes).expect("writing to a Vec cannot fail");
                bytes.extend_from_slice(&tcp.payload);
                (IPPROTO_TCP, bytes)
            }
            Transport::Other { protocol, bytes } => (*protocol, bytes.clone()),
        }
    }
}

/// An IPv4 address as a flow key holds it: in the first four of sixteen bytes.
pub fn widen(v4: [u8; 4]) -> [u8; 16] {
    let mut address = [0; 16];
    address[..4].copy_from_slice(&v4);
    address
}

/// The key the walk reports for a RST received on `ifindex`: addresses as [`widen`] lays them
/// out, `ports` as (source, destination), and nothing the classifier fills in later.
pub fn received_key(family: u8, src: [u8; 16], dst: [u8; 16], ifindex: u32, ports: (u16, u16), rst_ttl: u8) -> FlowKey {
    let (sport, dport) = ports;
    FlowKey {
        src,
        dst,
        ifindex,
        sport,
        dport,
        family,
        protocol: IPPROTO_TCP,
        direction: DIRECTION_RX,
        class: 0,
        rst_ttl,
        peer_ttl: 0,
        context: 0,
        outer_swapped: 0,
    }
}

/// A laid-out frame, and the edits that break it in one place.
///
/// The edits are deliberately raw byte writes after etherparse is done: checksums are left as
/// they were, since the walk never checks them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crafted {
    pub bytes: Vec<u8>,
    layout: Layout,
}

impl Crafted {
    /// Offset of the IP header, if the frame has one.
    pub fn l3(&self) -> Option<usize> {
        match self.layout {
            Layout::Ipv4 { l3, .. } | Layout::Ipv6 { l3, .. } => Some(l3),
            Layout::Other => None,
        }
    }

    /// Offset of the transport header (after all IPv6 extension headers), if IP.
    pub fn l4(&self) -> Option<usize> {
        match self.layout {
            Layout::Ipv4 { l4, .. } | Layout::Ipv6 { l4, .. } => Some(l4),
            Layout::Other => None,
        }
    }

    /// Where the fixed 20 bytes of the TCP header end: the walk needs exactly this much.
    pub fn tcp_header_end(&self) -> usize {
        self.l4().expect("not an IP frame") + core::mem::size_of::<TcpHdr>()
    }

    /// The first `len` bytes only.
    pub fn truncated(mut self, len: usize) -> Self {
        assert!(len <= self.bytes.len(), "cannot truncate {} bytes to {len}", self.bytes.len());
        self.bytes.truncate(len);
        self
    }

    /// Overwrites the IPv4 header length (in 32-bit words), leaving everything else in place.
    pub fn with_ipv4_ihl(mut self, ihl: u8) -> Self {
        assert!(ihl <= 0x0f);
        let Layout::Ipv4 { l3, .. } = self.layout else {
            panic!("not an IPv4 frame");
        };
        self.bytes[l3] = (self.bytes[l3] & 0xf0) | ihl;
        self
    }

    /// Overwrites the version nibble of the IP header (IPv4 or IPv6: it is the same nibble).
    pub fn with_ip_version(mut self, version: u8) -> Self {
        assert!(version <= 0x0f);
        let l3 = self.l3().expect("not an IP frame");
        self.bytes[l3] = (self.bytes[l3] & 0x0f) | (version << 4);
        self
    }

    /// Overwrites the TCP data offset (in 32-bit words).
    pub fn with_tcp_data_offset(mut self, data_offset: u8) -> Self {
        assert!(data_offset <= 0x0f);
        let l4 = self.l4().expect("not an IP frame");
        // The data offset is the high nibble of byte 12 of the TCP header.
        self.bytes[l4 + 12] = (self.bytes[l4 + 12] & 0x0f) | (data_offset << 4);
        self
    }

    /// Overwrites one byte: for fields the builder (etherparse) refuses to write.
    pub fn with_byte(mut self, offset: usize, value: u8) -> Self {
        self.bytes[offset] = value;
        self
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

pub mod capture;
mod cases;
pub mod tunnel;
pub use cases::*;
