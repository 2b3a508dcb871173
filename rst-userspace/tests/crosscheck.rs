//! The classifier checked against a second dissector's reading of the same frames.
//!
//! For every capture in the shared corpus and in `tests/data` (and `tests/data/real` when it is
//! there), tshark reads every TCP frame; this file, not `rst_common`, follows each connection and
//! reads every RST of it: who opened the connection (the sender of its SYN), who sent the RST,
//! whether it came first in the connection, and what the connection had done by then, in the
//! terms of a network monitor (Zeek's `REJ`, `RSTOS0`, `RSTRH`, `RSTO`, `RSTR`, `OTH`) and in
//! rstwatch's kinds:
//!
//! - `closing`: a FIN went by, from either side, before the RST;
//! - `established`: payload moved (a segment with TCP payload, not a SYN and not the RST itself);
//! - `handshake`: after the SYN+ACK with no payload yet, or from the originator before any SYN+ACK;
//! - `refused`: from the responder before any SYN+ACK, with an ACK acknowledging the SYN.
//!
//! That reading never looks at how far the sequence numbers moved, the way the classifier has
//! to (it sees only SYN, SYN+ACK, FIN and RST segments): the two must agree on every flow record
//! of `rstwatch replay --format json` (`resets`, `kinds`, `side`, `side_observed`, `first`). Where
//! rstwatch's definitions say something the frames alone do not, the rule is written below as
//! such (see [`Rule`]), never skipped. Every disagreement of every capture is collected; the test
//! fails once, with the whole list.
//!
//! Frames counted are those whose TCP header sits directly on IPv4 / IPv6 (IPv6 extension
//! headers allowed) on Ethernet, 802.1Q or Linux cooked captures, as the corpus README counts
//! them: tunnelled frames, TCP quoted in ICMP errors and IP fragments are not. As a check on this
//! reading itself, its RST count per direction must equal `NAME.resets.json` beside a capture.
//!
//! Without tshark the test passes with a visible notice, except under `CI=true`, where it fails.

#![allow(clippy::unreachable)] // test helpers: a panic is the failure report

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context as _};
use serde_json::Value;

mod support;

use support::{captures_in, corpus_dir, expected_resets, Direction};

const FIN: u16 = 0x01;
const SYN: u16 = 0x02;
const RST: u16 = 0x04;
const ACK: u16 = 0x10;

/// The tshark fields read, in this order.
const FIELDS: [&str; 13] = [
    "frame.number",
    "frame.interface_id",
    "frame.protocols",
    "ip.src",
    "ipv6.src",
    "tcp.srcport",
    "ip.dst",
    "ipv6.dst",
    "tcp.dstport",
    "tcp.flags",
    "tcp.seq_raw",
    "tcp.ack_raw",
    "tcp.len",
];

type Endpoint = (IpAddr, u16);

/// One TCP frame, as tshark dissects it.
#[derive(Debug, Clone)]
struct Frame {
    number: u64,
    /// rstwatch's `ifindex` in replay: the pcapng interface id + 1 (1 for a pcap).
    ifindex: u32,
    src: Endpoint,
    dst: Endpoint,
    flags: u16,
    seq: u32,
    ack: u32,
    len: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Refused,
    Handshake,
    Established,
    Closing,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Refused, Kind::Handshake, Kind::Established, Kind::Closing];

    fn name(self) -> &'static str {
        match self {
            Kind::Refused => "refused",
            Kind::Handshake => "handshake",
            Kind::Established => "established",
            Kind::Closing => "closing",
        }
    }
}

/// Why the expected kind / side is what it is: the frames alone, or one of rstwatch's documented
/// definitions that the frames do not decide by themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    /// What the frames show.
    Frames,
    /// No SYN or SYN+ACK of the connection in view (docs/verdicts.md, "Why"): an RST+ACK with sequence 0 is
    /// `refused` and anything else `established`; a refusal comes from the server, otherwise the
    /// lower port is the server's (equal ports: the lower address); `side_observed` false; the
    /// connection is not remembered, so every such RST is reported as its connection's first.
    NoHandshake,
    /// The responder's RST before any SYN+ACK whose ACK does not acknowledge the SYN (no ACK, or
    /// a wrong one: an injected or stale RST). docs/verdicts.md: only an RST acknowledging the SYN is a
    /// refusal; rstwatch reads the rest as `handshake`. Zeek would still say `REJ`.
    UnacknowledgedSyn,
    /// docs/verdicts.md's stated limitation: an RST without ACK from a side that sent no payload, after
    /// only its peer sent some, carries no word of that payload and reads as `handshake`. Only
    /// while no earlier RST of the connection was read `established`: that one told the tracker.
    NoAckAfterPeerData,
}

