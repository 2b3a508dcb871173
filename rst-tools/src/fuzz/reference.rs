//! The reference: is a frame a counted RST, and for which flow? Built on etherparse's header
//! slices; rstwatch's own code is not used (only the flow key's layout, from rst-craft).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex, PoisonError,
    },
};

use rst_common::{
    inspect_tunnels,
    parse::TunnelTable,
    wire::{tunnel_number, TunnelKey, DIRECTION_RX, FAMILY_IPV4, FAMILY_IPV6, IPPROTO_TCP, TUNNEL_INTERFACE},
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
///    the first 20 bytes with the data offset set to 5;
/// 5. one level into tunnels (see [`tunnel`]), a flow inside one under the tunnel's canonical
///    number ([`in_tunnel`]).
///
/// With [`AH_ZERO_AS_8_BYTES`] set, an AH whose Payload Len is 0 is walked as 8 bytes, as
/// rstwatch currently does (finding in RELIABILITY.md): for looking for other disagreements
/// while that one is open (`--ah-zero-as-8-bytes`).
pub fn reference(frame: &[u8], ifindex: u32) -> Option<FlowKey> {
    let eth = Ethernet2HeaderSlice::from_slice(frame).ok()?;
    let (key, tunnel) = level(frame, eth.slice().len(), eth.ether_type().0, ifindex, true)?;
    Some(match tunnel {
        None => key,
        Some((tunnel, swapped)) => in_tunnel(key, &tunnel, swapped),
    })
}

/// A tunnel as the reference found it: its key and whether the outer source is its `hi` end.
type Found = (TunnelKey, bool);

/// One level of the walk from the header at `at` of type `ether_type`: the link's (`outer`),
/// or a tunnel's payload, where a second tunnel is not counted.
fn level(frame: &[u8], at: usize, ether_type: u16, ifindex: u32, outer: bool) -> Option<(FlowKey, Option<Found>)> {
    let mut ether_type = ether_type;
    let mut rest = frame.get(at..)?;
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
    let l3 = frame.len() - rest.len();
    let (family, src, dst, ttl, transport) = match ether_type {
        ETH_P_IPV4 => {
            let ip = Ipv4HeaderSlice::from_slice(rest).ok()?;
            if ip.fragments_offset().value() != 0 {
                return None;
            }
            let payload = &rest[ip.slice().len()..];
            if ip.protocol().0 != IPPROTO_TCP {
                return if outer { tunnel(frame, l3, payload, ip.protocol().0, ifindex) } else { None };
            }
            (FAMILY_IPV4, widen(ip.source()), widen(ip.destination()), ip.ttl(), payload)
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
                    _ if outer => return tunnel(frame, l3, payload, next, ifindex),
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
    if !outer && frame.len() - transport.len() > MAX_TUNNELLED_L4 {
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
    Some((received_key(family, src, dst, ifindex, (tcp.source_port(), tcp.destination_port()), ttl), None))
}

/// Rule 5: one level into a tunnel, written from the RFCs, not from rstwatch's walk: VXLAN
/// (RFC 7348) on UDP 4789 and 8472, Geneve (RFC 8926; version 0; Ethernet, IPv4 or IPv6
/// inside) on 6081, GRE (RFC 2784 / 2890: version 0, no routing; checksum, key and sequence
/// as flagged; Ethernet, IPv4 or IPv6 inside), IPv4 (4) and IPv6 (41) in IP. The tunnel's
/// payload must start within 1023 bytes and its TCP header within 4095 (deeper: not counted).
/// `payload` is the outer IP header's payload, whose header starts at `l3`.
fn tunnel(frame: &[u8], l3: usize, payload: &[u8], protocol: u8, ifindex: u32) -> Option<(FlowKey, Option<Found>)> {
    let outer_v6 = frame.get(l3)? >> 4 == 6;
    let at = frame.len() - payload.len();
    // (kind, key, where the payload starts, its ethertype; 0: Ethernet)
    let (kind, key, inner, ether_type): (u8, Option<u32>, usize, u16) = match protocol {
        17 => {
            let dport = u16::from_be_bytes([*payload.get(2)?, *payload.get(3)?]);
            let header = payload.get(8..16)?;
            let vni = u32::from_be_bytes([0, header[4], header[5], header[6]]);
            match dport {
                4789 | 8472 => (KIND_VXLAN, Some(vni), at + 16, 0),
                6081 if header[0] >> 6 == 0 => {
                    let options = usize::from(header[0] & 0x3f) * 4;
                    match u16::from_be_bytes([header[2], header[3]]) {
                        0x6558 => (KIND_GENEVE, Some(vni), at + 16 + options, 0),
                        t @ (ETH_P_IPV4 | ETH_P_IPV6) => (KIND_GENEVE, Some(vni), at + 16 + options, t),
                        _ => return None,
                    }
                }
                _ => return None,
            }
        }
        47 => {
            let flags = u16::from_be_bytes([*payload.first()?, *payload.get(1)?]);
            let protocol = u16::from_be_bytes([*payload.get(2)?, *payload.get(3)?]);
            if flags & 0x4007 != 0 {
                return None;
            }
            let mut offset = 4;
            if flags & 0x8000 != 0 {
                offset += 4;
            }
            let key = if flags & 0x2000 != 0 {
                let key = payload.get(offset..offset + 4)?;
                offset += 4;
                Some(u32::from_be_bytes([key[0], key[1], key[2], key[3]]))
            } else {
                None
            };
            if flags & 0x1000 != 0 {
                offset += 4;
            }
            match (protocol, outer_v6) {
                (0x6558, false) => (KIND_GRETAP, key, at + offset, 0),
                (0x6558, true) => (KIND_IP6GRETAP, key, at + offset, 0),
                (ETH_P_IPV4 | ETH_P_IPV6, false) => (KIND_GRE, key, at + offset, protocol),
                (ETH_P_IPV4 | ETH_P_IPV6, true) => (KIND_IP6GRE, key, at + offset, protocol),
                _ => return None,
            }
        }
        4 => (if outer_v6 { KIND_IPIP6 } else { KIND_IPIP }, None, at, ETH_P_IPV4),
        41 => (if outer_v6 { KIND_IP6IP6 } else { KIND_SIT }, None, at, ETH_P_IPV6),
        _ => return None,
    };
    let (inner, ether_type) = if ether_type == 0 {
        let eth = Ethernet2HeaderSlice::from_slice(frame.get(inner..)?).ok()?;
        (inner + eth.slice().len(), eth.ether_type().0)
    } else {
        (inner, ether_type)
    };
    if l3 > MAX_TUNNEL_OFFSET || inner > MAX_TUNNEL_OFFSET {
        return None;
    }
    let (key_of_flow, _) = level(frame, inner, ether_type, ifindex, false)?;
    let (src, dst, family) = if outer_v6 {
        let ip = Ipv6HeaderSlice::from_slice(&frame[l3..]).ok()?;
        (ip.source(), ip.destination(), FAMILY_IPV6)
    } else {
        let ip = Ipv4HeaderSlice::from_slice(&frame[l3..]).ok()?;
        (widen(ip.source()), widen(ip.destination()), FAMILY_IPV4)
    };
    let swapped = src > dst;
    let (lo, hi) = if swapped { (dst, src) } else { (src, dst) };
    let tunnel =
        TunnelKey { lo, hi, ifindex, key: key.unwrap_or(0), kind, family, keyed: u8::from(key.is_some()), _pad: 0 };
    Some((key_of_flow, Some((tunnel, swapped))))
}

// The kinds' bytes, as rst-common's `TunnelKind` numbers them (the wire format both sides
// share, like the flow key's layout).
const KIND_VXLAN: u8 = 1;
const KIND_GENEVE: u8 = 2;
const KIND_GRE: u8 = 3;
const KIND_GRETAP: u8 = 4;
const KIND_IP6GRE: u8 = 5;
const KIND_IP6GRETAP: u8 = 6;
const KIND_IPIP: u8 = 7;
const KIND_SIT: u8 = 8;
const KIND_IP6IP6: u8 = 9;
const KIND_IPIP6: u8 = 10;
const MAX_TUNNEL_OFFSET: usize = 1023;
const MAX_TUNNELLED_L4: usize = 4095;

/// Every side numbers tunnels its own way (the kernel in its map, the host in its table);
/// keys are compared with the tunnel's number replaced by one from this shared table.
static CANONICAL: Mutex<Option<HashMap<TunnelKey, u32>>> = Mutex::new(None);

/// `key`, inside `tunnel`, under the tunnel's canonical number.
pub fn in_tunnel(key: FlowKey, tunnel: &TunnelKey, swapped: bool) -> FlowKey {
    let mut canonical = CANONICAL.lock().unwrap_or_else(PoisonError::into_inner);
    let table = canonical.get_or_insert_with(HashMap::new);
    let next = table.len() as u32;
    let number = *table.entry(*tunnel).or_insert(next);
    FlowKey { ifindex: TUNNEL_INTERFACE | number, outer_swapped: u8::from(swapped), ..key }
}

/// A key counted under a tunnel number of `numbers`' (the kernel's or the host's), under the
/// canonical one instead; unchanged outside tunnels, and for a number `numbers` does not know.
pub fn canonical(key: FlowKey, numbers: &HashMap<u32, TunnelKey>) -> FlowKey {
    match tunnel_number(key.ifindex).and_then(|number| numbers.get(&number)) {
        Some(tunnel) => in_tunnel(key, tunnel, key.outer_swapped != 0),
        None => key,
    }
}

/// The host's answer to the same question, from rst-common's walk (a tunnel's number made
/// canonical).
pub fn host(frame: &[u8], ifindex: u32) -> Option<FlowKey> {
    let mut tunnels = TunnelTable::<1>::default();
    match inspect_tunnels(frame, DIRECTION_RX, || ifindex, &mut tunnels) {
        Observation::Reset(event) => {
            let numbers: HashMap<u32, TunnelKey> = tunnels.keys[..tunnels.len].iter().map(|key| (0, *key)).collect();
            Some(canonical(event.key, &numbers))
        }
        _ => None,
    }
}
