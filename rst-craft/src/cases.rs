//! The one table of frames and the [`Observation`] each must produce ([`cases`]), and the
//! frames the tests and benchmarks start from.

use super::*;

/// One frame and what the walk must make of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    pub name: String,
    pub frame: Vec<u8>,
    pub expected: Observation,
}

pub const CLIENT_V4: [u8; 4] = [192, 0, 2, 10];
pub const SERVER_V4: [u8; 4] = [198, 51, 100, 20];
pub const CLIENT_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a];
pub const SERVER_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x14];

/// A plain IPv4 TCP frame between the documentation addresses.
pub fn tcp_v4() -> FrameBuilder {
    FrameBuilder::ipv4(CLIENT_V4, SERVER_V4)
}

/// A plain IPv6 TCP frame between the documentation addresses.
pub fn tcp_v6() -> FrameBuilder {
    FrameBuilder::ipv6(CLIENT_V6, SERVER_V6)
}

/// Eight bytes of IPv4 options: a router alert (RFC 2113) and a NOP-padded end of list.
pub const IPV4_OPTIONS_ROUTER_ALERT: [u8; 8] = [0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00];

/// The options Linux puts on a SYN: MSS, SACK permitted, timestamps, window scale (20 bytes).
pub fn syn_options() -> Vec<TcpOptionElement> {
    vec![
        TcpOptionElement::MaximumSegmentSize(1460),
        TcpOptionElement::SelectiveAcknowledgementPermitted,
        TcpOptionElement::Timestamp(0x0001_0203, 0),
        TcpOptionElement::Noop,
        TcpOptionElement::WindowScale(7),
    ]
}

/// A VLAN-tagged RST over IPv4 with options: the frame the truncation sweeps cut.
pub fn vlan_ipv4_options_rst() -> FrameBuilder {
    tcp_v4().vlan(VlanKind::Dot1Q, 100).ipv4_options(&IPV4_OPTIONS_ROUTER_ALERT).ports(443, 49152).flags(TCP_RST)
}

/// An IPv6 RST behind a hop-by-hop, a destination options and an authentication header.
pub fn ipv6_ext_rst() -> FrameBuilder {
    tcp_v6()
        .ipv6_ext(Ipv6Ext::HopByHop { len: 0 })
        .ipv6_ext(Ipv6Ext::DestinationOptions { len: 1 })
        .ipv6_ext(Ipv6Ext::Auth { icv_len: 12 })
        .ports(8080, 50000)
        .flags(TCP_RST | TCP_ACK)
}

// What the not-TCP cases carry: protocols the walk must pass over, so rst-common has no names
// for them.
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_NO_NEXT_HEADER: u8 = 59;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_LLDP: u16 = 0x88cc;

