//! Differential fuzzing of rstwatch's header walk: the real XDP object under
//! `BPF_PROG_TEST_RUN` against a reference parser built on etherparse's header types.
//!
//! ```sh
//! cargo run --release -p rst-userspace --example fuzz -- --frames 10000000 [--seed N] [--json]
//! ```
//! (`cargo xtask fuzz` runs exactly that.) Needs root (CAP_BPF + CAP_PERFMON).
//!
//! Frames come from four generators: random bytes, frames built at random with rst-common's
//! frame builder, and mutations (flipped flags, cut lengths, bogus IHL / data offset /
//! extension-header lengths, VLAN stacks, fragments…) of the corpus captures, the replay
//! fixtures and the crafted case table. Every frame goes through
//!
//! - the reference ([`reference`]): is it a counted RST, and for which flow;
//! - rst-common's `inspect` on the host (the code the kernel runs, compiled for x86): cheap, per
//!   frame, and the only check for frames shorter than 14 bytes, which a test run refuses;
//! - the XDP program, once (`repeat = 1`, so no dispatcher swap), which must return `XDP_PASS`.
//!   Every `batch` frames, rstwatch's own `Collector` ends the epoch and the batch's per-flow
//!   counts, frame count and reset count must equal the reference's. A batch that differs is
//!   bisected (run half, collect, compare) down to the frames that disagree.
//!
//! Disagreements are printed as hex and, with `--findings DIR`, written there one file per
//! frame in the format of `tests/regressions/` (see `tests/fuzz.rs`).
//!
//! This file is also compiled into `tests/fuzz.rs` (`#[path]`), which runs a quick slice.
#![allow(dead_code)] // The test uses the engine, not `main`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs::File,
    io::BufReader,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use pcap_file::{
    pcap::PcapReader,
    pcapng::{Block, PcapNgReader},
    DataLink,
};
use rst_common::{
    craft::{
        cases,
        etherparse::{
            Ethernet2HeaderSlice, IpAuthHeaderSlice, Ipv4HeaderSlice, Ipv6FragmentHeaderSlice, Ipv6HeaderSlice,
            Ipv6RawExtHeaderSlice, SingleVlanHeaderSlice, TcpHeaderSlice, TcpOptionElement,
        },
        FrameBuilder, Ipv6Ext, VlanKind,
    },
    inspect,
    wire::{DIRECTION_RX, FAMILY_IPV4, FAMILY_IPV6, IPPROTO_TCP},
    FlowKey, Observation,
};
use rstwatch::collector::{Collector, Sample};

/// `XDP_PASS` from include/uapi/linux/bpf.h.
pub const XDP_PASS: u32 = 2;
/// What a test run without `ctx_in` reports as the ingress interface (the loopback).
pub const IFINDEX: u32 = 1;
/// `BPF_PROG_TEST_RUN` refuses XDP input shorter than an Ethernet header.
pub const MIN_TEST_RUN_FRAME: usize = 14;
/// Longest frame the generators make: one page, so every test run is single-buffer and cheap.
const MAX_FRAME: usize = 1500;

// ---------------------------------------------------------------------------------------------
// The reference parser
// ---------------------------------------------------------------------------------------------

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const VLAN_TPIDS: [u16; 3] = [0x8100, 0x88a8, 0x9100];
const MAX_VLAN_TAGS: usize = 3;
const MAX_IPV6_EXT_HEADERS: usize = 8;
const TCP_RST: u8 = 0x04;

/// See [`reference`]; off unless `--ah-zero-as-8-bytes`.
pub static AH_ZERO_AS_8_BYTES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

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
                        && AH_ZERO_AS_8_BYTES.load(std::sync::atomic::Ordering::Relaxed) =>
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
    Some(FlowKey {
        src,
        dst,
        ifindex,
        sport: tcp.source_port(),
        dport: tcp.destination_port(),
        family,
        protocol: IPPROTO_TCP,
        direction: DIRECTION_RX,
        class: 0,
        rst_ttl: ttl,
        peer_ttl: 0,
        _pad: [0; 2],
    })
}

fn widen(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0; 16];
    out[..4].copy_from_slice(&a);
    out
}

/// The kernel's flows without the classifier's verdict, which the reference does not compute
/// (the header walk is what is fuzzed; classification has tests of its own).
fn unclassified(flows: &[(FlowKey, u64)]) -> BTreeMap<FlowKey, u64> {
    let mut merged = BTreeMap::new();
    for (key, count) in flows {
        *merged.entry(key.unclassified()).or_default() += count;
    }
    merged
}

