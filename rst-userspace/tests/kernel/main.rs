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

/// Two tests of `$body`, where BPF test runs are allowed: `$per_cpu` counting per CPU, `$atomic`
/// with the atomic adds a PREEMPT_RT kernel gets.
macro_rules! in_both_counting_modes {
    ($body:ident: $(#[$per_cpu_doc:meta])* $per_cpu:ident, $(#[$atomic_doc:meta])* $atomic:ident $(,)?) => {
        $(#[$per_cpu_doc])*
        #[test]
        fn $per_cpu() -> anyhow::Result<()> {
            rst_lab::require!(rst_lab::Need::Bpf);
            $body(Counting::PerCpu)
        }

        $(#[$atomic_doc])*
        #[test]
        fn $atomic() -> anyhow::Result<()> {
            rst_lab::require!(rst_lab::Need::Bpf);
            $body(Counting::Atomic)
        }
    };
}

/// Classification, services, payloads and captured reasons in the kernel.
mod diagnosis;
/// `--idle-gaps`' programs.
mod pauses;
/// The verifier's cost of each program set.
mod verifier;

const MAX_FLOWS: u32 = 1024;

in_both_counting_modes!(every_case_counted_like_the_host_expects:
    every_case_is_classified_and_counted_like_the_host_expects,
    /// Counting for kernels where programs on one CPU may interleave (PREEMPT_RT): atomic adds,
    /// every RST classified and added to the shared table, the per-CPU cache and logs unused. (The
    /// interleaving itself cannot be produced here: it takes a preemptible softirq.)
    atomic_counting_classifies_and_counts_every_case_the_same,
);

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

in_both_counting_modes!(concurrent_test_runs_count_exactly:
    /// Two threads hammer the same two flows with repeated test runs, so entries are created and
    /// incremented from both CPUs at once: the per-flow sums and the totals must be exact.
    concurrent_test_runs_lose_no_counts,
    /// The same with atomic counting, where both CPUs add every RST to the shared table entries.
    concurrent_test_runs_lose_no_counts_with_atomic_counting,
);

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

/// Resets inside tunnels count under the tunnel's number, the same for both directions of
/// a tunnel and distinct per VNI, and the collector reads each number's tunnel back, as the
/// host's walk makes it.
#[test]
fn tunnelled_resets_count_under_the_tunnels_number() -> anyhow::Result<()> {
    use rst_common::{
        parse::TunnelTable,
        wire::{tunnel_number, DIRECTION_RX},
    };
    use rst_craft::tunnel::{Encapsulation, Outer, Tunnel};

    rst_lab::require!(rst_lab::Need::Bpf);
    let mut kernel = Harness::load(MAX_FLOWS, Counting::Auto)?;
    let (a, b) = ([192, 0, 2, 1], [192, 0, 2, 2]);
    let (v6a, v6b) = (
        [0xfd, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        [0xfd, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
    );
    let tunnels = [
        Tunnel::vxlan(Outer::V4(a, b), 42),
        Tunnel::vxlan(Outer::V4(b, a), 42),
        Tunnel::vxlan(Outer::V4(a, b), 43),
        Tunnel::new(Outer::V6(v6a, v6b), Encapsulation::Geneve { vni: 7, port: 6081, options: 8, ethernet: true }),
        Tunnel::new(
            Outer::V4(a, b),
            Encapsulation::Gre { key: Some(9), checksum: true, sequence: None, ethernet: false },
        ),
        Tunnel::new(Outer::V6(v6a, v6b), Encapsulation::Ip).encap_limit(4),
    ];
    let mut host = TunnelTable::<8>::default();
    let mut expected = BTreeMap::new();
    for (i, tunnel) in tunnels.iter().enumerate() {
        let inner = tcp_v4().ports(443, 41000 + i as u16).flags(TCP_RST | TCP_ACK);
        let frame = tunnel.wrap(&inner.build());
        kernel.run(&frame, 3)?;
        let Observation::Reset(event) =
            rst_common::inspect_tunnels(&frame[..], DIRECTION_RX, || LOOPBACK_IFINDEX, &mut host)
        else {
            panic!("{tunnel:?}: not a reset on the host");
        };
        *expected.entry(event.key).or_insert(0) += 3;
    }
    let sample = kernel.collect()?;
    assert_eq!(sample.counters.resets, 3 * tunnels.len() as u64);
    // The host numbered them in the order met, as the kernel did: the same keys.
    assert_eq!(sample_flows(&sample)?, expected);
    let mut read: Vec<(u32, rst_common::wire::TunnelKey)> = sample.tunnels.clone();
    read.sort_by_key(|(number, _)| *number);
    let host_tunnels: Vec<(u32, rst_common::wire::TunnelKey)> =
        host.keys[..host.len].iter().enumerate().map(|(n, key)| (n as u32, *key)).collect();
    assert_eq!(read, host_tunnels);
    // Both directions of the first tunnel are one tunnel; another VNI another.
    let numbers: Vec<Option<u32>> = expected.keys().map(|key| tunnel_number(key.ifindex)).collect();
    assert_eq!(host.len, tunnels.len() - 1, "{numbers:?}");
    Ok(())
}

/// A tunnel inside a tunnel, and a tunnel cut short inside its headers, are counted malformed
/// by the kernel, never as the reset inside.
#[test]
fn nested_and_truncated_tunnels_are_malformed_in_the_kernel() -> anyhow::Result<()> {
    use rst_craft::tunnel::{Encapsulation, Outer, Tunnel};

    rst_lab::require!(rst_lab::Need::Bpf);
    let mut kernel = Harness::load(MAX_FLOWS, Counting::Auto)?;
    let (a, b) = ([192, 0, 2, 1], [192, 0, 2, 2]);
    let inner = tcp_v4().ports(443, 42000).flags(TCP_RST).build();
    let vxlan = Tunnel::vxlan(Outer::V4(a, b), 42);
    let gre = Tunnel::new(
        Outer::V4(b, a),
        Encapsulation::Gre { key: Some(1), checksum: false, sequence: None, ethernet: false },
    );
    let once = vxlan.wrap(&inner);
    let twice = [gre.wrap_bytes(&once, Some(vxlan.outer_l3())), vxlan.wrap_bytes(&once, None)];
    // Cut inside the VXLAN header (after the UDP header), and inside the inner TCP header.
    let udp_end = vxlan.outer_l3() + 20 + 8;
    let cuts = [&once[..udp_end + 4], &once[..once.len() - inner.bytes.len() + inner.tcp_header_end() - 1]];
    for frame in twice.iter().map(Vec::as_slice).chain(cuts) {
        kernel.run(frame, 1)?;
    }
    let sample = kernel.collect()?;
    assert_eq!(sample.counters.malformed, 4, "{:?}", sample.counters);
    assert_eq!(sample.counters.resets, 0);
    assert!(sample.flows.is_empty());
    Ok(())
}

/// `--vxlan-port` / `--geneve-port` reach the programs: VXLAN and Geneve on those ports are
/// walked into, on other ports they stay UDP; more than four of a kind is refused at load.
#[test]
fn extra_vxlan_and_geneve_ports_are_walked_into() -> anyhow::Result<()> {
    use rst_craft::tunnel::{Encapsulation, Outer, Tunnel};
    use rstwatch::cli::TunnelPorts;

    rst_lab::require!(rst_lab::Need::Bpf);
    let ports = TunnelPorts { vxlan: vec![4790], geneve: vec![7000, 7001] };
    let mut kernel = Harness::load_with_ports(MAX_FLOWS, Counting::Auto, None, &ports)?;
    let outer = Outer::V4([192, 0, 2, 1], [192, 0, 2, 2]);
    let inner = tcp_v4().ports(443, 43000).flags(TCP_RST).build();
    let geneve = |port| Encapsulation::Geneve { vni: 9, port, options: 0, ethernet: true };
    let counted = [
        Tunnel::new(outer, Encapsulation::Vxlan { vni: 1, port: 4790 }),
        Tunnel::new(outer, geneve(7001)),
        Tunnel::new(outer, Encapsulation::Vxlan { vni: 1, port: 4789 }),
    ];
    let not_tunnels =
        [Tunnel::new(outer, Encapsulation::Vxlan { vni: 1, port: 4791 }), Tunnel::new(outer, geneve(7002))];
    for tunnel in counted.iter().chain(&not_tunnels) {
        kernel.run(&tunnel.wrap(&inner), 1)?;
    }
    let sample = kernel.collect()?;
    assert_eq!(sample.counters.resets, counted.len() as u64, "{:?}", sample.counters);
    // Not TCP: neither a TCP segment nor malformed.
    let frames = (counted.len() + not_tunnels.len()) as u64;
    assert_eq!((sample.counters.frames, sample.counters.tcp), (frames, counted.len() as u64), "{:?}", sample.counters);
    assert_eq!(sample.counters.malformed, 0);
    let five = TunnelPorts { vxlan: vec![1, 2, 3, 4, 5], geneve: Vec::new() };
    assert!(Harness::load_with_ports(MAX_FLOWS, Counting::Auto, None, &five).is_err());
    Ok(())
}
