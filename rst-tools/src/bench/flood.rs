//! The floods of part 2 and of the CPU-share runs, and the floor they are compared with.
//!
//! * `gen`: a two-instruction XDP program (`r0 = XDP_TX; exit`) loaded here, outside rstwatch's
//!   object, run with `BPF_F_TEST_XDP_LIVE_FRAMES` on one end of a veth, so every run transmits
//!   the frame to the peer, where the program under test sees it. What the peer's full ring
//!   refused is read from the veth around each run (one flow per run) and reported as
//!   `dropped_by_veth`; the per-flow `expected` counts are what arrived.
//! * `pkt`: a paced AF_PACKET flood (one frame per flow in turn, `sendmmsg`), for floods of many
//!   distinct flows per second, which one-frame live test runs (~30k calls/s) cannot reach.
//! * `hold`: attaches one of the object's programs (the empty `rstwatch_xdp_pass` by default) to
//!   an interface until killed: the floor of the flood comparison.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use aya::programs::Xdp;
use rst_bench_report::{FlowCount, GenReport, PktReport};
use rst_common::wire::PROG_XDP_BASELINE;
use rstwatch::{
    load,
    load::testrun::XdpMd,
    sys::{ethtool::XmitErrors, packet::PacketSender, test_run},
};

use rst_craft::tunnel::{Outer, Tunnel};

use super::{flood_flow, padded};

/// `gen`'s options.
#[derive(Clone, Debug, clap::Args)]
pub struct GenArgs {
    /// The veth end to transmit out of.
    #[arg(long)]
    pub iface: String,
    /// Flows, one test run each per pass.
    #[arg(long, default_value_t = 64)]
    pub flows: u32,
    /// Index of the first flow (flows `first .. first + flows`).
    #[arg(long, default_value_t = 0)]
    pub first: u32,
    /// Frames per test run.
    #[arg(long, default_value_t = 1)]
    pub repeat: u32,
    /// Passes over the flows (when `--seconds` is 0).
    #[arg(long, default_value_t = 1)]
    pub passes: u64,
    /// Run this long instead of a number of passes (0: passes).
    #[arg(long, default_value_t = 0.0)]
    pub seconds: f64,
    /// Test runs per second (0: as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Frames the kernel sends per batch within a run.
    #[arg(long, default_value_t = 64)]
    pub batch: u32,
    /// Above 0: list the frames each flow delivered (`expected`).
    #[arg(long, default_value_t = 0)]
    pub list: u32,
    /// TCP payload of every RST (text some devices put in a reset); none by default.
    #[arg(long)]
    pub payload: Option<String>,
    /// Every RST inside VXLAN with this VNI (outer IPv4, UDP 4789), as an overlay node's
    /// underlay carries it; the expected flows are the inner ones.
    #[arg(long)]
    pub vxlan: Option<u32>,
}

