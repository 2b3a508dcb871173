//! Kernel-side measurements for `cargo xtask bench` (and the flood test): everything that needs
//! the real eBPF object or the real `Collector`, which xtask cannot link against. The
//! `rstwatch-bench` binary runs one part per subcommand and prints its [`rst_bench_report`]
//! report as one JSON object; xtask turns them into tables.
//!
//! * [`kernel`]: cost per packet in the kernel, against the empty programs of the same object.
//! * [`flood`]: the flood generators (`gen`: live-frames XDP_TX test runs out of a veth; `pkt`: a
//!   paced AF_PACKET flood of many distinct flows) and `hold`, the empty program attached to an
//!   interface, the floor of the flood comparison.
//! * [`drain`]: the userspace read: flow tables filled with N entries, then the real
//!   `Collector::collect()` timed; plus the grace period alone (the epoch-flip latency).
//! * [`latency`]: the price of a dependent cache-line read in tables of a few sizes.

pub mod drain;
pub mod flood;
pub mod kernel;
pub mod latency;

use rst_common::parse::{TCP_ACK, TCP_RST};
use rst_craft::FrameBuilder;

/// Ethernet's minimum frame without the FCS: 64 bytes on the wire.
const MIN_ETHERNET: usize = 60;
/// The budget per frame at 10 Gb/s line rate with 64-byte frames: (64 + 20) * 8 bits / 10 Gb/s.
const BUDGET_NS: f64 = 67.2;

/// Pads a frame to the 60-byte Ethernet minimum as a NIC does: zero bytes after the IP
/// datagram, which its length field leaves out (a bare RST stays bare: TCP payload would make
/// every one of them an RST with data, which the programs hand over).
pub fn padded(frame: FrameBuilder) -> Vec<u8> {
    let mut bytes = frame.build().into_bytes();
    if bytes.len() < MIN_ETHERNET {
        bytes.resize(MIN_ETHERNET, 0);
    }
    bytes
}

/// The `index`-th flow of a flood: a server (10.20.N.1:443) resetting clients (10.30.0.2:PORT),
/// 60 000 flows per server address. The destination MAC is nobody's, so after XDP the peer's
/// stack drops the frame at once (PACKET_OTHERHOST) instead of answering it.
pub fn flood_flow(index: u32) -> FrameBuilder {
    let server = (index / 60_000) as u8;
    let port = 1024 + (index % 60_000) as u16;
    let mut frame = FrameBuilder::ipv4([10, 20, server, 1], [10, 30, 0, 2]).ports(443, port).flags(TCP_RST | TCP_ACK);
    frame.dst_mac = [0x02, 0x52, 0x53, 0x54, 0x00, 0x01];
    frame
}
