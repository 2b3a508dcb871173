//! Tunnel encapsulation of crafted frames, byte for byte as Linux's tunnel drivers write it:
//! the outer Ethernet (and VLAN tags), IPv4 or IPv6 header (with the encapsulation-limit
//! destination option an ip6 tunnel adds by default), then VXLAN or Geneve over UDP, GRE, or
//! nothing (IP in IP). Written by hand rather than with etherparse, which knows none of these
//! headers: each layout is spelled out next to the RFC it follows.

use rst_common::{
    parse::{
        ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, ETH_P_TEB, GRE_CSUM, GRE_KEY, GRE_SEQ, IPPROTO_DSTOPTS, IPPROTO_GRE,
        IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_UDP,
    },
    wire::TunnelKind,
};

use crate::Crafted;

/// The tunnel's own header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encapsulation {
    /// VXLAN (RFC 7348) to UDP `port`: the whole inner Ethernet frame.
    Vxlan { vni: u32, port: u16 },
    /// Geneve (RFC 8926) to UDP `port` with `options` bytes of options (a multiple of 4, at
    /// most 252): the inner Ethernet frame, or only its IP packet when `ethernet` is false.
    Geneve { vni: u32, port: u16, options: usize, ethernet: bool },
    /// GRE (RFC 2784, RFC 2890) with the optional fields as given: the inner Ethernet frame
    /// (gretap) or its IP packet.
    Gre { key: Option<u32>, checksum: bool, sequence: Option<u32>, ethernet: bool },
    /// IP directly in IP: ipip, sit, ip6ip6 or ipip6 by the families.
    Ip,
}

/// The outer addresses: their family decides IPv4 or IPv6 outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outer {
    V4([u8; 4], [u8; 4]),
    V6([u8; 16], [u8; 16]),
}

/// A tunnel to put a crafted frame in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tunnel {
    pub outer: Outer,
    pub encapsulation: Encapsulation,
    /// 802.1Q tags on the outer Ethernet header.
    pub outer_vlans: Vec<u16>,
    /// An ip6 tunnel's destination options header with the tunnel encapsulation limit
    /// (RFC 2473: Linux sends limit 4 unless `encaplimit none`); IPv6 outside only.
    pub encap_limit: Option<u8>,
    pub ttl: u8,
}

impl Tunnel {
    pub fn new(outer: Outer, encapsulation: Encapsulation) -> Self {
        Tunnel { outer, encapsulation, outer_vlans: Vec::new(), encap_limit: None, ttl: 64 }
    }

    pub fn vxlan(outer: Outer, vni: u32) -> Self {
        Tunnel::new(outer, Encapsulation::Vxlan { vni, port: 4789 })
    }

    pub fn outer_vlan(mut self, id: u16) -> Self {
        self.outer_vlans.push(id);
        self
    }

    pub fn encap_limit(mut self, limit: u8) -> Self {
        self.encap_limit = Some(limit);
        self
    }

    /// What the walk must call this tunnel (any but IP in IP, whose name the inner family
    /// decides: see [`Tunnel::kind_around`]).
    pub fn kind(&self) -> TunnelKind {
        let v6 = matches!(self.outer, Outer::V6(..));
        match self.encapsulation {
            Encapsulation::Vxlan { .. } => TunnelKind::Vxlan,
            Encapsulation::Geneve { .. } => TunnelKind::Geneve,
            Encapsulation::Gre { ethernet: true, .. } if v6 => TunnelKind::Ip6gretap,
            Encapsulation::Gre { ethernet: true, .. } => TunnelKind::Gretap,
            Encapsulation::Gre { .. } if v6 => TunnelKind::Ip6gre,
            Encapsulation::Gre { .. } => TunnelKind::Gre,
            Encapsulation::Ip => panic!("an IP-in-IP tunnel's kind depends on the inner family: use kind_around"),
        }
    }

