//! The header walk one level into tunnels, over frames `rst_craft::tunnel` encapsulates as
//! Linux's drivers do.

use rst_common::{
    inspect, inspect_tunnels,
    parse::{TunnelTable, TCP_ACK, TCP_RST, TCP_SYN},
    wire::{TunnelKey, TunnelKind, DIRECTION_RX, FAMILY_IPV4, FAMILY_IPV6, TUNNEL_INTERFACE, TUNNEL_UNRECORDED},
    Observation, TcpEvent,
};
use rst_craft::{
    tunnel::{Encapsulation, Outer, Tunnel},
    FrameBuilder, VlanKind,
};

const IFINDEX: u32 = 7;
const V4_A: [u8; 4] = [192, 0, 2, 1];
const V4_B: [u8; 4] = [192, 0, 2, 2];
const V6_A: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const V6_B: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

fn inner(ipv6: bool, vlan: bool) -> FrameBuilder {
    let builder = if ipv6 {
        FrameBuilder::ipv6(
            [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a],
            [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0b],
        )
    } else {
        FrameBuilder::ipv4([10, 244, 1, 5], [10, 244, 2, 9])
    };
    let builder = builder.ports(8080, 40_000).flags(TCP_RST | TCP_ACK);
    if vlan {
        builder.vlan(VlanKind::Dot1Q, 42)
    } else {
        builder
    }
}

/// Every encapsulation the walk knows, over IPv4 and IPv6, some with VLAN tags outside.
fn tunnels() -> Vec<Tunnel> {
    let mut all = Vec::new();
    for outer in [Outer::V4(V4_B, V4_A), Outer::V6(V6_A, V6_B)] {
        let v6 = matches!(outer, Outer::V6(..));
        all.push(Tunnel::vxlan(outer, 42));
        all.push(Tunnel::new(outer, Encapsulation::Vxlan { vni: 0xff_ffff, port: 8472 }));
        all.push(Tunnel::new(outer, Encapsulation::Geneve { vni: 7, port: 6081, options: 0, ethernet: true }));
        all.push(Tunnel::new(outer, Encapsulation::Geneve { vni: 8, port: 6081, options: 132, ethernet: true }));
        all.push(Tunnel::new(outer, Encapsulation::Geneve { vni: 9, port: 6081, options: 8, ethernet: false }));
        for ethernet in [false, true] {
            for (key, checksum, sequence) in
                [(None, false, None), (Some(0), false, None), (Some(0xdead_beef), true, Some(5)), (None, true, None)]
            {
                all.push(Tunnel::new(outer, Encapsulation::Gre { key, checksum, sequence, ethernet }));
            }
        }
        all.push(Tunnel::new(outer, Encapsulation::Ip));
        if v6 {
            // What an ip6 tunnel sends by default.
            all.push(Tunnel::new(outer, Encapsulation::Ip).encap_limit(4));
            all.push(
                Tunnel::new(outer, Encapsulation::Gre { key: None, checksum: false, sequence: None, ethernet: false })
                    .encap_limit(4),
            );
        }
        all.push(Tunnel::vxlan(outer, 5).outer_vlan(100));
        all.push(Tunnel::new(outer, Encapsulation::Ip).outer_vlan(100).outer_vlan(200));
    }
    all
}

fn carries_ethernet(tunnel: &Tunnel) -> bool {
    matches!(
        tunnel.encapsulation,
        Encapsulation::Vxlan { .. }
            | Encapsulation::Geneve { ethernet: true, .. }
            | Encapsulation::Gre { ethernet: true, .. }
    )
}

/// The event the walk must report for `inner` inside `tunnel`, numbered `number`.
fn expected(inner: &FrameBuilder, tunnel: &Tunnel, number: u32) -> TcpEvent {
    let event = inner.event(IFINDEX);
    // The outer source of every tunnel above is its larger address but for IPv6's.
    let swapped = matches!(tunnel.outer, Outer::V4(..));
    TcpEvent { key: event.key.in_tunnel(TUNNEL_INTERFACE | number, swapped), ..event }
}

