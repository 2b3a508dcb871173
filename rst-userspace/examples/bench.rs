//! Kernel-side measurements for `cargo xtask bench` (and the flood test): everything that needs
//! the real eBPF object or the real `Collector`, which xtask cannot link against.
//!
//! ```text
//! cargo build --release -p rst-userspace --example bench
//! target/release/examples/bench kernel  [--trials 7] [--repeat 2000000] [--singles 20000] [--max-flows N] [--lines ACK,new flow]
//!                                         [--counting auto|per-cpu|atomic]
//! target/release/examples/bench gen     --iface IF --flows K [--repeat R] [--passes P] [--seconds S] [--rate FPS]
//! target/release/examples/bench pkt     --iface IF --flows K --rate PPS --seconds S
//! target/release/examples/bench hold    --iface IF [--program rstwatch_xdp_pass]
//! target/release/examples/bench drain   [--flows 1000,100000,1000000] [--trials 5]
//! target/release/examples/bench latency [--mib 1,4,16,64]
//! ```
//!
//! Every subcommand prints one JSON object on stdout; xtask turns them into tables.
//!
//! * `kernel`: cost per packet of `rstwatch_xdp` over `rstwatch_xdp_pass` (the empty program in
//!   the same object) under `BPF_PROG_TEST_RUN`, from the kernel-reported duration. Frames that
//!   can repeat run with a large `repeat` (one call per trial and program, A/B interleaved, the
//!   order alternating between trials); flows that must change from run to run (a new flow per
//!   run, two flows that evict each other from a cache slot, 64k flows) run as single test runs,
//!   each prog run followed by a baseline run of the same frame, and the difference of the
//!   medians is reported (the fixed per-call cost is in both and cancels out).
//! * `gen`: the flood generator: a two-instruction XDP program (`r0 = XDP_TX; exit`) loaded
//!   here, outside rstwatch's object, run with `BPF_F_TEST_XDP_LIVE_FRAMES` on one end of a
//!   veth, so every run transmits the frame to the peer, where the program under test sees it.
//!   What the peer's full ring refused is read from the veth around each run (one flow per
//!   run) and reported as `dropped_by_veth`; the per-flow `expected` counts are what arrived.
//! * `pkt`: a paced AF_PACKET flood (one frame per flow in turn, `sendmmsg`), for floods of many
//!   distinct flows per second, which one-frame live test runs (~30k calls/s) cannot reach.
//! * `hold`: attaches one of the object's programs (the empty `rstwatch_xdp_pass` by default) to
//!   an interface until killed: the floor of the flood comparison.
//! * `drain`: the userspace read: flow tables filled with N entries (one batch update), then the
//!   real `Collector::collect()` timed; plus the grace period alone (the epoch-flip latency).

use std::{
    io,
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use aya::{
    maps::{Array, Map, MapData, PerCpuArray, PerCpuValues},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use rst_common::{
    craft::{tcp_v4, tcp_v6, FrameBuilder, VlanKind},
    parse::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    wire::{
        CountingPrograms, FlowKey, MAP_EPOCH, MAP_FLOW_BLOCKS, MAP_FLOW_TABLE, PROG_TC_BASELINE, PROG_XDP_BASELINE,
    },
};
use rstwatch::{collector::Collector, flow_table::FlowTableMap, loader::Counting, testrun::XdpMd};
use serde_json::{json, Value};

/// Ethernet's minimum frame without the FCS: 64 bytes on the wire.
const MIN_ETHERNET: usize = 60;
/// The budget per frame at 10 Gb/s line rate with 64-byte frames: (64 + 20) * 8 bits / 10 Gb/s.
const BUDGET_NS: f64 = 67.2;
/// XDP_PASS / XDP_TX from include/uapi/linux/bpf.h.
const XDP_PASS: u32 = 2;
/// `TCX_NEXT` / `TC_ACT_UNSPEC`: what rstwatch's TC programs return.
const TC_NEXT: i32 = -1;
const XDP_TX: i32 = 3;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        bail!("usage: bench kernel|gen|drain [options] (see the source's header)");
    };
    let opts = Opts::parse(rest)?;
    let out = match command.as_str() {
        "kernel" => kernel(&opts)?,
        "gen" => generate(&opts)?,
        "drain" => drain(&opts)?,
        "pkt" => packet_flood(&opts)?,
        "hold" => hold(&opts)?,
        "latency" => memory_latency(&opts)?,
        other => bail!("unknown subcommand {other:?}: kernel, gen, pkt, hold, drain or latency"),
    };
    println!("{out}");
    Ok(())
}

/// `--name value` pairs, nothing fancier.
struct Opts(Vec<(String, String)>);

impl Opts {
    fn parse(args: &[String]) -> anyhow::Result<Opts> {
        ensure!(args.len().is_multiple_of(2), "options come as --name value pairs: {args:?}");
        let mut pairs = Vec::new();
        for pair in args.chunks(2) {
            let name = pair[0].strip_prefix("--").with_context(|| format!("{:?} is not an option", pair[0]))?;
            pairs.push((name.to_owned(), pair[1].clone()));
        }
        Ok(Opts(pairs))
    }

    fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.0.iter().rev().find(|(n, _)| n == name) {
            Some((_, value)) => value.parse().map_err(|e| anyhow::anyhow!("--{name} {value}: {e}")),
            None => Ok(default),
        }
    }

    fn text(&self, name: &str) -> Option<&str> {
        self.0.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// A comma-separated list, `default` when the option is absent.
    fn list<T: std::str::FromStr>(&self, name: &str, default: &str) -> anyhow::Result<Vec<T>>
    where
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        self.text(name)
            .unwrap_or(default)
            .split(',')
            .map(|s| s.trim().parse().with_context(|| format!("--{name} {s}")))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Frames

/// Pads a TCP frame with payload to the 60-byte Ethernet minimum.
fn padded(frame: FrameBuilder) -> Vec<u8> {
    let len = frame.build().into_bytes().len();
    if len >= MIN_ETHERNET {
        return frame.build().into_bytes();
    }
    frame.payload(&vec![0u8; MIN_ETHERNET - len]).build().into_bytes()
}

/// The `index`-th flow of a flood: a server (10.20.N.1:443) resetting clients (10.30.0.2:PORT),
/// 60 000 flows per server address. The destination MAC is nobody's, so after XDP the peer's
/// stack drops the frame at once (PACKET_OTHERHOST) instead of answering it.
fn flood_flow(index: u32) -> FrameBuilder {
    let server = (index / 60_000) as u8;
    let port = 1024 + (index % 60_000) as u16;
    let mut frame = FrameBuilder::ipv4([10, 20, server, 1], [10, 30, 0, 2]).ports(443, port).flags(TCP_RST | TCP_ACK);
    frame.dst_mac = [0x02, 0x52, 0x53, 0x54, 0x00, 0x01];
    frame
}

// ---------------------------------------------------------------------------------------------
// Part 1: cost per packet in the kernel

struct Programs {
    ebpf: rstwatch::loader::LoadedObject,
    collector: Collector,
}

impl Programs {
    fn load(max_flows: u32, counting: Counting) -> anyhow::Result<Programs> {
        let mut ebpf =
            rstwatch::loader::load_counting(max_flows, counting).context("loading the eBPF object (needs root)")?;
        let baseline: &mut Xdp = ebpf
            .program_mut(PROG_XDP_BASELINE)
            .with_context(|| format!("no program {PROG_XDP_BASELINE}"))?
            .try_into()?;
        baseline.load()?;
        let tc_baseline: &mut SchedClassifier =
            ebpf.program_mut(PROG_TC_BASELINE).with_context(|| format!("no program {PROG_TC_BASELINE}"))?.try_into()?;
        tc_baseline.load()?;
        let collector = Collector::new(&mut ebpf)?;
        Ok(Programs { ebpf, collector })
    }

    fn program(&self, name: &str) -> anyhow::Result<&Xdp> {
        Ok(self.ebpf.program(name).with_context(|| format!("no program {name}"))?.try_into()?)
    }

    /// Kernel-reported ns per run for `repeat` runs of `frame` through a TC program (as an skb).
    fn run_tc(&self, name: &str, frame: &[u8], repeat: u32) -> anyhow::Result<f64> {
        let program: &SchedClassifier =
            self.ebpf.program(name).with_context(|| format!("no program {name}"))?.try_into()?;
        let result = program
            .test_run(TestRunOptions { data_in: Some(frame), repeat, ..TestRunOptions::new() })
            .with_context(|| format!("BPF_PROG_TEST_RUN of {name}"))?;
        ensure!(result.return_value as i32 == TC_NEXT, "{name} returned {}", result.return_value as i32);
        Ok(result.duration.as_nanos() as f64)
    }

    /// Kernel-reported ns per run for `repeat` runs of `frame`.
    fn run(&self, name: &str, frame: &[u8], repeat: u32) -> anyhow::Result<f64> {
        let result = self
            .program(name)?
            .test_run(TestRunOptions { data_in: Some(frame), repeat, ..TestRunOptions::new() })
            .with_context(|| format!("BPF_PROG_TEST_RUN of {name}"))?;
        ensure!(result.return_value == XDP_PASS, "{name} returned {}", result.return_value);
        Ok(result.duration.as_nanos() as f64)
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// One line of the part-1 table.
struct Line {
    name: &'static str,
    method: String,
    /// Per trial: (program ns, baseline ns).
    trials: Vec<(f64, f64)>,
}

impl Line {
    fn to_json(&self) -> Value {
        let mut deltas: Vec<f64> = self.trials.iter().map(|(p, b)| p - b).collect();
        let mut prog: Vec<f64> = self.trials.iter().map(|(p, _)| *p).collect();
        let mut base: Vec<f64> = self.trials.iter().map(|(_, b)| *b).collect();
        let delta = median(&mut deltas);
        json!({
            "name": self.name,
            "method": self.method,
            "prog_ns": median(&mut prog),
            "baseline_ns": median(&mut base),
            "over_empty_ns": delta,
            "budget_share": delta / BUDGET_NS,
            "trial_deltas_ns": deltas,
        })
    }
}

fn kernel(opts: &Opts) -> anyhow::Result<Value> {
    let trials: usize = opts.get("trials", 7)?;
    let repeat: u32 = opts.get("repeat", 2_000_000)?;
    let singles: u32 = opts.get("singles", 20_000)?;
    // rstwatch's default table size: a new flow's insert lands in a table of this capacity.
    let max_flows: u32 = opts.get("max-flows", rst_common::wire::DEFAULT_MAX_FLOWS)?;
    // Smaller tables (to see what fits the CPU caches) skip the 64k-flow line, which would overflow.
    ensure!(max_flows >= 8192, "--max-flows must hold the new-flow lines' 4 096 warm-up flows twice");
    // Only the lines whose names contain one of these (comma-separated); all by default.
    let only: Vec<String> = opts.list("lines", "")?;
    let wanted = |name: &str| only.iter().any(|part| name.contains(part.as_str()));
    // `atomic`: what a PREEMPT_RT kernel gets (see `rstwatch::loader::Counting`).
    let counting = opts.text("counting").unwrap_or("auto");
    let counting = <Counting as clap::ValueEnum>::from_str(counting, false)
        .map_err(|error| anyhow::anyhow!("--counting {counting}: {error}"))?;
    let mut programs = Programs::load(max_flows, counting)?;
    // The counting programs loaded: the per-CPU set, or the atomic one.
    let CountingPrograms { xdp: counting_xdp, tc_egress: counting_tc_egress, .. } = programs.ebpf.programs();
    let mut lines = Vec::new();

    // Frames that repeat: one test run of `repeat` runs per program and trial.
    let repeated: [(&'static str, Vec<u8>); 8] = [
        ("non-TCP (IPv4 UDP)", {
            let udp = FrameBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2]).ip_payload(17, &[0u8; 26]);
            udp.build().into_bytes()
        }),
        ("IPv4 TCP ACK", padded(tcp_v4().flags(TCP_ACK))),
        ("IPv4 RST, existing flow (per-CPU cache hit)", padded(tcp_v4().ports(443, 40000).flags(TCP_RST))),
        ("IPv6 RST, existing flow", padded(tcp_v6().ports(443, 40001).flags(TCP_RST))),
        (
            "802.1Q VLAN IPv4 RST, existing flow",
            padded(tcp_v4().vlan(VlanKind::Dot1Q, 100).ports(443, 40002).flags(TCP_RST)),
        ),
        ("IPv4 TCP ACK with 1500-byte frame", tcp_v4().flags(TCP_ACK).payload(&[0u8; 1446]).build().into_bytes()),
        (
            "IPv4 SYN retransmission (connection state looked up, nothing written)",
            padded(tcp_v4().ports(40003, 443).flags(TCP_SYN).ttl(64)),
        ),
        (
            "IPv4 FIN+ACK (connection state looked up and flagged)",
            padded(tcp_v4().ports(40004, 443).flags(TCP_FIN | TCP_ACK)),
        ),
    ];
    for (name, frame) in repeated {
        if !wanted(name) {
            continue;
        }
        let mut line = Line { name, method: format!("repeat {repeat}, {} B frame", frame.len()), trials: Vec::new() };
        for trial in 0..trials {
            // A/B, then B/A: a drift in machine load hits both programs alike.
            let (prog, base) = if trial % 2 == 0 {
                let p = programs.run(counting_xdp, &frame, repeat)?;
                (p, programs.run(PROG_XDP_BASELINE, &frame, repeat)?)
            } else {
                let b = programs.run(PROG_XDP_BASELINE, &frame, repeat)?;
                (programs.run(counting_xdp, &frame, repeat)?, b)
            };
            line.trials.push((prog, base));
            programs.collector.collect()?;
        }
        lines.push(line);
    }

    // What the host sends: the TC egress program against an empty TC program, same method.
    let egress: [(&'static str, Vec<u8>); 3] = [
        ("TC egress: IPv4 TCP ACK (what the host sends)", padded(tcp_v4().flags(TCP_ACK))),
        (
            "TC egress: IPv4 TCP ACK, 1500-byte frame",
            tcp_v4().flags(TCP_ACK).payload(&[0u8; 1446]).build().into_bytes(),
        ),
        ("TC egress: IPv4 RST, existing flow", padded(tcp_v4().ports(443, 40005).flags(TCP_RST | TCP_ACK))),
    ];
    for (name, frame) in egress {
        if !wanted(name) {
            continue;
        }
        let mut line =
            Line { name, method: format!("repeat {repeat}, {} B frame, as an skb", frame.len()), trials: Vec::new() };
        for trial in 0..trials {
            let (prog, base) = if trial % 2 == 0 {
                let p = programs.run_tc(counting_tc_egress, &frame, repeat)?;
                (p, programs.run_tc(PROG_TC_BASELINE, &frame, repeat)?)
            } else {
                let b = programs.run_tc(PROG_TC_BASELINE, &frame, repeat)?;
                (programs.run_tc(counting_tc_egress, &frame, repeat)?, b)
            };
            line.trials.push((prog, base));
            programs.collector.collect()?;
        }
        lines.push(line);
    }

    // Flows that change every run: single test runs (no dispatcher swap), each followed by the
    // baseline on the same frame; per trial, median(prog) - median(baseline).
    let single_lines: [(&'static str, &str); 7] = [
        ("IPv4 RST, existing flow, table path (two flows evicting each other)", "collide"),
        ("IPv4 RST, new flow each run (table store)", "new"),
        ("IPv4 RST refusing the SYN just seen, new flow each run (a refused connect)", "refused"),
        ("IPv4 SYN, new connection each run (connection state + service count)", "syn"),
        ("IPv4 RST over 64k flows, round robin (cache miss, table hit)", "64k"),
        ("IPv4 TCP ACK, single runs (calibration: cf. the repeat line)", "ack"),
        ("IPv4 RST, existing flow, single runs (calibration: cf. the repeat line)", "hit"),
    ];
    let mut next_new = 0u32;
    for (name, kind) in single_lines {
        if (kind == "64k" && max_flows < 65_536) || !wanted(name) {
            continue;
        }
        let frames: Vec<Vec<u8>> = match kind {
            "collide" => {
                let (a, b) = colliding_pair();
                vec![a, b]
            }
            "64k" => (0..65_536u32).map(|i| padded(flood_flow(i))).collect(),
            "ack" => vec![padded(tcp_v4().flags(TCP_ACK))],
            "hit" => vec![padded(tcp_v4().ports(443, 40000).flags(TCP_RST))],
            _ => Vec::new(),
        };
        let method = match kind {
            "collide" => format!("{singles} single runs alternating two flows that share a cache slot"),
            "new" => format!("{singles} single runs, each a flow never seen before"),
            "refused" => format!(
                "{singles} single runs, each the RST answering a new connection's SYN (run untimed just before)"
            ),
            "syn" => format!("{singles} single runs, each a connection never seen before"),
            "64k" => "65 536 flows, one pass to insert, then one timed pass of single runs".to_owned(),
            _ => format!("{singles} single runs"),
        };
        let mut line = Line { name, method, trials: Vec::new() };
        for _ in 0..trials {
            // Untimed warm-up: the 64k flows all enter the table; for new flows, the cache fills
            // up so that every timed run evicts (and inserts) a flow, as in a long scan.
            if kind == "64k" {
                for frame in &frames {
                    programs.run(counting_xdp, frame, 1)?;
                }
            }
            if kind == "new" || kind == "syn" || kind == "refused" {
                for _ in 0..4 * rst_common::wire::FLOW_CACHE_SLOTS {
                    programs.run(counting_xdp, &padded(new_flow(next_new)), 1)?;
                    next_new += 1;
                }
            }
            let count = if kind == "64k" { frames.len() } else { singles as usize };
            let mut prog = Vec::with_capacity(count);
            let mut base = Vec::with_capacity(count);
            for i in 0..count {
                let new_frame;
                let frame: &[u8] = if kind == "refused" {
                    programs.run(counting_xdp, &padded(syn_of(next_new)), 1)?;
                    new_frame = padded(new_flow(next_new).flags(TCP_RST | TCP_ACK));
                    next_new += 1;
                    &new_frame
                } else if kind == "new" || kind == "syn" {
                    let flow = new_flow(next_new);
                    new_frame = padded(if kind == "syn" { flow.ports(50000, 443).flags(TCP_SYN) } else { flow });
                    next_new += 1;
                    &new_frame
                } else {
                    &frames[i % frames.len()]
                };
                prog.push(programs.run(counting_xdp, frame, 1)?);
                base.push(programs.run(PROG_XDP_BASELINE, frame, 1)?);
            }
            line.trials.push((median(&mut prog), median(&mut base)));
            let sample = programs.collector.collect()?;
            ensure!(sample.counters.overflow == 0, "the flow table overflowed during {name}");
        }
        lines.push(line);
    }

    Ok(json!({
        "part": "kernel",
        "trials": trials,
        "repeat": repeat,
        "singles": singles,
        "max_flows": max_flows,
        "counting": programs.ebpf.counting().as_str(),
        "budget_ns": BUDGET_NS,
        "lines": lines.iter().map(Line::to_json).collect::<Vec<_>>(),
    }))
}

/// Two IPv4 RST frames whose flows land in the same slot of the per-CPU cache.
fn colliding_pair() -> (Vec<u8>, Vec<u8>) {
    let first = tcp_v4().ports(443, 30000).flags(TCP_RST);
    let slot = first.flow_key(1).cache_slot();
    let second = (30001..u16::MAX)
        .map(|port| tcp_v4().ports(443, port).flags(TCP_RST))
        .find(|frame| frame.flow_key(1).cache_slot() == slot)
        .expect("some port collides among 35 000");
    (padded(first), padded(second))
}

/// A flow no other run uses: 172.16/12 sources, counting up.
fn new_flow(index: u32) -> FrameBuilder {
    let [_, b, c, d] = index.to_be_bytes();
    FrameBuilder::ipv4([172, 16 + (b & 0x0f), c, d], [192, 0, 2, 1]).ports(443, 50000).flags(TCP_RST)
}

/// The SYN that [`new_flow`]'s RST answers: the client's connection attempt.
fn syn_of(index: u32) -> FrameBuilder {
    let [_, b, c, d] = index.to_be_bytes();
    FrameBuilder::ipv4([192, 0, 2, 1], [172, 16 + (b & 0x0f), c, d]).ports(50000, 443).flags(TCP_SYN)
}

// ---------------------------------------------------------------------------------------------
// Part 2: the live-frames generator

/// `union bpf_attr` for BPF_PROG_LOAD, up to `expected_attach_type`, plus zeroed room.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    _rest: [u64; 8],
}

/// `union bpf_attr` for BPF_PROG_TEST_RUN (the `test` member).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const _: () = assert!(size_of::<TestRunAttr>() == 80);

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// Loads `r0 = XDP_TX; exit` as an XDP program.
fn load_xdp_tx() -> io::Result<OwnedFd> {
    // struct bpf_insn: code, dst_reg:4 | src_reg:4, off, imm.
    let insns: [u64; 2] = [
        // BPF_ALU64 | BPF_MOV | BPF_K (0xb7), dst r0, imm XDP_TX.
        u64::from_le_bytes([0xb7, 0, 0, 0, 0, 0, 0, 0]) | ((XDP_TX as u32 as u64) << 32),
        // BPF_JMP | BPF_EXIT (0x95).
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = b"GPL\0";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    attr.prog_name[..6].copy_from_slice(b"bm_gen");
    // SAFETY: `attr` is a valid, zero-padded bpf_attr prefix for BPF_PROG_LOAD; the instruction
    // array and license string it points to outlive the call and are only read.
    let ret =
        unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, &attr as *const ProgLoadAttr, size_of::<ProgLoadAttr>()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success BPF_PROG_LOAD returns a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}

/// One live-frames test run: `repeat` copies of `frame` transmitted out of `ctx`'s interface.
/// Returns the kernel-reported ns per frame.
fn live_run(prog: &OwnedFd, frame: &[u8], ctx: &XdpMd, repeat: u32, batch: u32) -> io::Result<u32> {
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ctx_size_in: size_of::<XdpMd>() as u32,
        ctx_in: ctx as *const XdpMd as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size: batch,
        ..Default::default()
    };
    // SAFETY: `attr` is a valid bpf_attr for BPF_PROG_TEST_RUN; `frame` and `ctx` outlive the
    // call and are only read, there are no output buffers.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &mut attr as *mut TestRunAttr, size_of::<TestRunAttr>())
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(attr.duration)
}

/// The veth's count of frames its peer's ring refused (`tx_queue_N_xdp_xmit_errors` in
/// `ethtool -S`, summed over queues), read through `SIOCETHTOOL`.
///
/// A live-frames run hands its frames to the peer's ring inside the syscall, and a full ring
/// (the peer's NAPI starved on a loaded machine) drops the rest there and counts them here. So
/// the change across one run is exactly what that run's flow lost before any XDP hook saw it.
struct XmitErrors {
    socket: OwnedFd,
    name: [u8; libc::IFNAMSIZ],
    /// Indices of the `*_xdp_xmit_errors` counters in the statistics array.
    indices: Vec<usize>,
    n_stats: u32,
    stats: Vec<u64>,
}

/// `struct ifreq` with the `ifr_data` member.
#[repr(C)]
struct IfreqData {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSTATS: u32 = 0x1d;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETH_SS_STATS: u32 = 1;
const ETH_GSTRING_LEN: usize = 32;

impl XmitErrors {
    fn open(iface: &str) -> anyhow::Result<XmitErrors> {
        // SAFETY: socket() has no memory preconditions.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("socket for SIOCETHTOOL");
        }
        // SAFETY: a successful socket() returns a descriptor nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut name = [0u8; libc::IFNAMSIZ];
        ensure!(iface.len() < name.len(), "interface name {iface:?} is too long");
        name[..iface.len()].copy_from_slice(iface.as_bytes());
        let mut this = XmitErrors { socket, name, indices: Vec::new(), n_stats: 0, stats: Vec::new() };

        // struct ethtool_sset_info: cmd, reserved, sset_mask (u64), data[1] (u32).
        let mut info = [0u32; 5];
        info[0] = ETHTOOL_GSSET_INFO;
        info[2] = 1 << ETH_SS_STATS;
        this.ioctl(info.as_mut_ptr().cast()).context("ETHTOOL_GSSET_INFO")?;
        let count = info[4];
        // struct ethtool_gstrings: cmd, string_set, len, then len * ETH_GSTRING_LEN bytes.
        let mut strings = vec![0u32; 3 + count as usize * ETH_GSTRING_LEN / 4];
        strings[0] = ETHTOOL_GSTRINGS;
        strings[1] = ETH_SS_STATS;
        strings[2] = count;
        this.ioctl(strings.as_mut_ptr().cast()).context("ETHTOOL_GSTRINGS")?;
        let bytes: Vec<u8> = strings[3..].iter().flat_map(|w| w.to_ne_bytes()).collect();
        for (index, raw) in bytes.chunks(ETH_GSTRING_LEN).enumerate() {
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            let stat = String::from_utf8_lossy(&raw[..end]);
            if stat.starts_with("tx_queue_") && stat.ends_with("_xdp_xmit_errors") {
                this.indices.push(index);
            }
        }
        ensure!(!this.indices.is_empty(), "{iface} has no xdp_xmit_errors counter (not a veth?)");
        this.n_stats = count;
        // struct ethtool_stats: cmd, n_stats, then n_stats u64.
        this.stats = vec![0u64; 1 + count as usize];
        Ok(this)
    }

    fn ioctl(&self, data: *mut libc::c_void) -> io::Result<()> {
        let mut request = IfreqData { name: self.name, data, _pad: [0; 16] };
        // SAFETY: `request` names the interface and points at a buffer laid out as the command
        // in its first word asks, sized from the kernel's own count; both outlive the call.
        let ret = unsafe { libc::ioctl(self.socket.as_raw_fd(), SIOCETHTOOL, &mut request) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn read(&mut self) -> io::Result<u64> {
        self.stats.fill(0);
        self.stats[0] = u64::from(ETHTOOL_GSTATS) | u64::from(self.n_stats) << 32;
        let stats = self.stats.as_mut_ptr().cast();
        self.ioctl(stats)?;
        Ok(self.indices.iter().map(|&i| self.stats[1 + i]).sum())
    }
}

fn generate(opts: &Opts) -> anyhow::Result<Value> {
    let iface = opts.text("iface").context("--iface IFACE is required")?;
    let flows: u32 = opts.get("flows", 64)?;
    let first: u32 = opts.get("first", 0)?;
    let repeat: u32 = opts.get("repeat", 1)?;
    let passes: u64 = opts.get("passes", 1)?;
    let seconds: f64 = opts.get("seconds", 0.0)?;
    // Calls per second (0: as fast as possible).
    let rate: f64 = opts.get("rate", 0.0)?;
    let batch: u32 = opts.get("batch", 64)?;
    ensure!(flows > 0 && repeat > 0, "--flows and --repeat must be positive");
    let ifindex = rstwatch::loader::resolve_interface(iface)?;
    let prog = load_xdp_tx().context("loading the XDP_TX generator program")?;
    let frames: Vec<Vec<u8>> = (first..first + flows).map(|i| padded(flood_flow(i))).collect();
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
                let due = Duration::from_secs_f64(calls as f64 / rate);
                let elapsed = started.elapsed();
                if due > elapsed {
                    std::thread::sleep(due - elapsed);
                }
            }
            let errors_before = xmit_errors.read().context("ETHTOOL_GSTATS")?;
            let ns = live_run(&prog, frame, ctx, repeat, batch).context("live-frames test run")?;
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
    let expected: Vec<Value> = per_flow
        .iter()
        .zip(&per_flow_dropped)
        .map(|(&n, &lost)| n.saturating_sub(lost))
        .enumerate()
        .filter(|(_, n)| *n > 0)
        .map(|(i, n)| {
            let key = flood_flow(first + i as u32).flow_key(0);
            json!([key.src_ip().to_string(), key.sport, key.dst_ip().to_string(), key.dport, n])
        })
        .collect();
    Ok(json!({
        "part": "gen",
        "iface": iface,
        "ifindex": ifindex,
        "flows": flows,
        "repeat": repeat,
        "calls": calls,
        "sent": sent,
        "dropped_by_veth": dropped,
        // Another generator on the same veth would share the counter: never underflow.
        "delivered": sent.saturating_sub(dropped),
        "elapsed_s": elapsed,
        "wall_rate_pps": sent as f64 / elapsed,
        "kernel_ns_per_frame": kernel_ns / sent.max(1) as f64,
        "kernel_rate_pps": if kernel_ns > 0.0 { sent as f64 / (kernel_ns / 1e9) } else { 0.0 },
        "frame_bytes": frames[0].len(),
        "expected": if opts.get("list", 0u32)? > 0 { Value::Array(expected) } else { Value::Null },
    }))
}

// ---------------------------------------------------------------------------------------------
// Part 3: userspace read cost

/// Stores `keys[i]` with `values[i]` resets in `epoch`'s half of the flow table, the way the
/// kernel does ([`rst_common::table::add_to_flow_table`]).
fn fill_table(table: &FlowTableMap, epoch: u32, keys: &[FlowKey], values: &[u64]) -> anyhow::Result<()> {
    for (key, &resets) in keys.iter().zip(values) {
        let added = rst_common::table::add_to_flow_table(table, table.bits(), epoch, key, resets);
        ensure!(added == rst_common::table::Added::Stored, "the flow table answered {added:?} for {key:?}");
    }
    Ok(())
}

/// A second handle on one of the object's maps (the collector owns the first).
fn second_handle(ebpf: &Ebpf, name: &str) -> anyhow::Result<MapData> {
    let map = ebpf.map(name).with_context(|| format!("no map {name}"))?;
    let data = match map {
        Map::HashMap(data) | Map::Array(data) | Map::PerCpuArray(data) => data,
        other => bail!("unexpected map type for {name}: {other:?}"),
    };
    Ok(MapData::from_id(data.info()?.id())?)
}

fn membarrier_ns() -> f64 {
    let started = Instant::now();
    // SAFETY: membarrier takes no pointers; MEMBARRIER_CMD_GLOBAL (1) waits for a grace period.
    let ret = unsafe { libc::syscall(libc::SYS_membarrier, 1 as libc::c_long, 0, 0) };
    assert!(ret >= 0, "membarrier(MEMBARRIER_CMD_GLOBAL): {}", io::Error::last_os_error());
    started.elapsed().as_nanos() as f64
}

fn drain(opts: &Opts) -> anyhow::Result<Value> {
    let sizes: Vec<u32> = opts.list("flows", "1000,100000,1000000")?;
    let trials: usize = opts.get("trials", 5)?;
    let largest = *sizes.iter().max().context("--flows is empty")?;
    let mut ebpf = rstwatch::loader::load(largest.max(1024)).context("loading the eBPF object (needs root)")?;
    let table_map = second_handle(&ebpf, MAP_FLOW_TABLE)?;
    let blocks_map = second_handle(&ebpf, MAP_FLOW_BLOCKS)?;
    let bits = rst_common::table::flow_table_bits(largest.max(1024));
    let mut table = FlowTableMap::new(table_map.fd().as_fd(), blocks_map.fd().as_fd(), bits)?;
    let epoch: Array<MapData, u32> = Map::Array(second_handle(&ebpf, MAP_EPOCH)?).try_into()?;
    let cache = second_handle(&ebpf, rst_common::wire::MAP_FLOW_CACHE)?;
    let log_data = second_handle(&ebpf, rst_common::wire::MAP_EVICTION_LOG)?;
    let log_entries = log_data.info()?.max_entries();
    let mut log: Array<MapData, rst_common::wire::LoggedFlow> = Map::Array(log_data).try_into()?;
    let mut resets: PerCpuArray<MapData, rst_common::wire::ResetCounters> =
        Map::PerCpuArray(second_handle(&ebpf, rst_common::wire::MAP_RESET_COUNTERS)?).try_into()?;
    let mut collector = Collector::new(&mut ebpf)?;

    let mut flips = Vec::new();
    let mut empty = Vec::new();
    for _ in 0..trials.max(5) {
        flips.push(membarrier_ns());
        let sample = collector.collect()?;
        empty.push(sample.read_time.as_nanos() as f64);
    }
    let empty_ns = median(&mut empty);
    // The flow cache's share of every collect: one batch read and one batch clear of an epoch's
    // half (1024 slots per CPU).
    let cpus = aya::util::nr_cpus().map_err(|(what, error)| anyhow::anyhow!("{what}: {error}"))?;
    let slots = rst_common::wire::FLOW_CACHE_SLOTS;
    let zeroes = vec![rst_common::wire::CacheSlot::EMPTY; slots as usize * cpus];
    let (mut cache_read, mut cache_clear) = (Vec::new(), Vec::new());
    for _ in 0..trials.max(5) {
        let started = Instant::now();
        let _: Vec<rst_common::wire::CacheSlot> =
            rstwatch::batch::lookup_per_cpu_array(cache.fd().as_fd(), slots, slots, cpus)?;
        cache_read.push(started.elapsed().as_nanos() as f64);
        let started = Instant::now();
        rstwatch::batch::update_per_cpu_array(cache.fd().as_fd(), slots, &zeroes, cpus)?;
        cache_clear.push(started.elapsed().as_nanos() as f64);
    }
    let mut rows = Vec::new();
    for &n in &sizes {
        let keys: Vec<FlowKey> = (0..n)
            .map(|i| {
                let mut key = flood_flow(i).flow_key(7);
                key.sport = (i % 50_000) as u16;
                key
            })
            .collect();
        let values: Vec<u64> = (0..n).map(|i| u64::from(i % 7 + 1)).collect();
        let expected: u64 = values.iter().sum();
        let mut times = Vec::new();
        let mut fill = Vec::new();
        for _ in 0..trials {
            // Fill the table of the epoch the kernel is writing now: the next collect drains it.
            let active = epoch.get(&0, 0)? & 1;
            let started = Instant::now();
            fill_table(&table, active, &keys, &values)?;
            fill.push(started.elapsed().as_nanos() as f64);
            let sample = collector.collect()?;
            ensure!(sample.flows.len() == n as usize, "drained {} of {n} flows", sample.flows.len());
            let total: u64 = sample.flows.iter().map(|(_, r)| r).sum();
            ensure!(total == expected, "drained {total} resets, filled {expected}");
            times.push(sample.read_time.as_nanos() as f64);
        }
        // The table scan alone (read and empty every slot), without merging by key.
        let mut raw = Vec::new();
        for _ in 0..trials {
            let active = epoch.get(&0, 0)? & 1;
            fill_table(&table, active, &keys, &values)?;
            let started = Instant::now();
            let drained = table.drain(active, false, |_, _| {});
            raw.push(started.elapsed().as_nanos() as f64);
            ensure!(drained == n as usize, "the scan emptied {drained} slots for {n} flows");
        }
        // The same table with every CPU's eviction log full as well (distinct flows): the log
        // entries go through the merge map, and then every table slot is looked up in it.
        let cpu_ids = rstwatch::flow_table::possible_cpu_ids()?;
        let log_slots = log_entries / (2 * rstwatch::flow_table::eviction_log_cpus(&cpu_ids));
        let logged: Vec<(u32, rst_common::wire::LoggedFlow)> = cpu_ids
            .iter()
            .flat_map(|&cpu| (0..log_slots).map(move |n| (cpu, n)))
            .map(|(cpu, n)| {
                let key = flood_flow(n + (cpu * log_slots)).flow_key(9);
                (cpu, rst_common::wire::LoggedFlow { key, resets: 1 })
            })
            .collect();
        let mut with_logs = Vec::new();
        for _ in 0..trials {
            let active = epoch.get(&0, 0)? & 1;
            fill_table(&table, active, &keys, &values)?;
            for (at, (cpu, entry)) in logged.iter().enumerate() {
                let n = at as u32 % log_slots;
                log.set((cpu * 2 + active) * log_slots + n, entry, 0)?;
            }
            let counters = rst_common::wire::ResetCounters { logged: u64::from(log_slots), ..Default::default() };
            resets.set(active, PerCpuValues::try_from(vec![counters; cpus])?, 0)?;
            let sample = collector.collect()?;
            let total: u64 = sample.flows.iter().map(|(_, r)| r).sum();
            ensure!(total == expected + logged.len() as u64, "drained {total} resets with the logs");
            with_logs.push(sample.read_time.as_nanos() as f64);
        }
        let with_logs_ns = median(&mut with_logs);
        let entries_with_logs = f64::from(n) + logged.len() as f64;
        let collect_ns = median(&mut times);
        let raw_ns = median(&mut raw);
        rows.push(json!({
            "with_full_logs_collect_ms": with_logs_ns / 1e6,
            "with_full_logs_entries": entries_with_logs,
            "with_full_logs_ns_per_entry": with_logs_ns / entries_with_logs,
            "scan_ms": raw_ns / 1e6,
            "scan_ns_per_entry": raw_ns / f64::from(n),
            "flows": n,
            "collect_ms": collect_ns / 1e6,
            "ns_per_entry": collect_ns / f64::from(n),
            "ns_per_entry_over_empty": (collect_ns - empty_ns) / f64::from(n),
            "fill_ms": median(&mut fill) / 1e6,
        }));
    }
    Ok(json!({
        "part": "drain",
        "trials": trials,
        "grace_period_ms": median(&mut flips) / 1e6,
        "empty_collect_ms": empty_ns / 1e6,
        "cache_read_ms": median(&mut cache_read) / 1e6,
        "cache_clear_ms": median(&mut cache_clear) / 1e6,
        "rows": rows,
    }))
}

/// What one cache line read costs when it depends on the one before (a pointer chase over a
/// random cycle of 64-byte lines): the price of a random slot in a table of that size.
fn memory_latency(opts: &Opts) -> anyhow::Result<Value> {
    let sizes: Vec<usize> = opts.list("mib", "1,4,16,64")?;
    const LINE_WORDS: usize = 8;
    let mut rows = Vec::new();
    for mib in sizes {
        let lines = (mib << 20) / 64;
        ensure!(lines > 1, "--mib must be positive");
        // A random cyclic order of the lines (Sattolo's shuffle: one cycle through all).
        let mut order: Vec<usize> = (0..lines).collect();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for i in (1..lines).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            order.swap(i, (state % i as u64) as usize);
        }
        let mut next = vec![0usize; lines * LINE_WORDS];
        for i in 0..lines {
            next[order[i] * LINE_WORDS] = order[(i + 1) % lines] * LINE_WORDS;
        }
        let steps = 2_000_000usize;
        let mut at = 0usize;
        let started = Instant::now();
        for _ in 0..steps {
            at = next[at];
        }
        let ns = started.elapsed().as_nanos() as f64 / steps as f64;
        std::hint::black_box(at);
        rows.push(json!({ "mib": mib, "ns_per_dependent_read": ns }));
    }
    Ok(json!({ "part": "latency", "rows": rows }))
}

// ---------------------------------------------------------------------------------------------
// Helpers for the flood comparison and the CPU-share runs

fn hold(opts: &Opts) -> anyhow::Result<Value> {
    let iface = opts.text("iface").context("--iface IFACE is required")?;
    let name = opts.text("program").unwrap_or(PROG_XDP_BASELINE).to_owned();
    let ifindex = rstwatch::loader::resolve_interface(iface)?;
    let mut ebpf = rstwatch::loader::load(1024)?;
    let program: &mut Xdp = ebpf.program_mut(&name).with_context(|| format!("no program {name}"))?.try_into()?;
    if program.fd().is_err() {
        program.load()?;
    }
    let attachment = rstwatch::loader::attach_xdp(program, iface, ifindex, rstwatch::loader::XdpModeChoice::Auto)?;
    eprintln!("bench: attached {name} to {iface} ({:?})", attachment.hook);
    // Until killed: the bpf_link closes with the process, which detaches the program.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn packet_flood(opts: &Opts) -> anyhow::Result<Value> {
    let iface = opts.text("iface").context("--iface IFACE is required")?;
    let flows: u32 = opts.get("flows", 10_000)?;
    let rate: f64 = opts.get("rate", 100_000.0)?;
    let seconds: f64 = opts.get("seconds", 5.0)?;
    ensure!(flows > 0 && rate > 0.0 && seconds > 0.0, "--flows, --rate and --seconds must be positive");
    let ifindex = rstwatch::loader::resolve_interface(iface)?;
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("socket(AF_PACKET)");
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: PACKET_QDISC_BYPASS takes an int; the pointer and length describe `one`.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            &one as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as u32,
        )
    };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid starting value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    let frames: Vec<Vec<u8>> = (0..flows).map(|i| padded(flood_flow(i))).collect();
    const BATCH: usize = 64;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut next = 0usize;
    while started.elapsed().as_secs_f64() < seconds {
        let due = Duration::from_secs_f64(sent as f64 / rate);
        let elapsed = started.elapsed();
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
        let mut iovecs: Vec<libc::iovec> = Vec::with_capacity(BATCH);
        for k in 0..BATCH {
            let frame = &frames[(next + k) % frames.len()];
            iovecs.push(libc::iovec { iov_base: frame.as_ptr() as *mut libc::c_void, iov_len: frame.len() });
        }
        // SAFETY: mmsghdr is plain data; zero is a valid starting value, filled in below.
        let mut messages: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
        for (message, iov) in messages.iter_mut().zip(iovecs.iter_mut()) {
            message.msg_hdr.msg_name = &mut addr as *mut libc::sockaddr_ll as *mut libc::c_void;
            message.msg_hdr.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
            message.msg_hdr.msg_iov = iov;
            message.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every message points at a live iovec, frame and address for the whole call.
        let ret = unsafe { libc::sendmmsg(socket.as_raw_fd(), messages.as_mut_ptr(), BATCH as u32, 0) };
        if ret < 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::ENOBUFS) {
                continue;
            }
            return Err(error).context("sendmmsg");
        }
        sent += ret as u64;
        next = (next + ret as usize) % frames.len();
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(json!({ "part": "pkt", "flows": flows, "sent": sent, "elapsed_s": elapsed, "rate_pps": sent as f64 / elapsed }))
}