/// The reading of one RST.
#[derive(Debug, Clone)]
struct Reading {
    frame: Frame,
    kind: Kind,
    /// Sent by the responder (the server), else by the originator.
    server: bool,
    side_observed: bool,
    first: bool,
    /// The connection's state at its first RST, Zeek-style.
    zeek: &'static str,
    rule: Rule,
}

impl fmt::Display for Reading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{} {} by the {} ({}{}",
            self.frame.number,
            self.kind.name(),
            if self.server { "server" } else { "client" },
            self.zeek,
            if self.first { ", first" } else { "" }
        )?;
        match self.rule {
            Rule::Frames => write!(f, ")"),
            rule => write!(f, ", rule {rule:?})"),
        }
    }
}

/// One connection on one 4-tuple and interface, from its SYN (or its SYN+ACK) on.
#[derive(Debug)]
struct Conn {
    originator: Endpoint,
    syn: bool,
    synack: bool,
    client_isn: u32,
    server_isn: u32,
    /// Payload sent by the originator, by the responder.
    data: [bool; 2],
    fin: bool,
    /// Its first RST went by, and the Zeek-style state then.
    first_reset: Option<&'static str>,
    /// An RST of it was read `established`.
    established_reset: bool,
}

impl Conn {
    fn new(originator: Endpoint, client_isn: u32) -> Conn {
        Conn {
            originator,
            syn: false,
            synack: false,
            client_isn,
            server_isn: 0,
            data: [false; 2],
            fin: false,
            first_reset: None,
            established_reset: false,
        }
    }
}

/// A connection's 4-tuple on one interface, whichever way a segment goes.
fn conn_key(frame: &Frame) -> (u32, Endpoint, Endpoint) {
    let (lo, hi) = if frame.src <= frame.dst { (frame.src, frame.dst) } else { (frame.dst, frame.src) };
    (frame.ifindex, lo, hi)
}

/// Every RST of `frames`, read independently of rstwatch's classifier.
fn read_resets(frames: &[Frame]) -> Vec<Reading> {
    let mut conns: BTreeMap<(u32, Endpoint, Endpoint), Conn> = BTreeMap::new();
    let mut readings = Vec::new();
    for frame in frames {
        let key = conn_key(frame);
        let flags = frame.flags;
        if flags & RST != 0 {
            readings.push(match conns.get_mut(&key) {
                Some(conn) => read_reset(conn, frame),
                None => no_handshake(frame),
            });
            continue;
        }
        if flags & SYN != 0 && flags & ACK == 0 {
            if let Some(conn) = conns.get(&key) {
                if conn.syn && conn.originator == frame.src && conn.client_isn == frame.seq {
                    continue; // retransmitted: the same attempt
                }
            }
            // A new attempt: a new connection on this 4-tuple.
            let mut conn = Conn::new(frame.src, frame.seq);
            conn.syn = true;
            conns.insert(key, conn);
            continue;
        }
        if flags & SYN != 0 {
            if let Some(conn) = conns.get_mut(&key) {
                let same = conn.originator == frame.dst && (conn.syn || (conn.synack && conn.server_isn == frame.seq));
                if same {
                    conn.synack = true;
                    conn.server_isn = frame.seq;
                    continue;
                }
            }
            // Its SYN went by unseen: the SYN+ACK names the originator and both ISNs.
            let mut conn = Conn::new(frame.dst, frame.ack.wrapping_sub(1));
            conn.synack = true;
            conn.server_isn = frame.seq;
            conns.insert(key, conn);
            continue;
        }
        if let Some(conn) = conns.get_mut(&key) {
            if frame.len > 0 {
                conn.data[usize::from(frame.src != conn.originator)] = true;
            }
            if flags & FIN != 0 {
                conn.fin = true;
            }
        }
    }
    readings
}

