//! Link layers replay understands: where the network header starts and what it is.
//!
//! This is the only packet knowledge replay adds to `rst-common`: it peels the capture's link
//! header and hands the rest to the shared walk ([`rst_common::inspect_tunnels`] for Ethernet,
//! [`rst_common::inspect_from_tunnels`] with the link header's protocol for everything else), so every
//! classification is the kernel's.

use pcap_file::DataLink;
use rst_common::{
    inspect_from_tunnels, inspect_tunnels,
    parse::{
        in_tunnel, tcp_event, tcp_payload, walk_from_with, walk_with, Tunnels, ETH_P_IPV4, ETH_P_IPV6, TCP_FIN,
        TCP_RST, TCP_SYN,
    },
    wire::{ConnKey, DIRECTION_RX},
    FlowKey, Observation, TcpEvent, Walk,
};

/// A protocol number the walk does not know: frames that carry it are not TCP over IP.
const ETH_P_NONE: u16 = 0;
/// `ARPHRD_NETLINK`: a cooked frame whose protocol field is a netlink family, not an ethertype.
const ARPHRD_NETLINK: u16 = 824;
const ETH_HLEN: usize = 14;
const SLL_HLEN: usize = 16;
const SLL2_HLEN: usize = 20;
const NULL_HLEN: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Link {
    Ethernet,
    /// Linux cooked capture v1 (`tcpdump -i any` before libpcap 1.10).
    LinuxSll,
    /// Linux cooked capture v2.
    LinuxSll2,
    /// Raw IP; the version nibble says IPv4 or IPv6.
    RawIp,
    Ipv4,
    Ipv6,
    /// BSD loopback with the address family in the capturing host's byte order (macOS `lo0`).
    Null,
    /// BSD loopback with the address family in network byte order (OpenBSD).
    Loop,
}

/// What a frame is, as far as the frame alone tells ([`Link::classify`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Classified {
    /// Counted as it is, nothing else to do: not TCP, a fragment, malformed, or a segment
    /// without SYN, FIN or RST whose key cannot be built.
    Counted(Counted),
    /// A segment without SYN, FIN or RST outside tunnels (most of any capture): its connection,
    /// whether its sender is the connection's `lo` end, whether it carried payload.
    Plain { conn: ConnKey, sender_is_lo: bool, data: bool },
    /// SYN, FIN or RST, or a segment inside a tunnel: what it is depends on the frames before
    /// it (the connection's state, the tunnels numbered so far), so [`Link::inspect_segment`]
    /// must see it in order.
    Stateful,
}

/// The observations a frame is counted as without further work (one byte, where an
/// [`Observation`] carries an event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    NotTcp,
    Fragment,
    Malformed,
    Segment,
}

impl Counted {
    pub fn observation(self) -> Observation {
        match self {
            Counted::NotTcp => Observation::NotTcp,
            Counted::Fragment => Observation::Fragment,
            Counted::Malformed => Observation::Malformed,
            Counted::Segment => Observation::Segment,
        }
    }
}

/// Where a frame's network layer is, according to its link header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Located {
    /// An Ethernet frame: the walk starts at the Ethernet header itself.
    Ethernet,
    /// The header at `offset` is of protocol `ether_type`.
    Network { offset: usize, ether_type: u16 },
    /// Shorter than its own link header.
    Truncated,
}

impl Link {
    pub fn from_datalink(datalink: DataLink) -> Option<Link> {
        Some(match datalink {
            DataLink::ETHERNET => Link::Ethernet,
            DataLink::LINUX_SLL => Link::LinuxSll,
            DataLink::LINUX_SLL2 => Link::LinuxSll2,
            // 12 and 14 are DLT_RAW on OpenBSD and BSD/OS; some writers put them in files
            // instead of LINKTYPE_RAW (101), and Wireshark reads them as raw IP too.
            DataLink::RAW | DataLink::Unknown(12 | 14) => Link::RawIp,
            DataLink::IPV4 => Link::Ipv4,
            DataLink::IPV6 => Link::Ipv6,
            DataLink::NULL => Link::Null,
            DataLink::LOOP => Link::Loop,
            _ => return None,
        })
    }

