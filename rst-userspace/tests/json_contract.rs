//! The `--format json` contract, checked without root: every key path (with the JSON types seen
//! at it) of the interval and summary lines that `rstwatch replay` writes for a capture that
//! exercises every record kind must equal `tests/data/json-contract.txt`.
//!
//! Adding a field means adding its line to that file (`RSTWATCH_BLESS=1` rewrites it, and the
//! diff shows what was added); a renamed or dropped field fails here, before anyone parses it.

#![allow(clippy::expect_used)] // test helpers: a panic is the failure report

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io::BufWriter,
    path::Path,
    process::Command,
    time::Duration,
};

use rst_common::parse::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use rst_craft::{
    self as craft,
    capture::{write_pcap as write_capture, DataLink},
    tunnel::{Encapsulation, Outer, Tunnel},
    FrameBuilder,
};
use serde_json::Value;

const MS: u64 = 1_000_000;

/// Frames that make every array of the report non-empty: the crafted case table (every kind
/// of frame and reset), a closed port refusing three attempts, an accepted connection the
/// server aborts, a reset whose TTL is not the server's (a middlebox), a teardown, a scan and a
/// reset after two hours idle, so that several intervals are written; resets inside tunnels,
/// one of them beyond what the kernel's table of tunnels numbers.
fn contract_capture() -> Vec<(u64, Vec<u8>)> {
    let mut frames: Vec<(u64, Vec<u8>)> =
        craft::cases(1).into_iter().enumerate().map(|(i, case)| (i as u64 * MS, case.frame)).collect();
    let client = [192, 0, 2, 1];
    let server = [192, 0, 2, 80];
    for (i, port) in [40001u16, 40002, 40003].into_iter().enumerate() {
        let t = 1_000 * MS + i as u64 * 10 * MS;
        let syn = FrameBuilder::ipv4(client, server).ports(port, 81).flags(TCP_SYN).seq_ack(100, 0);
        let refusal = FrameBuilder::ipv4(server, client).ports(81, port).flags(TCP_RST | TCP_ACK).seq_ack(0, 101);
        frames.push((t, syn.build().into_bytes()));
        frames.push((t + MS, refusal.build().into_bytes()));
    }
    let conversations = [(40004u16, 60u8, 60u8), (40005, 60, 250)];
    for (n, (port, synack_ttl, rst_ttl)) in conversations.into_iter().enumerate() {
        let t = 2_000 * MS + n as u64 * 100 * MS;
        let to_server =
            |flags, (seq, ack)| FrameBuilder::ipv4(client, server).ports(port, 443).flags(flags).seq_ack(seq, ack);
        let to_client = |flags, (seq, ack), ttl| {
            FrameBuilder::ipv4(server, client).ports(443, port).flags(flags).seq_ack(seq, ack).ttl(ttl)
        };
        let handshake = [
            to_server(TCP_SYN, (500, 0)),
            to_client(TCP_SYN | TCP_ACK, (9000, 501), synack_ttl),
            to_server(TCP_ACK, (501, 9001)),
            to_client(TCP_RST | TCP_ACK, (9001, 601), rst_ttl),
        ];
        for (i, frame) in handshake.into_iter().enumerate() {
            frames.push((t + i as u64 * MS, frame.build().into_bytes()));
        }
    }
    // A teardown: the client closes, the server resets its late FIN's connection.
    let teardown = [
        FrameBuilder::ipv4(client, server).ports(40006, 8443).flags(TCP_SYN).seq_ack(700, 0),
        FrameBuilder::ipv4(server, client).ports(8443, 40006).flags(TCP_SYN | TCP_ACK).seq_ack(7000, 701),
        FrameBuilder::ipv4(client, server).ports(40006, 8443).flags(TCP_FIN | TCP_ACK).seq_ack(701, 7001),
        FrameBuilder::ipv4(server, client).ports(8443, 40006).flags(TCP_RST).seq_ack(7001, 0),
    ];
    for (i, frame) in teardown.into_iter().enumerate() {
        frames.push((2_500 * MS + i as u64 * MS, frame.build().into_bytes()));
    }
    // A teardown after the resetter's own FIN: the server closes, the client's late ACK meets
    // a reset two seconds on.
    let late = [
        FrameBuilder::ipv4(client, server).ports(40007, 8443).flags(TCP_SYN).seq_ack(800, 0),
        FrameBuilder::ipv4(server, client).ports(8443, 40007).flags(TCP_SYN | TCP_ACK).seq_ack(8000, 801),
        FrameBuilder::ipv4(server, client).ports(8443, 40007).flags(TCP_FIN | TCP_ACK).seq_ack(8001, 801),
    ];
    for (i, frame) in late.into_iter().enumerate() {
        frames.push((2_520 * MS + i as u64 * MS, frame.build().into_bytes()));
    }
    let reset = FrameBuilder::ipv4(server, client).ports(8443, 40007).flags(TCP_RST).seq_ack(8002, 0);
    frames.push((2_990 * MS, reset.build().into_bytes()));
    // A connection reset on its first use after two hours idle: past the pause histogram's last
    // bound (`le_ms` null).
    let idle = [
        FrameBuilder::ipv4(client, server).ports(40008, 8443).flags(TCP_SYN).seq_ack(900, 0),
        FrameBuilder::ipv4(server, client).ports(8443, 40008).flags(TCP_SYN | TCP_ACK).seq_ack(9000, 901),
        FrameBuilder::ipv4(client, server).ports(40008, 8443).flags(TCP_ACK).seq_ack(901, 9001),
    ];
    for (i, frame) in idle.into_iter().enumerate() {
        frames.push((2_540 * MS + i as u64 * MS, frame.build().into_bytes()));
    }
    // A scan: another client refused once on each of five ports of another host.
    let (scanner, scanned) = ([192, 0, 2, 9], [192, 0, 2, 90]);
    for port in 1u16..=5 {
        let t = 2_600 * MS + u64::from(port) * MS;
        let syn = FrameBuilder::ipv4(scanner, scanned).ports(50000, port).flags(TCP_SYN).seq_ack(9, 0);
        let refusal = FrameBuilder::ipv4(scanned, scanner).ports(port, 50000).flags(TCP_RST | TCP_ACK).seq_ack(0, 10);
        frames.push((t, syn.build().into_bytes()));
        frames.push((t + MS / 2, refusal.build().into_bytes()));
    }
    // Inside tunnels: a port refused inside VXLAN (a VNI) and inside IP-in-IP (none).
    let (vtep_a, vtep_b) = ([198, 51, 100, 1], [198, 51, 100, 2]);
    for (i, tunnel) in
        [Tunnel::vxlan(Outer::V4(vtep_a, vtep_b), 42), Tunnel::new(Outer::V4(vtep_a, vtep_b), Encapsulation::Ip)]
            .into_iter()
            .enumerate()
    {
        let t = 2_700 * MS + i as u64 * 10 * MS;
        let (pod_a, pod_b) = ([10, 244, 1, 5], [10, 244, 2, 9]);
        let syn = FrameBuilder::ipv4(pod_a, pod_b).ports(41000, 8080).flags(TCP_SYN).seq_ack(5, 0);
        let refusal = FrameBuilder::ipv4(pod_b, pod_a).ports(8080, 41000).flags(TCP_RST | TCP_ACK).seq_ack(0, 6);
        let back = Tunnel { outer: Outer::V4(vtep_b, vtep_a), ..tunnel.clone() };
        frames.push((t, tunnel.wrap(&syn.build())));
        frames.push((t + MS / 2, back.wrap(&refusal.build())));
    }
    // A tunnel the table had no room to number: as many tunnels as the kernel's table holds
    // (a segment each, VNIs of their own), then a reset in one more, whose flow has no outer
    // addresses to report.
    let (pod_a, pod_b) = ([10, 244, 3, 5], [10, 244, 4, 9]);
    let segment = FrameBuilder::ipv4(pod_a, pod_b).ports(42000, 8080).flags(TCP_ACK).seq_ack(5, 6).build();
    for vni in 0..rst_common::wire::MAX_TUNNELS {
        let tunnel = Tunnel::vxlan(Outer::V4(vtep_a, vtep_b), 100_000 + vni);
        frames.push((2_800 * MS + u64::from(vni), tunnel.wrap(&segment)));
    }
    let reset = FrameBuilder::ipv4(pod_b, pod_a).ports(8080, 42000).flags(TCP_RST | TCP_ACK).seq_ack(6, 5).build();
    frames.push((2_900 * MS, Tunnel::vxlan(Outer::V4(vtep_b, vtep_a), 99).wrap(&reset)));
    // Last, in time order: the idle connection's reset, two hours on.
    let stale = FrameBuilder::ipv4(server, client).ports(8443, 40008).flags(TCP_RST).seq_ack(9001, 0);
    frames.push((7_200_000 * MS, stale.build().into_bytes()));
    frames
}

