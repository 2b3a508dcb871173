//! Part 1: cost per packet of `rstwatch_xdp` over `rstwatch_xdp_pass` (the empty program in the
//! same object) under `BPF_PROG_TEST_RUN`, from the kernel-reported duration.
//!
//! Frames that can repeat run with a large `repeat` (one call per trial and program, A/B
//! interleaved, the order alternating between trials); flows that must change from run to run (a
//! new flow per run, two flows that evict each other from a cache slot, 64k flows) run as single
//! test runs, each prog run followed by a baseline run of the same frame, and the difference of
//! the medians is reported (the fixed per-call cost is in both and cancels out).

use anyhow::ensure;
use rst_bench_report::{median, CountingMode, KernelLine, KernelReport};
use rst_common::{
    parse::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    wire::{CountingPrograms, PROG_PAUSES, PROG_TC_BASELINE, PROG_XDP_ATOMIC, PROG_XDP_BASELINE},
};
use rst_craft::{
    tcp_v4, tcp_v6,
    tunnel::{Outer, Tunnel},
    FrameBuilder, VlanKind,
};
use rstwatch::{
    load::testrun::{self, Harness},
    load::Counting,
};

use super::{flood_flow, padded, BUDGET_NS};

/// `inner` inside VXLAN between two tunnel endpoints, as Linux's driver sends it.
fn vxlan(inner: FrameBuilder) -> Vec<u8> {
    Tunnel::vxlan(Outer::V4([192, 168, 77, 2], [192, 168, 77, 1]), 42).wrap(&inner.build())
}

/// How a frame reaches the programs: as an XDP buffer, or as an skb at TC.
#[derive(Clone, Copy)]
enum Hook {
    Xdp,
    Tc,
}

/// Kernel-reported ns per run for `repeat` runs of `frame` through the program `name`.
fn run(harness: &Harness, hook: Hook, name: &str, frame: &[u8], repeat: u32) -> anyhow::Result<f64> {
    let duration = match hook {
        Hook::Xdp => testrun::run_xdp(harness.xdp(name)?, frame, None, repeat)?,
        Hook::Tc => testrun::run_tc(harness.tc(name)?, frame, repeat)?,
    };
    Ok(duration.as_nanos() as f64)
}

