//! Writes a large capture for timing `rstwatch replay` against tcpdump and tshark.
//!
//! ```text
//! cargo run --release -p rst-tools --bin rstwatch-replay-capture -- /tmp/bench.pcap 1000000
//! cargo run --release -p rst-tools --bin rstwatch-replay-capture -- /tmp/bench.pcapng 1000000
//! ```
//!
//! Small Ethernet frames (60–90 bytes): mostly IPv4 TCP, some IPv6 TCP, VLAN-tagged TCP, UDP,
//! and about 2% resets spread over a few thousand flows, 100 000 frames per second of capture
//! time. A `.pcapng` name writes pcapng with two interfaces, frames alternating between them.

use std::{fs::File, io::BufWriter, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use rst_common::parse::{TCP_ACK, TCP_RST, TCP_SYN};
use rst_craft::{
    capture::{self, DataLink},
    tcp_v4, tcp_v6, FrameBuilder, VlanKind,
};

/// Distinct frames written in turn by default: enough flows that the flow table is exercised.
const TEMPLATES: usize = 4096;

#[derive(Parser)]
#[command(name = "rstwatch-replay-capture", about = "Writes a large capture for timing `rstwatch replay`")]
struct Args {
    /// OUT.pcap or OUT.pcapng.
    path: String,
    /// Frames to write.
    #[arg(default_value_t = 1_000_000)]
    count: u64,
    /// Distinct frames written in turn, each of its own flow.
    #[arg(long, default_value_t = TEMPLATES)]
    flows: usize,
}

fn main() -> anyhow::Result<()> {
    let Args { path, count, flows } = Args::parse();
    let flows = flows.max(1);
    let templates: Vec<Vec<u8>> = (0..flows).map(template).collect();
    let resets = (0..flows).filter(|i| i % 50 == 7).count();
    let file = BufWriter::with_capacity(1 << 20, File::create(&path).with_context(|| format!("creating {path}"))?);
    let start = Duration::from_secs(1_700_000_000);
    let at = |i: u64| start + Duration::from_micros(i * 10);
    let frames = (0..count).map(|i| (i, at(i), templates[(i as usize) % flows].as_slice()));
    if path.ends_with(".pcapng") {
        capture::write_pcapng(file, &["bench0", "bench1"], frames.map(|(i, at, data)| ((i % 2) as u32, at, data)))?;
    } else {
        capture::write_pcap(file, DataLink::ETHERNET, frames.map(|(_, at, data)| (at, data)))?;
    }
    eprintln!("{path}: {count} frames, {resets} of every {flows} are resets");
    Ok(())
}

fn template(i: usize) -> Vec<u8> {
    let port = 10_000 + (i % 3000) as u16;
    let server = [10, 0, (i / 256 % 16) as u8, (i % 256) as u8];
    let builder: FrameBuilder = match i % 50 {
        7 => tcp_v4().flags(TCP_RST | TCP_ACK),
        0..=4 => FrameBuilder::ipv4([192, 0, 2, 1], server)
            .ip_payload(17, &[0x30, 0x39, 0, 53, 0, 16, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]),
        5 | 6 => tcp_v6().flags(TCP_ACK),
        8 => tcp_v4().vlan(VlanKind::Dot1Q, 7).flags(TCP_SYN),
        _ => tcp_v4().flags(TCP_ACK).payload(&[0x61; 12]),
    };
    let builder = match i % 50 {
        0..=4 => builder,
        8 => builder.ports(port, 443),
        _ => builder.ports(443, port),
    };
    builder.build().into_bytes()
}