    /// The name replay reports as the interface's `mode`.
    pub fn as_str(self) -> &'static str {
        match self {
            Link::Ethernet => "ethernet",
            Link::LinuxSll => "linux-sll",
            Link::LinuxSll2 => "linux-sll2",
            Link::RawIp => "raw-ip",
            Link::Ipv4 => "raw-ipv4",
            Link::Ipv6 => "raw-ipv6",
            Link::Null => "bsd-null",
            Link::Loop => "bsd-loop",
        }
    }

    #[inline]
    pub fn locate(self, frame: &[u8]) -> Located {
        match self {
            Link::Ethernet => Located::Ethernet,
            Link::LinuxSll => match (be16(frame, 2), be16(frame, 14)) {
                (Some(ARPHRD_NETLINK), Some(_)) => Located::Network { offset: SLL_HLEN, ether_type: ETH_P_NONE },
                (Some(_), Some(protocol)) if frame.len() >= SLL_HLEN => {
                    Located::Network { offset: SLL_HLEN, ether_type: protocol }
                }
                _ => Located::Truncated,
            },
            Link::LinuxSll2 => match (be16(frame, 0), be16(frame, 8)) {
                (Some(_), Some(ARPHRD_NETLINK)) if frame.len() >= SLL2_HLEN => {
                    Located::Network { offset: SLL2_HLEN, ether_type: ETH_P_NONE }
                }
                (Some(protocol), Some(_)) if frame.len() >= SLL2_HLEN => {
                    Located::Network { offset: SLL2_HLEN, ether_type: protocol }
                }
                _ => Located::Truncated,
            },
            Link::RawIp => {
                // An empty frame or a version other than 4 and 6 goes to the IPv4 walk, which
                // calls it malformed: a bad IP version is malformed wherever it is found.
                let ether_type = match frame.first() {
                    Some(byte) if byte >> 4 == 6 => ETH_P_IPV6,
                    _ => ETH_P_IPV4,
                };
                Located::Network { offset: 0, ether_type }
            }
            Link::Ipv4 => Located::Network { offset: 0, ether_type: ETH_P_IPV4 },
            Link::Ipv6 => Located::Network { offset: 0, ether_type: ETH_P_IPV6 },
            Link::Null | Link::Loop => {
                let Some(bytes) = frame.get(..NULL_HLEN) else {
                    return Located::Truncated;
                };
                let raw = [bytes[0], bytes[1], bytes[2], bytes[3]];
                let family = match self {
                    Link::Loop => u32::from_be_bytes(raw),
                    // Host order of whoever captured: families are small, so a value with
                    // high bits set was written by a host of the other byte order.
                    _ => match u32::from_le_bytes(raw) {
                        le if le & 0xffff_0000 != 0 => u32::from_be_bytes(raw),
                        le => le,
                    },
                };
                let ether_type = match family {
                    // AF_INET everywhere.
                    2 => ETH_P_IPV4,
                    // AF_INET6 on Linux, NetBSD/OpenBSD, FreeBSD/DragonFly, Darwin.
                    10 | 24 | 28 | 30 => ETH_P_IPV6,
                    _ => ETH_P_NONE,
                };
                Located::Network { offset: NULL_HLEN, ether_type }
            }
        }
    }

    /// The shared classification of one frame of this link type, tunnels numbered by
    /// `tunnels` as the kernel numbers them.
    #[inline]
    pub fn inspect<T: Tunnels>(self, frame: &[u8], ifindex: u32, tunnels: &mut T) -> Observation {
        match self.locate(frame) {
            Located::Ethernet => inspect_tunnels(frame, DIRECTION_RX, || ifindex, tunnels),
            Located::Network { offset, ether_type } => {
                inspect_from_tunnels(frame, offset, ether_type, ifindex, tunnels)
            }
            // Like an Ethernet frame shorter than its Ethernet header, which the walk itself
            // calls malformed.
            Located::Truncated => Observation::Malformed,
        }
    }

    /// [`Link::inspect`], and for a segment without SYN, FIN or RST ([`Observation::Segment`])
    /// also its connection, whether its sender is the connection's `lo` end and whether it
    /// carried payload, handed to `plain`, from one walk of the headers.
    #[inline]
    pub fn inspect_segment<T: Tunnels>(
        self,
        frame: &[u8],
        ifindex: u32,
        tunnels: &mut T,
        plain: impl FnOnce(&ConnKey, bool, bool),
    ) -> Observation {
        if let Some(Walk::Tcp(segment)) = self.walk(frame, tunnels) {
            if segment.flags & (TCP_RST | TCP_SYN | TCP_FIN) == 0 {
                if let Some((key, data)) = Self::segment_of(frame, &segment, ifindex, tunnels) {
                    let (conn, sender_is_lo) = key.connection();
                    plain(&conn, sender_is_lo, data);
                }
                return Observation::Segment;
            }
        }
        // Everything else is classified by the shared walk itself, as the kernel does: a second
        // walk, but only for the few frames that are not plain segments.
        self.inspect(frame, ifindex, tunnels)
    }

    /// What `frame` is without the state of the frames before it: what the walk and its keys
    /// give with the run's tunnel `ports`, up to where [`Link::inspect_segment`] would number a
    /// tunnel or read the connection table. A frame it calls [`Classified::Counted`] or
    /// [`Classified::Plain`] gives [`Link::inspect_segment`] the same observation and key.
    #[inline]
    pub fn classify<T: Tunnels>(self, frame: &[u8], ifindex: u32, ports: &T) -> Classified {
        let segment = match self.walk(frame, ports) {
            Some(Walk::Tcp(segment)) => segment,
            Some(Walk::NotTcp) => return Classified::Counted(Counted::NotTcp),
            Some(Walk::Fragment) => return Classified::Counted(Counted::Fragment),
            Some(Walk::Malformed) | None => return Classified::Counted(Counted::Malformed),
        };
        if segment.flags & (TCP_RST | TCP_SYN | TCP_FIN) != 0 || segment.tunnel.kind != 0 {
            return Classified::Stateful;
        }
        let Some((event, data)) = Self::plain_event(frame, &segment, ifindex) else {
            return Classified::Counted(Counted::Segment);
        };
        let (conn, sender_is_lo) = event.key.connection();
        Classified::Plain { conn, sender_is_lo, data }
    }

    /// The payload of the TCP segment in `frame` (see [`crate::model::aggregate::payload::of_frame`]).
    pub fn rst_payload<'a, T: Tunnels>(self, frame: &'a [u8], tunnels: &T) -> Option<(&'a [u8], usize)> {
        crate::model::aggregate::payload::of_frame(frame, self.walk(frame, tunnels)?)
    }

    /// A segment without SYN, FIN or RST ([`Link::inspect`] calls it [`Observation::Segment`])
    /// as an event on the interface, and whether it carried payload: for
    /// [`rst_common::track_data`] and replay's timings.
    #[inline]
    fn plain_event(frame: &[u8], segment: &rst_common::parse::Segment, ifindex: u32) -> Option<(TcpEvent, bool)> {
        let (_, len) = tcp_payload(frame, segment)?;
        Some((tcp_event(frame, segment, DIRECTION_RX, ifindex)?, len > 0))
    }

    /// [`Link::plain_event`]'s key; inside a tunnel the connection is known by the tunnel's
    /// number, as its SYN and RST.
    #[inline]
    fn segment_of<T: Tunnels>(
        frame: &[u8],
        segment: &rst_common::parse::Segment,
        ifindex: u32,
        tunnels: &mut T,
    ) -> Option<(FlowKey, bool)> {
        let (event, data) = Self::plain_event(frame, segment, ifindex)?;
        let event = if segment.tunnel.kind != 0 { in_tunnel(frame, &segment.tunnel, event, tunnels)? } else { event };
        Some((event.key, data))
    }

    #[inline]
    fn walk<T: Tunnels>(self, frame: &[u8], tunnels: &T) -> Option<Walk> {
        Some(match self.locate(frame) {
            Located::Ethernet => walk_with(frame, tunnels),
            Located::Network { offset, ether_type } => walk_from_with(frame, offset, ether_type, tunnels),
            Located::Truncated => return None,
        })
    }

    /// The frame as the XDP program would receive it, or `None` when a test run cannot take it.
    ///
    /// XDP only ever sees Ethernet, so a frame of another link type is given to the kernel
    /// with its link header replaced by a synthetic Ethernet header carrying the protocol the
    /// link header named. The walk then starts at the same network header with the same
    /// protocol as [`Link::inspect`]'s `inspect_from` does, which is exactly the equivalence
    /// `walk_from` promises; only the offsets differ, and no classification depends on them.
    ///
    /// Frames shorter than an Ethernet header (or than their own link header) have no
    /// equivalent: `BPF_PROG_TEST_RUN` refuses XDP input shorter than 14 bytes, and a NIC never
    /// delivers such a frame.
    pub fn kernel_frame<'a>(self, frame: &'a [u8], scratch: &'a mut Vec<u8>) -> Option<&'a [u8]> {
        match self.locate(frame) {
            Located::Ethernet => (frame.len() >= ETH_HLEN).then_some(frame),
            Located::Network { offset, ether_type } => {
                let network = frame.get(offset..)?;
                scratch.clear();
                // Locally administered unicast addresses: nothing in the walk reads them.
                scratch.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01]);
                scratch.extend_from_slice(&ether_type.to_be_bytes());
                scratch.extend_from_slice(network);
                Some(&scratch[..])
            }
            Located::Truncated => None,
        }
    }
}