fn expected_key(tunnel: &Tunnel, ipv6_inner: bool) -> TunnelKey {
    let (lo, hi, family) = match tunnel.outer {
        Outer::V4(src, dst) => (rst_craft::widen(dst), rst_craft::widen(src), FAMILY_IPV4),
        Outer::V6(src, dst) => (src, dst, FAMILY_IPV6),
    };
    let key = tunnel.key();
    TunnelKey {
        lo,
        hi,
        ifindex: IFINDEX,
        key: key.unwrap_or(0),
        kind: tunnel.kind_around(ipv6_inner) as u8,
        family,
        keyed: key.is_some() as u8,
        _pad: 0,
    }
}

#[test]
fn the_inner_reset_of_every_tunnel_is_counted_under_its_tunnel() {
    let mut failures = Vec::new();
    for tunnel in tunnels() {
        for ipv6 in [false, true] {
            // A VLAN tag inside exists only where Ethernet is carried.
            for vlan in [false, true] {
                if vlan && !carries_ethernet(&tunnel) {
                    continue;
                }
                let inner = inner(ipv6, vlan);
                let frame = tunnel.wrap(&inner.build());
                let mut table = TunnelTable::<4>::default();
                let observed = inspect_tunnels(&frame[..], DIRECTION_RX, || IFINDEX, &mut table);
                let want = Observation::Reset(expected(&inner, &tunnel, 0));
                let want_key = expected_key(&tunnel, ipv6);
                if observed != want || table.len != 1 || table.keys[0] != want_key {
                    failures.push(format!(
                        "{tunnel:?} inner v6 {ipv6} vlan {vlan}:\n  got {observed:?}\n  want {want:?}\n  table {:?}\n  want {want_key:?}",
                        &table.keys[..table.len]
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn tunnels_without_a_table_are_unrecorded_and_their_kinds_are_named() {
    let inner = inner(false, false);
    let tunnel = Tunnel::vxlan(Outer::V4(V4_B, V4_A), 42);
    let Observation::Reset(event) = inspect(&tunnel.wrap(&inner.build())[..], IFINDEX) else {
        panic!("not a reset");
    };
    assert_eq!(event.key.ifindex, TUNNEL_INTERFACE | TUNNEL_UNRECORDED);
    let names: Vec<&str> = TunnelKind::ALL.iter().map(|kind| kind.name()).collect();
    assert_eq!(names, ["vxlan", "geneve", "gre", "gretap", "ip6gre", "ip6gretap", "ipip", "sit", "ip6ip6", "ipip6"]);
    for kind in TunnelKind::ALL {
        assert_eq!(TunnelKind::from_byte(kind as u8), Some(kind));
    }
    assert_eq!(TunnelKind::from_byte(0), None);
}

#[test]
fn two_tenants_and_both_directions() {
    let mut table = TunnelTable::<4>::default();
    let inner = inner(false, false);
    let there = Tunnel::vxlan(Outer::V4(V4_B, V4_A), 1);
    let other_vni = Tunnel::vxlan(Outer::V4(V4_B, V4_A), 2);
    let back = Tunnel::vxlan(Outer::V4(V4_A, V4_B), 1);
    let number = |tunnel: &Tunnel, table: &mut TunnelTable<4>| match inspect_tunnels(
        &tunnel.wrap(&inner.build())[..],
        DIRECTION_RX,
        || IFINDEX,
        table,
    ) {
        Observation::Reset(event) => (event.key.ifindex, event.key.outer_swapped),
        other => panic!("{other:?}"),
    };
    assert_eq!(number(&there, &mut table), (TUNNEL_INTERFACE, 1));
    assert_eq!(number(&other_vni, &mut table), (TUNNEL_INTERFACE | 1, 1));
    // The same tunnel the other way round: one tunnel, so one connection for the tracker.
    assert_eq!(number(&back, &mut table), (TUNNEL_INTERFACE, 0));
    assert_eq!(table.len, 2);
    let (a, _) = inner.event(IFINDEX).key.in_tunnel(TUNNEL_INTERFACE, true).connection();
    let (b, _) = inner.event(IFINDEX).key.in_tunnel(TUNNEL_INTERFACE | 1, true).connection();
    assert_ne!(a, b, "two VNIs are two connections");
}

#[test]
fn a_full_table_counts_further_tunnels_unrecorded() {
    let mut table = TunnelTable::<1>::default();
    let inner = inner(false, false).flags(TCP_SYN);
    for (vni, want) in [(1, TUNNEL_INTERFACE), (2, TUNNEL_INTERFACE | TUNNEL_UNRECORDED), (1, TUNNEL_INTERFACE)] {
        let frame = Tunnel::vxlan(Outer::V4(V4_B, V4_A), vni).wrap(&inner.build());
        let Observation::Control(event) = inspect_tunnels(&frame[..], DIRECTION_RX, || IFINDEX, &mut table) else {
            panic!("not a SYN");
        };
        assert_eq!(event.key.ifindex, want, "vni {vni}");
    }
}

/// Cut anywhere before the inner TCP header is complete, a tunnelled reset is malformed, but
/// for cuts inside the outer UDP header (which could be anything's) and an outer Ethernet
/// header with its type missing.
#[test]
fn truncated_tunnels_are_malformed() {
    for tunnel in tunnels() {
        for ipv6 in [false, true] {
            let inner = inner(ipv6, false);
            let built = inner.build();
            let frame = tunnel.wrap(&built);
            // The inner frame ends the tunnelled one.
            let complete = frame.len() - built.bytes.len() + built.tcp_header_end();
            let l4 = tunnel.outer_l3()
                + match tunnel.outer {
                    Outer::V4(..) => 20,
                    Outer::V6(..) => 40 + tunnel.encap_limit.map_or(0, |_| 8),
                };
            let udp = matches!(tunnel.encapsulation, Encapsulation::Vxlan { .. } | Encapsulation::Geneve { .. });
            for len in 14..complete {
                let observed = inspect(&frame[..len], IFINDEX);
                let in_udp = udp && (l4..l4 + 8).contains(&len);
                let want = if in_udp { Observation::NotTcp } else { Observation::Malformed };
                assert_eq!(observed, want, "{tunnel:?} v6 {ipv6} cut at {len} of {}", frame.len());
            }
            assert!(matches!(inspect(&frame[..complete], IFINDEX), Observation::Reset(_)), "{tunnel:?}");
        }
    }
}

/// One level only: a tunnel inside a tunnel is malformed, never read as its inner segment.
#[test]
fn a_tunnel_in_a_tunnel_is_malformed() {
    let inner = inner(false, false).build();
    for outer in tunnels() {
        for nested in tunnels() {
            let once = nested.wrap(&inner);
            let twice = outer.wrap_bytes(&once, Some(nested.outer_l3()));
            assert_eq!(inspect(&twice[..], IFINDEX), Observation::Malformed, "{nested:?} in {outer:?}");
        }
    }
}

#[test]
fn other_udp_and_gre_pass_as_not_tcp() {
    let inner = inner(false, false).build();
    let outer = Outer::V4(V4_B, V4_A);
    let not_ours = [
        Tunnel::new(outer, Encapsulation::Vxlan { vni: 1, port: 4790 }),
        Tunnel::new(outer, Encapsulation::Geneve { vni: 1, port: 6082, options: 0, ethernet: true }),
    ];
    for tunnel in not_ours {
        assert_eq!(inspect(&tunnel.wrap(&inner)[..], IFINDEX), Observation::NotTcp, "{tunnel:?}");
    }
    // GRE version 1 (PPTP) is not walked into.
    let gre = Tunnel::new(outer, Encapsulation::Gre { key: None, checksum: false, sequence: None, ethernet: false });
    let mut frame = gre.wrap(&inner);
    let l4 = gre.outer_l3() + 20;
    frame[l4 + 1] |= 1;
    assert_eq!(inspect(&frame[..], IFINDEX), Observation::NotTcp);
}