fn read_reset(conn: &mut Conn, frame: &Frame) -> Reading {
    let from_originator = frame.src == conn.originator;
    let ack_set = frame.flags & ACK != 0;
    let (own_data, peer_data) =
        if from_originator { (conn.data[0], conn.data[1]) } else { (conn.data[1], conn.data[0]) };
    let (kind, rule) = if conn.fin {
        (Kind::Closing, Rule::Frames)
    } else if own_data {
        (Kind::Established, Rule::Frames)
    } else if peer_data {
        if !ack_set && !conn.established_reset {
            (Kind::Handshake, Rule::NoAckAfterPeerData)
        } else {
            (Kind::Established, Rule::Frames)
        }
    } else if conn.synack || from_originator {
        (Kind::Handshake, Rule::Frames)
    } else if ack_set && frame.ack == conn.client_isn.wrapping_add(1) {
        (Kind::Refused, Rule::Frames)
    } else {
        (Kind::Handshake, Rule::UnacknowledgedSyn)
    };
    if kind == Kind::Established {
        conn.established_reset = true;
    }
    let first = conn.first_reset.is_none();
    // A connection is made by a SYN or by a SYN+ACK (then `syn` is false and `synack` true).
    let zeek = *conn.first_reset.get_or_insert(match (conn.syn, conn.synack, from_originator) {
        (_, false, true) => "RSTOS0",
        (_, false, false) => "REJ",
        (false, true, false) => "RSTRH",
        (_, true, true) => "RSTO",
        (true, true, false) => "RSTR",
    });
    Reading { frame: frame.clone(), kind, server: !from_originator, side_observed: true, first, zeek, rule }
}

fn no_handshake(frame: &Frame) -> Reading {
    let kind = if frame.flags & ACK != 0 && frame.seq == 0 { Kind::Refused } else { Kind::Established };
    let sender_is_lo = frame.src <= frame.dst;
    let (lo_port, hi_port) = if sender_is_lo { (frame.src.1, frame.dst.1) } else { (frame.dst.1, frame.src.1) };
    let client_is_lo = lo_port > hi_port;
    let server = kind == Kind::Refused || client_is_lo != sender_is_lo;
    Reading {
        frame: frame.clone(),
        kind,
        server,
        side_observed: false,
        first: true,
        zeek: "OTH",
        rule: Rule::NoHandshake,
    }
}

/// Whether `protocols` (tshark's `frame.protocols`) is TCP directly on IP on a link rstwatch
/// reads: `eth:ethertype:(vlan:ethertype:)*` or `sll:ethertype:`, then `ip` or `ipv6` (and IPv6
/// extension headers), then `tcp`.
fn tcp_on_ip(protocols: &str) -> bool {
    let layers: Vec<&str> = protocols.split(':').collect();
    let mut at = match layers.as_slice() {
        ["eth", "ethertype", ..] | ["sll", "ethertype", ..] => 2,
        _ => return false,
    };
    while layers.get(at..at + 2) == Some(&["vlan", "ethertype"][..]) && layers[0] == "eth" {
        at += 2;
    }
    match layers.get(at) {
        Some(&"ip") => at += 1,
        Some(&"ipv6") => {
            at += 1;
            while layers.get(at).is_some_and(|layer| layer.starts_with("ipv6.")) {
                at += 1;
            }
        }
        _ => return false,
    }
    layers.get(at) == Some(&"tcp")
}