#[inline]
fn be16(frame: &[u8], offset: usize) -> Option<u16> {
    let bytes = frame.get(offset..offset + 2)?;
    Some(u16::from_be_bytes([bytes[0], bytes[1]]))
}

#[cfg(test)]
mod tests {
    use rst_common::parse::{DefaultPorts, TCP_ACK};
    use rst_craft::{
        cases, tcp_v4, tcp_v6,
        tunnel::{Encapsulation, Outer, Tunnel},
        VlanKind,
    };

    use super::*;
    use crate::model::aggregate::tunnels::{FrameTunnel, TunnelNumbers, TunnelPortSet};

    const IFINDEX: u32 = 3;

    /// `frame` as `link` carries it: its network header after that link's header.
    fn as_link(link: Link, frame: &[u8]) -> Vec<u8> {
        let (protocol, network) = (frame.get(12..14).unwrap_or(&[0, 0]), frame.get(14..).unwrap_or_default());
        let mut header = match link {
            Link::RawIp => Vec::new(),
            Link::LinuxSll => [&[0, 0, 0, 1, 0, 6][..], &[2, 0, 0, 0, 0, 1, 0, 0], protocol].concat(),
            _ => return frame.to_vec(),
        };
        header.extend_from_slice(network);
        header
    }

    /// What the decoding thread decides alone must be what the replay loop's own inspection
    /// would have said: the same observation, and for a plain segment the same connection.
    #[test]
    fn classify_agrees_with_inspect_segment_on_every_prefix_of_every_frame() {
        let mut frames: Vec<Vec<u8>> = cases(IFINDEX).into_iter().map(|case| case.frame).collect();
        let outer = Outer::V4([10, 0, 0, 1], [10, 0, 0, 2]);
        let gre = Encapsulation::Gre { key: Some(7), checksum: false, sequence: None, ethernet: false };
        let tunnels = [Tunnel::vxlan(outer, 42), Tunnel::new(outer, gre)];
        for flags in [TCP_ACK, TCP_ACK | 0x08, TCP_SYN, TCP_FIN | TCP_ACK, TCP_RST] {
            for payload in [&b""[..], b"data"] {
                for builder in [tcp_v4(), tcp_v6(), tcp_v4().vlan(VlanKind::Dot1Q, 7), tcp_v4().ports(443, 49152)] {
                    let crafted = builder.flags(flags).payload(payload).build();
                    frames.extend(tunnels.iter().map(|tunnel| tunnel.wrap(&crafted)));
                    frames.push(crafted.into_bytes());
                }
            }
        }
        let ports = TunnelPortSet::new(&[], &[]);
        let mut checked = [0usize; 3];
        for frame in &frames {
            for len in 0..=frame.len() {
                for link in [Link::Ethernet, Link::RawIp, Link::LinuxSll] {
                    let bytes = as_link(link, &frame[..len]);
                    let classified = link.classify(&bytes, IFINDEX, &FrameTunnel::new(&ports));
                    let mut plain = None;
                    let observed = link.inspect_segment(
                        &bytes,
                        IFINDEX,
                        &mut TunnelNumbers::new(&[], &[]),
                        |conn, sender_is_lo, data| {
                            plain = Some(((*conn, sender_is_lo), data));
                        },
                    );
                    let context = format!("{link:?}, {len} of {} bytes: {classified:?}, {observed:?}", frame.len());
                    match classified {
                        Classified::Counted(counted) => {
                            assert_eq!((observed, plain), (counted.observation(), None), "{context}");
                            checked[0] += 1;
                        }
                        Classified::Plain { conn, sender_is_lo, data } => {
                            let expected = (Observation::Segment, Some(((conn, sender_is_lo), data)));
                            assert_eq!((observed, plain), expected, "{context}");
                            checked[1] += 1;
                        }
                        Classified::Stateful => {
                            assert!(!matches!(observed, Observation::NotTcp | Observation::Fragment), "{context}");
                            checked[2] += 1;
                        }
                    }
                }
            }
        }
        // Each answer was given, or the comparison proved little.
        assert!(checked.iter().all(|&n| n > 100), "counted, plain, stateful: {checked:?}");
    }