    /// [`Tunnel::kind`] around an inner packet of the given family.
    pub fn kind_around(&self, inner_ipv6: bool) -> TunnelKind {
        let v6 = matches!(self.outer, Outer::V6(..));
        match (self.encapsulation, v6, inner_ipv6) {
            (Encapsulation::Ip, false, false) => TunnelKind::Ipip,
            (Encapsulation::Ip, false, true) => TunnelKind::Sit,
            (Encapsulation::Ip, true, true) => TunnelKind::Ip6ip6,
            (Encapsulation::Ip, true, false) => TunnelKind::Ipip6,
            _ => self.kind(),
        }
    }

    /// The VNI or GRE key the walk must report, if any.
    pub fn key(&self) -> Option<u32> {
        match self.encapsulation {
            Encapsulation::Vxlan { vni, .. } | Encapsulation::Geneve { vni, .. } => Some(vni),
            Encapsulation::Gre { key, .. } => key,
            Encapsulation::Ip => None,
        }
    }

    /// Where the outer IP header starts in [`Tunnel::wrap`]'s frame.
    pub fn outer_l3(&self) -> usize {
        14 + 4 * self.outer_vlans.len()
    }

    /// `inner` (an Ethernet frame) inside this tunnel, as a new Ethernet frame.
    pub fn wrap(&self, inner: &Crafted) -> Vec<u8> {
        self.wrap_bytes(&inner.bytes, inner.l3())
    }

    /// [`Tunnel::wrap`] of raw bytes: `inner` an Ethernet frame whose IP header is at `l3`
    /// (needed only by tunnels that carry IP).
    pub fn wrap_bytes(&self, inner: &[u8], l3: Option<usize>) -> Vec<u8> {
        let ip_payload = || -> (&[u8], u16) {
            let l3 = l3.expect("an IP tunnel needs an inner IP packet");
            let ether_type = if inner[l3] >> 4 == 6 { ETH_P_IPV6 } else { ETH_P_IPV4 };
            (&inner[l3..], ether_type)
        };
        let (protocol, payload): (u8, Vec<u8>) = match self.encapsulation {
            Encapsulation::Vxlan { vni, port } => {
                // Flags: the I bit (a valid VNI); everything else reserved.
                let mut header = vec![0x08, 0, 0, 0];
                header.extend_from_slice(&(vni << 8).to_be_bytes());
                header.extend_from_slice(inner);
                (IPPROTO_UDP, self.udp(port, &header))
            }
            Encapsulation::Geneve { vni, port, options, ethernet } => {
                assert!(options % 4 == 0 && options <= 252, "Geneve options come in 4-byte units, at most 63");
                let (body, protocol) = if ethernet { (inner, ETH_P_TEB) } else { ip_payload() };
                let mut header = vec![(options / 4) as u8, 0];
                header.extend_from_slice(&protocol.to_be_bytes());
                header.extend_from_slice(&(vni << 8).to_be_bytes());
                // Options: class 0x0102 type 0x80 with their length, then filler; the walk
                // only skips them.
                let mut left = options;
                while left > 0 {
                    let len = left.min(128);
                    header.extend_from_slice(&[0x01, 0x02, 0x80, ((len - 4) / 4) as u8]);
                    header.extend(std::iter::repeat_n(0xab, len - 4));
                    left -= len;
                }
                header.extend_from_slice(body);
                (IPPROTO_UDP, self.udp(port, &header))
            }
            Encapsulation::Gre { key, checksum, sequence, ethernet } => {
                let (body, protocol) = if ethernet { (inner, ETH_P_TEB) } else { ip_payload() };
                let flags = if checksum { GRE_CSUM } else { 0 }
                    | if key.is_some() { GRE_KEY } else { 0 }
                    | if sequence.is_some() { GRE_SEQ } else { 0 };
                let mut header = Vec::new();
                header.extend_from_slice(&flags.to_be_bytes());
                header.extend_from_slice(&protocol.to_be_bytes());
                if checksum {
                    header.extend_from_slice(&[0, 0, 0, 0]);
                }
                if let Some(key) = key {
                    header.extend_from_slice(&key.to_be_bytes());
                }
                if let Some(sequence) = sequence {
                    header.extend_from_slice(&sequence.to_be_bytes());
                }
                header.extend_from_slice(body);
                if checksum {
                    // Over the GRE header and its payload, the checksum field as zero.
                    let sum = checksum_of(0, &header);
                    header[4..6].copy_from_slice(&sum.to_be_bytes());
                }
                (IPPROTO_GRE, header)
            }
            Encapsulation::Ip => {
                let (body, ether_type) = ip_payload();
                (if ether_type == ETH_P_IPV6 { IPPROTO_IPV6 } else { IPPROTO_IPIP }, body.to_vec())
            }
        };
        let mut frame = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
        for id in &self.outer_vlans {
            frame.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            frame.extend_from_slice(&id.to_be_bytes());
        }
        match self.outer {
            Outer::V4(src, dst) => {
                frame.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
                let total = (20 + payload.len()) as u16;
                let mut ip = vec![0x45, 0];
                ip.extend_from_slice(&total.to_be_bytes());
                // Identification, don't fragment (Linux tunnels set DF by default).
                ip.extend_from_slice(&[0, 1, 0x40, 0, self.ttl, protocol, 0, 0]);
                ip.extend_from_slice(&src);
                ip.extend_from_slice(&dst);
                let sum = checksum_of(0, &ip);
                ip[10..12].copy_from_slice(&sum.to_be_bytes());
                frame.extend_from_slice(&ip);
            }
            Outer::V6(src, dst) => {
                frame.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                let options = self.encap_limit.map(|limit| {
                    // Next header, length 0 (8 bytes): the tunnel encapsulation limit option
                    // (type 4, length 1) and a PadN of one byte (type 1, length 1, value 0).
                    [protocol, 0, 4, 1, limit, 1, 1, 0]
                });
                let len = (payload.len() + options.map_or(0, |o| o.len())) as u16;
                let mut ip = vec![0x60, 0, 0, 0];
                ip.extend_from_slice(&len.to_be_bytes());
                ip.push(if options.is_some() { IPPROTO_DSTOPTS } else { protocol });
                ip.push(self.ttl);
                ip.extend_from_slice(&src);
                ip.extend_from_slice(&dst);
                frame.extend_from_slice(&ip);
                if let Some(options) = options {
                    frame.extend_from_slice(&options);
                }
            }
        }
        frame.extend_from_slice(&payload);
        frame
    }