/// Every header variant and every malformed variant the walk distinguishes, each with the
/// [`Observation`] it must produce on interface `ifindex`.
///
/// Every frame is at least [`MIN_TEST_RUN_FRAME`] bytes (the kernel's test-run refuses shorter
/// ones); what happens to shorter frames is covered by the host truncation tests. RST cases use
/// distinct ports, so each one is its own flow in the kernel's table.
pub fn cases(ifindex: u32) -> Vec<Case> {
    let mut table = Table { ifindex, cases: Vec::new(), next_port: 20000 };

    // Plain TCP over IPv4 and IPv6, and which flags make a reset.
    table.reset("ipv4 rst", tcp_v4().flags(TCP_RST));
    table.reset("ipv4 rst+ack", tcp_v4().flags(TCP_RST | TCP_ACK));
    table.reset("ipv4 rst with every other flag", tcp_v4().flags(0xff));
    table.segment("ipv4 syn", tcp_v4().flags(TCP_SYN).tcp_options(&syn_options()));
    table.segment("ipv4 ack with payload", tcp_v4().flags(TCP_ACK | TCP_PSH).payload(b"hello"));
    table.segment("ipv4 fin+ack", tcp_v4().flags(TCP_FIN | TCP_ACK));
    table.segment("ipv4 syn+ack", tcp_v4().flags(TCP_SYN | TCP_ACK).seq_ack(0x1111_0000, 0x0102_0305));
    table.segment("ipv4 ack only", tcp_v4().flags(TCP_ACK));
    table.segment("ipv6 pure ack", tcp_v6().flags(TCP_ACK));
    table.segment("ipv4 no flags", tcp_v4().flags(0));
    table.segment("ipv4 all flags but rst", tcp_v4().flags(!TCP_RST));
    table.reset("ipv6 rst", tcp_v6().flags(TCP_RST));
    table.reset("ipv6 rst+ack", tcp_v6().flags(TCP_RST | TCP_ACK));
    table.segment("ipv6 syn", tcp_v6().flags(TCP_SYN).tcp_options(&syn_options()));
    table.segment("ipv6 ack with payload", tcp_v6().payload(&[0x42; 100]));

    // Header lengths: options move the next header.
    table.reset("ipv4 options (ihl 7) rst", tcp_v4().ipv4_options(&IPV4_OPTIONS_ROUTER_ALERT).flags(TCP_RST));
    table.reset("ipv4 40 bytes of options (ihl 15) rst", tcp_v4().ipv4_options(&[0x01; 40]).flags(TCP_RST));
    table.reset("tcp options (data offset 10) rst", tcp_v4().tcp_options(&syn_options()).flags(TCP_RST));
    table.reset(
        "tcp 40 bytes of options (data offset 15) rst",
        tcp_v6().tcp_options(&vec![TcpOptionElement::Noop; 40]).flags(TCP_RST | TCP_ACK),
    );
    table.reset("ipv4 rst with payload", tcp_v4().flags(TCP_RST).payload(b"connection reset by peer"));

    // VLAN tags: 802.1Q, 802.1ad, legacy QinQ, stacks up to MAX_VLAN_TAGS.
    table.reset("802.1q ipv4 rst", tcp_v4().vlan(VlanKind::Dot1Q, 100).flags(TCP_RST));
    table.reset("802.1q ipv6 rst", tcp_v6().vlan(VlanKind::Dot1Q, 4094).flags(TCP_RST));
    table.reset("802.1ad alone ipv4 rst", tcp_v4().vlan(VlanKind::Dot1Ad, 7).flags(TCP_RST));
    table.reset(
        "qinq 802.1ad+802.1q ipv4 rst",
        tcp_v4().vlan(VlanKind::Dot1Ad, 10).vlan(VlanKind::Dot1Q, 20).flags(TCP_RST),
    );
    table.reset(
        "qinq 0x9100+802.1q ipv6 rst",
        tcp_v6().vlan(VlanKind::QinQLegacy, 10).vlan(VlanKind::Dot1Q, 20).flags(TCP_RST),
    );
    let three_tags = tcp_v6().vlan(VlanKind::Dot1Ad, 1).vlan(VlanKind::Dot1Q, 2).vlan(VlanKind::Dot1Q, 3);
    assert_eq!(three_tags.vlans.len(), MAX_VLAN_TAGS);
    table.reset("three tags ipv6 rst", three_tags.clone().flags(TCP_RST));
    table.segment("qinq ipv4 syn", tcp_v4().vlan(VlanKind::Dot1Ad, 10).vlan(VlanKind::Dot1Q, 20).flags(TCP_SYN));
    table
        .malformed("four tags (deeper than the walk goes)", three_tags.vlan(VlanKind::Dot1Q, 4).flags(TCP_RST).build());

    // IPv6 extension headers, one of each kind, a long one, and chains up to the bound.
    table.reset("ipv6 hop-by-hop rst", tcp_v6().ipv6_ext(Ipv6Ext::HopByHop { len: 0 }).flags(TCP_RST));
    table.reset("ipv6 routing rst", tcp_v6().ipv6_ext(Ipv6Ext::Routing { len: 2 }).flags(TCP_RST));
    table.reset(
        "ipv6 destination options rst",
        tcp_v6().ipv6_ext(Ipv6Ext::DestinationOptions { len: 0 }).flags(TCP_RST),
    );
    table.reset("ipv6 authentication header rst", tcp_v6().ipv6_ext(Ipv6Ext::Auth { icv_len: 12 }).flags(TCP_RST));
    table.reset(
        "ipv6 2048-byte destination options rst",
        tcp_v6().ipv6_ext(Ipv6Ext::DestinationOptions { len: 255 }).flags(TCP_RST),
    );
    table.reset("ipv6 1016-byte icv rst", tcp_v6().ipv6_ext(Ipv6Ext::Auth { icv_len: 1012 }).flags(TCP_RST));
    table.reset("ipv6 hop-by-hop, dstopts, auth, rst+ack", ipv6_ext_rst());
    table.reset(
        "ipv6 every kind of extension header rst",
        tcp_v6()
            .ipv6_ext(Ipv6Ext::HopByHop { len: 1 })
            .ipv6_ext(Ipv6Ext::DestinationOptions { len: 0 })
            .ipv6_ext(Ipv6Ext::Routing { len: 0 })
            .ipv6_ext(Ipv6Ext::Fragment { offset: 0, more: true })
            .ipv6_ext(Ipv6Ext::Auth { icv_len: 4 })
            .ipv6_ext(Ipv6Ext::DestinationOptions { len: 0 })
            .flags(TCP_RST),
    );
    table.reset("ipv6 chain of 8 (the bound) rst", ipv6_chain(MAX_IPV6_EXT_HEADERS).flags(TCP_RST));
    table.segment("ipv6 chain of 8 (the bound) syn", ipv6_chain(MAX_IPV6_EXT_HEADERS).flags(TCP_SYN));
    table
        .malformed("ipv6 chain of 9 (past the bound) rst", ipv6_chain(MAX_IPV6_EXT_HEADERS + 1).flags(TCP_RST).build());

    // Fragments: only the first one carries the TCP header.
    table.reset("ipv4 first fragment (mf) rst", tcp_v4().ipv4_fragment(0, true).flags(TCP_RST));
    table.fragment("ipv4 non-first fragment", tcp_v4().ipv4_fragment(185, true).ip_payload(IPPROTO_TCP, &[0x55; 64]));
    table.fragment("ipv4 last fragment", tcp_v4().ipv4_fragment(370, false).ip_payload(IPPROTO_TCP, &[0x55; 40]));
    table.fragment("ipv4 non-first fragment of udp", tcp_v4().ipv4_fragment(1, false).ip_payload(IPPROTO_UDP, &[0; 8]));
    table.fragment("ipv4 non-first fragment that looks like a rst", tcp_v4().ipv4_fragment(3, false).flags(TCP_RST));
    table.reset(
        "ipv6 first fragment (mf) rst",
        tcp_v6().ipv6_ext(Ipv6Ext::Fragment { offset: 0, more: true }).flags(TCP_RST),
    );
    table.fragment(
        "ipv6 non-first fragment",
        tcp_v6().ipv6_ext(Ipv6Ext::Fragment { offset: 181, more: true }).ip_payload(IPPROTO_TCP, &[0x55; 64]),
    );
    table.fragment(
        "ipv6 non-first fragment behind hop-by-hop",
        tcp_v6()
            .ipv6_ext(Ipv6Ext::HopByHop { len: 0 })
            .ipv6_ext(Ipv6Ext::Fragment { offset: 1, more: false })
            .flags(TCP_RST),
    );

    // Not TCP over IP: passes uncounted.
    table.not_tcp("arp", FrameBuilder::ether_type(ETH_P_ARP, &[0; 28]).build());
    table.not_tcp("802.1q arp", FrameBuilder::ether_type(ETH_P_ARP, &[0; 28]).vlan(VlanKind::Dot1Q, 5).build());
    table.not_tcp("lldp", FrameBuilder::ether_type(ETH_P_LLDP, &[0; 46]).build());
    table.not_tcp("unknown ethertype, nothing after it", FrameBuilder::ether_type(0x1234, &[]).build());
    table.not_tcp("ipv4 udp", tcp_v4().ip_payload(IPPROTO_UDP, &[0; 8]).build());
    table.not_tcp("ipv6 udp", tcp_v6().ip_payload(IPPROTO_UDP, &[0; 8]).build());
    table.not_tcp("ipv6 icmpv6", tcp_v6().ip_payload(IPPROTO_ICMPV6, &[128, 0, 0, 0, 0, 1, 0, 1]).build());
    table.not_tcp("ipv6 no next header", tcp_v6().ip_payload(IPPROTO_NO_NEXT_HEADER, &[]).build());
    table.not_tcp(
        "ipv6 hop-by-hop then udp",
        tcp_v6().ipv6_ext(Ipv6Ext::HopByHop { len: 0 }).ip_payload(IPPROTO_UDP, &[0; 8]).build(),
    );
    table.not_tcp(
        "ipv4 udp behind qinq",
        tcp_v4().vlan(VlanKind::Dot1Ad, 1).vlan(VlanKind::Dot1Q, 2).ip_payload(IPPROTO_UDP, &[0; 8]).build(),
    );

    // Malformed: truncated inside each header.
    let rst_v4 = vlan_ipv4_options_rst().build();
    let rst_v6 = ipv6_ext_rst().build();
    table.malformed("ethernet only, ipv4 ethertype", tcp_v4().build().truncated(14));
    table.malformed("truncated in the vlan tag", rst_v4.clone().truncated(16));
    table.malformed("truncated in the ipv4 header", rst_v4.clone().truncated(18 + 19));
    table.malformed("truncated in the ipv4 options", rst_v4.clone().truncated(18 + 24));
    table.malformed("ipv4 truncated before tcp", rst_v4.clone().truncated(rst_v4.l4().unwrap()));
    table.malformed("ipv4 truncated in the tcp header", rst_v4.clone().truncated(rst_v4.tcp_header_end() - 1));
    table.malformed("truncated in the ipv6 header", rst_v6.clone().truncated(14 + 39));
    table.malformed("truncated in an ipv6 extension header", rst_v6.clone().truncated(14 + 40 + 8 + 4));
    table.malformed("ipv6 truncated in the tcp header", rst_v6.clone().truncated(rst_v6.tcp_header_end() - 1));
    table.malformed(
        "ipv6 2048-byte extension header cut short",
        tcp_v6().ipv6_ext(Ipv6Ext::DestinationOptions { len: 255 }).flags(TCP_RST).build().truncated(14 + 40 + 1000),
    );
    table.malformed(
        "tcp options cut off: only the fixed header is needed, but it is cut too",
        tcp_v4().tcp_options(&syn_options()).flags(TCP_RST).build().truncated(14 + 20 + 10),
    );

    // Malformed: impossible header fields.
    for ihl in [0, 1, 4] {
        table.malformed(&format!("ipv4 ihl {ihl}"), tcp_v4().flags(TCP_RST).build().with_ipv4_ihl(ihl));
    }
    table.malformed(
        "ipv4 ihl 15 without options: tcp header past the end",
        tcp_v4().flags(TCP_RST).build().with_ipv4_ihl(15),
    );
    for data_offset in [0, 4] {
        table.malformed(
            &format!("tcp data offset {data_offset} on a rst"),
            tcp_v4().flags(TCP_RST).build().with_tcp_data_offset(data_offset),
        );
        table.malformed(
            &format!("tcp data offset {data_offset} on an ipv6 syn"),
            tcp_v6().flags(TCP_SYN).build().with_tcp_data_offset(data_offset),
        );
    }
    // RFC 4302: an AH "Payload Len" of 0 is shorter than the header's own fixed part (found by
    // the differential fuzzer: rstwatch used to walk it as 8 bytes).
    let ah = tcp_v6().ipv6_ext(Ipv6Ext::Auth { icv_len: 4 }).flags(TCP_RST).build();
    let ah_len_at = ah.l3().expect("ipv6") + 40 + 1;
    table.malformed("ipv6 ah with payload len 0", ah.with_byte(ah_len_at, 0));
    table.malformed("ipv4 ethertype, version 6", tcp_v4().flags(TCP_RST).build().with_ip_version(6));
    table.malformed("ipv4 ethertype, version 0", tcp_v4().flags(TCP_RST).build().with_ip_version(0));
    table.malformed("ipv6 ethertype, version 4", tcp_v6().flags(TCP_RST).build().with_ip_version(4));
    table.malformed(
        "ipv6 ethertype, version 15 behind a vlan tag",
        tcp_v6().vlan(VlanKind::Dot1Q, 9).flags(TCP_RST).build().with_ip_version(15),
    );

    table.cases
}