    #[test]
    fn sll_and_sll2_name_the_protocol_and_refuse_short_headers() {
        let mut sll = vec![0u8; 16];
        sll[14..16].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
        assert_eq!(Link::LinuxSll.locate(&sll), Located::Network { offset: 16, ether_type: ETH_P_IPV6 });
        assert_eq!(Link::LinuxSll.locate(&sll[..15]), Located::Truncated);
        sll[2..4].copy_from_slice(&ARPHRD_NETLINK.to_be_bytes());
        assert_eq!(Link::LinuxSll.locate(&sll), Located::Network { offset: 16, ether_type: ETH_P_NONE });

        let mut sll2 = vec![0u8; 20];
        sll2[0..2].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
        assert_eq!(Link::LinuxSll2.locate(&sll2), Located::Network { offset: 20, ether_type: ETH_P_IPV4 });
        assert_eq!(Link::LinuxSll2.locate(&sll2[..19]), Located::Truncated);
        assert_eq!(Link::LinuxSll.inspect(&sll2[..3], 1, &mut DefaultPorts), Observation::Malformed);
    }

    #[test]
    fn bsd_loopback_families_in_either_byte_order() {
        for (header, ether_type) in [
            ([2, 0, 0, 0], ETH_P_IPV4),
            ([0, 0, 0, 2], ETH_P_IPV4),
            ([30, 0, 0, 0], ETH_P_IPV6),
            ([0, 0, 0, 24], ETH_P_IPV6),
            ([7, 0, 0, 0], ETH_P_NONE),
        ] {
            assert_eq!(Link::Null.locate(&header), Located::Network { offset: 4, ether_type }, "{header:?}");
        }
        assert_eq!(Link::Loop.locate(&[0, 0, 0, 2]), Located::Network { offset: 4, ether_type: ETH_P_IPV4 });
        assert_eq!(Link::Loop.locate(&[2, 0, 0, 0]), Located::Network { offset: 4, ether_type: ETH_P_NONE });
        assert_eq!(Link::Null.locate(&[2, 0, 0]), Located::Truncated);
    }

    #[test]
    fn raw_ip_follows_the_version_nibble_and_kernel_frames_carry_it() {
        assert_eq!(Link::RawIp.locate(&[0x60]), Located::Network { offset: 0, ether_type: ETH_P_IPV6 });
        assert_eq!(Link::RawIp.locate(&[0x45]), Located::Network { offset: 0, ether_type: ETH_P_IPV4 });
        assert_eq!(Link::RawIp.inspect(&[], 1, &mut DefaultPorts), Observation::Malformed);
        assert_eq!(Link::RawIp.inspect(&[0x75; 40], 1, &mut DefaultPorts), Observation::Malformed);

        let mut scratch = Vec::new();
        let frame = Link::RawIp.kernel_frame(&[0x60, 1, 2], &mut scratch).map(<[u8]>::to_vec);
        let mut expected = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x86, 0xdd];
        expected.extend_from_slice(&[0x60, 1, 2]);
        assert_eq!(frame, Some(expected));
        assert_eq!(Link::Ethernet.kernel_frame(&[0; 13], &mut scratch), None);
        assert_eq!(Link::LinuxSll.kernel_frame(&[0; 15], &mut scratch), None);
    }
}