/// The host's answer to the same question, from rst-common's walk.
pub fn host(frame: &[u8], ifindex: u32) -> Option<FlowKey> {
    match inspect(frame, ifindex) {
        Observation::Reset(event) => Some(event.key),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The kernel side
// ---------------------------------------------------------------------------------------------

/// The XDP object as rstwatch loads it, with rstwatch's own collector.
pub struct Kernel {
    ebpf: rstwatch::loader::LoadedObject,
    collector: Collector,
}

impl Kernel {
    /// `max_flows` must exceed the largest batch, so nothing overflows.
    pub fn load(max_flows: u32) -> anyhow::Result<Self> {
        let mut ebpf = rstwatch::loader::load(max_flows).context("loading the eBPF object (needs root)")?;
        let collector = Collector::new(&mut ebpf)?;
        Ok(Self { ebpf, collector })
    }

    fn program(&self) -> anyhow::Result<&Xdp> {
        let name = self.ebpf.programs().xdp;
        let program = self.ebpf.program(name).with_context(|| format!("no program {name}"))?;
        Ok(program.try_into()?)
    }

    /// One test run (`repeat = 1`); the program must return `XDP_PASS`.
    pub fn run(&self, frame: &[u8]) -> anyhow::Result<()> {
        let result = self
            .program()?
            .test_run(TestRunOptions { data_in: Some(frame), ..TestRunOptions::new() })
            .with_context(|| format!("BPF_PROG_TEST_RUN with a {}-byte frame {}", frame.len(), hex(frame)))?;
        if result.return_value != XDP_PASS {
            bail!("the program returned {} instead of XDP_PASS for {}", result.return_value, hex(frame));
        }
        Ok(())
    }

    pub fn collect(&mut self) -> anyhow::Result<Sample> {
        self.collector.collect()
    }

    /// Runs `frames` and collects: the kernel's frame count, reset count and per-flow counts.
    fn run_and_collect(&mut self, frames: &[&[u8]]) -> anyhow::Result<Tally> {
        for frame in frames {
            self.run(frame)?;
        }
        let sample = self.collect()?;
        if sample.counters.overflow != 0 {
            bail!("{} resets overflowed the flow table: batch larger than --max-flows", sample.counters.overflow);
        }
        let mut drained = std::collections::HashSet::new();
        for (key, _) in &sample.flows {
            if !drained.insert(*key) {
                bail!("flow {key:?} drained twice");
            }
        }
        Ok(Tally { frames: sample.counters.frames, resets: sample.counters.resets, flows: unclassified(&sample.flows) })
    }
}

/// Counts of one batch, kernel's or reference's.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    frames: u64,
    resets: u64,
    flows: BTreeMap<FlowKey, u64>,
}

impl Tally {
    fn expected<'a>(frames: impl IntoIterator<Item = &'a [u8]>) -> Tally {
        let mut tally = Tally::default();
        for frame in frames {
            tally.frames += 1;
            if let Some(key) = reference(frame, IFINDEX) {
                tally.resets += 1;
                *tally.flows.entry(key).or_default() += 1;
            }
        }
        tally
    }
}

// ---------------------------------------------------------------------------------------------
// Disagreements
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Disagreement {
    pub origin: String,
    pub frame: Vec<u8>,
    pub reference: Option<FlowKey>,
    /// "host" (rst-common's inspect) or "kernel".
    pub side: &'static str,
    /// What that side said.
    pub got: String,
}

impl Disagreement {
    pub fn describe(&self) -> String {
        format!(
            "{} ({}, {} bytes): reference {}, {} {}\n  {}",
            self.side,
            self.origin,
            self.frame.len(),
            describe_key(self.reference.as_ref()),
            self.side,
            self.got,
            hex(&self.frame)
        )
    }

    /// The file format of `tests/regressions/`: `#` comments, then the frame as hex.
    pub fn regression_file(&self) -> String {
        format!(
            "# found by the differential fuzzer ({}): {} said {}, the reference {}\n{}\n",
            self.origin,
            self.side,
            self.got,
            describe_key(self.reference.as_ref()),
            hex(&self.frame)
        )
    }
}

