//! The header walk on the host, over frames from `rst_craft`.

use rst_common::{
    inspect,
    parse::{MAX_IPV6_EXT_HEADERS, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    wire::{DIRECTION_RX, FAMILY_IPV4, FAMILY_IPV6, IPPROTO_TCP},
    FlowKey, Observation, TcpEvent,
};
use rst_craft::{self as craft, cases, ipv6_chain, tcp_v4, tcp_v6, Crafted, FrameBuilder, Ipv6Ext, VlanKind};

const IFINDEX: u32 = 7;

#[test]
fn every_case_is_classified_as_expected() {
    let mut failures = Vec::new();
    for case in cases(IFINDEX) {
        let observed = inspect(&case.frame[..], IFINDEX);
        if observed != case.expected {
            failures.push(format!(
                "{}: expected {:?}, got {:?}\n  frame: {}",
                case.name,
                case.expected,
                observed,
                hex(&case.frame)
            ));
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn case_table_covers_every_observation() {
    let all = cases(IFINDEX);
    let count = |matches: fn(&Observation) -> bool| all.iter().filter(|case| matches(&case.expected)).count();
    assert!(count(|o| matches!(o, Observation::Reset(_))) >= 10);
    assert!(count(|o| matches!(o, Observation::Segment)) >= 5);
    assert!(count(|o| matches!(o, Observation::Control(_))) >= 5);
    assert!(count(|o| matches!(o, Observation::Fragment)) >= 4);
    assert!(count(|o| matches!(o, Observation::NotTcp)) >= 5);
    assert!(count(|o| matches!(o, Observation::Malformed)) >= 10);
}

/// Cuts `frame` at every length: it must stay malformed until the fixed 20 bytes of the TCP
/// header are complete, and be that reset from then on (options and payload are not needed).
fn assert_truncations(frame: &Crafted, event: TcpEvent) {
    let complete = frame.tcp_header_end();
    for len in 0..=frame.bytes.len() {
        let expected = if len < complete { Observation::Malformed } else { Observation::Reset(event) };
        let observed = inspect(&frame.bytes[..len], IFINDEX);
        assert_eq!(
            observed,
            expected,
            "cut at {len} of {} bytes (tcp header complete at {complete}): {}",
            frame.bytes.len(),
            hex(&frame.bytes[..len])
        );
    }
}

#[test]
fn truncated_vlan_ipv4_options_rst() {
    let builder = craft::vlan_ipv4_options_rst().payload(b"bye");
    let frame = builder.build();
    // 14 Ethernet + 4 tag + 28 IPv4 with options: the TCP header starts at 46.
    assert_eq!(frame.l4(), Some(46));
    assert_truncations(&frame, builder.event(IFINDEX));
}

#[test]
fn truncated_ipv6_extension_header_rst() {
    let builder = craft::ipv6_ext_rst().tcp_options(&craft::syn_options());
    let frame = builder.build();
    // 14 Ethernet + 40 IPv6 + 8 hop-by-hop + 16 destination options + 24 AH.
    assert_eq!(frame.l4(), Some(102));
    assert_truncations(&frame, builder.event(IFINDEX));
}

#[test]
fn truncated_qinq_rst_with_ipv6_fragment_header() {
    let builder = tcp_v6()
        .vlan(VlanKind::Dot1Ad, 100)
        .vlan(VlanKind::Dot1Q, 200)
        .ipv6_ext(Ipv6Ext::Fragment { offset: 0, more: true })
        .flags(TCP_RST);
    assert_truncations(&builder.build(), builder.event(IFINDEX));
}

#[test]
fn rst_alone_and_rst_ack_both_count() {
    for flags in [TCP_RST, TCP_RST | TCP_ACK] {
        let frame = tcp_v4().flags(flags).build();
        assert!(matches!(inspect(&frame.bytes[..], IFINDEX), Observation::Reset(_)), "flags {flags:#04x}");
    }
    let frame = tcp_v4().flags(TCP_ACK).build();
    assert_eq!(inspect(&frame.bytes[..], IFINDEX), Observation::Segment);
    // Handshake and closing segments are tracked, not counted as resets.
    for flags in [TCP_SYN, TCP_SYN | TCP_ACK, TCP_FIN | TCP_ACK, !TCP_RST] {
        let (seen, event) = walked(&tcp_v4().flags(flags));
        assert_eq!(seen, Observation::Control(event), "flags {flags:#04x}");
    }
}

/// What the walk reports for `builder`'s frame, and the event the builder says the frame holds.
fn walked(builder: &FrameBuilder) -> (Observation, TcpEvent) {
    (inspect(&builder.build().bytes[..], IFINDEX), builder.event(IFINDEX))
}

#[test]
fn ipv4_key_is_exact() {
    let frame = FrameBuilder::ipv4([10, 1, 2, 3], [172, 16, 254, 1]).ports(1, 65535).flags(TCP_RST).build();
    let Observation::Reset(TcpEvent { key, .. }) = inspect(&frame.bytes[..], 42) else {
        panic!("not a reset");
    };
    let expected = FlowKey {
        src: [10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        dst: [172, 16, 254, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ifindex: 42,
        sport: 1,
        dport: 65535,
        family: FAMILY_IPV4,
        protocol: IPPROTO_TCP,
        direction: DIRECTION_RX,
        class: 0,
        rst_ttl: 64,
        peer_ttl: 0,
        context: 0,
        outer_swapped: 0,
    };
    assert_eq!(key, expected);
}

#[test]
fn ipv6_key_is_exact_and_directional() {
    let a: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
    let b: [u8; 16] = core::array::from_fn(|i| 0xf0 - i as u8);
    let forward = FrameBuilder::ipv6(a, b).ports(0x1234, 0xabcd).flags(TCP_RST).build();
    let backward = FrameBuilder::ipv6(b, a).ports(0xabcd, 0x1234).flags(TCP_RST).build();
    let Observation::Reset(TcpEvent { key: forward, .. }) = inspect(&forward.bytes[..], 3) else {
        panic!("not a reset");
    };
    let Observation::Reset(TcpEvent { key: backward, .. }) = inspect(&backward.bytes[..], 3) else {
        panic!("not a reset");
    };
    // The IPv4 test above pins every other field with a literal; the case table holds the walk
    // to `received_key`.
    assert_eq!(forward, craft::received_key(FAMILY_IPV6, a, b, 3, (0x1234, 0xabcd), 64));
    assert_ne!(forward, backward, "the two directions of a connection are separate flows");
    assert_eq!((backward.src, backward.dst, backward.sport, backward.dport), (b, a, 0xabcd, 0x1234));
}

#[test]
fn ipv6_chain_up_to_the_bound_and_past_it() {
    for count in 0..=MAX_IPV6_EXT_HEADERS {
        let frame = ipv6_chain(count).flags(TCP_RST).build();
        assert!(matches!(inspect(&frame.bytes[..], IFINDEX), Observation::Reset(_)), "chain of {count}");
    }
    for count in MAX_IPV6_EXT_HEADERS + 1..=MAX_IPV6_EXT_HEADERS + 3 {
        let frame = ipv6_chain(count).flags(TCP_RST).build();
        assert_eq!(inspect(&frame.bytes[..], IFINDEX), Observation::Malformed, "chain of {count}");
    }
}

#[test]
fn qinq_tags_in_every_combination() {
    let kinds = [VlanKind::Dot1Q, VlanKind::Dot1Ad, VlanKind::QinQLegacy];
    for outer in kinds {
        for inner in kinds {
            let (seen, event) = walked(&tcp_v4().vlan(outer, 1).vlan(inner, 2).flags(TCP_RST));
            assert_eq!(seen, Observation::Reset(event), "{outer:?} + {inner:?}");
        }
    }
}

#[test]
fn non_first_fragments_are_fragments() {
    for offset in [1, 2, 185, 0x1fff] {
        for more in [false, true] {
            let v4 = tcp_v4().ipv4_fragment(offset, more).flags(TCP_RST).build();
            assert_eq!(inspect(&v4.bytes[..], IFINDEX), Observation::Fragment, "ipv4 offset {offset} mf {more}");
            let v6 = tcp_v6().ipv6_ext(Ipv6Ext::Fragment { offset, more }).flags(TCP_RST).build();
            assert_eq!(inspect(&v6.bytes[..], IFINDEX), Observation::Fragment, "ipv6 offset {offset} mf {more}");
        }
    }
}

#[test]
fn first_fragment_with_more_fragments_is_counted() {
    for builder in [
        tcp_v4().ipv4_fragment(0, true).flags(TCP_RST),
        tcp_v6().ipv6_ext(Ipv6Ext::Fragment { offset: 0, more: true }).flags(TCP_RST),
    ] {
        let (seen, event) = walked(&builder);
        assert_eq!(seen, Observation::Reset(event));
    }
}

#[test]
fn every_short_ihl_and_data_offset_is_malformed() {
    for ihl in 0..5 {
        let frame = tcp_v4().flags(TCP_RST).build().with_ipv4_ihl(ihl);
        assert_eq!(inspect(&frame.bytes[..], IFINDEX), Observation::Malformed, "ihl {ihl}");
    }
    for data_offset in 0..5 {
        let frame = tcp_v6().flags(TCP_RST).build().with_tcp_data_offset(data_offset);
        assert_eq!(inspect(&frame.bytes[..], IFINDEX), Observation::Malformed, "data offset {data_offset}");
    }
}

#[test]
fn every_wrong_ip_version_is_malformed() {
    for version in (0..16).filter(|&v| v != 4) {
        let frame = tcp_v4().flags(TCP_RST).build().with_ip_version(version);
        assert_eq!(inspect(&frame.bytes[..], IFINDEX), Observation::Malformed, "ipv4 ethertype, version {version}");
    }
    for version in (0..16).filter(|&v| v != 6) {
        let frame = tcp_v6().flags(TCP_RST).build().with_ip_version(version);
        assert_eq!(inspect(&frame.bytes[..], IFINDEX), Observation::Malformed, "ipv6 ethertype, version {version}");
    }
}

/// The builder itself: etherparse must read back what it laid out (first fragments included,
/// which etherparse's slicer leaves unparsed above IP), or the cases above would test frames
/// nobody sends.
#[test]
fn well_formed_frames_parse_with_etherparse() {
    use craft::etherparse::{SlicedPacket, TcpHeader};
    let mut unreadable = Vec::new();
    for case in cases(IFINDEX) {
        if !matches!(case.expected, Observation::Reset(_) | Observation::Segment | Observation::Control(_)) {
            continue;
        }
        let tcp = SlicedPacket::from_ethernet(&case.frame).map_err(|error| error.to_string()).and_then(|packet| {
            let payload = packet.ip_payload().ok_or("no IP payload")?;
            let (tcp, _) = TcpHeader::from_slice(payload.payload).map_err(|error| error.to_string())?;
            Ok(tcp)
        });
        let tcp = match tcp {
            Ok(tcp) => tcp,
            Err(error) => {
                unreadable.push(format!("{}: {error}", case.name));
                continue;
            }
        };
        match case.expected {
            Observation::Reset(TcpEvent { key, .. }) => {
                assert!(tcp.rst, "{}", case.name);
                assert_eq!((tcp.source_port, tcp.destination_port), (key.sport, key.dport), "{}", case.name);
            }
            _ => assert!(!tcp.rst, "{}", case.name),
        }
    }
    assert!(unreadable.is_empty(), "etherparse cannot read back:\n{}", unreadable.join("\n"));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