/// A line for a frame that can repeat: per trial one test run of `repeat` runs through `prog`
/// and one through `base`, collecting after each trial.
fn repeated_line(
    harness: &mut Harness,
    hook: Hook,
    [prog, base]: [&str; 2],
    (name, method): (&'static str, String),
    frame: &[u8],
    trials: usize,
    repeat: u32,
) -> anyhow::Result<Line> {
    let mut line = Line { name, method, trials: Vec::new() };
    for trial in 0..trials {
        // A/B, then B/A: a drift in machine load hits both programs alike.
        let (p, b) = if trial % 2 == 0 {
            let p = run(harness, hook, prog, frame, repeat)?;
            (p, run(harness, hook, base, frame, repeat)?)
        } else {
            let b = run(harness, hook, base, frame, repeat)?;
            (run(harness, hook, prog, frame, repeat)?, b)
        };
        line.trials.push((p, b));
        harness.collect()?;
    }
    Ok(line)
}

/// One line of the part-1 table.
struct Line {
    name: &'static str,
    method: String,
    /// Per trial: (program ns, baseline ns).
    trials: Vec<(f64, f64)>,
}

impl Line {
    fn report(&self) -> KernelLine {
        let deltas: Vec<f64> = self.trials.iter().map(|(p, b)| p - b).collect();
        let delta = median(deltas.iter().copied());
        KernelLine {
            name: self.name.to_owned(),
            method: self.method.clone(),
            prog_ns: median(self.trials.iter().map(|(p, _)| *p)),
            baseline_ns: median(self.trials.iter().map(|(_, b)| *b)),
            over_empty_ns: delta,
            budget_share: delta / BUDGET_NS,
            // Sorted, as the median left them: the table lists them in order.
            trial_deltas_ns: sorted(deltas),
        }
    }
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(|a, b| a.total_cmp(b));
    values
}

/// Part 1's options.
#[derive(Clone, Debug, clap::Args)]
pub struct KernelArgs {
    /// Trials per line (A/B, then B/A).
    #[arg(long, default_value_t = 7)]
    pub trials: usize,
    /// Runs per test run for the frames that repeat.
    #[arg(long, default_value_t = 2_000_000)]
    pub repeat: u32,
    /// Single test runs per trial for the flows that change every run.
    #[arg(long, default_value_t = 20_000)]
    pub singles: u32,
    /// Flow table size; rstwatch's default: a new flow's insert lands in a table of this capacity.
    #[arg(long, default_value_t = rst_common::wire::DEFAULT_MAX_FLOWS)]
    pub max_flows: u32,
    /// Only the lines whose names contain one of these (comma-separated); all by default.
    #[arg(long, value_delimiter = ',')]
    pub lines: Vec<String>,
    /// `atomic`: what a PREEMPT_RT kernel gets (see `rstwatch::load::Counting`).
    #[arg(long, value_enum, default_value_t = Counting::Auto)]
    pub counting: Counting,
    /// Measure the capturing programs (`--capture`) with this budget per second (RSTs handed to
    /// the ring; the ring is emptied after every trial, so keep `--repeat` under ~14 000 to
    /// measure the hand-over rather than a full ring).
    #[arg(long)]
    pub capture_budget: Option<u32>,
}

pub fn kernel(args: &KernelArgs) -> anyhow::Result<KernelReport> {
    let KernelArgs { trials, repeat, singles, max_flows, ref lines, counting, capture_budget } = *args;
    // Smaller tables (to see what fits the CPU caches) skip the 64k-flow line, which would overflow.
    ensure!(max_flows >= 8192, "--max-flows must hold the new-flow lines' 4 096 warm-up flows twice");
    let wanted = |name: &str| lines.is_empty() || lines.iter().any(|part| name.contains(part.trim()));
    let capture = capture_budget.map(|budget| rstwatch::load::CaptureLoad {
        budget,
        snaplen: rst_common::wire::CAPTURE_DEFAULT_SNAPLEN,
        handshakes: false,
    });
    let mut programs = Harness::load_with(max_flows, counting, capture)?;
    programs.load_baselines()?;
    programs.load_pauses()?;
    // The counting programs loaded: the per-CPU set, or the atomic one.
    let CountingPrograms { xdp: counting_xdp, tc_egress: counting_tc_egress, .. } = programs.programs();
    let mut measured = Vec::new();

    // Frames that repeat: one test run of `repeat` runs per program and trial.
    let repeated: Vec<(&'static str, Vec<u8>)> = vec![
        ("non-TCP (IPv4 UDP)", {
            let udp = FrameBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2]).ip_payload(17, &[0u8; 26]);
            udp.build().into_bytes()
        }),
        ("IPv4 TCP ACK", padded(tcp_v4().flags(TCP_ACK))),
        ("IPv4 RST, existing flow (per-CPU cache hit)", padded(tcp_v4().ports(443, 40000).flags(TCP_RST))),
        ("IPv6 RST, existing flow", padded(tcp_v6().ports(443, 40001).flags(TCP_RST))),
        // The ring (PAYLOAD_RING) is full after its first ~1 000 records and nothing drains it
        // here: what this line measures past them is the check, the call and a failed reserve.
        (
            "IPv4 RST with a payload, existing flow (PAYLOAD_RING full)",
            padded(tcp_v4().ports(443, 40009).flags(TCP_RST | TCP_ACK).payload(b"policy deny")),
        ),
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
        // Inside VXLAN (outer IPv4, UDP 4789, VNI 42): the tunnel's header walked, the inner
        // segment counted under the tunnel's number.
        ("VXLAN: inner IPv4 TCP ACK", vxlan(tcp_v4().flags(TCP_ACK))),
        ("VXLAN: inner IPv4 RST, existing flow", vxlan(tcp_v4().ports(443, 40010).flags(TCP_RST))),
    ];
    // What the host sends: the TC egress program against an empty TC program, same method.
    let egress: Vec<(&'static str, Vec<u8>)> = vec![
        ("TC egress: IPv4 TCP ACK (what the host sends)", padded(tcp_v4().flags(TCP_ACK))),
        (
            "TC egress: IPv4 TCP ACK, 1500-byte frame",
            tcp_v4().flags(TCP_ACK).payload(&[0u8; 1446]).build().into_bytes(),
        ),
        ("TC egress: IPv4 RST, existing flow", padded(tcp_v4().ports(443, 40005).flags(TCP_RST | TCP_ACK))),
    ];
    for (hook, programs_ab, frame_kind, frames) in [
        (Hook::Xdp, [counting_xdp, PROG_XDP_BASELINE], "", repeated),
        (Hook::Tc, [counting_tc_egress, PROG_TC_BASELINE], ", as an skb", egress),
    ] {
        for (name, frame) in frames {
            if !wanted(name) {
                continue;
            }
            let method = format!("repeat {repeat}, {} B frame{frame_kind}", frame.len());
            let line = repeated_line(&mut programs, hook, programs_ab, (name, method), &frame, trials, repeat)?;
            measured.push(line);
        }
    }

    // `--idle-gaps`: the pauses program, which runs beside the counting programs for every
    // frame, against the empty TC program. A known connection is one the counting program saw
    // open (its SYN and SYN+ACK, run untimed first).
    let [known_syn, known_synack, _] = handshake_to(0x000f_0000, PAUSES_PORT);
    for frame in [known_syn, known_synack] {
        run(&programs, Hook::Xdp, counting_xdp, &padded(frame), 1)?;
    }
    let known_ack = FrameBuilder::ipv4(client_of(0x000f_0000), [192, 0, 2, 1])
        .ports(50000, PAUSES_PORT)
        .flags(TCP_ACK)
        .seq_ack(1001, 9001);
    let pauses: Vec<(&'static str, Vec<u8>)> = vec![
        ("--idle-gaps: IPv4 TCP ACK, unknown connection (pauses program)", padded(tcp_v4().flags(TCP_ACK))),
        ("--idle-gaps: IPv4 TCP ACK of a known connection (pauses program)", padded(known_ack)),
        ("--idle-gaps: non-TCP (IPv4 UDP) (pauses program)", {
            let udp = FrameBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2]).ip_payload(17, &[0u8; 26]);
            udp.build().into_bytes()
        }),
    ];
    for (name, frame) in pauses {
        if !wanted(name) {
            continue;
        }
        let method = format!("repeat {repeat}, {} B frame, as an skb", frame.len());
        let programs_ab = [PROG_PAUSES, PROG_TC_BASELINE];
        measured.push(repeated_line(&mut programs, Hook::Tc, programs_ab, (name, method), &frame, trials, repeat)?);
    }
    let many = "--idle-gaps: ACKs of 64k known connections, round robin (pauses program, single runs)";
    if max_flows >= 65_536 && wanted(many) {
        let clients: Vec<u32> = (0..65_536u32).map(|i| 0x0010_0000 + i).collect();
        for &client in &clients {
            let [syn, synack, _] = handshake_to(client, PAUSES_PORT);
            run(&programs, Hook::Xdp, counting_xdp, &padded(syn), 1)?;
            run(&programs, Hook::Xdp, counting_xdp, &padded(synack), 1)?;
        }
        let acks: Vec<Vec<u8>> = clients
            .iter()
            .map(|&client| {
                padded(
                    FrameBuilder::ipv4(client_of(client), [192, 0, 2, 1])
                        .ports(50000, PAUSES_PORT)
                        .flags(TCP_ACK)
                        .seq_ack(1001, 9001),
                )
            })
            .collect();
        let mut line = Line {
            name: many,
            method: "65 536 connections, one timed pass of single runs".to_owned(),
            trials: Vec::new(),
        };
        for _ in 0..trials {
            let mut prog = Vec::with_capacity(acks.len());
            let mut base = Vec::with_capacity(acks.len());
            for ack in &acks {
                prog.push(run(&programs, Hook::Tc, PROG_PAUSES, ack, 1)?);
                base.push(run(&programs, Hook::Tc, PROG_TC_BASELINE, ack, 1)?);
            }
            line.trials.push((median(prog), median(base)));
        }
        measured.push(line);
    }

    // Flows that change every run: single test runs (no dispatcher swap), each followed by the
    // baseline on the same frame; per trial, median(prog) - median(baseline).
    let single_lines: [(&'static str, &str); 10] = [
        ("IPv4 RST, existing flow, table path (two flows evicting each other)", "collide"),
        ("IPv4 RST, new flow each run (table store)", "new"),
        ("IPv4 RST refusing the SYN just seen, new flow each run (a refused connect)", "refused"),
        (
            "IPv4 RST refusing a new client of a service that accepted before, nothing open (a service gone down)",
            "down",
        ),
        ("IPv4 SYN, new connection each run (connection state + service count)", "syn"),
        ("IPv4 SYN+ACK accepting the SYN just seen, new client of one service each run (accept)", "synack"),
        ("IPv4 FIN closing the connection just accepted, new client of one service each run (close)", "fin"),
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
            "down" => format!(
                "{singles} single runs, each the RST answering a new client's SYN (run untimed just before) to one \
                 service that accepted and closed a connection before the trial"
            ),
            "syn" => format!("{singles} single runs, each a connection never seen before"),
            "synack" => format!("{singles} single runs, each the SYN+ACK answering a new client's SYN (run untimed just before)"),
            "fin" => format!(
                "{singles} single runs, each the client's FIN of a connection whose SYN and SYN+ACK ran untimed just before"
            ),
            "64k" => "65 536 flows, one pass to insert, then one timed pass of single runs".to_owned(),
            _ => format!("{singles} single runs"),
        };
        let mut line = Line { name, method, trials: Vec::new() };
        for _ in 0..trials {
            // Untimed warm-up: the 64k flows all enter the table; for new flows, the cache fills
            // up so that every timed run evicts (and inserts) a flow, as in a long scan.
            if kind == "64k" {
                for frame in &frames {
                    run(&programs, Hook::Xdp, counting_xdp, frame, 1)?;
                }
            }
            if matches!(kind, "new" | "syn" | "refused" | "down" | "synack" | "fin") {
                for _ in 0..4 * rst_common::wire::FLOW_CACHE_SLOTS {
                    run(&programs, Hook::Xdp, counting_xdp, &padded(new_flow(next_new)), 1)?;
                    next_new += 1;
                }
            }
            if kind == "down" {
                // The service accepts one connection and both sides close it: counted, none open.
                let [syn, synack, fin] = handshake_to(next_new, DOWN_PORT);
                let server_fin = FrameBuilder::ipv4([192, 0, 2, 1], client_of(next_new))
                    .ports(DOWN_PORT, 50000)
                    .flags(TCP_FIN | TCP_ACK)
                    .seq_ack(9001, 1002);
                for frame in [syn, synack, fin, server_fin] {
                    run(&programs, Hook::Xdp, counting_xdp, &padded(frame), 1)?;
                }
                next_new += 1;
            }
            let count = if kind == "64k" { frames.len() } else { singles as usize };
            let mut prog = Vec::with_capacity(count);
            let mut base = Vec::with_capacity(count);
            for i in 0..count {
                let new_frame;
                let frame: &[u8] = if kind == "synack" || kind == "fin" {
                    let [syn, synack, fin] = handshake_of(next_new);
                    run(&programs, Hook::Xdp, counting_xdp, &padded(syn), 1)?;
                    if kind == "fin" {
                        run(&programs, Hook::Xdp, counting_xdp, &padded(synack.clone()), 1)?;
                    }
                    new_frame = padded(if kind == "fin" { fin } else { synack });
                    next_new += 1;
                    &new_frame
                } else if kind == "down" {
                    let [syn, ..] = handshake_to(next_new, DOWN_PORT);
                    run(&programs, Hook::Xdp, counting_xdp, &padded(syn), 1)?;
                    new_frame = padded(
                        FrameBuilder::ipv4([192, 0, 2, 1], client_of(next_new))
                            .ports(DOWN_PORT, 50000)
                            .flags(TCP_RST | TCP_ACK)
                            .seq_ack(0, 1001),
                    );
                    next_new += 1;
                    &new_frame
                } else if kind == "refused" {
                    run(&programs, Hook::Xdp, counting_xdp, &padded(syn_of(next_new)), 1)?;
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
                prog.push(run(&programs, Hook::Xdp, counting_xdp, frame, 1)?);
                base.push(run(&programs, Hook::Xdp, PROG_XDP_BASELINE, frame, 1)?);
            }
            line.trials.push((median(prog), median(base)));
            let sample = programs.collect()?;
            ensure!(sample.counters.overflow == 0, "the flow table overflowed during {name}");
        }
        measured.push(line);
    }

    Ok(KernelReport {
        trials,
        repeat,
        singles,
        max_flows,
        counting: if programs.programs().xdp == PROG_XDP_ATOMIC { CountingMode::Atomic } else { CountingMode::PerCpu },
        budget_ns: BUDGET_NS,
        lines: measured.iter().map(Line::report).collect(),
    })
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

/// The service port of the `--idle-gaps` lines' connections: apart from the others' services.
const PAUSES_PORT: u16 = 8443;

/// The service port of the "down" line: apart from 443, which the SYN+ACK line leaves with
/// thousands of connections open.
const DOWN_PORT: u16 = 444;

/// Client `index`: 172.16/12 addresses, counting up.
fn client_of(index: u32) -> [u8; 4] {
    let [_, b, c, d] = index.to_be_bytes();
    [172, 16 + (b & 0x0f), c, d]
}

/// A new client's SYN to one service (192.0.2.1:443), the service's SYN+ACK and the client's
/// FIN: what a busy server sees, one open count going up and down.
fn handshake_of(index: u32) -> [FrameBuilder; 3] {
    handshake_to(index, 443)
}

/// [`handshake_of`] to port `port` of the same server.
fn handshake_to(index: u32, port: u16) -> [FrameBuilder; 3] {
    let (client, server) = (client_of(index), [192, 0, 2, 1]);
    let to_server =
        |flags, seq, ack| FrameBuilder::ipv4(client, server).ports(50000, port).flags(flags).seq_ack(seq, ack);
    [
        to_server(TCP_SYN, 1000, 0),
        FrameBuilder::ipv4(server, client).ports(port, 50000).flags(TCP_SYN | TCP_ACK).seq_ack(9000, 1001),
        to_server(TCP_FIN | TCP_ACK, 1001, 9001),
    ]
}

/// The SYN that [`new_flow`]'s RST answers: the client's connection attempt.
fn syn_of(index: u32) -> FrameBuilder {
    let [_, b, c, d] = index.to_be_bytes();
    FrameBuilder::ipv4([192, 0, 2, 1], [172, 16 + (b & 0x0f), c, d]).ports(50000, 443).flags(TCP_SYN)
}