/// `count` destination options headers in a row before TCP.
pub fn ipv6_chain(count: usize) -> FrameBuilder {
    (0..count).fold(tcp_v6(), |frame, _| frame.ipv6_ext(Ipv6Ext::DestinationOptions { len: 0 }))
}

struct Table {
    ifindex: u32,
    cases: Vec<Case>,
    /// Gives every TCP case its own source port, so every RST case is its own flow.
    next_port: u16,
}

impl Table {
    fn push(&mut self, name: &str, frame: Vec<u8>, expected: Observation) {
        assert!(
            frame.len() >= MIN_TEST_RUN_FRAME,
            "case {name:?} is {} bytes, shorter than a test-run accepts",
            frame.len()
        );
        assert!(!self.cases.iter().any(|case| case.name == name), "duplicate case name {name:?}");
        self.cases.push(Case { name: name.to_owned(), frame, expected });
    }

    fn unique_ports(&mut self, frame: FrameBuilder) -> FrameBuilder {
        let Transport::Tcp(tcp) = &frame.transport else {
            return frame;
        };
        let dport = tcp.dport;
        self.next_port += 1;
        frame.ports(self.next_port, dport)
    }

    fn reset(&mut self, name: &str, frame: FrameBuilder) {
        let frame = self.unique_ports(frame);
        let event = frame.event(self.ifindex);
        self.push(name, frame.build().into_bytes(), Observation::Reset(event));
    }

    fn segment(&mut self, name: &str, frame: FrameBuilder) {
        let frame = self.unique_ports(frame);
        let event = frame.event(self.ifindex);
        let expected =
            if event.flags & (TCP_SYN | TCP_FIN) != 0 { Observation::Control(event) } else { Observation::Segment };
        self.push(name, frame.build().into_bytes(), expected);
    }

    fn fragment(&mut self, name: &str, frame: FrameBuilder) {
        self.push(name, frame.build().into_bytes(), Observation::Fragment);
    }

    fn not_tcp(&mut self, name: &str, frame: Crafted) {
        self.push(name, frame.into_bytes(), Observation::NotTcp);
    }

    fn malformed(&mut self, name: &str, frame: Crafted) {
        self.push(name, frame.into_bytes(), Observation::Malformed);
    }
}