pub fn describe_key(key: Option<&FlowKey>) -> String {
    match key {
        None => "not a counted RST".into(),
        Some(key) => {
            let addr = |bytes: &[u8; 16]| -> String {
                if key.family == FAMILY_IPV4 {
                    std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string()
                } else {
                    std::net::Ipv6Addr::from(*bytes).to_string()
                }
            };
            format!("RST {}:{} -> {}:{} (if {})", addr(&key.src), key.sport, addr(&key.dst), key.dport, key.ifindex)
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

pub fn unhex(text: &str) -> anyhow::Result<Vec<u8>> {
    let text: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if !text.len().is_multiple_of(2) {
        bail!("odd number of hex digits");
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).with_context(|| format!("bad hex at {i}")))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

/// SplitMix64: deterministic, seedable, no dependency.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// Seed frames: the corpus captures and replay fixtures (as Ethernet), the crafted case table.
pub struct Seeds {
    pub frames: Vec<(String, Vec<u8>)>,
    pub corpus_frames: usize,
    pub case_frames: usize,
}

impl Seeds {
    pub fn load(capture_dirs: &[PathBuf]) -> anyhow::Result<Self> {
        let mut frames = Vec::new();
        for dir in capture_dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            paths.sort();
            for path in paths {
                let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
                if name.ends_with(".pcap") || name.ends_with(".pcapng") {
                    for frame in ethernet_frames(&path).with_context(|| format!("reading {}", path.display()))? {
                        frames.push((name.clone(), frame));
                    }
                }
            }
        }
        let corpus_frames = frames.len();
        for case in cases(IFINDEX) {
            frames.push((format!("case {}", case.name), case.frame));
        }
        let case_frames = frames.len() - corpus_frames;
        Ok(Seeds { frames, corpus_frames, case_frames })
    }
}

/// Every frame of a capture, as Ethernet: SLL / SLL2 link headers become an Ethernet header
/// with the same protocol; other link types are skipped.
fn ethernet_frames(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    fn convert(link: DataLink, data: &[u8]) -> Option<Vec<u8>> {
        let (proto, payload) = match link {
            DataLink::ETHERNET => return Some(data.to_vec()),
            DataLink::LINUX_SLL => (data.get(14..16)?, data.get(16..)?),
            DataLink::LINUX_SLL2 => (data.get(0..2)?, data.get(20..)?),
            _ => return None,
        };
        let mut frame = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, proto[0], proto[1]];
        frame.extend_from_slice(payload);
        Some(frame)
    }
    let mut out = Vec::new();
    let file = File::open(path)?;
    if path.extension().is_some_and(|e| e == "pcapng") {
        let mut reader = PcapNgReader::new(BufReader::new(file))?;
        let mut links = Vec::new();
        while let Some(block) = reader.next_block() {
            match block? {
                Block::InterfaceDescription(idb) => links.push(idb.linktype),
                Block::EnhancedPacket(epb) => {
                    if let Some(link) = links.get(epb.interface_id as usize) {
                        out.extend(convert(*link, &epb.data));
                    }
                }
                Block::SimplePacket(spb) => {
                    if let Some(link) = links.first() {
                        out.extend(convert(*link, &spb.data));
                    }
                }
                _ => {}
            }
        }
    } else {
        let mut reader = PcapReader::new(BufReader::new(file))?;
        let link = reader.header().datalink;
        while let Some(packet) = reader.next_packet() {
            out.extend(convert(link, &packet?.data));
        }
    }
    Ok(out)
}

/// Where an Ethernet frame's layers start, found leniently (for aiming mutations only).
#[derive(Default, Clone, Copy)]
struct Layout {
    /// Offset of the innermost ethertype field.
    ether_type_at: usize,
    l3: Option<usize>,
    v6: bool,
    /// Offset of the IPv6 next-header byte that leads to `l4` (or the IPv4 protocol byte).
    next_at: Option<usize>,
    l4: Option<usize>,
}

fn layout(frame: &[u8]) -> Layout {
    let mut layout = Layout { ether_type_at: 12, ..Layout::default() };
    let be16 = |at: usize| frame.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let mut offset = 14;
    for _ in 0..4 {
        match be16(layout.ether_type_at) {
            Some(t) if VLAN_TPIDS.contains(&t) => {
                layout.ether_type_at = offset + 2;
                offset += 4;
            }
            _ => break,
        }
    }
    match be16(layout.ether_type_at) {
        Some(ETH_P_IPV4) => {
            layout.l3 = Some(offset);
            if let Some(v) = frame.get(offset) {
                layout.next_at = Some(offset + 9);
                layout.l4 = Some(offset + usize::from(v & 0x0f) * 4);
            }
        }
        Some(ETH_P_IPV6) => {
            layout.l3 = Some(offset);
            layout.v6 = true;
            let mut next_at = offset + 6;
            let mut at = offset + 40;
            for _ in 0..10 {
                match frame.get(next_at) {
                    Some(0 | 43 | 60) => match frame.get(at + 1) {
                        Some(len) => {
                            next_at = at;
                            at += (usize::from(*len) + 1) * 8;
                        }
                        None => break,
                    },
                    Some(44) => {
                        next_at = at;
                        at += 8;
                    }
                    Some(51) => match frame.get(at + 1) {
                        Some(len) => {
                            next_at = at;
                            at += (usize::from(*len) + 2) * 4;
                        }
                        None => break,
                    },
                    _ => break,
                }
            }
            layout.next_at = Some(next_at);
            layout.l4 = Some(at);
        }
        _ => {}
    }
    layout
}

fn set(frame: &mut [u8], at: Option<usize>, f: impl FnOnce(u8) -> u8) {
    if let Some(byte) = at.and_then(|at| frame.get_mut(at)) {
        *byte = f(*byte);
    }
}

/// One mutation, aimed at the layers `layout` finds.
fn mutate(rng: &mut Rng, frame: &mut Vec<u8>) -> &'static str {
    let l = layout(frame);
    let interesting_types = [0x0800u16, 0x86dd, 0x8100, 0x88a8, 0x9100, 0x0806, 0x88cc, 0x0000, 0xffff];
    let interesting_protos = [6u8, 0, 43, 44, 51, 60, 17, 58, 59, 4, 41, 255];
    match rng.below(16) {
        0 => {
            // Flip a bit, mostly in the headers.
            if !frame.is_empty() {
                let span = if rng.chance(80) { frame.len().min(96) } else { frame.len() };
                let at = rng.below(span);
                frame[at] ^= 1 << rng.below(8);
            }
            "bit flip"
        }
        1 => {
            if !frame.is_empty() {
                let at = rng.below(frame.len().min(128));
                frame[at] = rng.byte();
            }
            "random byte"
        }
        2 => {
            // Cut, often right around a header boundary.
            let mut marks = vec![0usize, 12, 14, 18];
            if let Some(l3) = l.l3 {
                marks.extend([l3, l3 + 8, l3 + 20, l3 + 40]);
            }
            if let Some(l4) = l.l4 {
                marks.extend([l4, l4 + 12, l4 + 13, l4 + 14, l4 + 20, l4 + 24]);
            }
            let mark = rng.pick(&marks);
            let len = (mark + rng.below(5)).saturating_sub(2);
            frame.truncate(len);
            "cut"
        }
        3 => {
            // TCP flags: RST more often than not, with or without others.
            let flags = if rng.chance(60) { TCP_RST | (rng.byte() & !TCP_RST) } else { rng.byte() };
            set(frame, l.l4.map(|l4| l4 + 13), |_| flags);
            "tcp flags"
        }
        4 => {
            let ihl = rng.below(16) as u8;
            if !l.v6 {
                set(frame, l.l3, |b| (b & 0xf0) | ihl);
            }
            "ipv4 ihl"
        }
        5 => {
            let data_offset = rng.below(16) as u8;
            set(frame, l.l4.map(|l4| l4 + 12), |b| (b & 0x0f) | (data_offset << 4));
            "tcp data offset"
        }
        6 => {
            // The length byte of the last extension header, or the first one's.
            let len = if rng.chance(50) { rng.below(4) as u8 } else { rng.byte() };
            if l.v6 {
                let at = if rng.chance(50) { l.l3.map(|l3| l3 + 41) } else { l.next_at.map(|n| n + 1) };
                set(frame, at, |_| len);
            }
            "ext header length"
        }
        7 => {
            // Push a VLAN tag (or several) right after the MACs.
            let count = 1 + rng.below(4);
            for _ in 0..count {
                if frame.len() >= 12 {
                    let tpid = if rng.chance(90) { rng.pick(&VLAN_TPIDS) } else { rng.next_u64() as u16 };
                    let tag = [(tpid >> 8) as u8, tpid as u8, rng.byte() & 0x0f, rng.byte()];
                    frame.splice(12..12, tag);
                }
            }
            "vlan push"
        }
        8 => {
            // Pop the outermost tag.
            if frame.len() >= 18 && VLAN_TPIDS.contains(&u16::from_be_bytes([frame[12], frame[13]])) {
                frame.drain(12..16);
            }
            "vlan pop"
        }
        9 => {
            // IPv4 fragment fields.
            let offset: u16 = if rng.chance(50) { 0 } else { 1 + rng.below(0x1fff) as u16 };
            let flags = (rng.below(8) as u16) << 13;
            let value = flags | offset;
            if !l.v6 {
                if let Some(at) = l.l3.map(|l3| l3 + 6) {
                    if frame.len() >= at + 2 {
                        frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
                    }
                }
            }
            "ipv4 fragment"
        }
        10 => {
            // Insert an IPv6 extension header in front of the transport.
            if let (true, Some(next_at), Some(l4)) = (l.v6, l.next_at, l.l4) {
                if l4 <= frame.len() && next_at < frame.len() {
                    let kind = rng.pick(&[0u8, 43, 60, 44, 51]);
                    let len_byte = rng.below(3) as u8;
                    let total = match kind {
                        44 => 8,
                        51 => (usize::from(len_byte) + 2) * 4,
                        _ => (usize::from(len_byte) + 1) * 8,
                    };
                    let mut ext = vec![0u8; total];
                    ext[0] = frame[next_at];
                    ext[1] = if kind == 44 { 0 } else { len_byte };
                    if kind == 44 && rng.chance(50) {
                        let offset = (1 + rng.below(0x1fff) as u16) << 3;
                        ext[2..4].copy_from_slice(&offset.to_be_bytes());
                    }
                    frame[next_at] = kind;
                    frame.splice(l4..l4, ext);
                }
            }
            "ipv6 ext insert"
        }
        11 => {
            let t = if rng.chance(85) { rng.pick(&interesting_types) } else { rng.next_u64() as u16 };
            let at = l.ether_type_at;
            if frame.len() >= at + 2 {
                frame[at..at + 2].copy_from_slice(&t.to_be_bytes());
            }
            "ether type"
        }
        12 => {
            let version = if rng.chance(70) { rng.pick(&[4u8, 6]) } else { rng.below(16) as u8 };
            set(frame, l.l3, |b| (b & 0x0f) | (version << 4));
            "ip version"
        }
        13 => {
            let p = if rng.chance(85) { rng.pick(&interesting_protos) } else { rng.byte() };
            set(frame, l.next_at, |_| p);
            "next header"
        }
        14 => {
            // Grow or shrink the tail.
            if rng.chance(50) {
                let extra = rng.below(64);
                for _ in 0..extra {
                    frame.push(rng.byte());
                }
            } else if !frame.is_empty() {
                let keep = rng.below(frame.len() + 1);
                frame.truncate(keep);
            }
            "tail"
        }
        _ => {
            // IPv4 total length / IPv6 payload length: must not matter.
            if let Some(l3) = l.l3 {
                let at = if l.v6 { l3 + 4 } else { l3 + 2 };
                let random = rng.next_u64() as u16;
                let value = rng.pick(&[0u16, 1, 20, 40, 0xffff, random]);
                if frame.len() >= at + 2 {
                    frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
                }
            }
            "ip length"
        }
    }
}

