//! Verdicts on real captures: what a careful analyst concludes about each capture's resets.
//!
//! Every capture of the shared corpus (`shared/corpus` beside the repository, or
//! `$RSTWATCH_CORPUS`) and of `tests/data/real` (sources and licences in its README) goes through
//! `rstwatch replay --format json --interval 1h` (one interval: every capture here is shorter),
//! and the summary's `verdicts` are compared with the table below. Each entry says, in its
//! comment, how the capture reads when followed connection by connection in tshark (who opened,
//! who reset, after what, with which TTL), and then:
//!
//! - `want`: the alarming verdicts that must appear, each exactly once, as (cause, service) and,
//!   where the reading says it, the `side` (`app_abort`) or the `client` (`scan`); a few accept
//!   more than one service where the reading allows more than one (a tie for the most-probed
//!   host, forged resets that claim the client's address);
//! - `teardown`: the services where a `teardown` verdict (benign) may appear: "teardown or
//!   nothing" for connections that were already being closed. Anywhere else a `teardown` is a
//!   mismatch too.
//!
//! Any other verdict is a mismatch: a lone reset, a client resetting its own unanswered SYN or a
//! reset after the resetter's own FIN answering new data get no cause; a scan is one `scan`
//! verdict, its refusals are not also `no_listener`. As a check on the counting underneath, the
//! flows' resets per direction must equal tshark's (`NAME.resets.json`), and every capture in
//! both directories must have an entry here.
//!
//! Every mismatch of every capture is collected; the test fails once, listing them all. Without
//! the corpus its captures are skipped with a notice (the ones in `tests/data/real` still run),
//! except under `CI=true`, where a missing corpus is a failure.

#![allow(clippy::panic)] // test helpers: a panic is the failure report

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};
use serde_json::Value;

mod support;

use support::{captures_in, corpus_dir, expected_resets, Direction};

/// Where a capture lives.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    /// The shared corpus.
    Corpus,
    /// `tests/data/real`.
    Real,
}

/// One alarming verdict a capture must produce, exactly once.
struct Want {
    cause: &'static str,
    /// The services (`addr`, `port`) the verdict may name; usually one.
    at: &'static [(&'static str, u16)],
    /// `side` the verdict must carry (`app_abort`), or `None` when not checked.
    side: Option<&'static str>,
    /// `client` the verdict must name (`scan`: the scanner), or `None` when not checked.
    client: Option<&'static str>,
}

