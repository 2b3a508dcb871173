//! Real captures through the real XDP program, checked against Wireshark's counts.
//!
//! For every capture in the shared corpus (`shared/corpus` beside the repository, or
//! `$RSTWATCH_CORPUS`), every frame goes through `BPF_PROG_TEST_RUN` and through the host's
//! `inspect()`. Three things must agree frame by frame and in total: the kernel, the host, and
//! `NAME.resets.json` (tshark's per-direction RST counts, see the corpus README).
//!
//! What the test does with frames a test run cannot take:
//! - shorter than an Ethernet header (14 bytes): the kernel refuses them (`EINVAL`), and a NIC
//!   never delivers them to XDP; the host must call them malformed, and they are left out of
//!   the kernel's run (and so of its frame count).
//! - longer than a page: they run as multi-buffer frames (the program is `xdp.frags`); one longer
//!   than a test run can hold (about 17 pages) fails the test with the kernel's error rather
//!   than being skipped.
//!
//! Without the corpus the test passes with a visible notice, except under `CI=true`, where a
//! missing corpus is a failure.

use std::{collections::BTreeMap, fs::File, io::BufReader, path::Path};

use anyhow::{bail, Context as _};
use pcap_file::{
    pcap::PcapReader,
    pcapng::{Block, PcapNgReader},
    DataLink,
};
use rst_common::{inspect, FlowKey, Observation};
use rstwatch::{
    load::testrun::{sample_flows, Harness, Verdict, LOOPBACK_IFINDEX, MIN_FRAME},
    load::Counting,
};

mod support;

use support::{captures_in, corpus_dir, expected_resets, Direction};

#[test]
fn corpus_resets_match_wireshark_in_kernel_and_host() -> anyhow::Result<()> {
    rst_lab::require!(rst_lab::Need::Bpf);
    let Some(corpus) = corpus_dir()? else {
        return Ok(());
    };
    let captures = captures_in(&corpus)?;
    assert!(!captures.is_empty(), "no .pcap / .pcapng files in {}", corpus.display());
    let mut failures = Vec::new();
    for capture in &captures {
        let name = capture.file_name().unwrap_or_default().to_string_lossy().into_owned();
        match check_capture(capture) {
            Ok(summary) => eprintln!("{name}: {summary}"),
            Err(error) => failures.push(format!("{name}: {error:#}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} captures disagree:\n{}",
        failures.len(),
        captures.len(),
        failures.join("\n")
    );
    Ok(())
}

fn check_capture(capture: &Path) -> anyhow::Result<String> {
    let frames = read_frames(capture)?;
    let expected = expected_resets(capture)?;
    let mut kernel = Harness::load(rst_common::wire::DEFAULT_MAX_FLOWS, Counting::Auto)?;
    let mut host_resets: BTreeMap<Direction, u64> = BTreeMap::new();
    let mut disagreements = Vec::new();
    let (mut ran, mut too_short) = (0u64, 0u64);
    for (index, frame) in frames.iter().enumerate() {
        let host = inspect(&frame[..], LOOPBACK_IFINDEX);
        if let Observation::Reset(event) = host {
            *host_resets.entry(direction(&event.key)).or_default() += 1;
        }
        if frame.len() < MIN_FRAME {
            too_short += 1;
            if host != Observation::Malformed {
                disagreements.push(format!("frame {}: {} bytes, host says {host:?}", index + 1, frame.len()));
            }
            continue;
        }
        let key = match &host {
            Observation::Reset(event) => Some(&event.key),
            _ => None,
        };
        ran += 1;
        let verdict =
            kernel.classify(frame, key).with_context(|| format!("frame {} ({} bytes)", index + 1, frame.len()))?;
        if verdict != Verdict::expected(&host) {
            disagreements.push(format!(
                "frame {} ({} bytes): host {host:?}, kernel {verdict:?}",
                index + 1,
                frame.len()
            ));
        }
    }
    if !disagreements.is_empty() {
        bail!("kernel and host disagree (frame numbers as in Wireshark):\n  {}", disagreements.join("\n  "));
    }

    let sample = kernel.collect()?;
    let mut kernel_resets: BTreeMap<Direction, u64> = BTreeMap::new();
    for (key, count) in sample_flows(&sample)? {
        if key.ifindex != LOOPBACK_IFINDEX {
            bail!("flow {key:?} recorded on ifindex {}, test runs arrive on the loopback", key.ifindex);
        }
        *kernel_resets.entry(direction(&key)).or_default() += count;
    }
    if sample.counters.frames != ran || sample.counters.overflow != 0 {
        bail!("ran {ran} frames, the kernel counted {:?}", sample.counters);
    }
    if kernel_resets != expected {
        bail!("kernel resets differ from Wireshark's:\n{}", diff(&expected, &kernel_resets));
    }
    if host_resets != expected {
        bail!("host resets differ from Wireshark's:\n{}", diff(&expected, &host_resets));
    }
    Ok(format!(
        "{} frames ({too_short} shorter than an Ethernet header), {} resets in {} directions agree",
        frames.len(),
        sample.counters.resets,
        expected.len()
    ))
}

fn direction(key: &FlowKey) -> Direction {
    (key.src_ip(), key.sport, key.dst_ip(), key.dport)
}

/// Every frame of a pcap or pcapng capture, in order; only Ethernet link types are accepted.
fn read_frames(capture: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let open = || -> anyhow::Result<BufReader<File>> {
        Ok(BufReader::new(File::open(capture).with_context(|| format!("opening {}", capture.display()))?))
    };
    let mut frames = Vec::new();
    if capture.extension().is_some_and(|e| e == "pcapng") {
        let mut reader = PcapNgReader::new(open()?)?;
        while let Some(block) = reader.next_block() {
            let (interface_id, data) = match block? {
                Block::EnhancedPacket(packet) => (packet.interface_id, packet.data.into_owned()),
                Block::SimplePacket(packet) => (0, packet.data.into_owned()),
                Block::Packet(packet) => (u32::from(packet.interface_id), packet.data.into_owned()),
                _ => continue,
            };
            let interface = reader
                .interfaces()
                .get(interface_id as usize)
                .with_context(|| format!("packet on undeclared interface {interface_id}"))?;
            if interface.linktype != DataLink::ETHERNET {
                bail!("link type {:?}, only Ethernet captures are supported", interface.linktype);
            }
            frames.push(data);
        }
    } else {
        let mut reader = PcapReader::new(open()?)?;
        if reader.header().datalink != DataLink::ETHERNET {
            bail!("link type {:?}, only Ethernet captures are supported", reader.header().datalink);
        }
        while let Some(packet) = reader.next_packet() {
            frames.push(packet?.data.into_owned());
        }
    }
    Ok(frames)
}

fn diff(expected: &BTreeMap<Direction, u64>, got: &BTreeMap<Direction, u64>) -> String {
    let mut lines = Vec::new();
    for direction in expected.keys().chain(got.keys().filter(|key| !expected.contains_key(*key))) {
        let (want, have) = (expected.get(direction).copied().unwrap_or(0), got.get(direction).copied().unwrap_or(0));
        if want != have {
            let (src, sport, dst, dport) = direction;
            lines.push(format!("  {src}:{sport} -> {dst}:{dport}: expected {want}, got {have}"));
        }
    }
    lines.join("\n")
}