/// A frame built at random with rst-common's builder (etherparse writes the headers).
fn structured(rng: &mut Rng) -> Vec<u8> {
    let v6 = rng.chance(50);
    let mut builder = if v6 {
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src[..2].copy_from_slice(&[0x20, 0x01]);
        dst[..2].copy_from_slice(&[0xfd, 0x00]);
        src[15] = rng.byte();
        dst[14] = rng.byte();
        dst[15] = rng.byte();
        FrameBuilder::ipv6(src, dst)
    } else {
        FrameBuilder::ipv4([10, rng.byte(), rng.byte(), rng.byte()], [192, 168, rng.byte(), rng.byte()])
    };
    let tags = match rng.below(10) {
        0..=4 => 0,
        5..=6 => 1,
        7 => 2,
        8 => 3,
        _ => 4,
    };
    for _ in 0..tags {
        let kind = rng.pick(&[VlanKind::Dot1Q, VlanKind::Dot1Ad, VlanKind::QinQLegacy]);
        builder = builder.vlan(kind, rng.below(4096) as u16);
    }
    if v6 {
        let count = match rng.below(10) {
            0..=3 => 0,
            4..=7 => 1 + rng.below(3),
            _ => 6 + rng.below(5),
        };
        for _ in 0..count {
            let ext = match rng.below(5) {
                0 => Ipv6Ext::HopByHop { len: rng.below(3) as u8 },
                1 => Ipv6Ext::Routing { len: rng.below(3) as u8 },
                2 => Ipv6Ext::DestinationOptions { len: rng.below(3) as u8 },
                3 => Ipv6Ext::Fragment {
                    offset: if rng.chance(70) { 0 } else { 1 + rng.below(100) as u16 },
                    more: rng.chance(50),
                },
                _ => Ipv6Ext::Auth { icv_len: rng.pick(&[4u16, 12, 20]) },
            };
            builder = builder.ipv6_ext(ext);
        }
    } else {
        if rng.chance(20) {
            let words = 1 + rng.below(10);
            let options: Vec<u8> = (0..words * 4).map(|_| 1).collect(); // NOPs
            builder = builder.ipv4_options(&options);
        }
        if rng.chance(15) {
            builder =
                builder.ipv4_fragment(if rng.chance(50) { 0 } else { 1 + rng.below(1000) as u16 }, rng.chance(50));
        }
    }
    if rng.chance(5) {
        return builder.ip_payload(rng.pick(&[17u8, 58, 59, 1]), &[0u8; 24]).build().into_bytes();
    }
    let flags = if rng.chance(60) { TCP_RST | (rng.byte() & 0x1b) } else { rng.byte() };
    builder = builder.ports(rng.next_u64() as u16, rng.next_u64() as u16).flags(flags);
    if rng.chance(30) {
        builder = builder.tcp_options(&[TcpOptionElement::MaximumSegmentSize(1460), TcpOptionElement::Noop]);
    }
    if rng.chance(30) {
        let len = rng.below(64);
        builder = builder.payload(&vec![0x5a; len]);
    }
    builder.build().into_bytes()
}