const fn verdict(cause: &'static str, at: &'static [(&'static str, u16)]) -> Want {
    Want { cause, at, side: None, client: None }
}

const fn app_abort(side: &'static str, at: &'static [(&'static str, u16)]) -> Want {
    Want { cause: "app_abort", at, side: Some(side), client: None }
}

const fn scan(scanner: &'static str, at: &'static [(&'static str, u16)]) -> Want {
    Want { cause: "scan", at, side: None, client: Some(scanner) }
}

/// Any address, in a `teardown` entry.
const ANY: &str = "*";

struct Case {
    file: &'static str,
    dir: Dir,
    want: &'static [Want],
    /// Services (`addr` or [`ANY`], `port`) where `teardown` may appear.
    teardown: &'static [(&'static str, u16)],
}

const CASES: &[Case] = &[
    // ── The shared corpus (Zeek's test traces) ──────────────────────────────────────────────
    //
    // FTP over IPv6 to ftp.belnet.be. After the login the client sends its FIN (frame 13); the
    // server, not having seen it, still writes "530 Sorry, only 3 connections per host!" (frame
    // 14): the client's stack answers that late data with an RST without ACK, then the server's
    // FIN and last ACK with two more. The client reset a connection it had itself closed, in
    // answer to new data: no cause (the keep-alive race); its later RSTs go with its first.
    // Teardown tolerated, never `state_lost` (the RSTs come after the resetter's own FIN).
    Case { file: "ftp_ipv6-violation.pcap", dir: Dir::Corpus, want: &[], teardown: &[("2001:6a8:a40::21", 21)] },
    // Five HTTP downloads (every frame captured twice). Each time the server sends the whole
    // response and its FIN; the client ACKs and, 0.1 to 3.5 s later, closes with RST+ACK
    // instead of a FIN (a Windows client dropping a finished connection). Resets after the
    // peer's FIN: teardown, not `app_abort`.
    Case {
        file: "http_vnd.ms-cab-compressed-multi-conn.pcap",
        dir: Dir::Corpus,
        want: &[],
        teardown: &[("65.54.95.7", 80)],
    },
    // A Windows client and its domain controllers. Kerberos (172.16.0.100:88), 7 connections:
    // request, reply, the client's FIN, the KDC's ACK and then RST+ACK instead of a FIN:
    // teardown. SMB (172.16.0.5:445 and 172.16.0.100:445), 4 connections: after the session's
    // data, no FIN from either side, the client resets with RST+ACK (10 s idle to .5, right
    // after the server's last reply to .100): the client application aborted them.
    Case {
        file: "krb_kerberos_tso.pcapng",
        dir: Dir::Corpus,
        want: &[app_abort("client", &[("172.16.0.5", 445)]), app_abort("client", &[("172.16.0.100", 445)])],
        teardown: &[("172.16.0.100", 88)],
    },
    // One LDAP (global catalog, 3268) connection: bind, search, replies; 181 s idle, then the
    // client's RST+ACK, no FIN anywhere: a client abort. (The client's handshake packets and
    // its RST arrive with TTL 251, its data with 52: an edited trace; the RST matches the
    // client's own SYN, so nothing here says a device forged it.)
    Case {
        file: "ldap_simpleauth.pcap",
        dir: Dir::Corpus,
        want: &[app_abort("client", &[("10.0.0.2", 3268)])],
        teardown: &[],
    },
    // nmap's host discovery of a /24 from 192.168.1.71 (503 ARP requests) with TCP probes to
    // ports 80 and 443 of the hosts that answer: 20 SYNs to 7 hosts; 6 refused with RST+ACK
    // (.1, .50, .65 four times), 11 unanswered (.63, .68), 3 completed (.61, .69) and reset by
    // the scanner itself right after the handshake. One scan, not four `no_listener`; .63,
    // .65 and .68 are probed 4 times each, so any of them may be the verdict's `addr`.
    Case {
        file: "nmap-vsn.pcap",
        dir: Dir::Corpus,
        want: &[scan("192.168.1.71", &[("192.168.1.63", 0), ("192.168.1.65", 0), ("192.168.1.68", 0)])],
        teardown: &[],
    },
    // Zeek's injected-RST trace. Frame 2: an RST+ACK "from" 1.2.0.3:6649 0.23 s after the SYN,
    // before the real SYN+ACK, with TTL 46 and reserved bits set, while every packet the
    // server sends arrives with TTL 49: forged, a middlebox. Then the real connection: the
    // client sends 25 bytes, the server ACKs them and resets with RST+ACK (TTL 49, no FIN):
    // the server application aborted; its later RST (no ACK) answers the client's next data
    // and goes with the first.
    Case {
        file: "tcp_rst-inject-rae.pcap",
        dir: Dir::Corpus,
        want: &[verdict("middlebox", &[("1.2.0.3", 6649)]), app_abort("server", &[("1.2.0.3", 6649)])],
        teardown: &[],
    },
    // One RST and nothing else of its connection: no cause.
    Case { file: "tcp_single-rst.pcap", dir: Dir::Corpus, want: &[], teardown: &[] },
    // A SYN answered by a bare ACK (no SYN+ACK, acknowledging nothing) and the client's RST in
    // answer to it (RFC 793's reply to an unacceptable ACK in SYN-SENT): the client resets its
    // own unanswered attempt. No cause.
    Case { file: "tcp_syn-then-ack-then-rst.pcap", dir: Dir::Corpus, want: &[], teardown: &[] },
    // A SYN and the client's own RST: no cause.
    Case { file: "tcp_syn-then-rst.pcap", dir: Dir::Corpus, want: &[], teardown: &[] },
    // SYN, a bare ACK back, the client's FIN, the client's RST: never established, the client
    // ends its own attempt after its FIN. No cause; teardown tolerated.
    Case { file: "tcp_syn-then-stuff-then-rst.pcap", dir: Dir::Corpus, want: &[], teardown: &[("1.1.1.2", 31313)] },
    // ── tests/data/real ─────────────────────────────────────────────────────────────────────
    //
    // nmap -sS from 172.16.0.8 against scanme.nmap.org (64.13.134.52): 1994 SYNs to 1000
    // ports, SYN+ACK from 22, 53 and 80, RST+ACK from 25, 70, 113 (twice) and 31337, silence
    // from the rest. One scan.
    Case {
        file: "ndpi_synscan.pcap",
        dir: Dir::Real,
        want: &[scan("172.16.0.8", &[("64.13.134.52", 0)])],
        teardown: &[],
    },
    // nmap from 192.168.1.178 against 192.168.1.2: connect probes to 80 and 443 (accepted, and
    // reset by the scanner right after the handshake), a SYN to 445 and one to 3389, then a FIN
    // probe (3390), a NULL probe (3391) and an Xmas probe (3392), all five refused with
    // RST+ACK. No client opens a connection with a FIN, NULL or Xmas segment: one scan, not
    // five `no_listener`.
    Case {
        file: "ndpi_tcp_scan.pcapng",
        dir: Dir::Real,
        want: &[scan("192.168.1.178", &[("192.168.1.2", 0)])],
        teardown: &[],
    },
    // An Ethereum node (192.168.1.184) dialling peers on 30303: 58 SYNs, 53 answered. 43
    // connections end in resets, every one after a FIN: mostly the peer closes (FIN), the node
    // still writes its queued messages and FIN, and the peer's stack resets each late segment
    // (RST without ACK, up to 15 per connection); in a few the peer resets after the node's
    // FIN, or the node resets after the peer's FIN. Every RST carries its sender's usual TTL.
    // Ordinary teardown: never `state_lost` or `app_abort`.
    Case { file: "ndpi_ethereum.pcap", dir: Dir::Real, want: &[], teardown: &[(ANY, 30303)] },
    // An RTSP client (10.1.1.10) and server (10.2.2.2:8554), captured with `-i any` on the
    // router between them: every segment appears on both sides of the hop, the server's with
    // TTL 64 and 63, the client's with 128 and 127. Sessions: SETUP, PLAY, then the client's
    // GET_PARAMETER keep-alive at ~58 s is answered at once with RST+ACK, no FIN: the server
    // application aborts each session (4 times; the first connection, whose start is not in
    // the capture, ends the same way). One SYN is refused and retried 0.5 s later and
    // accepted, while the server keeps accepting all run: no `no_listener`, no `went_down`. The
    // RSTs' TTLs (64 and 63) are the server's own: no `middlebox`.
    Case { file: "ndpi_rtsp.pcap", dir: Dir::Real, want: &[app_abort("server", &[("10.2.2.2", 8554)])], teardown: &[] },
    // TLS to Google (172.217.132.169:443; its packets arrive with TTL 123). The client sends a
    // last 24-byte record and its FIN while the server's FIN is on its way; then two RSTs
    // without ACK (answering that record and the FIN) arrive with TTL 59 and IP ID 0, and one with
    // TTL 123: the TTL-59 pair comes from another device speaking for the server (a
    // middlebox); the TTL-123 one is the server's own, after its own FIN, answering the data
    // that crossed it: no cause (teardown tolerated), and no `state_lost` (the server had sent
    // its FIN).
    Case {
        file: "suricata_tls-fin-close-data-01.pcap",
        dir: Dir::Real,
        want: &[verdict("middlebox", &[("172.217.132.169", 443)])],
        teardown: &[("172.217.132.169", 443)],
    },
    // An HTTP CONNECT tunnel (3.251.38.200 → proxy 3.235.60.34:8080) carrying TLS. While the
    // proxy is still sending, the client resets with RST+ACK (TTL 116, as all its packets),
    // no FIN: a client abort. The proxy's four segments still in flight are then answered by
    // four RST+ACKs in the client's name with TTL 244 and another IP ID sequence: a device
    // near the client (a firewall or NAT dropping the connection on the first reset) forged
    // them. The middlebox verdict may name the service or the address the forged resets claim.
    Case {
        file: "suricata_bug-2769.pcap",
        dir: Dir::Real,
        want: &[
            app_abort("client", &[("3.235.60.34", 8080)]),
            verdict("middlebox", &[("3.235.60.34", 8080), ("3.251.38.200", 59921)]),
        ],
        teardown: &[],
    },
    // Three HTTPS connections. To 128.32.169.140:443 (twice): the client sends its last record
    // and FIN, the server ACKs and resets with RST+ACK: teardown after the peer's FIN. To
    // 72.167.102.91:443: the client's FIN, then the server's close_notify and FIN, and the
    // client's RST answering them: after its own FIN, answering new data: no cause (teardown
    // tolerated).
    Case {
        file: "zeek_tls_missing-intermediate.pcap",
        dir: Dir::Real,
        want: &[],
        teardown: &[("128.32.169.140", 443), ("72.167.102.91", 443)],
    },
    // Four HTTP requests to 172.24.0.3:80: the server answers and closes (FIN), the client
    // resets with RST+ACK right after: teardown after the peer's FIN, not `app_abort`.
    Case {
        file: "zeek_http_non-printable-characters.pcap",
        dir: Dir::Real,
        want: &[],
        teardown: &[("172.24.0.3", 80)],
    },
    // FTP over IPv6 to 2400:3000:20:100::46: after a failed RETR the client closes without QUIT
    // (its FIN); the server ACKs, answers "221 You could at least say goodbye." and sends its
    // FIN; the client's stack, already closed, resets that reply and the FIN (RSTs without
    // ACK). After its own FIN, answering new data: no cause (teardown tolerated); never
    // `state_lost`.
    Case {
        file: "zeek_ftp_ipv6-multiline-reply.pcap",
        dir: Dir::Real,
        want: &[],
        teardown: &[("2400:3000:20:100::46", 21)],
    },
    // A Windows mail client (192.168.0.4) fetching mail: 212.227.15.188:110 and
    // 212.227.15.171:110 answer each of its SYNs with RST+ACK (Windows tries three times per
    // connect), accepting none; it then fetches from 212.227.15.166:110 five times without a
    // reset. Two services with nothing listening; two hosts on one port, then normal
    // connections, is not a scan.
    Case {
        file: "zeek_pop3.pcap",
        dir: Dir::Real,
        want: &[verdict("no_listener", &[("212.227.15.188", 110)]), verdict("no_listener", &[("212.227.15.171", 110)])],
        teardown: &[],
    },
];

/// One verdict of the summary, with what the table compares.
struct Got {
    cause: String,
    addr: Option<IpAddr>,
    port: Option<u64>,
    side: Option<String>,
    client: Option<String>,
    benign: Option<bool>,
}

impl Got {
    fn from_json(verdict: &Value) -> Self {
        let text = |key: &str| verdict.get(key).and_then(Value::as_str).map(str::to_owned);
        Self {
            cause: text("cause").unwrap_or_default(),
            addr: text("addr").and_then(|addr| addr.parse().ok()),
            port: verdict.get("port").and_then(Value::as_u64),
            side: text("side"),
            client: text("client"),
            benign: verdict.get("benign").and_then(Value::as_bool),
        }
    }

    fn at(&self, addr: &str, port: u16) -> bool {
        (addr == ANY || self.addr == Some(ip(addr))) && self.port == Some(u64::from(port))
    }

    fn describe(&self) -> String {
        let addr = match self.addr {
            Some(IpAddr::V6(addr)) => format!("[{addr}]"),
            Some(addr) => addr.to_string(),
            None => "?".to_owned(),
        };
        let port = self.port.map_or_else(|| "?".to_owned(), |port| port.to_string());
        let mut text = format!("{} {addr}:{port}", self.cause);
        if let Some(side) = &self.side {
            text += &format!(" side={side}");
        }
        if let Some(client) = &self.client {
            text += &format!(" client={client}");
        }
        text
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap_or_else(|_| panic!("the table names {text:?}, not an address"))
}

fn describe_want(want: &Want) -> String {
    let at: Vec<String> = want
        .at
        .iter()
        .map(|(addr, port)| if addr.contains(':') { format!("[{addr}]:{port}") } else { format!("{addr}:{port}") })
        .collect();
    let mut text = format!("{} {}", want.cause, at.join(" or "));
    if let Some(side) = want.side {
        text += &format!(" side={side}");
    }
    if let Some(client) = want.client {
        text += &format!(" client={client}");
    }
    text
}

fn matches(want: &Want, got: &Got) -> bool {
    want.cause == got.cause
        && want.at.iter().any(|&(addr, port)| got.at(addr, port))
        && want.side.is_none_or(|side| got.side.as_deref() == Some(side))
        && want.client.is_none_or(|client| got.client.as_deref().map(ip) == Some(ip(client)))
}

/// The summary line of `rstwatch replay --format json --interval 1h CAPTURE`.
fn replay_summary(capture: &Path) -> anyhow::Result<Value> {
    let output = Command::new(env!("CARGO_BIN_EXE_rstwatch"))
        .args(["replay", "--format", "json", "--interval", "1h"])
        .arg(capture)
        .output()
        .context("running rstwatch replay")?;
    if !output.status.success() {
        bail!("rstwatch replay exited with {}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line.get("type").and_then(Value::as_str) == Some("summary"))
        .context("no summary line in the output")
}

/// Resets per direction in the summary's flows, keyed like `NAME.resets.json`.
fn flow_resets(summary: &Value) -> BTreeMap<Direction, u64> {
    let mut resets = BTreeMap::new();
    for flow in summary.get("flows").and_then(Value::as_array).into_iter().flatten() {
        let addr = |key: &str| flow.get(key).and_then(Value::as_str).and_then(|text| text.parse::<IpAddr>().ok());
        let port = |key: &str| flow.get(key).and_then(Value::as_u64).and_then(|port| u16::try_from(port).ok());
        if let (Some(src), Some(sport), Some(dst), Some(dport)) =
            (addr("src"), port("sport"), addr("dst"), port("dport"))
        {
            *resets.entry((src, sport, dst, dport)).or_default() +=
                flow.get("resets").and_then(Value::as_u64).unwrap_or(0);
        }
    }
    resets
}

/// Every way `capture`'s verdicts differ from `case`, one line each.
fn check(case: &Case, capture: &Path) -> anyhow::Result<Vec<String>> {
    let summary = replay_summary(capture)?;
    let mut mismatches = Vec::new();

    let counted = flow_resets(&summary);
    let expected = expected_resets(capture)?;
    if counted != expected {
        mismatches
            .push(format!("resets per direction differ from tshark's: rstwatch {counted:?}, tshark {expected:?}"));
    }

    let verdicts: Vec<Got> = summary
        .get("verdicts")
        .and_then(Value::as_array)
        .context("the summary has no verdicts array")?
        .iter()
        .map(Got::from_json)
        .collect();
    let all: Vec<String> = verdicts.iter().map(Got::describe).collect();
    eprintln!("{}: [{}]", case.file, all.join(", "));

    let mut found = vec![0usize; case.want.len()];
    for got in &verdicts {
        if got.cause == "teardown" {
            if !case.teardown.iter().any(|&(addr, port)| got.at(addr, port)) {
                mismatches.push(format!("unexpected {} (no teardown expected there)", got.describe()));
            } else if got.benign != Some(true) {
                mismatches.push(format!("{} is not marked benign", got.describe()));
            }
            continue;
        }
        match case.want.iter().position(|want| matches(want, got)) {
            Some(index) => {
                found[index] += 1;
                if got.benign != Some(false) {
                    mismatches.push(format!("{} is marked benign (benign: {:?})", got.describe(), got.benign));
                }
            }
            None => mismatches.push(format!("unexpected {}", got.describe())),
        }
    }
    for (want, count) in case.want.iter().zip(found) {
        match count {
            1 => {}
            0 => mismatches.push(format!("missing {}", describe_want(want))),
            count => mismatches.push(format!("{count} verdicts for {} (expected exactly one)", describe_want(want))),
        }
    }
    Ok(mismatches)
}

#[test]
fn real_captures_get_the_verdicts_an_analyst_would_give() -> anyhow::Result<()> {
    let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/real");
    let corpus = corpus_dir()?;
    let mut dirs: Vec<(Dir, PathBuf)> = vec![(Dir::Real, real)];
    if let Some(corpus) = corpus {
        dirs.push((Dir::Corpus, corpus));
    }

    let mut failures = Vec::new();
    let mut checked = 0usize;
    for (dir, path) in &dirs {
        // Every capture needs its reading in the table.
        for capture in captures_in(path)? {
            let name = capture.file_name().unwrap_or_default().to_string_lossy().into_owned();
            if !CASES.iter().any(|case| case.dir == *dir && case.file == name) {
                failures.push(format!("{name}: no expected verdicts in the table ({})", path.display()));
            }
        }
        for case in CASES.iter().filter(|case| case.dir == *dir) {
            let capture = path.join(case.file);
            if !capture.is_file() {
                failures.push(format!("{}: not found in {}", case.file, path.display()));
                continue;
            }
            checked += 1;
            match check(case, &capture) {
                Ok(mismatches) => {
                    failures.extend(mismatches.into_iter().map(|mismatch| format!("{}: {mismatch}", case.file)));
                }
                Err(error) => failures.push(format!("{}: {error:#}", case.file)),
            }
        }
    }
    assert!(failures.is_empty(), "{} mismatches over {checked} captures:\n{}", failures.len(), failures.join("\n"));
    Ok(())
}
