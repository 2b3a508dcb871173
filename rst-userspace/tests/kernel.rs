//! The real XDP program under `BPF_PROG_TEST_RUN`, against the case table the host tests use.
//!
//! Needs root (CAP_BPF + CAP_PERFMON, or CAP_SYS_ADMIN) and a kernel with multi-buffer XDP
//! test runs (5.18+).

#![allow(clippy::expect_used)] // test helpers: a panic is the failure report

use std::collections::BTreeMap;

use anyhow::Context as _;

use rst_common::{
    inspect,
    parse::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    track,
    wire::{
        CaptureReason, CaptureReasonKey, ResetClass, ResetKind, ServiceCounts, ServiceKey, ServiceValue,
        CAPTURE_DEFAULT_BUDGET, CAPTURE_DEFAULT_SNAPLEN, FLOW_CACHE_SLOTS,
    },
    FlowKey, Observation, Tracked,
};
use rst_craft::{cases, tcp_v4, tcp_v6, FrameBuilder, VlanKind};
use rstwatch::{
    collect::connections::HostConnections,
    load::testrun::{expected_sample, run_xdp, sample_flows, Harness, Verdict, LOOPBACK_IFINDEX},
    load::{CaptureLoad, Counting},
    sys::affinity::{pin_current_thread, usable_cpus},
};

const MAX_FLOWS: u32 = 1024;

#[test]
fn every_case_is_classified_and_counted_like_the_host_expects() -> anyhow::Result<()> {
    rst_lab::require!(rst_lab::Need::Bpf);
    every_case_counted_like_the_host_expects(Counting::PerCpu)
}

/// Counting for kernels where programs on one CPU may interleave (PREEMPT_RT): atomic adds,
/// every RST classified and added to the shared table, the per-CPU cache and logs unused. (The
/// interleaving itself cannot be produced here: it takes a preemptible softirq.)
#[test]
fn atomic_counting_classifies_and_counts_every_case_the_same() -> anyhow::Result<()> {
    rst_lab::require!(rst_lab::Need::Bpf);
    every_case_counted_like_the_host_expects(Counting::Atomic)
}

/// The programs loaded counting as asked (per CPU or atomic), and saying so.
fn loaded_counting(counting: Counting) -> anyhow::Result<Harness> {
    let kernel = Harness::load(MAX_FLOWS, counting)?;
    assert_eq!(kernel.counting_mode(), if counting == Counting::Atomic { "atomic" } else { "per-cpu" });
    Ok(kernel)
}