fn tshark_frames(capture: &Path) -> anyhow::Result<Vec<Frame>> {
    let mut command = Command::new("tshark");
    command.arg("-r").arg(capture).args(["-n", "-Y", "tcp", "-T", "fields", "-E", "separator=/t"]);
    // Each frame on its own: no IP reassembly (rstwatch counts fragments apart).
    command.args(["-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE"]);
    for field in FIELDS {
        command.args(["-e", field]);
    }
    let output = command.output().context("running tshark")?;
    ensure!(output.status.success(), "tshark: {:?}: {}", output.status, String::from_utf8_lossy(&output.stderr));
    let mut frames = Vec::new();
    for line in String::from_utf8(output.stdout).context("tshark's output")?.lines() {
        let columns: Vec<&str> = line.split('\t').collect();
        ensure!(columns.len() == FIELDS.len(), "tshark line {line:?}: {} fields", columns.len());
        if !tcp_on_ip(columns[2]) {
            continue;
        }
        let parse = || -> anyhow::Result<Frame> {
            let either = |v4: &str, v6: &str| -> anyhow::Result<IpAddr> {
                Ok(if v4.is_empty() { v6.parse()? } else { v4.parse()? })
            };
            let flags = columns[9].trim_start_matches("0x");
            Ok(Frame {
                number: columns[0].parse()?,
                ifindex: if columns[1].is_empty() { 1 } else { columns[1].parse::<u32>()? + 1 },
                src: (either(columns[3], columns[4])?, columns[5].parse()?),
                dst: (either(columns[6], columns[7])?, columns[8].parse()?),
                flags: u16::from_str_radix(flags, 16)?,
                seq: columns[10].parse()?,
                ack: columns[11].parse()?,
                len: columns[12].parse()?,
            })
        };
        frames.push(parse().with_context(|| format!("tshark line {line:?}"))?);
    }
    Ok(frames)
}

/// A flow record's fields this test checks, rstwatch's or the ones expected.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    resets: u64,
    kinds: [u64; 4],
    side: String,
    side_observed: bool,
    first: bool,
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "resets {} kinds {{", self.resets)?;
        let kinds: Vec<String> = Kind::ALL
            .iter()
            .zip(self.kinds)
            .filter(|(_, count)| *count > 0)
            .map(|(kind, count)| format!("{}: {count}", kind.name()))
            .collect();
        write!(f, "{}}} side {} side_observed {} first {}", kinds.join(", "), self.side, self.side_observed, self.first)
    }
}

/// A flow record's key: interface, then the RST's direction.
type FlowId = (u32, IpAddr, u16, IpAddr, u16);

/// What a flow record made of `readings` (one direction's RSTs) must say.
fn expected_record(readings: &[&Reading]) -> Record {
    let mut kinds = [0; 4];
    for reading in readings {
        kinds[reading.kind as usize] += 1;
    }
    let resets = readings.len() as u64;
    let from_server = readings.iter().filter(|r| r.server).count() as u64;
    Record {
        resets,
        kinds,
        // The flow's side is the side most of its RSTs came from (ties: the server).
        side: if from_server > 0 && from_server * 2 >= resets { "server" } else { "client" }.to_owned(),
        side_observed: readings.iter().any(|r| r.side_observed),
        first: readings.iter().any(|r| r.first),
    }
}

fn rstwatch_records(capture: &Path) -> anyhow::Result<BTreeMap<FlowId, Record>> {
    let output = Command::new(env!("CARGO_BIN_EXE_rstwatch"))
        .args(["replay", "--format", "json", "--interval", "1h"])
        .arg(capture)
        .output()
        .context("running rstwatch")?;
    ensure!(output.status.success(), "rstwatch: {:?}: {}", output.status, String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).context("rstwatch's output")?;
    let last = stdout.lines().rev().find(|line| !line.trim().is_empty()).context("no output")?;
    let summary: Value = serde_json::from_str(last).context("the summary line")?;
    ensure!(summary["type"] == "summary", "the last line is not the summary: {last}");
    ensure!(
        summary["unlisted"].is_null() || summary["unlisted"]["flow_records"] == 0,
        "flows left unlisted: {}",
        summary["unlisted"]
    );
    let mut records = BTreeMap::new();
    for flow in summary["flows"].as_array().context("flows")? {
        let field = |name: &str| flow[name].as_u64().with_context(|| format!("{name} in {flow}"));
        let address = |name: &str| -> anyhow::Result<IpAddr> {
            flow[name].as_str().and_then(|s| s.parse().ok()).with_context(|| format!("{name} in {flow}"))
        };
        let id: FlowId = (
            u32::try_from(field("ifindex")?)?,
            address("src")?,
            u16::try_from(field("sport")?)?,
            address("dst")?,
            u16::try_from(field("dport")?)?,
        );
        let mut kinds = [0; 4];
        for (slot, kind) in kinds.iter_mut().zip(Kind::ALL) {
            *slot = flow["kinds"][kind.name()].as_u64().with_context(|| format!("kinds.{} in {flow}", kind.name()))?;
        }
        let record = Record {
            resets: field("resets")?,
            kinds,
            side: flow["side"].as_str().with_context(|| format!("side in {flow}"))?.to_owned(),
            side_observed: flow["side_observed"].as_bool().with_context(|| format!("side_observed in {flow}"))?,
            first: flow["first"].as_bool().with_context(|| format!("first in {flow}"))?,
        };
        if records.insert(id, record).is_some() {
            bail!("{id:?} is listed twice");
        }
    }
    Ok(records)
}

fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// The disagreements on `capture` (one line each), and a one-line summary when there are none.
fn check_capture(capture: &Path) -> anyhow::Result<Result<String, Vec<String>>> {
    let name = capture.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let frames = tshark_frames(capture)?;
    let readings = read_resets(&frames);

    // This reading's RST count per direction is Wireshark's, as recorded beside the capture.
    let mut beside = capture.as_os_str().to_owned();
    beside.push(".resets.json");
    if Path::new(&beside).is_file() {
        let mut counted: BTreeMap<Direction, u64> = BTreeMap::new();
        for reading in &readings {
            let Frame { src, dst, .. } = reading.frame;
            *counted.entry((src.0, src.1, dst.0, dst.1)).or_default() += 1;
        }
        let expected = expected_resets(capture)?;
        ensure!(counted == expected, "this test's tshark reading {counted:?}\n  is not the recorded {expected:?}");
    }

    let mut by_flow: BTreeMap<FlowId, Vec<&Reading>> = BTreeMap::new();
    for reading in &readings {
        let Frame { ifindex, src, dst, .. } = reading.frame;
        by_flow.entry((ifindex, src.0, src.1, dst.0, dst.1)).or_default().push(reading);
    }
    let got = rstwatch_records(capture)?;
    let mut failures = Vec::new();
    let mut ids: Vec<&FlowId> = by_flow.keys().chain(got.keys()).collect();
    ids.sort();
    ids.dedup();
    for id in ids {
        let (ifindex, src, sport, dst, dport) = *id;
        let flow = format!("{name} if {ifindex} {} -> {}", endpoint(src, sport), endpoint(dst, dport));
        let readings = by_flow.get(id).map(Vec::as_slice).unwrap_or_default();
        let said: Vec<String> = readings.iter().map(|r| r.to_string()).collect();
        match (readings.is_empty(), got.get(id)) {
            (true, Some(record)) => failures.push(format!("{flow}: no RST read here; rstwatch: {record}")),
            (false, None) => failures.push(format!("{flow}: {}; rstwatch has no such flow", said.join(", "))),
            (false, Some(record)) => {
                let expected = expected_record(readings);
                if *record != expected {
                    failures
                        .push(format!("{flow}: {}\n    expected {expected}\n    rstwatch {record}", said.join(", ")));
                }
            }
            (true, None) => unreachable!("an id from neither side"),
        }
    }
    if !failures.is_empty() {
        return Ok(Err(failures));
    }
    let mut states: BTreeMap<&str, usize> = BTreeMap::new();
    for reading in readings.iter().filter(|r| r.first) {
        *states.entry(reading.zeek).or_default() += 1;
    }
    Ok(Ok(format!("{} RSTs in {} flows agree; first RSTs by state {states:?}", readings.len(), by_flow.len())))
}

/// The `.pcap`, `.pcapng` and `.cap` files in `dir`, sorted.
fn fixtures_in(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut captures = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if matches!(path.extension().and_then(|e| e.to_str()), Some("pcap" | "pcapng" | "cap")) {
            captures.push(path);
        }
    }
    captures.sort();
    Ok(captures)
}

