//! The reference: is a frame a counted RST, and for which flow? Built on etherparse's header
//! slices; rstwatch's own code is not used (only the flow key's layout, from rst-craft).

use std::sync::atomic::{AtomicBool, Ordering};

use rst_common::{
    inspect,
    wire::{FAMILY_IPV4, FAMILY_IPV6, IPPROTO_TCP},
    FlowKey, Observation,
};
use rst_craft::{
    etherparse::{
        Ethernet2HeaderSlice, IpAuthHeaderSlice, Ipv4HeaderSlice, Ipv6FragmentHeaderSlice, Ipv6HeaderSlice,
        Ipv6RawExtHeaderSlice, SingleVlanHeaderSlice, TcpHeaderSlice,
    },
    received_key, widen,
};

pub(crate) const ETH_P_IPV4: u16 = 0x0800;
pub(crate) const ETH_P_IPV6: u16 = 0x86dd;
pub(crate) const VLAN_TPIDS: [u16; 3] = [0x8100, 0x88a8, 0x9100];
const MAX_VLAN_TAGS: usize = 3;
const MAX_IPV6_EXT_HEADERS: usize = 8;
pub(crate) const TCP_RST: u8 = 0x04;

/// See [`reference`]; off unless `--ah-zero-as-8-bytes`.
pub static AH_ZERO_AS_8_BYTES: AtomicBool = AtomicBool::new(false);

/// Is `frame` (Ethernet) a TCP segment with RST that rstwatch must count, and for which
/// directional flow? Built on etherparse's header slices; rstwatch's own code is not used.
///
/// The rules etherparse had to be told (everything else is etherparse's own validation):
/// 1. at most 3 VLAN tags, TPIDs 0x8100 / 0x88a8 / 0x9100 (etherparse's sliced packets stop at
///    2 and do not know 0x9100 as a tag); a 4th tag is not counted;
/// 2. at most 8 IPv6 extension headers, and only hop-by-hop, routing, destination options,
///    fragment (first fragment only) and AH are walked through;
/// 3. IPv4 total length and IPv6 payload length are not checked against the frame (TSO captures
///    carry total length 0), nor are checksums (etherparse's slices do not check them either);
/// 4. a TCP header counts once its first 20 bytes are present with a data offset >= 5, even if
///    the options it announces are cut off: etherparse wants the whole header, so it is given
///    the first 20 bytes with the data offset set to 5.
///
/// With [`AH_ZERO_AS_8_BYTES`] set, an AH whose Payload Len is 0 is walked as 8 bytes, as
/// rstwatch currently does (finding in RELIABILITY.md): for looking for other disagreements
/// while that one is open (`--ah-zero-as-8-bytes`).
pub fn reference(frame: &[u8], ifindex: u32) -> Option<FlowKey> {
    let eth = Ethernet2HeaderSlice::from_slice(frame).ok()?;
    let mut ether_type = eth.ether_type().0;
    let mut rest = &frame[eth.slice().len()..];
    let mut tags = 0;
    while VLAN_TPIDS.contains(&ether_type) {
        if tags == MAX_VLAN_TAGS {
            return None;
        }
        let tag = SingleVlanHeaderSlice::from_slice(rest).ok()?;
        ether_type = tag.ether_type().0;
        rest = &rest[tag.slice().len()..];
        tags += 1;
    }
    let (family, src, dst, ttl, transport) = match ether_type {
        ETH_P_IPV4 => {
            let ip = Ipv4HeaderSlice::from_slice(rest).ok()?;
            if ip.fragments_offset().value() != 0 || ip.protocol().0 != IPPROTO_TCP {
                return None;
            }
            (FAMILY_IPV4, widen(ip.source()), widen(ip.destination()), ip.ttl(), &rest[ip.slice().len()..])
        }
        ETH_P_IPV6 => {
            let ip = Ipv6HeaderSlice::from_slice(rest).ok()?;
            let mut next = ip.next_header().0;
            let mut payload = &rest[ip.slice().len()..];
            let mut extensions = 0;
            while next != IPPROTO_TCP {
                if extensions == MAX_IPV6_EXT_HEADERS {
                    return None;
                }
                extensions += 1;
                let len = match next {
                    0 | 43 | 60 => {
                        let ext = Ipv6RawExtHeaderSlice::from_slice(payload).ok()?;
                        next = ext.next_header().0;
                        ext.slice().len()
                    }
                    44 => {
                        let fragment = Ipv6FragmentHeaderSlice::from_slice(payload).ok()?;
                        if fragment.fragment_offset().value() != 0 {
                            return None;
                        }
                        next = fragment.next_header().0;
                        fragment.slice().len()
                    }
                    51 if payload.get(1) == Some(&0)
                        && payload.len() >= 8
                        && AH_ZERO_AS_8_BYTES.load(Ordering::Relaxed) =>
                    {
                        next = payload[0];
                        8
                    }
                    51 => {
                        let auth = IpAuthHeaderSlice::from_slice(payload).ok()?;
                        next = auth.next_header().0;
                        auth.slice().len()
                    }
                    _ => return None,
                };
                payload = &payload[len..];
            }
            let src = ip.source();
            let dst = ip.destination();
            (FAMILY_IPV6, src, dst, ip.hop_limit(), payload)
        }
        _ => return None,
    };
    // Rule 4: the first 20 bytes, data offset 5, when the options are cut off.
    let first = transport.get(..20)?;
    if first[12] >> 4 < 5 {
        return None;
    }
    let mut patched = [0u8; 20];
    let tcp = match TcpHeaderSlice::from_slice(transport) {
        Ok(tcp) => tcp,
        Err(_) => {
            patched.copy_from_slice(first);
            patched[12] = (patched[12] & 0x0f) | 0x50;
            TcpHeaderSlice::from_slice(&patched).ok()?
        }
    };
    if !tcp.rst() {
        return None;
    }
    Some(received_key(family, src, dst, ifindex, (tcp.source_port(), tcp.destination_port()), ttl))
}

/// The host's answer to the same question, from rst-common's walk.
pub fn host(frame: &[u8], ifindex: u32) -> Option<FlowKey> {
    match inspect(frame, ifindex) {
        Observation::Reset(event) => Some(event.key),
        _ => None,
    }
}