fn write_pcap(path: &Path, frames: &[(u64, Vec<u8>)]) {
    let file = BufWriter::new(File::create(path).expect("creating the capture"));
    let frames =
        frames.iter().map(|(ns, data)| (Duration::from_secs(1_700_000_000) + Duration::from_nanos(*ns), &data[..]));
    write_capture(file, DataLink::ETHERNET, frames).expect("writing the pcap");
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every key path under `value` (`[]` for any array element) with the types seen there.
fn collect_paths(prefix: &str, value: &Value, out: &mut BTreeMap<String, BTreeSet<&'static str>>) {
    out.entry(prefix.to_owned()).or_default().insert(type_name(value));
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                collect_paths(&format!("{prefix}.{key}"), child, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                collect_paths(&format!("{prefix}[]"), item, out);
            }
        }
        _ => {}
    }
}

#[test]
fn json_key_paths_are_the_contract() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("json-contract");
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let capture = dir.join("contract.pcap");
    write_pcap(&capture, &contract_capture());
    let output = Command::new(env!("CARGO_BIN_EXE_rstwatch"))
        .args(["replay", "--format", "json"])
        .arg(&capture)
        .output()
        .expect("running rstwatch replay");
    assert!(output.status.success(), "replay failed: {}", String::from_utf8_lossy(&output.stderr));
    let mut paths = BTreeMap::new();
    let mut kinds = BTreeSet::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let value: Value = serde_json::from_str(line).expect("every line is one JSON object");
        let kind = value["type"].as_str().expect("every line has a type").to_owned();
        collect_paths(&kind, &value, &mut paths);
        kinds.insert(kind);
    }
    assert!(kinds.contains("interval") && kinds.contains("summary"), "line types: {kinds:?}");
    let actual: String = paths
        .iter()
        .map(|(path, types)| format!("{path}: {}\n", types.iter().copied().collect::<Vec<_>>().join(" | ")))
        .collect();
    let golden_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/json-contract.txt");
    if std::env::var_os("RSTWATCH_BLESS").is_some() {
        std::fs::write(&golden_path, &actual).expect("writing the golden file");
    }
    let golden = std::fs::read_to_string(&golden_path).expect("tests/data/json-contract.txt");
    let golden_lines: BTreeSet<&str> = golden.lines().collect();
    let actual_lines: BTreeSet<&str> = actual.lines().collect();
    let missing: Vec<&&str> = golden_lines.difference(&actual_lines).collect();
    let added: Vec<&&str> = actual_lines.difference(&golden_lines).collect();
    assert!(
        missing.is_empty() && added.is_empty(),
        "the JSON contract changed.\n  gone or retyped (never allowed): {missing:#?}\n  new (add to tests/data/json-contract.txt): {added:#?}"
    );
}