/// Whether tshark is there; without it the test skips (`rst_lab::skip`), and fails under CI=true.
fn tshark_available() -> anyhow::Result<bool> {
    rst_lab::skip::require(&rst_lab::skip::current_test(), &[rst_lab::Need::Tool("tshark")])
}

#[test]
fn classifier_agrees_with_tsharks_reading_of_every_capture() -> anyhow::Result<()> {
    if !tshark_available()? {
        return Ok(());
    }
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut captures = fixtures_in(&data)?;
    if data.join("real").is_dir() {
        captures.extend(fixtures_in(&data.join("real"))?);
    }
    if let Some(corpus) = corpus_dir()? {
        let corpus = captures_in(&corpus)?;
        ensure!(!corpus.is_empty(), "no captures in the corpus");
        captures.extend(corpus);
    }
    ensure!(!captures.is_empty(), "no captures");
    let mut failures = Vec::new();
    for capture in &captures {
        let name = capture.display();
        match check_capture(capture) {
            Ok(Ok(summary)) => eprintln!("{name}: {summary}"),
            Ok(Err(disagreements)) => failures.extend(disagreements),
            Err(error) => failures.push(format!("{name}: {error:#}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} flow records disagree with tshark's reading:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

/// The reading itself, on hand-written frames: the ISN case and the branches around it.
#[test]
fn independent_reading_of_handshake_cases() {
    let client: Endpoint = ("10.0.0.1".parse().unwrap(), 40000);
    let server: Endpoint = ("10.0.0.2".parse().unwrap(), 80);
    let mut number = 0;
    let mut frame = |from_client: bool, flags: u16, seq: u32, ack: u32, len: u32| {
        number += 1;
        let (src, dst) = if from_client { (client, server) } else { (server, client) };
        Frame { number, ifindex: 1, src, dst, flags, seq, ack, len }
    };
    let kinds = |frames: &[Frame]| -> Vec<(Kind, bool, &'static str)> {
        read_resets(frames).iter().map(|r| (r.kind, r.server, r.zeek)).collect()
    };
    // The client's RST with its ISN (not ISN+1) before any SYN+ACK: nothing was sent.
    let frames = [frame(true, SYN, 7, 0, 0), frame(true, RST, 7, 0, 0)];
    assert_eq!(kinds(&frames), [(Kind::Handshake, false, "RSTOS0")]);
    // Refused, then a FIN-less established connection, then closing.
    let frames = [
        frame(true, SYN, 100, 0, 0),
        frame(false, RST | ACK, 0, 101, 0),
        frame(true, SYN, 200, 0, 0),
        frame(false, SYN | ACK, 900, 201, 0),
        frame(true, ACK, 201, 901, 5),
        frame(false, RST | ACK, 901, 206, 0),
        frame(false, RST, 901, 0, 0),
        frame(true, SYN, 300, 0, 0),
        frame(false, SYN | ACK, 500, 301, 0),
        frame(true, FIN | ACK, 301, 501, 0),
        frame(true, RST, 302, 0, 0),
    ];
    assert_eq!(
        kinds(&frames),
        [
            (Kind::Refused, true, "REJ"),
            (Kind::Established, true, "RSTR"),
            // Not first, and after an RST read established: not the no-ACK limitation.
            (Kind::Established, true, "RSTR"),
            (Kind::Closing, false, "RSTO"),
        ]
    );
    // No handshake in view: docs/verdicts.md's rule.
    let frames = [frame(true, RST, 0, 0, 0), frame(false, RST | ACK, 0, 1, 0)];
    let readings = read_resets(&frames);
    assert_eq!(
        readings.iter().map(|r| (r.kind, r.server, r.side_observed, r.first)).collect::<Vec<_>>(),
        [(Kind::Established, false, false, true), (Kind::Refused, true, false, true)]
    );
    assert!(tcp_on_ip("eth:ethertype:vlan:ethertype:ip:tcp"));
    assert!(tcp_on_ip("sll:ethertype:ipv6:ipv6.hopopts:tcp:data"));
    assert!(!tcp_on_ip("eth:ethertype:ip:gre:eth:ethertype:ip:tcp"));
    assert!(!tcp_on_ip("eth:ethertype:ip:icmp:ip:tcp"));
}
