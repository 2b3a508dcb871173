//! The real XDP program under `BPF_PROG_TEST_RUN`, against the case table the host tests use.
//!
//! Needs root (CAP_BPF + CAP_PERFMON, or CAP_SYS_ADMIN) and a kernel with multi-buffer XDP
//! test runs (5.18+).

mod common;

use std::collections::BTreeMap;

use common::{expected_sample, run_xdp, sample_flows, Kernel, Verdict, LOOPBACK_IFINDEX};
use rst_common::{
    craft::{cases, tcp_v4, tcp_v6, VlanKind},
    parse::{TCP_ACK, TCP_RST},
    wire::FLOW_CACHE_SLOTS,
    FlowKey, Observation,
};

const MAX_FLOWS: u32 = 1024;

#[test]
fn every_case_is_classified_and_counted_like_the_host_expects() -> anyhow::Result<()> {
    let mut kernel = Kernel::load(MAX_FLOWS)?;
    let cases = cases(LOOPBACK_IFINDEX);
    let mut failures = Vec::new();
    for case in &cases {
        let expected_key = match &case.expected {
            Observation::Reset(key) => Some(key),
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

    let sample = kernel.collect()?;
    let (counters, flows) = expected_sample(cases.iter().map(|case| case.expected));
    assert_eq!(sample.counters, counters);
    assert_eq!(sample_flows(&sample)?, flows);
    Ok(())
}

#[test]
fn repeats_count_every_run_and_the_next_epoch_starts_empty() -> anyhow::Result<()> {
    const REPEAT: u32 = 1000;
    let mut kernel = Kernel::load(MAX_FLOWS)?;
    let reset = tcp_v6().vlan(VlanKind::Dot1Q, 3).flags(TCP_RST | TCP_ACK);
    kernel.run(&reset.build().bytes, REPEAT)?;
    kernel.run(&tcp_v4().build().bytes, REPEAT)?;
    let first = kernel.collect()?;
    assert_eq!(first.counters.frames, 2 * u64::from(REPEAT));
    assert_eq!(first.counters.tcp, 2 * u64::from(REPEAT));
    assert_eq!(first.counters.resets, u64::from(REPEAT));
    assert_eq!(first.flows, vec![(reset.flow_key(LOOPBACK_IFINDEX), u64::from(REPEAT))]);

    // Runs after the flip land in the other epoch: the next sample has them and only them.
    kernel.run(&reset.build().bytes, 1)?;
    let second = kernel.collect()?;
    assert_eq!((second.counters.frames, second.counters.resets), (1, 1));
    assert_eq!(second.flows, vec![(reset.flow_key(LOOPBACK_IFINDEX), 1)]);
    let third = kernel.collect()?;
    assert_eq!(third.counters, Default::default());
    assert!(third.flows.is_empty());
    Ok(())
}

/// Frames longer than what fits beside the headroom in one page (~3.5 KiB) reach a `xdp.frags`
/// program as multi-buffer packets; the headers are in the first buffer, so they count.
#[test]
fn jumbo_and_multi_buffer_frames_count_and_pass() -> anyhow::Result<()> {
    let mut kernel = Kernel::load(MAX_FLOWS)?;
    let mut expected = Vec::new();
    for (index, len) in [1514usize, 4096, 9000, 9018, 65535].into_iter().enumerate() {
        for (flags, verdict) in [(TCP_RST, Verdict::Reset), (TCP_ACK, Verdict::Segment)] {
            let builder = tcp_v4().vlan(VlanKind::Dot1Q, 1).ports(7000 + index as u16, 80).flags(flags);
            let headers = builder.build().bytes.len();
            let frame = builder.clone().payload(&vec![0x5a; len - headers]).build().bytes;
            assert_eq!(frame.len(), len);
            let key = builder.flow_key(LOOPBACK_IFINDEX);
            let observation = if verdict == Verdict::Reset { Observation::Reset(key) } else { Observation::Segment };
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
    let other = other_interface();
    let mut kernel = Kernel::load(MAX_FLOWS)?;
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

/// A table of two entries and a scan of many more flows than it and the per-CPU cache hold:
/// the resets that find no room are counted as overflow and attributed to their sender in the
/// overflow-source table, never lost: `sum(flows) + overflow == resets`.
#[test]
fn a_full_flow_table_counts_overflow() -> anyhow::Result<()> {
    const SCANNED: u16 = 3 * FLOW_CACHE_SLOTS as u16;
    let mut kernel = Kernel::load(2)?;
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
    assert!(sample.counters.overflow > 0, "a scan of {SCANNED} flows must overflow a 2-entry table");
    let in_flows: u64 = sample.flows.iter().map(|(_, count)| count).sum();
    assert_eq!(in_flows + sample.counters.overflow, resets);
    // Every flow that made it is one of the scanned flows, with at most its two resets: the
    // test thread may move between CPUs between runs, so a flow's two resets can sit in two
    // CPUs' caches and be written back separately, one finding room and the other not.
    let scanned: std::collections::BTreeSet<FlowKey> = flows.iter().map(|flow| flow.flow_key(LOOPBACK_IFINDEX)).collect();
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

/// Two threads hammer the same two flows with repeated test runs, so entries are created and
/// incremented from both CPUs at once: the per-flow sums and the totals must be exact.
#[test]
fn concurrent_test_runs_lose_no_counts() -> anyhow::Result<()> {
    const THREADS: usize = 2;
    const ROUNDS: u32 = 50;
    const REPEAT: u32 = 2000;
    let mut kernel = Kernel::load(MAX_FLOWS)?;
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