fn every_case_counted_like_the_host_expects(counting: Counting) -> anyhow::Result<()> {
    let mut kernel = loaded_counting(counting)?;
    let cases = cases(LOOPBACK_IFINDEX);
    let mut failures = Vec::new();
    for case in &cases {
        let expected_key = match &case.expected {
            Observation::Reset(event) => Some(&event.key),
            _ => None,
        };
        match kernel.classify(&case.frame, expected_key) {
            Ok(verdict) if verdict == Verdict::expected(&case.expected) => {}
            Ok(verdict) => {
                failures.push(format!("{}: expected {:?}, kernel counted {verdict:?}", case.name, case.expected))
            }
            Err(error) => failures.push(format!("{}: {error:#}", case.name)),
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
    let (cached, (logged, _)) = (kernel.cached_resets()?, kernel.log_and_table_use(0)?);
    match counting {
        Counting::Atomic => {
            assert_eq!((cached, logged), (0, 0), "atomic counting must not use the per-CPU cache or log")
        }
        _ => assert!(cached > 0, "per-CPU counting keeps the last resets in the cache"),
    }

    let sample = kernel.collect()?;
    let (counters, flows) = expected_sample(cases.iter().map(|case| case.expected));
    assert_eq!(sample.counters, counters);
    assert_eq!(sample_flows(&sample)?, flows);
    Ok(())
}

#[test]
fn repeats_count_every_run_and_the_next_epoch_starts_empty() -> anyhow::Result<()> {
    rst_lab::require!(rst_lab::Need::Bpf);
    const REPEAT: u32 = 1000;
    let mut kernel = Harness::load(MAX_FLOWS, Counting::Auto)?;
    let reset = tcp_v6().vlan(VlanKind::Dot1Q, 3).flags(TCP_RST | TCP_ACK);
    kernel.run(&reset.build().bytes, REPEAT)?;
    kernel.run(&tcp_v4().build().bytes, REPEAT)?;
    let first = kernel.collect()?;
    assert_eq!(first.counters.frames, 2 * u64::from(REPEAT));
    assert_eq!(first.counters.tcp, 2 * u64::from(REPEAT));
    assert_eq!(first.counters.resets, u64::from(REPEAT));
    let key = reset.flow_key(LOOPBACK_IFINDEX);
    assert_eq!(sample_flows(&first)?, BTreeMap::from([(key, u64::from(REPEAT))]));
    // No handshake seen: the port says who serves (49152 → 443 is the client's), and a connection
    // rstwatch never saw open is not remembered, so every RST counts as its first.
    let classes: Vec<(u8, u64)> = first.flows.iter().map(|(key, count)| (key.class, *count)).collect();
    let unknown_connection = ResetClass::new(ResetKind::Established, true, false, false, true).0;
    assert_eq!(classes, vec![(unknown_connection, u64::from(REPEAT))]);

    // Runs after the flip land in the other epoch: the next sample has them and only them.
    kernel.run(&reset.build().bytes, 1)?;
    let second = kernel.collect()?;
    assert_eq!((second.counters.frames, second.counters.resets), (1, 1));
    assert_eq!(sample_flows(&second)?, BTreeMap::from([(key, 1)]));
    let third = kernel.collect()?;
    assert_eq!(third.counters, Default::default());
    assert!(third.flows.is_empty());
    Ok(())
}

/// Frames longer than what fits beside the headroom in one page (~3.5 KiB) reach a `xdp.frags`
/// program as multi-buffer packets; the headers are in the first buffer, so they count.
#[test]
fn jumbo_and_multi_buffer_frames_count_and_pass() -> anyhow::Result<()> {
    rst_lab::require!(rst_lab::Need::Bpf);
    let mut kernel = Harness::load(MAX_FLOWS, Counting::Auto)?;
    let mut expected = Vec::new();
    for (index, len) in [1514usize, 4096, 9000, 9018, 65535].into_iter().enumerate() {
        for (flags, verdict) in [(TCP_RST, Verdict::Reset), (TCP_ACK, Verdict::Segment)] {
            let builder = tcp_v4().vlan(VlanKind::Dot1Q, 1).ports(7000 + index as u16, 80).flags(flags);
            let headers = builder.build().bytes.len();
            let frame = builder.clone().payload(&vec![0x5a; len - headers]).build().bytes;
            assert_eq!(frame.len(), len);
            let key = builder.flow_key(LOOPBACK_IFINDEX);
            let observation = if verdict == Verdict::Reset {
                Observation::Reset(builder.event(LOOPBACK_IFINDEX))
            } else {
                Observation::Segment
            };
            assert_eq!(kernel.classify(&frame, Some(&key))?, verdict, "{len}-byte frame with flags {flags:#04x}");
            expected.push(observation);
        }
    }
    let sample = kernel.collect()?;
    let (counters, flows) = expected_sample(expected);
    assert_eq!(sample.counters, counters);
    assert_eq!(sample_flows(&sample)?, flows);
    Ok(())
}

/// The ingress interface comes from the context; a test run without one reports the loopback.
#[test]
fn ingress_ifindex_is_part_of_the_key() -> anyhow::Result<()> {
    rst_lab::require!(rst_lab::Need::Bpf);
    let other = other_interface();
    let mut kernel = Harness::load(MAX_FLOWS, Counting::Auto)?;
    let reset = tcp_v4().flags(TCP_RST);
    let frame = reset.build().bytes;
    kernel.run(&frame, 1)?;
    kernel.run_on(&frame, LOOPBACK_IFINDEX)?;
    let mut expected = BTreeMap::from([(reset.flow_key(LOOPBACK_IFINDEX), 2)]);
    if let Some((name, ifindex)) = &other {
        kernel.run_on(&frame, *ifindex)?;
        expected.insert(reset.flow_key(*ifindex), 1);
        eprintln!("also ran on {name} (ifindex {ifindex})");
    } else {
        eprintln!("no interface besides lo in this network namespace: checked the loopback only");
    }
    let sample = kernel.collect()?;
    assert_eq!(sample_flows(&sample)?, expected);
    Ok(())
}

/// The smallest table (1 024 slots) and a scan of many more flows than it and the per-CPU cache hold:
/// the resets that find no room are counted as overflow and attributed to their sender in the
/// overflow-source table, never lost: `sum(flows) + overflow == resets`.
#[test]
fn a_full_flow_table_counts_overflow() -> anyhow::Result<()> {
    rst_lab::require!(rst_lab::Need::Bpf);
    const SCANNED: u16 = 3 * FLOW_CACHE_SLOTS as u16;
    let mut kernel = Harness::load(2, Counting::Auto)?;
    let flows: Vec<_> = (0..SCANNED).map(|i| tcp_v4().ports(10_000 + i, 443).flags(TCP_RST)).collect();
    // Single runs: a test run with repeat > 1 swaps the XDP dispatcher, an RCU grace period each.
    for flow in &flows {
        let frame = flow.build().bytes;
        kernel.run(&frame, 1)?;
        kernel.run(&frame, 1)?;
    }
    let sample = kernel.collect()?;
    let resets = 2 * u64::from(SCANNED);
    assert_eq!(sample.counters.resets, resets);
    assert!(sample.counters.overflow > 0, "a scan of {SCANNED} flows must overflow the smallest table (1024 slots)");
    let in_flows: u64 = sample.flows.iter().map(|(_, count)| count).sum();
    assert_eq!(in_flows + sample.counters.overflow, resets);
    // Every flow that made it is one of the scanned flows, with at most its two resets: the
    // test thread may move between CPUs between runs, so a flow's two resets can sit in two
    // CPUs' caches and be written back separately, one finding room and the other not.
    let scanned: std::collections::BTreeSet<FlowKey> =
        flows.iter().map(|flow| flow.flow_key(LOOPBACK_IFINDEX)).collect();
    for (key, count) in sample_flows(&sample)? {
        assert!(scanned.contains(&key) && (1..=2).contains(&count), "unexpected flow {key:?} with {count}");
    }
    // The overflowed resets all belong to the one sender, and its table had room for them.
    assert_eq!(sample.counters.source_overflow, 0);
    assert_eq!(sample.overflow_sources.len(), 1);
    assert_eq!(sample.overflow_sources[0].1, sample.counters.overflow);
    assert_eq!(sample.overflow_sources[0].0.src_ip(), flows[0].flow_key(LOOPBACK_IFINDEX).src_ip());
    Ok(())
}

/// A scan longer than a CPU's eviction log: the first flows the cache evicts are logged, the
/// rest go to the flow table, and every flow still comes out once with its exact count — in
/// both epochs (each its own run of the log), on the highest usable CPU (so a run that is not
/// the log's first), and nothing of an epoch is counted again when it comes round.
#[test]
fn evictions_beyond_the_log_go_to_the_table_and_every_count_is_exact() -> anyhow::Result<()> {
    rst_lab::require!(rst_lab::Need::Bpf);
    const MAX: u32 = 8192;
    let cpus = rstwatch::collect::flow_table::possible_cpu_ids()?.len();
    let log_slots = rst_common::table::eviction_log_slots(MAX, cpus as u32);
    let scanned = FLOW_CACHE_SLOTS + log_slots + 1000;
    let mut kernel = Harness::load(MAX, Counting::Auto)?;
    let cpu = *usable_cpus().last().context("no usable CPU")?;
    pin_current_thread(cpu).with_context(|| format!("pinning to CPU {cpu}"))?;
    for epoch in 0..2u32 {
        let flows: Vec<_> =
            (0..scanned).map(|i| tcp_v4().ports(10_000 + i as u16, 443 + epoch as u16).flags(TCP_RST)).collect();
        for flow in &flows {
            let frame = flow.build().bytes;
            kernel.run(&frame, 1)?;
            kernel.run(&frame, 1)?;
        }
        let (logged, in_table) = kernel.log_and_table_use(epoch)?;
        assert_eq!(logged, u64::from(log_slots), "epoch {epoch}: the log fills first");
        assert!(in_table >= 1000, "epoch {epoch}: then the table takes the rest: {in_table} slots used");
        let sample = kernel.collect()?;
        assert_eq!(sample.counters.resets, 2 * u64::from(scanned));
        assert_eq!(sample.counters.overflow, 0);
        let counted = sample_flows(&sample)?;
        let wrong =
            flows.iter().map(|flow| flow.flow_key(LOOPBACK_IFINDEX)).filter(|key| counted.get(key) != Some(&2)).count();
        assert_eq!((wrong, counted.len()), (0, scanned as usize), "epoch {epoch}: flows not counted exactly twice");
    }
    // Epoch 0 again, with nothing run: its log was emptied when it was read.
    let again = kernel.collect()?;
    assert_eq!((again.counters.resets, again.flows.len()), (0, 0));
    Ok(())
}

/// Two threads hammer the same two flows with repeated test runs, so entries are created and
/// incremented from both CPUs at once: the per-flow sums and the totals must be exact.
#[test]
fn concurrent_test_runs_lose_no_counts() -> anyhow::Result<()> {
    rst_lab::require!(rst_lab::Need::Bpf);
    concurrent_test_runs_count_exactly(Counting::PerCpu)
}

/// The same with atomic counting, where both CPUs add every RST to the shared table entries.
#[test]
fn concurrent_test_runs_lose_no_counts_with_atomic_counting() -> anyhow::Result<()> {
    rst_lab::require!(rst_lab::Need::Bpf);
    concurrent_test_runs_count_exactly(Counting::Atomic)
}

fn concurrent_test_runs_count_exactly(counting: Counting) -> anyhow::Result<()> {
    const THREADS: usize = 2;
    const ROUNDS: u32 = 50;
    const REPEAT: u32 = 2000;
    let mut kernel = loaded_counting(counting)?;
    let flows = [tcp_v4().ports(1111, 80).flags(TCP_RST), tcp_v6().ports(2222, 443).flags(TCP_RST | TCP_ACK)];
    let frames: Vec<Vec<u8>> = flows.iter().map(|flow| flow.build().bytes).collect();
    let program = kernel.program()?;
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|thread| {
                let frames = &frames;
                scope.spawn(move || -> anyhow::Result<()> {
                    for round in 0..ROUNDS {
                        // Alternate the order so both threads race to create both entries.
                        for frame in
                            [&frames[(thread + round as usize) % 2], &frames[(thread + round as usize + 1) % 2]]
                        {
                            run_xdp(program, frame, None, REPEAT)?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|worker| worker.join().expect("test-run thread panicked"))
    })?;
    let per_flow = THREADS as u64 * u64::from(ROUNDS) * u64::from(REPEAT);
    let sample = kernel.collect()?;
    let expected: BTreeMap<FlowKey, u64> =
        flows.iter().map(|flow| (flow.flow_key(LOOPBACK_IFINDEX), per_flow)).collect();
    assert_eq!(sample_flows(&sample)?, expected);
    assert_eq!(sample.counters.resets, 2 * per_flow);
    assert_eq!(sample.counters.frames, 2 * per_flow);
    assert_eq!(sample.counters.tcp, 2 * per_flow);
    assert_eq!(sample.counters.overflow, 0);
    Ok(())
}

/// Two threads on two CPUs run the same few thousand new flows in the same order, one RST per
/// run, released together by a barrier every round, so both CPUs evict and store the same
/// flows into a fresh epoch's table at the same moments: claims race, a flow may land in two
/// slots (the kernel then reports a race), and every flow's count must still be exact and
/// reported once, in every round.
#[test]
fn two_cpus_storing_the_same_flows_at_once_keep_every_count() -> anyhow::Result<()> {
    rst_lab::require!(rst_lab::Need::Bpf);
    const THREADS: usize = 2;
    const ROUNDS: u16 = 8;
    const FLOWS: u16 = 3 * FLOW_CACHE_SLOTS as u16;
    let cpus = usable_cpus();
    if cpus.len() < THREADS {
        eprintln!("fewer than {THREADS} usable CPUs ({cpus:?}): nothing runs at once, skipped");
        return Ok(());
    }
    let mut kernel = Harness::load(u32::from(FLOWS), Counting::Auto)?;
    let mut races = 0;
    let mut rounds = 0;
    // At least ROUNDS, and on until some round raced (how often the two CPUs truly overlap
    // depends on the machine's load; most runs here race within the first rounds).
    while rounds < ROUNDS || (races == 0 && rounds < 5 * ROUNDS) {
        let round = rounds;
        rounds += 1;
        // New flows every round: each is a first store in its epoch.
        let flows: Vec<_> = (0..FLOWS).map(|i| tcp_v4().ports(20_000 + i, 8000 + round).flags(TCP_RST)).collect();
        let frames: Vec<Vec<u8>> = flows.iter().map(|flow| flow.build().bytes).collect();
        let program = kernel.program()?;
        let start = std::sync::Barrier::new(THREADS);
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..THREADS)
                .map(|thread| {
                    let (frames, start, cpu) = (&frames, &start, cpus[thread]);
                    scope.spawn(move || -> anyhow::Result<()> {
                        pin_current_thread(cpu).with_context(|| format!("pinning to CPU {cpu}"))?;
                        start.wait();
                        for frame in frames {
                            run_xdp(program, frame, None, 1)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|worker| worker.join().expect("test-run thread panicked"))
        })?;
        let sample = kernel.collect()?;
        races += sample.table_races;
        let per_flow = THREADS as u64;
        let counted = sample_flows(&sample)?;
        let wrong: Vec<String> = flows
            .iter()
            .map(|flow| flow.flow_key(LOOPBACK_IFINDEX))
            .filter(|key| counted.get(key) != Some(&per_flow))
            .map(|key| format!("port {}: {:?} of {per_flow}", key.sport, counted.get(&key)))
            .collect();
        assert!(
            wrong.is_empty() && counted.len() == flows.len(),
            "round {round}: {} flows wrong, {} keys for {} flows ({} races), first: {:?}",
            wrong.len(),
            counted.len(),
            flows.len(),
            sample.table_races,
            &wrong[..wrong.len().min(5)]
        );
        assert_eq!(sample.counters.resets, per_flow * u64::from(FLOWS));
        assert_eq!(sample.counters.overflow, 0);
    }
    eprintln!("{races} flow-table races over {rounds} rounds");
    if races == 0 {
        eprintln!("warning: no round raced; only the race-free path was checked");
    }
    Ok(())
}

/// Some interface other than the loopback, for a context with a different ingress ifindex.
fn other_interface() -> Option<(String, u32)> {
    let mut interfaces: Vec<(String, u32)> = std::fs::read_dir("/sys/class/net")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let ifindex = std::fs::read_to_string(entry.path().join("ifindex")).ok()?.trim().parse().ok()?;
            Some((entry.file_name().to_string_lossy().into_owned(), ifindex))
        })
        .filter(|(_, ifindex)| *ifindex != LOOPBACK_IFINDEX)
        .collect();
    interfaces.sort_by_key(|(_, ifindex)| *ifindex);
    interfaces.into_iter().next()
}

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

#[test]
fn open_connections_per_service_are_counted_at_accepts_and_turn_aways() -> anyhow::Result<()> {
    rst_lab::require!(rst_lab::Need::Bpf);
    open_connections_counted(Counting::PerCpu)
}

#[test]
fn open_connections_per_service_are_counted_the_same_with_atomic_counting() -> anyhow::Result<()> {
    rst_lab::require!(rst_lab::Need::Bpf);
    open_connections_counted(Counting::Atomic)
}

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

#[test]
fn rsts_with_a_payload_are_counted_once_and_handed_over() -> anyhow::Result<()> {
    rst_lab::require!(rst_lab::Need::Bpf);
    rsts_with_a_payload_counted_once(Counting::PerCpu)
}

#[test]
fn rsts_with_a_payload_are_counted_once_and_handed_over_with_atomic_counting() -> anyhow::Result<()> {
    rst_lab::require!(rst_lab::Need::Bpf);
    rsts_with_a_payload_counted_once(Counting::Atomic)
}

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