pub fn generate(args: &GenArgs) -> anyhow::Result<GenReport> {
    let GenArgs { ref iface, flows, first, repeat, passes, seconds, rate, batch, list, ref payload, vxlan } = *args;
    ensure!(flows > 0 && repeat > 0, "--flows and --repeat must be positive");
    let ifindex = load::resolve_interface(iface)?;
    let prog = test_run::load_xdp_tx().context("loading the XDP_TX generator program")?;
    let frame_of = |i| {
        let frame = match payload {
            Some(text) => flood_flow(i).payload(text.as_bytes()),
            None => flood_flow(i),
        };
        match vxlan {
            // The outer frame's destination MAC is nobody's either: the peer's stack drops it.
            Some(vni) => {
                let mut outer = Tunnel::vxlan(Outer::V4([10, 40, 0, 1], [10, 40, 0, 2]), vni).wrap(&frame.build());
                outer[..6].copy_from_slice(&[0x02, 0x52, 0x53, 0x54, 0x00, 0x01]);
                outer
            }
            None => padded(frame),
        }
    };
    let frames: Vec<Vec<u8>> = (first..first + flows).map(frame_of).collect();
    let contexts: Vec<XdpMd> = frames.iter().map(|f| XdpMd::arriving(f.len(), ifindex)).collect();
    let mut xmit_errors = XmitErrors::open(iface).context("reading the veth's XDP transmit errors")?;
    let started = Instant::now();
    let mut calls = 0u64;
    let mut sent = 0u64;
    let mut dropped = 0u64;
    let mut per_flow_dropped = vec![0u64; flows as usize];
    let mut kernel_ns = 0f64;
    let mut per_flow = vec![0u64; flows as usize];
    'outer: for pass in 0.. {
        if seconds <= 0.0 && pass >= passes {
            break;
        }
        for (i, (frame, ctx)) in frames.iter().zip(&contexts).enumerate() {
            if seconds > 0.0 && started.elapsed().as_secs_f64() >= seconds {
                break 'outer;
            }
            if rate > 0.0 {
                pace(started, calls as f64 / rate);
            }
            let errors_before = xmit_errors.read().context("ETHTOOL_GSTATS")?;
            let ns = test_run::live_run(&prog, frame, ctx, repeat, batch).context("live-frames test run")?;
            let lost = xmit_errors.read().context("ETHTOOL_GSTATS")? - errors_before;
            dropped += lost;
            per_flow_dropped[i] += lost;
            calls += 1;
            sent += u64::from(repeat);
            per_flow[i] += u64::from(repeat);
            kernel_ns += f64::from(ns) * f64::from(repeat);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // What each flow delivered to the peer's hook: what it sent less what its runs lost.
    let expected: Vec<FlowCount> = per_flow
        .iter()
        .zip(&per_flow_dropped)
        .map(|(&n, &lost)| n.saturating_sub(lost))
        .enumerate()
        .filter(|(_, n)| *n > 0)
        .map(|(i, n)| {
            let key = flood_flow(first + i as u32).flow_key(0);
            (key.src_ip().to_string(), key.sport, key.dst_ip().to_string(), key.dport, n)
        })
        .collect();
    Ok(GenReport {
        iface: iface.clone(),
        ifindex,
        flows,
        repeat,
        calls,
        sent,
        dropped_by_veth: dropped,
        // Another generator on the same veth would share the counter: never underflow.
        delivered: sent.saturating_sub(dropped),
        elapsed_s: elapsed,
        wall_rate_pps: sent as f64 / elapsed,
        kernel_ns_per_frame: kernel_ns / sent.max(1) as f64,
        kernel_rate_pps: if kernel_ns > 0.0 { sent as f64 / (kernel_ns / 1e9) } else { 0.0 },
        frame_bytes: frames[0].len(),
        expected: (list > 0).then_some(expected),
    })
}

/// Sleeps until `due_s` seconds after `started`.
fn pace(started: Instant, due_s: f64) {
    let due = Duration::from_secs_f64(due_s);
    let elapsed = started.elapsed();
    if due > elapsed {
        std::thread::sleep(due - elapsed);
    }
}

/// `pkt`'s options.
#[derive(Clone, Debug, clap::Args)]
pub struct PktArgs {
    /// The interface to send out of.
    #[arg(long)]
    pub iface: String,
    /// Distinct flows, one frame each in turn.
    #[arg(long, default_value_t = 10_000)]
    pub flows: u32,
    /// Frames per second.
    #[arg(long, default_value_t = 100_000.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
}

pub fn packet_flood(args: &PktArgs) -> anyhow::Result<PktReport> {
    let PktArgs { ref iface, flows, rate, seconds } = *args;
    ensure!(flows > 0 && rate > 0.0 && seconds > 0.0, "--flows, --rate and --seconds must be positive");
    let ifindex = load::resolve_interface(iface)?;
    let mut sender = PacketSender::open(ifindex).context("socket(AF_PACKET)")?;
    let frames: Vec<Vec<u8>> = (0..flows).map(|i| padded(flood_flow(i))).collect();
    const BATCH: usize = 64;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut next = 0usize;
    while started.elapsed().as_secs_f64() < seconds {
        pace(started, sent as f64 / rate);
        let batch: Vec<&[u8]> = (0..BATCH).map(|k| frames[(next + k) % frames.len()].as_slice()).collect();
        let taken = match sender.send(&batch) {
            Ok(taken) => taken,
            // The device queue is full: try again, the pacing catches up.
            Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => continue,
            Err(error) => return Err(error).context("sendmmsg"),
        };
        sent += taken as u64;
        next = (next + taken) % frames.len();
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(PktReport { flows, sent, elapsed_s: elapsed, rate_pps: sent as f64 / elapsed })
}

/// `hold`'s options.
#[derive(Clone, Debug, clap::Args)]
pub struct HoldArgs {
    #[arg(long)]
    pub iface: String,
    /// Which of the object's XDP programs to attach.
    #[arg(long, default_value = PROG_XDP_BASELINE)]
    pub program: String,
}

/// Attaches the program and returns only when killed: the bpf_link closes with the process,
/// which detaches the program.
pub fn hold(args: &HoldArgs) -> anyhow::Result<()> {
    let HoldArgs { ref iface, program: ref name } = *args;
    let ifindex = load::resolve_interface(iface)?;
    let mut ebpf = load::load(1024)?;
    let program: &mut Xdp = ebpf.program_mut(name).with_context(|| format!("no program {name}"))?.try_into()?;
    if program.fd().is_err() {
        program.load()?;
    }
    let attachment = load::attach_xdp(program, iface, ifindex, load::XdpModeChoice::Auto)?;
    eprintln!("bench: attached {name} to {iface} ({:?})", attachment.hook);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
