//! `rstwatch replay`: the real binary on real and crafted captures.
//!
//! - the shared corpus and the fixtures in `tests/data` give exactly tshark's per-direction
//!   RST counts (`NAME.resets.json`), and the kernel's (`--kernel`, BPF_PROG_TEST_RUN);
//! - every crafted case of `rst_craft` re-wrapped as SLL, SLL2, raw IP and BSD
//!   loopback is classified as on Ethernet, by replay and by the kernel;
//! - intervals follow capture time; broken files fail cleanly, naming file and frame, and
//!   `--keep-going` still reports what was read; replay runs without privileges.
//!
//! Tests that need the kernel (`--kernel`) need root, like the other kernel tests.

#![allow(clippy::expect_used, clippy::panic)] // test helpers: a panic is the failure report

use std::{
    collections::BTreeMap,
    fs::File,
    io::BufWriter,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use rst_common::{
    parse::{TCP_ACK, TCP_RST, TCP_SYN},
    Observation,
};
use rst_craft::{
    self as craft,
    capture::{write_pcap as write_capture, write_pcapng, DataLink},
    tcp_v4, tcp_v6,
};
use rstwatch::cmd::replay::kernel::Parity;
use serde_json::Value;

mod support;

use support::{captures_in, corpus_dir, expected_resets, Direction};

const T0: u64 = 1_700_000_000;

fn rstwatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rstwatch")).args(args).output().expect("running rstwatch")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `rstwatch replay --format json ARGS` and returns its JSON lines.
fn replay_json(args: &[&str]) -> (Output, Vec<Value>) {
    let mut all = vec!["replay", "--format", "json"];
    all.extend_from_slice(args);
    let output = rstwatch(&all);
    let lines = text(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}")))
        .collect();
    assert!(!text(&output.stderr).contains("panicked"), "rstwatch panicked:\n{}", text(&output.stderr));
    (output, lines)
}

fn summary(lines: &[Value]) -> &Value {
    let last = lines.last().expect("no output");
    assert_eq!(last["type"], "summary", "the last line is not the summary: {last}");
    last
}

/// The summary's flows by direction, across interfaces.
fn directions(summary: &Value) -> BTreeMap<Direction, u64> {
    let mut out = BTreeMap::new();
    for flow in summary["flows"].as_array().expect("flows") {
        let key = (
            flow["src"].as_str().and_then(|s| s.parse().ok()).expect("src"),
            flow["sport"].as_u64().expect("sport") as u16,
            flow["dst"].as_str().and_then(|s| s.parse().ok()).expect("dst"),
            flow["dport"].as_u64().expect("dport") as u16,
        );
        *out.entry(key).or_default() += flow["resets"].as_u64().expect("resets");
    }
    out
}

fn fixtures() -> Vec<PathBuf> {
    captures_in(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")).expect("the fixtures")
}

/// Every capture replayed alone must give tshark's per-direction counts exactly.
fn check_against_tshark(captures: &[PathBuf]) {
    assert!(!captures.is_empty());
    let mut failures = Vec::new();
    for capture in captures {
        let path = capture.to_str().expect("UTF-8 path");
        let (output, lines) = replay_json(&[path]);
        if !output.status.success() {
            failures.push(format!("{path}: exit {:?}: {}", output.status, text(&output.stderr)));
            continue;
        }
        let got = directions(summary(&lines));
        match expected_resets(capture) {
            Ok(expected) if expected == got => {
                eprintln!("{path}: {} resets in {} directions, as tshark", got.values().sum::<u64>(), got.len())
            }
            Ok(expected) => failures.push(format!("{path}: tshark {expected:?}\n  replay {got:?}")),
            Err(error) => failures.push(format!("{path}: {error:#}")),
        }
    }
    assert!(failures.is_empty(), "replay disagrees with tshark:\n{}", failures.join("\n"));
}

#[test]
fn corpus_replay_equals_tshark() {
    if let Some(corpus) = corpus_dir().expect("the corpus") {
        check_against_tshark(&captures_in(&corpus).expect("the corpus captures"));
    }
}

#[test]
fn sll_sll2_and_two_interface_fixtures_equal_tshark() {
    let fixtures = fixtures();
    assert_eq!(fixtures.len(), 3, "{fixtures:?}");
    check_against_tshark(&fixtures);
}

#[test]
fn two_interfaces_in_one_pcapng_are_reported_apart() {
    let capture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/two-interfaces-resets.pcapng");
    let (output, lines) = replay_json(&[capture.to_str().expect("UTF-8")]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let summary = summary(&lines);
    let interfaces: Vec<(String, u64, String)> = summary["interfaces"]
        .as_array()
        .expect("interfaces")
        .iter()
        .map(|i| {
            (
                i["iface"].as_str().unwrap_or("").into(),
                i["ifindex"].as_u64().unwrap_or(0),
                i["mode"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    assert_eq!(
        interfaces,
        [("lo".into(), 1, "ethernet".into()), ("any".into(), 2, "linux-sll".into())],
        "IDB names, per-run numbers and link types"
    );
    // dumpcap saw every frame on both interfaces: each direction is one flow on each.
    let mut per_iface: BTreeMap<(String, Direction), u64> = BTreeMap::new();
    for flow in summary["flows"].as_array().expect("flows") {
        let direction = directions(&serde_json::json!({ "flows": [flow] }));
        for (d, n) in direction {
            per_iface.insert((flow["iface"].as_str().unwrap_or("").into(), d), n);
        }
    }
    let expected = expected_resets(&capture).expect("expected resets");
    for (direction, resets) in &expected {
        for iface in ["lo", "any"] {
            assert_eq!(per_iface.get(&(iface.into(), *direction)), Some(&(resets / 2)), "{iface} {direction:?}");
        }
    }
    assert_eq!(per_iface.len(), 2 * expected.len());
}

/// Writes a classic pcap of `frames` (timestamp in ns since T0, bytes).
fn write_pcap(path: &Path, datalink: DataLink, frames: &[(u64, Vec<u8>)]) {
    let file = BufWriter::new(File::create(path).expect("creating a capture"));
    let frames = frames.iter().map(|(ns, data)| (Duration::from_secs(T0) + Duration::from_nanos(*ns), &data[..]));
    write_capture(file, datalink, frames).expect("writing the pcap");
}

fn tmp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("replay");
    std::fs::create_dir_all(&dir).expect("tmp dir");
    dir.join(name)
}

/// The crafted cases' frames with their Ethernet header replaced by another link layer's.
/// `None` when that link type cannot carry the frame (raw IP has no room for VLAN tags or
/// non-IP ethertypes).
fn rewrap(datalink: DataLink, frame: &[u8]) -> Option<Vec<u8>> {
    let ether_type = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let network = frame.get(14..)?;
    let mut out = Vec::new();
    match datalink {
        DataLink::LINUX_SLL => {
            // Packet type 0 (to us), ARPHRD_ETHER, 6-byte address padded to 8, protocol.
            out.extend_from_slice(&[0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0]);
            out.extend_from_slice(&ether_type.to_be_bytes());
        }
        DataLink::LINUX_SLL2 => {
            out.extend_from_slice(&ether_type.to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0, 0, 7, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0]);
        }
        DataLink::RAW => {
            let version = network.first().map(|b| b >> 4);
            let matches = matches!((ether_type, version), (0x0800, Some(4)) | (0x86dd, Some(6)));
            if !matches {
                return None;
            }
        }
        DataLink::NULL => {
            let family: u32 = match ether_type {
                0x0800 => 2,
                0x86dd => 30,
                _ => return None,
            };
            out.extend_from_slice(&family.to_le_bytes());
        }
        _ => return None,
    }
    out.extend_from_slice(network);
    Some(out)
}

/// Totals and per-direction resets that `observations` must produce.
fn expected_totals(observations: &[Observation]) -> (Value, BTreeMap<Direction, u64>) {
    let (mut frames, mut tcp, mut resets, mut malformed, mut fragments) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut flows = BTreeMap::new();
    for observation in observations {
        frames += 1;
        match observation {
            Observation::NotTcp => {}
            Observation::Malformed => malformed += 1,
            Observation::Fragment => fragments += 1,
            Observation::Segment | Observation::Control(_) => tcp += 1,
            Observation::Reset(event) => {
                let key = event.key;
                tcp += 1;
                resets += 1;
                *flows.entry((key.src_ip(), key.sport, key.dst_ip(), key.dport)).or_default() += 1;
            }
        }
    }
    let totals = serde_json::json!({"frames": frames, "tcp": tcp, "resets": resets, "malformed": malformed, "fragments": fragments});
    (totals, flows)
}

fn totals_of(summary: &Value) -> Value {
    let t = &summary["totals"];
    serde_json::json!({"frames": t["frames"], "tcp": t["tcp"], "resets": t["resets"], "malformed": t["malformed"], "fragments": t["fragments"]})
}

#[test]
fn crafted_cases_classify_the_same_on_every_link_type() {
    let cases = craft::cases(1);
    for (datalink, name) in [
        (DataLink::ETHERNET, "ethernet"),
        (DataLink::LINUX_SLL, "sll"),
        (DataLink::LINUX_SLL2, "sll2"),
        (DataLink::RAW, "raw"),
        (DataLink::NULL, "null"),
    ] {
        let mut frames = Vec::new();
        let mut observations = Vec::new();
        for (i, case) in cases.iter().enumerate() {
            let frame =
                if datalink == DataLink::ETHERNET { Some(case.frame.clone()) } else { rewrap(datalink, &case.frame) };
            // Frames whose Ethernet header the case itself damages have no other link form.
            if let (Some(frame), true) = (frame, case.frame.len() >= 14) {
                frames.push((i as u64 * 1_000_000, frame));
                observations.push(case.expected);
            }
        }
        assert!(frames.len() > cases.len() / 2, "{name}: only {} of {} cases carried", frames.len(), cases.len());
        let path = tmp(&format!("cases-{name}.pcap"));
        write_pcap(&path, datalink, &frames);
        let (output, lines) = replay_json(&[path.to_str().expect("UTF-8")]);
        assert!(output.status.success(), "{name}: {}", text(&output.stderr));
        let summary = summary(&lines);
        let (totals, flows) = expected_totals(&observations);
        assert_eq!(totals_of(summary), totals, "{name}: totals");
        assert_eq!(directions(summary), flows, "{name}: flows");
    }
}

/// A truncated link header (SLL shorter than 16 bytes) is malformed, like a runt Ethernet frame.
#[test]
fn short_link_headers_are_malformed() {
    let rst = tcp_v4().flags(TCP_RST).build().into_bytes();
    let sll = rewrap(DataLink::LINUX_SLL, &rst).expect("sll");
    let frames = vec![(0, sll[..10].to_vec()), (1, sll.clone()), (2, Vec::new())];
    let path = tmp("short-sll.pcap");
    write_pcap(&path, DataLink::LINUX_SLL, &frames);
    let (output, lines) = replay_json(&[path.to_str().expect("UTF-8")]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(
        totals_of(summary(&lines)),
        serde_json::json!({"frames": 3, "tcp": 1, "resets": 1, "malformed": 2, "fragments": 0})
    );
}

/// `--kernel` on every corpus capture, every fixture and the crafted cases in every link type.
#[test]
fn kernel_parity_on_every_capture() {
    let test = rst_lab::skip::current_test();
    if !rst_lab::skip::require(&test, &[rst_lab::Need::Bpf]).expect("BPF test runs (CI=true: this test must run)") {
        return;
    }
    // Make sure the crafted captures exist even when this test runs first.
    crafted_cases_classify_the_same_on_every_link_type();
    let mut captures = fixtures();
    if let Some(corpus) = corpus_dir().expect("the corpus") {
        captures.extend(captures_in(&corpus).expect("the corpus captures"));
    }
    captures.extend(["ethernet", "sll", "sll2", "raw", "null"].map(|n| tmp(&format!("cases-{n}.pcap"))));
    short_link_headers_are_malformed();
    captures.push(tmp("short-sll.pcap"));
    let mut failures = Vec::new();
    for capture in &captures {
        let path = capture.to_str().expect("UTF-8");
        let output = rstwatch(&["replay", "--kernel", "--format", "json", path]);
        let stderr = text(&output.stderr);
        if output.status.success() && stderr.contains(": identical") {
            eprintln!("{path}: {}", stderr.trim());
        } else {
            failures.push(format!("{path}: exit {:?}\n{stderr}", output.status));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A tunnel's connection seen on two capture interfaces (its SYN on one, the answers on the
/// other), over an extra VXLAN port: the kernel meets it on one interface, the loopback, and so
/// must replay's side of the comparison; `--vxlan-port` reaches the kernel's walk too.
#[test]
fn kernel_parity_holds_for_a_tunnel_across_interfaces_and_on_an_extra_port() {
    use rst_craft::tunnel::{Encapsulation, Outer, Tunnel};
    let test = rst_lab::skip::current_test();
    if !rst_lab::skip::require(&test, &[rst_lab::Need::Bpf]).expect("BPF test runs (CI=true: this test must run)") {
        return;
    }
    let (client, server) = ([10, 244, 0, 5], [10, 244, 1, 7]);
    let (vtep_a, vtep_b) = ([198, 51, 100, 1], [198, 51, 100, 2]);
    let there = Tunnel::new(Outer::V4(vtep_a, vtep_b), Encapsulation::Vxlan { vni: 7, port: 4790 });
    let back = Tunnel { outer: Outer::V4(vtep_b, vtep_a), ..there.clone() };
    let to_server =
        |flags, seq, ack| craft::FrameBuilder::ipv4(client, server).ports(40000, 443).flags(flags).seq_ack(seq, ack);
    let to_client =
        |flags, seq, ack| craft::FrameBuilder::ipv4(server, client).ports(443, 40000).flags(flags).seq_ack(seq, ack);
    let frames: Vec<(u32, Vec<u8>)> = vec![
        (0, there.wrap(&to_server(TCP_SYN, 100, 0).build())),
        (1, back.wrap(&to_client(TCP_SYN | TCP_ACK, 900, 101).build())),
        (0, there.wrap(&to_server(TCP_ACK, 101, 901).build())),
        (1, back.wrap(&to_client(TCP_RST | TCP_ACK, 901, 101).build())),
    ];
    let path = tmp("tunnel-two-interfaces.pcapng");
    let file = BufWriter::new(File::create(&path).expect("creating the capture"));
    let stamped = frames.iter().enumerate().map(|(i, (interface, data))| {
        (*interface, Duration::from_secs(T0) + Duration::from_millis(i as u64), &data[..])
    });
    write_pcapng(file, &["eth0", "eth1"], stamped).expect("pcapng");
    let output =
        rstwatch(&["replay", "--kernel", "--vxlan-port", "4790", "--format", "json", path.to_str().expect("UTF-8")]);
    let stderr = text(&output.stderr);
    assert!(output.status.success() && stderr.contains(": identical"), "{stderr}");
    assert!(stderr.contains("1 resets"), "the reset inside the tunnel went through both: {stderr}");
}

/// The comparison itself can fail: a missing reset or a differing counter is reported.
#[test]
fn parity_reports_differences() {
    let direction: (IpAddr, u16, IpAddr, u16, u8, u8, u8) =
        ("192.0.2.1".parse().unwrap_or(IpAddr::from([0; 4])), 80, IpAddr::from([192, 0, 2, 2]), 5000, 0, 0, 0);
    let counters = rst_common::Counters { frames: 1, tcp: 1, resets: 1, ..Default::default() };
    let same = Parity {
        host: counters,
        kernel: counters,
        host_flows: BTreeMap::from([(direction, 1)]),
        kernel_flows: BTreeMap::from([(direction, 1)]),
        host_services: BTreeMap::new(),
        kernel_services: BTreeMap::new(),
        left_out: 0,
        left_out_not_malformed: 0,
    };
    assert!(same.agrees(), "{}", same.describe());
    // A service whose open count at its accepts differs.
    let service = (IpAddr::from([192, 0, 2, 1]), 80);
    let accepted = rst_common::wire::ServiceValue::accepted(Some(2), 64, 0);
    let services_differ = Parity {
        host: counters,
        kernel: counters,
        host_flows: BTreeMap::new(),
        kernel_flows: BTreeMap::new(),
        host_services: BTreeMap::from([(service, accepted)]),
        kernel_services: BTreeMap::from([(service, rst_common::wire::ServiceValue { accept_open_max: 2, ..accepted })]),
        left_out: 0,
        left_out_not_malformed: 0,
    };
    assert!(!services_differ.agrees());
    assert!(services_differ.describe().contains("service 192.0.2.1:80: replay"), "{}", services_differ.describe());
    let differs = Parity { kernel_flows: BTreeMap::new(), ..same };
    assert!(!differs.agrees());
    assert!(
        differs
            .describe()
            .contains("192.0.2.1:80 -> 192.0.2.2:5000 (class 0x00, peer TTL 0, context 0x00): replay 1, kernel 0"),
        "{}",
        differs.describe()
    );
}

#[test]
fn intervals_follow_capture_time() {
    let rst = tcp_v4().flags(TCP_RST).build().into_bytes();
    let ack = tcp_v6().flags(TCP_ACK).build().into_bytes();
    let ms = 1_000_000u64;
    // [0 s, 1 s): 2 frames; [1 s, 2 s): 1; nothing for 3 s; [5 s, 5.3 s]: 2.
    let frames = vec![
        (0, rst.clone()),
        (500 * ms, ack.clone()),
        (1_200 * ms, rst.clone()),
        (5_000 * ms, ack),
        (5_300 * ms, rst),
    ];
    let path = tmp("paced.pcap");
    write_pcap(&path, DataLink::ETHERNET, &frames);
    let (output, lines) = replay_json(&["--interval", "1s", path.to_str().expect("UTF-8")]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let intervals: Vec<(f64, u64, u64, String)> = lines
        .iter()
        .filter(|l| l["type"] == "interval")
        .map(|l| {
            (
                l["elapsed_ms"].as_f64().unwrap_or(-1.0),
                l["totals"]["frames"].as_u64().unwrap_or(99),
                l["totals"]["resets"].as_u64().unwrap_or(99),
                l["time"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        intervals,
        [
            (1000.0, 2, 1, "2023-11-14T22:13:21.000Z".to_owned()),
            (1000.0, 1, 1, "2023-11-14T22:13:22.000Z".to_owned()),
            (3000.0, 0, 0, "2023-11-14T22:13:25.000Z".to_owned()),
            (300.0, 2, 1, "2023-11-14T22:13:25.300Z".to_owned()),
        ],
        "elapsed, frames, resets, end time of each interval"
    );
    let summary = summary(&lines);
    assert_eq!(summary["duration_ms"].as_f64(), Some(5300.0));
    assert_eq!(summary["intervals"].as_u64(), Some(4));
    // The rate is over capture time: 3 resets in 5.3 s.
    let rate = summary["sources"][0]["rate"].as_f64().unwrap_or(0.0);
    assert!((rate - 3.0 / 5.3).abs() < 1e-9, "rate {rate}");
}

/// A second file that does not continue the first one's interval starts a new stretch of time:
/// the gap between captures is not counted as capture time.
#[test]
fn unrelated_files_do_not_count_the_time_between_them() {
    let rst = tcp_v4().flags(TCP_RST).build().into_bytes();
    let first = tmp("first.pcap");
    let second = tmp("second.pcap");
    write_pcap(&first, DataLink::ETHERNET, &[(0, rst.clone()), (400_000_000, rst.clone())]);
    // A day later.
    write_pcap(&second, DataLink::ETHERNET, &[(86_400_000_000_000, rst.clone()), (86_400_600_000_000, rst)]);
    let (output, lines) = replay_json(&[first.to_str().expect("UTF-8"), second.to_str().expect("UTF-8")]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let summary = summary(&lines);
    assert_eq!(summary["duration_ms"].as_f64(), Some(1000.0));
    assert_eq!(summary["totals"]["resets"].as_u64(), Some(4));
    assert_eq!(summary["interfaces"].as_array().map(Vec::len), Some(2), "one interface per classic pcap");
}

/// A valid pcap of `n` frames (one reset each), as bytes.
fn valid_pcap(n: usize) -> Vec<u8> {
    let path = tmp(&format!("valid-{n}.pcap"));
    let frames: Vec<(u64, Vec<u8>)> = (0..n)
        .map(|i| (i as u64 * 1000, tcp_v4().ports(80, 1000 + i as u16).flags(TCP_RST).build().into_bytes()))
        .collect();
    write_pcap(&path, DataLink::ETHERNET, &frames);
    std::fs::read(&path).expect("reading it back")
}

fn write_bytes(name: &str, bytes: &[u8]) -> String {
    let path = tmp(name);
    std::fs::write(&path, bytes).expect("writing a broken file");
    path.to_str().expect("UTF-8").to_owned()
}

/// Runs replay on a broken file; checks the failure and returns (stderr, the summary if any).
fn broken(path: &str, keep_going: bool, expected: &[&str]) -> (String, Option<Value>) {
    let mut args = vec![];
    if keep_going {
        args.push("--keep-going");
    }
    args.push(path);
    let (output, lines) = replay_json(&args);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{path}: {stderr}");
    let file_name = Path::new(path).file_name().and_then(|n| n.to_str()).unwrap_or(path);
    assert!(stderr.contains(file_name), "the error names the file: {stderr}");
    for needle in expected {
        assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    }
    let summary = lines.last().filter(|l| l["type"] == "summary").cloned();
    (stderr, summary)
}

#[test]
fn truncated_file_names_the_frame_and_keep_going_reports_the_rest() {
    let bytes = valid_pcap(5);
    // Each record: 16-byte header + 54-byte frame; cut frame 4 in half.
    let record = 16 + 54;
    let cut = 24 + 3 * record + record / 2;
    let path = write_bytes("truncated.pcap", &bytes[..cut]);
    let (_, summary) = broken(&path, false, &["frame 4", "truncated"]);
    assert!(summary.is_none(), "no summary without --keep-going");
    let (stderr, summary) = broken(&path, true, &["frame 4", "truncated", "--keep-going"]);
    let summary = summary.unwrap_or_else(|| panic!("--keep-going still reports: {stderr}"));
    assert_eq!(summary["totals"]["frames"].as_u64(), Some(3));
    assert_eq!(summary["totals"]["resets"].as_u64(), Some(3));

    // A cut inside a record header.
    let path = write_bytes("truncated-header.pcap", &bytes[..24 + 2 * record + 5]);
    broken(&path, false, &["frame 3", "truncated"]);
}

#[test]
fn corrupt_pcapng_block_names_the_frame() {
    let path = tmp("corrupt.pcapng");
    let frames: Vec<Vec<u8>> =
        (0..4u16).map(|i| tcp_v4().ports(443, 2000 + i).flags(TCP_RST | TCP_ACK).build().into_bytes()).collect();
    let file = BufWriter::new(File::create(&path).expect("creating"));
    write_pcapng(file, &["eth9"], frames.iter().map(|data| (0, Duration::from_secs(T0), &data[..]))).expect("pcapng");
    let mut bytes = std::fs::read(&path).expect("reading");
    // Find the third EPB (type 6, little-endian) and break its trailing length.
    let starts: Vec<usize> =
        (0..bytes.len().saturating_sub(8)).filter(|&i| bytes[i..i + 4] == [6, 0, 0, 0] && i % 4 == 0).collect();
    let third = *starts.get(2).expect("a third EPB");
    let len = u32::from_le_bytes([bytes[third + 4], bytes[third + 5], bytes[third + 6], bytes[third + 7]]) as usize;
    bytes[third + len - 4] ^= 0x40;
    let path = write_bytes("corrupt-block.pcapng", &bytes);
    let (_, summary) = broken(&path, true, &["frame 3", "corrupt block"]);
    let summary = summary.expect("summary with --keep-going");
    assert_eq!(summary["totals"]["resets"].as_u64(), Some(2));
    assert_eq!(summary["interfaces"][0]["iface"], "eth9");

    // A packet on an interface no IDB declared.
    let mut bytes = std::fs::read(&path).expect("reading");
    bytes[third + len - 4] ^= 0x40;
    bytes[third + 8] = 3;
    let path = write_bytes("undeclared-interface.pcapng", &bytes);
    broken(&path, false, &["frame 3", "interface 3"]);
}

#[test]
fn unsupported_link_type_and_non_captures_fail_cleanly() {
    let frame = tcp_v4().flags(TCP_SYN).build().into_bytes();
    let path = tmp("wifi.pcap");
    write_pcap(&path, DataLink::IEEE802_11, &[(0, frame)]);
    broken(path.to_str().expect("UTF-8"), false, &["frame 1", "unsupported link type"]);

    let path = write_bytes("notes.pcap", b"these are my notes, not a capture\n");
    broken(&path, false, &["not a pcap or pcapng file"]);
    let path = write_bytes("empty.pcap", b"");
    broken(&path, false, &["not a pcap or pcapng file", "empty"]);
    let path = write_bytes("header-only.pcap", &valid_pcap(1)[..10]);
    broken(&path, false, &["truncated"]);
    let missing = tmp("does-not-exist.pcap");
    broken(missing.to_str().expect("UTF-8"), false, &["cannot open"]);

    // --keep-going goes on with the next file and still fails at the end.
    let good = write_bytes("good.pcap", &valid_pcap(2));
    let (output, lines) = replay_json(&["--keep-going", &path, &good]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(summary(&lines)["totals"]["resets"].as_u64(), Some(2));
    assert!(text(&output.stderr).contains("1 of 2 files"), "{}", text(&output.stderr));
}

/// Replay needs no privileges: run it as `nobody` on a world-readable copy.
#[test]
fn replay_runs_unprivileged() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sll2-loopback-resets.pcap");
    let copy = std::env::temp_dir().join(format!("rstwatch-replay-unprivileged-{}.pcap", std::process::id()));
    std::fs::copy(&fixture, &copy).expect("copying the fixture");
    let binary = env!("CARGO_BIN_EXE_rstwatch");
    let output = if rst_lab::skip::is_root() {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        // The binary itself may sit under a directory nobody cannot enter: copy it too.
        let bin_copy = std::env::temp_dir().join(format!("rstwatch-unprivileged-{}", std::process::id()));
        std::fs::copy(binary, &bin_copy).expect("copying the binary");
        std::fs::set_permissions(&bin_copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let output = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
            .arg(&bin_copy)
            .args(["replay", "--format", "json"])
            .arg(&copy)
            .output()
            .expect("running setpriv");
        let _ = std::fs::remove_file(&bin_copy);
        output
    } else {
        Command::new(binary).args(["replay", "--format", "json"]).arg(&copy).output().expect("running rstwatch")
    };
    let _ = std::fs::remove_file(&copy);
    assert!(output.status.success(), "unprivileged replay failed: {}", text(&output.stderr));
    let lines: Vec<Value> = text(&output.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert_eq!(summary(&lines)["totals"]["resets"].as_u64(), Some(6));
}

/// Replay runs the same classifier: three attempts at a closed port (one refused twice as a
/// retry would be) and one accepted connection the server aborts. The JSON summary holds the
/// services, the kinds and the sentences; `--by service` puts the service table on screen.
#[test]
fn replay_classifies_and_ranks_services() {
    let client = [192, 0, 2, 1];
    let server = [192, 0, 2, 80];
    let ms = 1_000_000u64;
    let mut frames = Vec::new();
    for (i, port) in [40001u16, 40002, 40003].into_iter().enumerate() {
        let t = i as u64 * 10 * ms;
        frames.push((
            t,
            craft::FrameBuilder::ipv4(client, server)
                .ports(port, 81)
                .flags(TCP_SYN)
                .seq_ack(100, 0)
                .build()
                .into_bytes(),
        ));
        frames.push((
            t + ms,
            craft::FrameBuilder::ipv4(server, client)
                .ports(81, port)
                .flags(TCP_RST | TCP_ACK)
                .seq_ack(0, 101)
                .build()
                .into_bytes(),
        ));
    }
    let accepted = [
        craft::FrameBuilder::ipv4(client, server).ports(40004, 443).flags(TCP_SYN).seq_ack(500, 0),
        craft::FrameBuilder::ipv4(server, client).ports(443, 40004).flags(TCP_SYN | TCP_ACK).seq_ack(9000, 501).ttl(60),
        craft::FrameBuilder::ipv4(client, server).ports(40004, 443).flags(TCP_ACK).seq_ack(501, 9001),
        craft::FrameBuilder::ipv4(server, client).ports(443, 40004).flags(TCP_RST | TCP_ACK).seq_ack(9001, 601).ttl(60),
    ];
    for (i, frame) in accepted.into_iter().enumerate() {
        frames.push((100 * ms + i as u64 * ms, frame.build().into_bytes()));
    }
    let path = tmp("services.pcap");
    write_pcap(&path, DataLink::ETHERNET, &frames);
    let file = path.to_str().expect("UTF-8");

    let (output, lines) = replay_json(&[file]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let summary = summary(&lines);
    let services: Vec<(String, u64, u64, u64, u64, u64)> = summary["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|s| {
            let n = |k: &str| s[k].as_u64().unwrap_or(u64::MAX);
            (
                format!("{}:{}", s["addr"].as_str().unwrap_or("?"), n("port")),
                n("attempts"),
                n("synacks"),
                n("resets"),
                n("refused"),
                s["kinds"]["established"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    assert_eq!(
        services,
        vec![("192.0.2.80:81".to_owned(), 3, 0, 3, 3, 0), ("192.0.2.80:443".to_owned(), 1, 1, 1, 0, 1)],
        "{}",
        summary["services"]
    );
    let aborted =
        summary["flows"].as_array().expect("flows").iter().find(|f| f["sport"] == 443).expect("the abort's flow");
    assert_eq!(
        (aborted["side"].as_str(), aborted["side_observed"].as_bool(), aborted["first"].as_bool()),
        (Some("server"), Some(true), Some(true))
    );
    assert_eq!(aborted["middlebox"], Value::Null, "the RST came with the SYN+ACK's TTL");
    let diagnosis: Vec<&str> =
        summary["diagnosis"].as_array().expect("diagnosis").iter().filter_map(Value::as_str).collect();
    assert!(diagnosis.contains(&"100% of connection attempts to 192.0.2.80:81 were refused (3 of 3)"), "{diagnosis:?}");
    assert!(diagnosis.contains(&"the server side resets first in 4 of 4 connections"), "{diagnosis:?}");

    let table = rstwatch(&["replay", "--by", "service", file]);
    assert!(table.status.success(), "{}", text(&table.stderr));
    let screen = text(&table.stdout);
    assert!(screen.contains("SERVICE") && screen.contains("REFUSED%"), "{screen}");
    assert!(
        screen.lines().any(|l| l.contains("192.0.2.80:81") && l.contains("100%") && l.contains("refused 3")),
        "{screen}"
    );
    // Every connection was reset once: the table folds them by client host, `--by flow` does not.
    let summary_part = screen.split("SUMMARY").nth(1).expect("a summary");
    assert!(summary_part.contains("TOP CONVERSATIONS"), "{screen}");
    assert!(
        summary_part.lines().any(|l| l.contains("192.0.2.80:81 → 192.0.2.1 ")
            && l.contains("3 connections")
            && l.contains("rx refused by the server")),
        "{screen}"
    );
    assert!(!summary_part.contains(":40001"), "no ephemeral-port lines when folded: {screen}");
    let raw = rstwatch(&["replay", "--by", "flow", file]);
    assert!(raw.status.success(), "{}", text(&raw.stderr));
    let raw = text(&raw.stdout);
    assert!(!raw.contains("CONVERSATIONS"), "{raw}");
    for port in [40001, 40002, 40003, 40004] {
        assert!(raw.contains(&format!("192.0.2.1:{port}")), "--by flow lists every flow: {raw}");
    }
}

/// Two tenants of one overlay at the same inner addresses, VXLAN VNI 42 and 43: in 42 the port
/// is closed (three refusals), in 43 it accepts. They are two flows, two services and, since
/// one's accepts say nothing about the other's listener, one verdict: VNI 42's.
#[test]
fn two_tenants_at_one_inner_address_get_verdicts_of_their_own() {
    use rst_craft::tunnel::{Outer, Tunnel};
    let (client, server) = ([10, 244, 0, 5], [10, 244, 1, 7]);
    let (vtep_a, vtep_b) = ([198, 51, 100, 1], [198, 51, 100, 2]);
    let ms = 1_000_000u64;
    let mut frames = Vec::new();
    for vni in [42, 43] {
        let there = Tunnel::vxlan(Outer::V4(vtep_a, vtep_b), vni);
        let back = Tunnel::vxlan(Outer::V4(vtep_b, vtep_a), vni);
        for (i, port) in [40001u16, 40002, 40003].into_iter().enumerate() {
            let t = u64::from(vni) * 1_000 * ms + i as u64 * 10 * ms;
            let syn = craft::FrameBuilder::ipv4(client, server).ports(port, 81).flags(TCP_SYN).seq_ack(100, 0);
            frames.push((t, there.wrap(&syn.build())));
            let answer = craft::FrameBuilder::ipv4(server, client).ports(81, port);
            let answer = match vni {
                42 => answer.flags(TCP_RST | TCP_ACK).seq_ack(0, 101),
                _ => answer.flags(TCP_SYN | TCP_ACK).seq_ack(9000, 101),
            };
            frames.push((t + ms, back.wrap(&answer.build())));
        }
    }
    let path = tmp("tenants.pcap");
    write_pcap(&path, DataLink::ETHERNET, &frames);
    let (output, lines) = replay_json(&[path.to_str().expect("UTF-8")]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let summary = summary(&lines);
    let services: Vec<(u64, u64, u64, &Value)> = summary["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|s| {
            (
                s["attempts"].as_u64().unwrap_or(0),
                s["synacks"].as_u64().unwrap_or(0),
                s["refused"].as_u64().unwrap_or(0),
                &s["tunnel"]["vni"],
            )
        })
        .collect();
    assert_eq!(services.len(), 2, "one service per tenant: {}", summary["services"]);
    assert!(services.contains(&(3, 0, 3, &Value::from(42))), "{}", summary["services"]);
    assert!(services.contains(&(3, 3, 0, &Value::from(43))), "{}", summary["services"]);
    let verdicts = summary["verdicts"].as_array().expect("verdicts");
    assert_eq!(verdicts.len(), 1, "{verdicts:#?}");
    let verdict = &verdicts[0];
    assert_eq!(
        (verdict["cause"].as_str(), verdict["addr"].as_str(), verdict["port"].as_u64(), verdict["resets"].as_u64()),
        (Some("no_listener"), Some("10.244.1.7"), Some(81), Some(3)),
        "{verdict}"
    );
    assert_eq!((verdict["tunnel"]["type"].as_str(), verdict["tunnel"]["vni"].as_u64()), (Some("vxlan"), Some(42)));
    assert!(verdict["text"].as_str().is_some_and(|text| text.contains("10.244.1.7:81 in vxlan 42")), "{verdict}");
    // The table says which tenant too.
    let table = rstwatch(&["replay", path.to_str().expect("UTF-8")]);
    let table = text(&table.stdout);
    assert!(table.contains("nothing listens on 10.244.1.7:81 in vxlan 42"), "{table}");
    assert!(table.contains("attempts to 10.244.1.7:81 in vxlan 42 were refused (3 of 3)"), "{table}");
    let by_service = text(&rstwatch(&["replay", "--by", "service", path.to_str().expect("UTF-8")]).stdout);
    for tenant in ["10.244.1.7:81 in vxlan 42", "10.244.1.7:81 in vxlan 43"] {
        assert!(by_service.contains(tenant), "{tenant} missing in\n{by_service}");
    }
}