/// The next frame and where it came from.
pub fn generate(rng: &mut Rng, seeds: &Seeds) -> (&'static str, Vec<u8>) {
    let kind = rng.below(100);
    let (origin, mut frame) = match kind {
        0..=4 => {
            // Random bytes, sometimes behind a plausible ethertype.
            let len = rng.below(96);
            let mut frame: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
            if frame.len() >= 14 && rng.chance(70) {
                let t = rng.pick(&[0x0800u16, 0x86dd, 0x8100, 0x88a8, 0x9100]);
                frame[12..14].copy_from_slice(&t.to_be_bytes());
            }
            return ("random", frame);
        }
        5..=29 => ("structured", structured(rng)),
        30..=59 if seeds.corpus_frames > 0 => {
            let (_, frame) = &seeds.frames[rng.below(seeds.corpus_frames)];
            ("corpus", frame.clone())
        }
        _ => {
            let (_, frame) = &seeds.frames[seeds.corpus_frames + rng.below(seeds.case_frames)];
            ("case", frame.clone())
        }
    };
    // Leave one in ten untouched, so the seeds themselves keep being checked.
    if rng.chance(90) {
        for _ in 0..1 + rng.below(4) {
            mutate(rng, &mut frame);
        }
    }
    frame.truncate(MAX_FRAME);
    (origin, frame)
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Config {
    pub frames: u64,
    pub seed: u64,
    /// Frames between collects; must stay below `max_flows`.
    pub batch: usize,
    pub capture_dirs: Vec<PathBuf>,
    /// Keep (and bisect for) at most this many disagreements; the rest are only counted.
    pub max_disagreements: usize,
    pub progress: bool,
}

impl Config {
    pub fn default_capture_dirs() -> Vec<PathBuf> {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let corpus = std::env::var_os("RSTWATCH_CORPUS")
            .map(PathBuf::from)
            .unwrap_or_else(|| manifest.join("../../shared/corpus"));
        vec![corpus, manifest.join("tests/data")]
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub frames: u64,
    /// Frames that went through the kernel (the rest are shorter than 14 bytes).
    pub kernel_frames: u64,
    /// Frames the reference calls counted RSTs.
    pub resets: u64,
    pub distinct_flows_max_batch: usize,
    pub by_origin: BTreeMap<&'static str, u64>,
    pub collects: u64,
    pub bisections: u64,
    pub seed_frames: (usize, usize),
    pub disagreements: Vec<Disagreement>,
    /// Every disagreement, also those beyond `max_disagreements`.
    pub disagreement_count: u64,
    pub elapsed: Duration,
}

pub const MAX_FLOWS: u32 = 65_536;

pub fn run(config: &Config) -> anyhow::Result<Report> {
    let started = Instant::now();
    let seeds = Seeds::load(&config.capture_dirs)?;
    let mut kernel = Kernel::load(MAX_FLOWS)?;
    // Anything left over from the load (nothing, normally) is not part of the first batch.
    kernel.collect()?;
    let mut rng = Rng::new(config.seed);
    let mut report = Report { seed_frames: (seeds.corpus_frames, seeds.case_frames), ..Report::default() };
    let mut batch: Vec<(&'static str, Vec<u8>)> = Vec::with_capacity(config.batch);
    let mut last_progress = Instant::now();
    while report.frames < config.frames {
        let (origin, frame) = generate(&mut rng, &seeds);
        report.frames += 1;
        *report.by_origin.entry(origin).or_default() += 1;
        let expected = reference(&frame, IFINDEX);
        report.resets += u64::from(expected.is_some());
        let host = host(&frame, IFINDEX);
        if host != expected {
            report.disagreement_count += 1;
        }
        if host != expected && report.disagreements.len() < config.max_disagreements {
            report.disagreements.push(Disagreement {
                origin: origin.into(),
                frame: frame.clone(),
                reference: expected,
                side: "host",
                got: describe_key(host.as_ref()),
            });
        }
        if frame.len() < MIN_TEST_RUN_FRAME {
            continue;
        }
        kernel.run(&frame)?;
        report.kernel_frames += 1;
        batch.push((origin, frame));
        if batch.len() >= config.batch || report.frames >= config.frames {
            check_batch(&mut kernel, &mut batch, &mut report, config.max_disagreements)?;
        }
        if config.progress && last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            eprintln!(
                "fuzz: {} frames, {} disagreements, {:.0} frames/s",
                report.frames,
                report.disagreement_count,
                report.frames as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    check_batch(&mut kernel, &mut batch, &mut report, config.max_disagreements)?;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The batch already ran; collect and compare, bisect if it differs.
fn check_batch(
    kernel: &mut Kernel,
    batch: &mut Vec<(&'static str, Vec<u8>)>,
    report: &mut Report,
    max_disagreements: usize,
) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let sample = kernel.collect()?;
    report.collects += 1;
    let got =
        Tally { frames: sample.counters.frames, resets: sample.counters.resets, flows: unclassified(&sample.flows) };
    let expected = Tally::expected(batch.iter().map(|(_, f)| f.as_slice()));
    report.distinct_flows_max_batch = report.distinct_flows_max_batch.max(expected.flows.len());
    if sample.counters.overflow != 0 || got != expected {
        report.bisections += 1;
        if report.disagreements.len() >= max_disagreements {
            // Enough examples kept: count the batch's differing resets without bisecting.
            report.disagreement_count += got.resets.abs_diff(expected.resets).max(1);
            batch.clear();
            return Ok(());
        }
        let frames: Vec<&[u8]> = batch.iter().map(|(_, f)| f.as_slice()).collect();
        let mut bad = Vec::new();
        bisect(kernel, &frames, 0, &mut bad)?;
        if bad.is_empty() {
            bail!(
                "a batch of {} frames differed (kernel {} frames / {} resets / {} flows, reference {} / {} / {}), \
                 but no frame differs on its own",
                frames.len(),
                got.frames,
                got.resets,
                got.flows.len(),
                expected.frames,
                expected.resets,
                expected.flows.len()
            );
        }
        report.disagreement_count += bad.len() as u64;
        for (index, said) in bad {
            let (origin, frame) = &batch[index];
            report.disagreements.push(Disagreement {
                origin: (*origin).into(),
                frame: frame.clone(),
                reference: reference(frame, IFINDEX),
                side: "kernel",
                got: said,
            });
        }
    }
    batch.clear();
    Ok(())
}

/// Finds the frames of `frames` (indices from `base`) the kernel counts differently.
fn bisect(kernel: &mut Kernel, frames: &[&[u8]], base: usize, bad: &mut Vec<(usize, String)>) -> anyhow::Result<()> {
    let got = kernel.run_and_collect(frames)?;
    let expected = Tally::expected(frames.iter().copied());
    if got == expected {
        return Ok(());
    }
    if frames.len() == 1 {
        let said = match (got.resets, got.flows.keys().next()) {
            (0, _) => "not a counted RST".to_owned(),
            (_, key) => describe_key(key),
        };
        bad.push((base, said));
        return Ok(());
    }
    let mid = frames.len() / 2;
    bisect(kernel, &frames[..mid], base, bad)?;
    bisect(kernel, &frames[mid..], base + mid, bad)
}

/// Checks one frame on every side; for regression files and single cases.
pub fn check_one(kernel: &mut Kernel, frame: &[u8]) -> anyhow::Result<Vec<String>> {
    let expected = reference(frame, IFINDEX);
    let mut problems = Vec::new();
    let host = host(frame, IFINDEX);
    if host != expected {
        problems.push(format!("host: {}, reference: {}", describe_key(host.as_ref()), describe_key(expected.as_ref())));
    }
    if frame.len() >= MIN_TEST_RUN_FRAME {
        let got = kernel.run_and_collect(&[frame])?;
        let want = Tally::expected([frame]);
        if got != want {
            problems.push(format!(
                "kernel: {}, reference: {}",
                if got.resets == 0 { "not a counted RST".into() } else { describe_key(got.flows.keys().next()) },
                describe_key(expected.as_ref())
            ));
        }
    }
    Ok(problems)
}

// ---------------------------------------------------------------------------------------------
// The command line (`cargo xtask fuzz`)
// ---------------------------------------------------------------------------------------------

fn main() -> std::process::ExitCode {
    match cli() {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(error) => {
            eprintln!("fuzz: error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn cli() -> anyhow::Result<bool> {
    let mut config = Config {
        frames: 10_000_000,
        seed: 0x7257_6174_6368,
        batch: 32_768,
        capture_dirs: Config::default_capture_dirs(),
        max_disagreements: 100,
        progress: true,
    };
    let mut json = false;
    let mut findings: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--frames" => config.frames = value("--frames")?.parse().context("--frames")?,
            "--seed" => config.seed = value("--seed")?.parse().context("--seed")?,
            "--batch" => config.batch = value("--batch")?.parse().context("--batch")?,
            "--findings" => findings = Some(PathBuf::from(value("--findings")?)),
            "--json" => json = true,
            "--ah-zero-as-8-bytes" => AH_ZERO_AS_8_BYTES.store(true, std::sync::atomic::Ordering::Relaxed),
            "--quiet" => config.progress = false,
            other => bail!("unknown argument {other:?} (--frames N, --seed N, --batch N, --findings DIR, --json, --quiet, --ah-zero-as-8-bytes)"),
        }
    }
    if config.batch == 0 || config.batch as u64 >= u64::from(MAX_FLOWS) {
        bail!("--batch must be between 1 and {}", MAX_FLOWS - 1);
    }
    let report = run(&config)?;
    for d in &report.disagreements {
        eprintln!("DISAGREEMENT {}", d.describe());
    }
    if let Some(dir) = &findings {
        std::fs::create_dir_all(dir)?;
        for (i, d) in report.disagreements.iter().enumerate() {
            let path = dir.join(format!("seed{}-{i:03}.hex", config.seed));
            std::fs::write(&path, d.regression_file())?;
        }
    }
    let summary = serde_json::json!({
        "frames": report.frames,
        "kernel_frames": report.kernel_frames,
        "host_only_frames": report.frames - report.kernel_frames,
        "reference_resets": report.resets,
        "disagreements": report.disagreement_count,
        "disagreements_kept": report.disagreements.len(),
        "disagreements_host": report.disagreements.iter().filter(|d| d.side == "host").count(),
        "disagreements_kernel": report.disagreements.iter().filter(|d| d.side == "kernel").count(),
        "collects": report.collects,
        "bisected_batches": report.bisections,
        "seed": config.seed,
        "ah_zero_as_8_bytes": AH_ZERO_AS_8_BYTES.load(std::sync::atomic::Ordering::Relaxed),
        "seed_frames": {"captures": report.seed_frames.0, "cases": report.seed_frames.1},
        "by_origin": report.by_origin,
        "seconds": report.elapsed.as_secs_f64(),
        "frames_per_second": report.frames as f64 / report.elapsed.as_secs_f64(),
    });
    if json {
        println!("{summary}");
    } else {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(report.disagreement_count == 0)
}
