//! The classifier, the service tracker, the payload hand-over and the captured kernel reasons,
//! in the kernel as on the host.

use super::*;

/// Conversations through the kernel and through the host's `track`: the classified keys must be
/// identical, and each RST gets the kind, side, "first" and peer TTL that rst-common's
/// `diagnose` documents.
#[test]
fn resets_are_classified_in_the_kernel_as_on_the_host() -> anyhow::Result<()> {
    rst_lab::require!(rst_lab::Need::Bpf);
    const CLIENT: [u8; 4] = [10, 0, 0, 1];
    const SERVER: [u8; 4] = [10, 0, 0, 2];
    // The server is two hops further than the client from where rstwatch watches.
    let c2s = |port: u16, flags: u8, seq: u32, ack: u32| {
        FrameBuilder::ipv4(CLIENT, SERVER).ports(port, 80).flags(flags).seq_ack(seq, ack).ttl(64)
    };
    let s2c = |port: u16, flags: u8, seq: u32, ack: u32| {
        FrameBuilder::ipv4(SERVER, CLIENT).ports(80, port).flags(flags).seq_ack(seq, ack).ttl(62)
    };
    use ResetKind::{Established, Handshake, Refused};
    /// Kind, ACK, from the server, side observed, first, peer TTL.
    type Expected = (ResetKind, bool, bool, bool, bool, u8);
    let conversations: Vec<(Vec<FrameBuilder>, Vec<Expected>)> = vec![
        // Port closed: the server's stack answers the SYN.
        (
            vec![c2s(1001, TCP_SYN, 1000, 0), s2c(1001, TCP_RST | TCP_ACK, 0, 1001)],
            vec![(Refused, true, true, true, true, 0)],
        ),
        // The client refuses the SYN+ACK: nothing moved yet.
        (
            vec![c2s(1002, TCP_SYN, 2000, 0), s2c(1002, TCP_SYN | TCP_ACK, 5000, 2001), c2s(1002, TCP_RST, 2001, 0)],
            vec![(Handshake, false, false, true, true, 64)],
        ),
        // Data moved, the server aborts first, then the client answers with one more RST.
        (
            vec![
                c2s(1003, TCP_SYN, 3000, 0),
                s2c(1003, TCP_SYN | TCP_ACK, 7000, 3001),
                c2s(1003, TCP_ACK, 3001, 7001),
                s2c(1003, TCP_RST | TCP_ACK, 7001, 3101),
                c2s(1003, TCP_RST, 3101, 0),
            ],
            vec![(Established, true, true, true, true, 62), (Established, false, false, true, false, 64)],
        ),
        // After a FIN.
        (
            vec![
                c2s(1004, TCP_SYN, 4000, 0),
                s2c(1004, TCP_SYN | TCP_ACK, 8000, 4001),
                c2s(1004, TCP_FIN | TCP_ACK, 4051, 8001),
                s2c(1004, TCP_RST, 8001, 0),
            ],
            vec![(ResetKind::Closing, false, true, true, true, 62)],
        ),
        // Something between claims to be the server, one hop away instead of two.
        (
            vec![
                c2s(1005, TCP_SYN, 6000, 0),
                s2c(1005, TCP_SYN | TCP_ACK, 9000, 6001),
                s2c(1005, TCP_RST, 9101, 0).ttl(63),
            ],
            vec![(Established, false, true, true, true, 62)],
        ),
        // A retransmitted SYN after the SYN+ACK changes nothing: the server's RST at ISN+1
        // acknowledging only the SYN is still a handshake reset, with the SYN+ACK's TTL.
        (
            vec![
                c2s(1008, TCP_SYN, 100, 0),
                s2c(1008, TCP_SYN | TCP_ACK, 9000, 101),
                c2s(1008, TCP_SYN, 100, 0),
                s2c(1008, TCP_RST | TCP_ACK, 9001, 101),
            ],
            vec![(Handshake, true, true, true, true, 62)],
        ),
        // The SYN+ACK went another way: a client RST past its ISN+1 means data moved.
        (
            vec![c2s(1009, TCP_SYN, 200, 0), c2s(1009, TCP_RST | TCP_ACK, 1201, 5)],
            vec![(Established, true, false, true, true, 64)],
        ),
        // No handshake seen: RST+ACK with sequence 0 answers a SYN, and comes from the server
        // even when the ports would say otherwise.
        (
            vec![FrameBuilder::ipv4(SERVER, CLIENT).ports(50000, 40000).flags(TCP_RST | TCP_ACK).seq_ack(0, 9).ttl(62)],
            vec![(Refused, true, true, false, true, 0)],
        ),
        // No handshake seen: RST+ACK with sequence 0 answers a SYN; the port says who serves.
        (vec![s2c(1006, TCP_RST | TCP_ACK, 0, 77)], vec![(Refused, true, true, false, true, 0)]),
        (
            vec![c2s(1007, TCP_RST, 5, 0), c2s(1007, TCP_RST, 6, 0)],
            vec![(Established, false, false, false, true, 0), (Established, false, false, false, true, 0)],
        ),
        // The kernel's flow cache reuses a verdict for an identical RST only while the
        // connection table is unchanged. The same RST three times: the first marks the
        // connection reset, so the second is classified again, the third reuses that.
        (
            vec![
                c2s(1010, TCP_SYN, 100, 0),
                s2c(1010, TCP_SYN | TCP_ACK, 900, 101),
                c2s(1010, TCP_ACK, 101, 901),
                s2c(1010, TCP_RST | TCP_ACK, 950, 150),
                s2c(1010, TCP_RST | TCP_ACK, 950, 150),
                s2c(1010, TCP_RST | TCP_ACK, 950, 150),
            ],
            vec![
                (Established, true, true, true, true, 62),
                (Established, true, true, true, false, 62),
                (Established, true, true, true, false, 62),
            ],
        ),
        // A FIN between two identical RSTs changes the verdict.
        (
            vec![
                c2s(1011, TCP_SYN, 300, 0),
                s2c(1011, TCP_SYN | TCP_ACK, 700, 301),
                c2s(1011, TCP_ACK, 301, 701),
                s2c(1011, TCP_RST | TCP_ACK, 750, 350),
                s2c(1011, TCP_RST | TCP_ACK, 750, 350),
                c2s(1011, TCP_FIN | TCP_ACK, 350, 750),
                s2c(1011, TCP_RST | TCP_ACK, 750, 350),
            ],
            vec![
                (Established, true, true, true, true, 62),
                (Established, true, true, true, false, 62),
                (ResetKind::Closing, true, true, true, false, 62),
            ],
        ),
        // An RST of a connection never seen, then its SYN, then the same RST: now observed.
        (
            vec![c2s(1013, TCP_RST, 501, 0), c2s(1013, TCP_SYN, 500, 0), c2s(1013, TCP_RST, 501, 0)],
            vec![(Established, false, false, false, true, 0), (Handshake, false, false, true, true, 64)],
        ),
    ];
    let mut kernel = Harness::load(MAX_FLOWS, Counting::Auto)?;
    let mut host_connections = HostConnections::default();
    let mut host_flows: BTreeMap<FlowKey, u64> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut host_services = std::collections::HashMap::new();
    for (index, (frames, expected)) in conversations.into_iter().enumerate() {
        let mut expected = expected.into_iter();
        for frame in &frames {
            let bytes = frame.build().into_bytes();
            kernel.run(&bytes, 1)?;
            let observation = inspect(&bytes[..], LOOPBACK_IFINDEX);
            let (Observation::Reset(event) | Observation::Control(event)) = observation else {
                continue;
            };
            let key = match track(&mut host_connections, &event) {
                Tracked::Reset(key, change) => {
                    if let Some(change) = change {
                        host_connections.count_service(&mut host_services, &change);
                    }
                    key
                }
                Tracked::Service(change) => {
                    host_connections.count_service(&mut host_services, &change);
                    continue;
                }
                Tracked::Nothing => continue,
            };
            *host_flows.entry(key).or_default() += 1;
            let Some((kind, ack, server, observed, first, peer_ttl)) = expected.next() else {
                failures.push(format!("conversation {index}: an RST more than expected: {key:?}"));
                continue;
            };
            let want = ResetClass::new(kind, ack, server, observed, first);
            if (ResetClass(key.class), key.peer_ttl) != (want, peer_ttl) {
                failures.push(format!(
                    "conversation {index}: got {:?} {:#04x} peer TTL {}, expected {kind:?} {:#04x} peer TTL {peer_ttl}",
                    ResetClass(key.class).kind(),
                    key.class,
                    key.peer_ttl,
                    want.0
                ));
            }
        }
        if let Some(missing) = expected.next() {
            failures.push(format!("conversation {index}: an expected RST never came: {missing:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let sample = kernel.collect()?;
    let kernel_flows: BTreeMap<FlowKey, u64> = sample.flows.iter().copied().collect();
    assert_eq!(kernel_flows, host_flows, "the kernel classified differently from the host");
    let services: Vec<(std::net::IpAddr, u16, u64, u64)> =
        sample.services.iter().map(|(key, value)| (key.ip(), key.port, value.attempts, value.synacks)).collect();
    assert_eq!(
        services,
        vec![(std::net::IpAddr::from(SERVER), 80, 10, 7)],
        "ten attempts and seven SYN+ACKs to one service (a retransmitted SYN counts once)"
    );
    // Every field, the open counts at accepts and turn-aways, the TTL and the down run included,
    // as the host counted them from the same frames (the run's start is on each side's clock).
    let decoded = |services: &[(ServiceKey, ServiceValue)]| -> Vec<_> {
        services.iter().map(|(key, value)| (*key, value.decoded())).collect()
    };
    let host_services: Vec<_> = host_services.into_iter().collect();
    assert_eq!(decoded(&sample.services), decoded(&host_services), "the kernel counted services differently");
    Ok(())
}

in_both_counting_modes!(open_connections_counted:
    open_connections_per_service_are_counted_at_accepts_and_turn_aways,
    open_connections_per_service_are_counted_the_same_with_atomic_counting,
);

/// Five intervals of one service (10.0.0.2:80): the open count goes up at a connection's first
/// SYN+ACK only, down once at its first FIN or RST, never below 0, and lives across intervals;
/// each interval records the open counts at its accepts and turn-aways, its last SYN+ACK's
/// TTL, and whether it ended in a run of turn-aways with nothing open after its last accept
/// (how many). The host's tracker, fed the same frames, must count the same.
fn open_connections_counted(counting: Counting) -> anyhow::Result<()> {
    const CLIENT: [u8; 4] = [10, 0, 0, 1];
    const SERVER: [u8; 4] = [10, 0, 0, 2];
    let c2s = |port: u16, flags: u8, seq: u32, ack: u32| {
        FrameBuilder::ipv4(CLIENT, SERVER).ports(port, 80).flags(flags).seq_ack(seq, ack).ttl(64)
    };
    let s2c = |port: u16, flags: u8, seq: u32, ack: u32, ttl: u8| {
        FrameBuilder::ipv4(SERVER, CLIENT).ports(80, port).flags(flags).seq_ack(seq, ack).ttl(ttl)
    };
    let syn = |port: u16| c2s(port, TCP_SYN, u32::from(port) * 10, 0);
    let synack = |port: u16, ttl: u8| s2c(port, TCP_SYN | TCP_ACK, 7000, u32::from(port) * 10 + 1, ttl);
    let refuse = |port: u16| s2c(port, TCP_RST | TCP_ACK, 0, u32::from(port) * 10 + 1, 62);
    let intervals: Vec<(Vec<FrameBuilder>, ServiceCounts)> = vec![
        (
            vec![
                // A accepted with none open; its retransmitted SYN+ACK does not count again.
                syn(2001),
                synack(2001, 62),
                synack(2001, 62),
                // B accepted with A open.
                syn(2002),
                synack(2002, 61),
                // C refused while A and B are open.
                syn(2003),
                refuse(2003),
                // A closes: its FIN, the answering FIN and a late RST take it off once.
                c2s(2001, TCP_FIN | TCP_ACK, 20011, 7001),
                s2c(2001, TCP_FIN | TCP_ACK, 7001, 20012, 62),
                s2c(2001, TCP_RST, 7002, 0, 62),
                // D refused with only B open.
                syn(2004),
                refuse(2004),
                // B reset mid-stream by the server, twice: one close.
                s2c(2002, TCP_RST | TCP_ACK, 7500, 20100, 62),
                s2c(2002, TCP_RST | TCP_ACK, 7500, 20100, 62),
                // Strays of connections never seen: no change, and nothing below 0.
                c2s(2005, TCP_RST, 5, 0),
                c2s(2006, TCP_FIN | TCP_ACK, 5, 5),
                // F: a SYN+ACK whose SYN went by unseen is accepted (none open), then the
                // server resets it in the handshake: a turn-away with none open besides.
                synack(2007, 63),
                s2c(2007, TCP_RST, 7001, 0, 63),
                // H stays open into the next interval.
                syn(2008),
                synack(2008, 60),
            ],
            ServiceCounts {
                attempts: 5,
                synacks: 4,
                accept_open_max: Some(1),
                turnaway_open_min: Some(0),
                turnaway_open_max: Some(2),
                synack_ttl: Some(60),
                // F's reset, with nothing open, began a run; H's accept after it ended it.
                down_turnaways: None,
            },
        ),
        (
            vec![
                // G accepted with H (from the last interval) open, I refused with both.
                syn(2009),
                synack(2009, 62),
                syn(2010),
                refuse(2010),
                // H closes by the client's RST after its FIN: once.
                c2s(2008, TCP_FIN | TCP_ACK, 20081, 7001),
                c2s(2008, TCP_RST, 20082, 0),
                // G closes; another of its RSTs and a FIN after change nothing.
                c2s(2009, TCP_RST | TCP_ACK, 20095, 7001),
                c2s(2009, TCP_FIN | TCP_ACK, 20095, 7001),
            ],
            ServiceCounts {
                attempts: 2,
                synacks: 1,
                accept_open_max: Some(1),
                turnaway_open_min: Some(2),
                turnaway_open_max: Some(2),
                synack_ttl: Some(62),
                down_turnaways: None,
            },
        ),
        (
            // Nothing left open, nothing below 0: J is accepted with none open.
            vec![syn(2011), synack(2011, 62)],
            ServiceCounts {
                attempts: 1,
                synacks: 1,
                accept_open_max: Some(0),
                synack_ttl: Some(62),
                ..Default::default()
            },
        ),
        (
            // J closes; K and L are refused with nothing open: the service ends the interval in
            // a run of two.
            vec![c2s(2011, TCP_RST | TCP_ACK, 20115, 7001), syn(2012), refuse(2012), syn(2013), refuse(2013)],
            ServiceCounts {
                attempts: 2,
                turnaway_open_min: Some(0),
                turnaway_open_max: Some(0),
                down_turnaways: Some(2),
                ..Default::default()
            },
        ),
        (
            // Back (M accepted and closed), then down again inside the interval: N refused after
            // the accept, a new run of one.
            vec![syn(2014), synack(2014, 62), c2s(2014, TCP_RST | TCP_ACK, 20145, 7001), syn(2015), refuse(2015)],
            ServiceCounts {
                attempts: 2,
                synacks: 1,
                accept_open_max: Some(0),
                turnaway_open_min: Some(0),
                turnaway_open_max: Some(0),
                synack_ttl: Some(62),
                down_turnaways: Some(1),
            },
        ),
    ];
    let mut kernel = Harness::load(MAX_FLOWS, counting)?;
    let mut host_connections = HostConnections::default();
    for (index, (frames, expected)) in intervals.into_iter().enumerate() {
        let mut host_services = std::collections::HashMap::new();
        for frame in &frames {
            let bytes = frame.build().into_bytes();
            kernel.run(&bytes, 1)?;
            let (Observation::Reset(event) | Observation::Control(event)) = inspect(&bytes[..], LOOPBACK_IFINDEX)
            else {
                continue;
            };
            match track(&mut host_connections, &event) {
                Tracked::Reset(_, Some(change)) | Tracked::Service(change) => {
                    host_connections.count_service(&mut host_services, &change)
                }
                Tracked::Reset(_, None) | Tracked::Nothing => {}
            }
        }
        let sample = kernel.collect()?;
        let kernel_services: Vec<_> =
            sample.services.iter().map(|(key, value)| (key.ip(), key.port, value.decoded())).collect();
        assert_eq!(kernel_services, vec![(std::net::IpAddr::from(SERVER), 80, expected)], "interval {index}");
        let host_services: Vec<_> =
            host_services.iter().map(|(key, value)| (key.ip(), key.port, value.decoded())).collect();
        assert_eq!(host_services, kernel_services, "interval {index}: the host's tracker counted differently");
    }
    Ok(())
}

in_both_counting_modes!(rsts_with_a_payload_counted_once:
    rsts_with_a_payload_are_counted_once_and_handed_over,
    rsts_with_a_payload_are_counted_once_and_handed_over_with_atomic_counting,
);

/// An RST with data goes from the counting program to its set's payload program (a tail call),
/// which hands the frame to `PAYLOAD_RING` and counts the RST: each one counts exactly once, on
/// XDP and TC egress alike, and each is handed over or counted as not; a bare RST (Ethernet
/// padding after the IP datagram is not data) never is.
fn rsts_with_a_payload_counted_once(counting: Counting) -> anyhow::Result<()> {
    const REPEAT: u32 = 50;
    let mut kernel = loaded_counting(counting)?;
    let with_data = tcp_v4().ports(443, 40100).flags(TCP_RST | TCP_ACK).payload(b"policy deny");
    let mut bare = tcp_v4().ports(443, 40101).flags(TCP_RST).build().bytes;
    bare.resize(60, 0);
    kernel.run(&with_data.build().bytes, REPEAT)?;
    kernel.run(&bare, REPEAT)?;
    let egress = kernel.tc(kernel.programs().tc_egress)?;
    rstwatch::load::testrun::run_tc(egress, &with_data.build().bytes, REPEAT)?;
    let sample = kernel.collect()?;
    assert_eq!(sample.counters.resets, 3 * u64::from(REPEAT));
    let flows = sample_flows(&sample)?;
    let counted: Vec<u64> = flows.values().copied().collect();
    assert_eq!(counted, vec![u64::from(REPEAT); 3], "{flows:?}");
    assert_eq!(flows.get(&with_data.flow_key(LOOPBACK_IFINDEX)), Some(&u64::from(REPEAT)), "{flows:?}");
    let counters = aya::maps::PerCpuArray::<_, rst_common::wire::PayloadCounters>::try_from(
        kernel.ebpf().map(rst_common::wire::MAP_PAYLOAD_COUNTERS).context("no payload counters")?,
    )?;
    let mut total = rst_common::wire::PayloadCounters::default();
    for per_cpu in counters.get(&0, 0)?.iter() {
        total.add(per_cpu);
    }
    // The ring (no one drains it here) holds ~1 000 records: all of these fit.
    assert_eq!(total, rst_common::wire::PayloadCounters { sent: 2 * u64::from(REPEAT), ring_full: 0, unreadable: 0 });
    Ok(())
}

/// `--capture`: the capture program puts in each record the reason `tcp:tcp_send_reset`
/// recorded for the RST's own tuple within the last second, and none for the reverse tuple, a
/// stale entry, or a tuple never recorded.
#[test]
fn a_captured_rst_carries_the_kernel_reason_recorded_for_its_tuple() -> anyhow::Result<()> {
    rst_lab::require!(rst_lab::Need::Bpf);
    for counting in [Counting::PerCpu, Counting::Atomic] {
        captured_reasons(counting).with_context(|| format!("{counting:?}"))?;
    }
    Ok(())
}

fn captured_reasons(counting: Counting) -> anyhow::Result<()> {
    let capture = CaptureLoad { budget: CAPTURE_DEFAULT_BUDGET, snaplen: CAPTURE_DEFAULT_SNAPLEN, handshakes: false };
    let mut kernel = Harness::load_with(MAX_FLOWS, counting, Some(capture))?;
    let now = rstwatch::sys::clock::monotonic_ns()?;
    let reason = |time_ns: u64, reason: u32| CaptureReason { time_ns, reason, _pad: 0 };
    let v4 = tcp_v4().ports(8080, 41000).flags(TCP_RST | TCP_ACK);
    let v6 = tcp_v6().ports(8443, 41001).flags(TCP_RST);
    let stale = tcp_v4().ports(8081, 41002).flags(TCP_RST);
    kernel.record_kernel_reason(&CaptureReasonKey::of_flow(&v4.flow_key(LOOPBACK_IFINDEX)), &reason(now, 1))?;
    kernel.record_kernel_reason(&CaptureReasonKey::of_flow(&v6.flow_key(LOOPBACK_IFINDEX)), &reason(now, 12))?;
    kernel.record_kernel_reason(
        &CaptureReasonKey::of_flow(&stale.flow_key(LOOPBACK_IFINDEX)),
        &reason(now.saturating_sub(3_000_000_000), 1),
    )?;
    // The v4 RST's reverse direction: the same connection, but the other side's RST.
    let reverse = FrameBuilder::ipv4(rst_craft::SERVER_V4, rst_craft::CLIENT_V4).ports(41000, 8080).flags(TCP_RST);
    let never = tcp_v4().ports(9000, 41003).flags(TCP_RST);
    let mut found = Vec::new();
    for frame in [&v4, &v6, &stale, &reverse, &never] {
        kernel.run(&frame.build().bytes, 1)?;
        let records = kernel.capture_records();
        anyhow::ensure!(records.len() == 1, "one record per RST, got {}", records.len());
        found.push(records[0].kernel_reason());
    }
    assert_eq!(found, [Some(1), Some(12), None, None, None], "v4, v6, stale, reverse, never recorded");
    Ok(())
}

/// `SERVICE_OPEN` holds every service the host saw accept a connection; when more services
/// than it has room for come and go, the longest untouched one makes room, so a new service
/// still has its open connections counted (a plain hash, full, counted none for it).
#[test]
fn a_new_service_is_tracked_after_more_services_than_the_map_holds() -> anyhow::Result<()> {
    rst_lab::require!(rst_lab::Need::Bpf);
    const SERVER: [u8; 4] = [10, 0, 3, 2];
    const CLIENT: [u8; 4] = [10, 0, 3, 1];
    let accept = |server: [u8; 4], sport: u16, client_port: u16| {
        FrameBuilder::ipv4(server, CLIENT).ports(sport, client_port).flags(TCP_SYN | TCP_ACK).seq_ack(7000, 1).ttl(64)
    };
    let mut kernel = Harness::load(MAX_FLOWS, Counting::Auto)?;
    // Accepts by more distinct services than the map holds, each once (its SYN unseen).
    let services = rst_common::wire::DEFAULT_MAX_SERVICES + 512;
    for index in 0..services {
        let server = [10, 1, (index >> 8) as u8, index as u8];
        kernel.run(&accept(server, 443, 40000).build().into_bytes(), 1)?;
    }
    kernel.collect()?;
    // A new service accepts two connections: the second with the first still open.
    kernel.run(&accept(SERVER, 8080, 50001).build().into_bytes(), 1)?;
    kernel.run(&accept(SERVER, 8080, 50002).build().into_bytes(), 1)?;
    let sample = kernel.collect()?;
    let counted: Vec<_> = sample.services.iter().map(|(key, value)| (key.ip(), key.port, value.decoded())).collect();
    let expected = ServiceCounts { synacks: 2, accept_open_max: Some(1), synack_ttl: Some(64), ..Default::default() };
    assert_eq!(counted, vec![(std::net::IpAddr::from(SERVER), 8080, expected)]);
    Ok(())
}
