//! Wireshark as an independent witness for the frame builder: every well-formed case must
//! dissect as TCP with the ports and RST flag the case expects, and with correct IPv4 and TCP
//! checksums. Without it, a builder bug could make the parser and its tests agree on frames no
//! real stack would send.
//!
//! Skipped, with a notice, when `tshark` is not installed (except under `CI=true`).

use std::{borrow::Cow, process::Command, time::Duration};

use pcap_file::{
    pcap::{PcapHeader, PcapPacket, PcapWriter},
    DataLink,
};
use rst_common::Observation;
use rst_craft::cases;

#[test]
fn well_formed_cases_dissect_as_expected_in_tshark() {
    if Command::new("tshark").arg("--version").output().is_err() {
        assert!(std::env::var("CI").map_or(true, |ci| ci != "true"), "tshark is required under CI=true");
        eprintln!("tshark not installed, skipping");
        return;
    }
    let well_formed: Vec<_> = cases(1)
        .into_iter()
        .filter(|case| matches!(case.expected, Observation::Reset(_) | Observation::Segment))
        .collect();
    let capture = std::env::temp_dir().join(format!("rstwatch-cases-{}.pcap", std::process::id()));
    let mut writer = PcapWriter::with_header(
        std::fs::File::create(&capture).expect("creating the capture"),
        PcapHeader { datalink: DataLink::ETHERNET, snaplen: 262_144, ..Default::default() },
    )
    .expect("writing the pcap header");
    for (index, case) in well_formed.iter().enumerate() {
        let packet = PcapPacket {
            timestamp: Duration::from_secs(index as u64),
            orig_len: case.frame.len() as u32,
            data: Cow::Borrowed(&case.frame),
        };
        writer.write_packet(&packet).expect("writing a frame");
    }
    drop(writer);

    let output = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(&capture)
        .args([
            "-o",
            "tcp.check_checksum:TRUE",
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "tcp.desegment_tcp_streams:FALSE",
        ])
        // Dissect first fragments in place instead of waiting for the rest.
        .args(["-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE"])
        .args(["-T", "fields", "-E", "separator=/t", "-E", "occurrence=l"])
        .args(["-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "tcp.flags.reset", "-e", "tcp.checksum.status"])
        .args(["-e", "ip.checksum.status", "-e", "ip.flags.mf", "-e", "ipv6.fraghdr.more"])
        .output()
        .expect("running tshark");
    std::fs::remove_file(&capture).ok();
    assert!(output.status.success(), "tshark failed: {}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<String> = String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), well_formed.len(), "one line per frame");

    // Wireshark's checksum status: 1 = good, 2 = unverified (all it can say of a first fragment,
    // whose checksum covers bytes it has not seen).
    const GOOD: &str = "1";
    const UNVERIFIED: &str = "2";
    let is_set = |flag: &str| flag == "1" || flag == "True";
    let mut failures = Vec::new();
    for (case, line) in well_formed.iter().zip(&lines) {
        let fields: Vec<&str> = line.split('\t').collect();
        let [sport, dport, reset, tcp_checksum, ip_checksum, ipv4_more, ipv6_more] = fields[..] else {
            failures.push(format!("{}: unexpected tshark line {line:?}", case.name));
            continue;
        };
        let is_reset = matches!(case.expected, Observation::Reset(_));
        let mut problems = Vec::new();
        if is_set(reset) != is_reset {
            problems.push(format!("rst flag {reset:?}"));
        }
        if let Observation::Reset(rst_common::TcpEvent { key, .. }) = case.expected {
            if (sport, dport) != (key.sport.to_string().as_str(), key.dport.to_string().as_str()) {
                problems.push(format!("ports {sport}->{dport}, key has {}->{}", key.sport, key.dport));
            }
        }
        let first_fragment = is_set(ipv4_more) || is_set(ipv6_more);
        if tcp_checksum != GOOD && !(first_fragment && tcp_checksum == UNVERIFIED) {
            problems.push(format!("tcp checksum status {tcp_checksum:?}"));
        }
        if !ip_checksum.is_empty() && ip_checksum != GOOD {
            problems.push(format!("ipv4 checksum status {ip_checksum:?}"));
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}", case.name, problems.join(", ")));
        }
    }
    assert!(failures.is_empty(), "tshark disagrees with the builder:\n{}", failures.join("\n"));
}
