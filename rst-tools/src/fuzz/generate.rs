//! The frames the fuzzer tries: random bytes, frames built at random, and mutations of seeds
//! (corpus captures, replay fixtures, the crafted case table).

use std::{
    fs::File,
    io::BufReader,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use pcap_file::{
    pcap::PcapReader,
    pcapng::{Block, PcapNgReader},
    DataLink,
};
use rst_craft::{
    cases,
    etherparse::TcpOptionElement,
    tunnel::{Encapsulation, Outer, Tunnel},
    FrameBuilder, Ipv6Ext, VlanKind,
};

use super::{
    reference::{ETH_P_IPV4, ETH_P_IPV6, TCP_RST, VLAN_TPIDS},
    IFINDEX, MAX_FRAME,
};

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

/// A random tunnel around a frame, as Linux's drivers write it (rst-craft's `tunnel`).
fn random_tunnel(rng: &mut Rng) -> Tunnel {
    let outer = if rng.chance(50) {
        Outer::V4([172, 16, rng.byte(), rng.byte()], [172, 16, rng.byte(), rng.byte()])
    } else {
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src[..2].copy_from_slice(&[0xfd, 0x77]);
        dst[..2].copy_from_slice(&[0xfd, 0x77]);
        src[15] = rng.byte();
        dst[15] = rng.byte();
        Outer::V6(src, dst)
    };
    let vni = (rng.next_u64() & 0xff_ffff) as u32;
    let encapsulation = match rng.below(4) {
        0 => Encapsulation::Vxlan { vni, port: rng.pick(&[4789, 8472, 4790]) },
        1 => Encapsulation::Geneve {
            vni,
            port: rng.pick(&[6081, 6081, 6082]),
            options: 4 * rng.below(20),
            ethernet: rng.chance(70),
        },
        2 => Encapsulation::Gre {
            key: rng.chance(50).then(|| rng.next_u64() as u32),
            checksum: rng.chance(30),
            sequence: rng.chance(30).then(|| rng.next_u64() as u32),
            ethernet: rng.chance(40),
        },
        _ => Encapsulation::Ip,
    };
    let mut tunnel = Tunnel::new(outer, encapsulation);
    for _ in 0..rng.below(3) {
        tunnel = tunnel.outer_vlan(rng.below(4096) as u16);
    }
    if matches!(outer, Outer::V6(..)) && rng.chance(50) {
        tunnel = tunnel.encap_limit(4);
    }
    tunnel
}

/// Where an Ethernet frame's IP header starts, past its VLAN tags (`None`: not IP).
fn ip_at(frame: &[u8]) -> Option<usize> {
    let mut at = 12;
    loop {
        let ether_type = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
        if VLAN_TPIDS.contains(&ether_type) {
            at += 4;
            continue;
        }
        return matches!(ether_type, ETH_P_IPV4 | ETH_P_IPV6).then_some(at + 2);
    }
}

/// A structured frame inside a tunnel; one in ten inside a second one (which must not count).
fn tunnelled(rng: &mut Rng) -> Vec<u8> {
    let mut frame = structured(rng);
    for _ in 0..if rng.chance(10) { 2 } else { 1 } {
        let tunnel = random_tunnel(rng);
        let l3 = ip_at(&frame);
        if l3.is_none()
            && matches!(
                tunnel.encapsulation,
                Encapsulation::Ip
                    | Encapsulation::Gre { ethernet: false, .. }
                    | Encapsulation::Geneve { ethernet: false, .. }
            )
        {
            break;
        }
        frame = tunnel.wrap_bytes(&frame, l3);
    }
    if rng.chance(20) {
        let len = rng.below(frame.len() + 1);
        frame.truncate(len);
    }
    frame
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
        5..=14 => ("tunnel", tunnelled(rng)),
        15..=29 => ("structured", structured(rng)),
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