    /// A UDP datagram to `port` from a source port in the ephemeral range, checksummed over the
    /// outer pseudo-header (IPv6 requires it; Linux fills it for IPv4 too unless told not to).
    fn udp(&self, port: u16, body: &[u8]) -> Vec<u8> {
        let len = (8 + body.len()) as u16;
        let mut udp = Vec::with_capacity(len as usize);
        udp.extend_from_slice(&49_152u16.to_be_bytes());
        udp.extend_from_slice(&port.to_be_bytes());
        udp.extend_from_slice(&len.to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(body);
        let mut pseudo = Vec::new();
        match self.outer {
            Outer::V4(src, dst) => {
                pseudo.extend_from_slice(&src);
                pseudo.extend_from_slice(&dst);
                pseudo.extend_from_slice(&[0, IPPROTO_UDP]);
                pseudo.extend_from_slice(&len.to_be_bytes());
            }
            Outer::V6(src, dst) => {
                pseudo.extend_from_slice(&src);
                pseudo.extend_from_slice(&dst);
                pseudo.extend_from_slice(&u32::from(len).to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, IPPROTO_UDP]);
            }
        }
        let sum = checksum_of(sum_words(0, &pseudo), &udp);
        let sum = if sum == 0 { 0xffff } else { sum };
        udp[6..8].copy_from_slice(&sum.to_be_bytes());
        udp
    }
}

fn sum_words(mut sum: u32, bytes: &[u8]) -> u32 {
    for pair in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    sum
}

/// The Internet checksum of `bytes` after a partial sum `start`.
fn checksum_of(start: u32, bytes: &[u8]) -> u16 {
    let mut sum = sum_words(start, bytes);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
