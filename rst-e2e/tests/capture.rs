//! `--capture FILE` end to end: tshark reads what rstwatch writes, replay counts it the same,
//! and every counted RST is either written or dropped, whatever the budget, the size cap or
//! the disk do. Needs root, the release binary (`cargo xtask build`, or RSTWATCH_BIN), the bench
//! example (built here unless BENCH_BIN names one) and tshark (`cargo xtask setup`).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};
use rst_lab::Need;
use rst_lab::{
    flood::{self, FloodLab, GenLength, GenOutcome, GenPlan},
    lab::{self, Finished, Proc, TwoHosts},
};
use serde_json::Value;

const START_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// A directory for one test's files, removed with everything in it (a mounted tmpfs unmounted
/// first) even when the test fails.
struct Scratch {
    dir: PathBuf,
    mounted: bool,
}

impl Scratch {
    fn new(tag: &str) -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("rstwatch-capture-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch { dir, mounted: false })
    }

    /// The directory becomes a tmpfs of `size` (e.g. "64k").
    fn tmpfs(tag: &str, size: &str) -> Result<Scratch> {
        let mut scratch = Scratch::new(tag)?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "rstwatch-test"])
            .arg(&scratch.dir)
            .status()
            .context("running mount")?;
        ensure!(status.success(), "mounting a tmpfs on {} failed", scratch.dir.display());
        scratch.mounted = true;
        Ok(scratch)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One captured packet as tshark reads it.
#[derive(Debug)]
struct Packet {
    iface: String,
    /// `frame.packet_flags_direction`: 1 inbound, 2 outbound.
    direction: u32,
    reset: bool,
    comment: String,
}

/// Every packet of `file` (tshark must read it without complaint).
fn tshark(file: &Path) -> Result<Vec<Packet>> {
    let output = Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args(["-T", "fields", "-E", "separator=|", "-e", "frame.interface_name", "-e", "frame.packet_flags_direction"])
        .args(["-e", "tcp.flags.reset", "-e", "frame.comment"])
        .output()
        .context("running tshark")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.success(), "tshark could not read {}: {stderr}", file.display());
    ensure!(!stderr.contains("cut short") && !stderr.contains("appears to be damaged"), "tshark: {stderr}");
    let mut packets = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let fields: Vec<&str> = line.split('|').collect();
        ensure!(fields.len() == 4, "tshark line {line:?}");
        let direction = u32::from_str_radix(fields[1].trim_start_matches("0x"), 16).context("direction flags")? & 3;
        packets.push(Packet {
            iface: fields[0].to_owned(),
            direction,
            reset: fields[2] == "1" || fields[2] == "True",
            comment: fields[3].to_owned(),
        });
    }
    Ok(packets)
}

/// One interface statistics block: interface id, `isb_ifrecv`, `isb_ifdrop`, `isb_usrdeliv`.
type Statistics = (u32, Option<u64>, Option<u64>, Option<u64>);

/// The interface statistics blocks of a pcapng.
fn statistics_blocks(file: &Path) -> Result<Vec<Statistics>> {
    let bytes = std::fs::read(file)?;
    let word = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let mut blocks = Vec::new();
    let mut at = 0;
    while at + 12 <= bytes.len() {
        let (kind, len) = (word(at), word(at + 4) as usize);
        ensure!(len >= 12 && at + len <= bytes.len(), "a broken block at {at}");
        if kind == 5 {
            let mut options = BTreeMap::new();
            let mut o = at + 20;
            while o + 4 <= at + len - 4 {
                let (code, olen) =
                    (u16::from_le_bytes([bytes[o], bytes[o + 1]]), u16::from_le_bytes([bytes[o + 2], bytes[o + 3]]));
                if code == 0 {
                    break;
                }
                if olen == 8 {
                    let value = u64::from_le_bytes(bytes[o + 4..o + 12].try_into()?);
                    options.insert(code, value);
                }
                o += 4 + usize::from(olen).next_multiple_of(4);
            }
            blocks.push((word(at + 8), options.get(&4).copied(), options.get(&5).copied(), options.get(&8).copied()));
        }
        at += len;
    }
    Ok(blocks)
}

fn rstwatch() -> PathBuf {
    rst_lab::paths::rstwatch_for_tests()
}

/// Whether this machine has what every test here needs; if not, the test is skipped with its
/// one line (a failure under `CI=true`).
fn ready() -> Result<bool> {
    let needs = [Need::Root("network namespaces, BPF, XDP"), Need::Tool("ip"), Need::Tool("tshark")];
    rst_lab::skip::require(&rst_lab::skip::current_test(), &needs)
}

/// The flood lab, or `None` where the test is skipped ([`ready`]).
fn flood_lab() -> Result<Option<FloodLab>> {
    if !ready()? {
        return Ok(None);
    }
    flood::build_bench()?;
    FloodLab::new().map(Some)
}

/// rstwatch on the flood lab's monitor, JSON output, capturing to `file`, `extra` options.
fn start(lab: &FloodLab, file: &Path, extra: &[&str]) -> Result<Proc> {
    let _ = rstwatch();
    let file = file.display().to_string();
    let args: Vec<&str> = ["--capture", &file].into_iter().chain(extra.iter().copied()).collect();
    flood::start_rstwatch(lab, &args)
}

/// A client and a server namespace joined by a veth, with one address each, or `None` where the
/// test is skipped ([`ready`]).
fn two_hosts(client: &str, server: &str) -> Result<Option<TwoHosts>> {
    if !ready()? {
        return Ok(None);
    }
    lab::sweep_stale()?;
    TwoHosts::new(&[ip(client)], &[ip(server)]).map(Some)
}

/// Starts `cmd` (an rstwatch on the server's veth) and waits until it attached there.
fn watching(hosts: &TwoHosts, cmd: &mut Command) -> Result<Proc> {
    let mut proc = Proc::spawn(cmd)?;
    proc.wait_for_stderr(&format!("attached to {}", hosts.server_if.name), START_TIMEOUT)?;
    Ok(proc)
}

fn stop(proc: Proc) -> Result<Finished> {
    proc.signal(libc::SIGINT)?;
    proc.finish(EXIT_TIMEOUT)
}

/// [`stop`], and rstwatch must have exited with success.
fn stop_ok(proc: Proc) -> Result<Finished> {
    let fin = stop(proc)?;
    ensure!(fin.status.success(), "rstwatch failed: {}", fin.stderr);
    Ok(fin)
}

fn summary(fin: &Finished) -> Result<Value> {
    lab::summary_line(&fin.stdout).with_context(|| format!("stderr: {}", fin.stderr.trim()))
}

/// The JSON lines as the bench's exactness check reads them.
fn output(fin: &Finished, summary: &Value) -> Result<flood::RstwatchOutput> {
    let mut intervals = Vec::new();
    for line in fin.stdout.lines().filter(|l| l.contains("\"type\":\"interval\"")) {
        intervals.push(serde_json::from_str(line)?);
    }
    Ok(flood::RstwatchOutput { intervals, summary: summary.clone() })
}

/// One pass of the generator: `repeat` RSTs on each of `flows` flows from flow `first` on.
fn one_pass(lab: &FloodLab, flows: u32, first: u32, repeat: u32) -> Result<GenOutcome> {
    flood::generate(lab, &GenPlan { flows, first, repeat, length: GenLength::Passes(1) })
}

fn count(value: &Value, path: &str) -> Result<u64> {
    value.pointer(path).and_then(Value::as_u64).with_context(|| format!("no {path} in {value}"))
}

/// written + dropped = the resets counted, and counting was exact.
fn accounted(summary: &Value) -> Result<(u64, u64)> {
    let (written, dropped) = (count(summary, "/capture/written")?, count(summary, "/capture/dropped")?);
    let resets = count(summary, "/totals/resets")?;
    ensure!(written + dropped == resets, "written {written} + dropped {dropped} != {resets} resets counted");
    Ok((written, dropped))
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address literal")
}

/// Refused connections (the server's kernel resets them: sent on the server's veth) and
/// client aborts (received there), watched on the server's side: tshark finds every RST, on the
/// right interface, in the right direction, with its kind; replay of the file counts the same.
#[test]
fn tshark_reads_every_reset_with_interface_direction_and_kind_and_replay_counts_the_same() -> Result<()> {
    let Some(hosts) = two_hosts("10.78.1.2", "10.78.2.2")? else { return Ok(()) };
    let scratch = Scratch::new("tshark")?;
    let file = scratch.path("resets.pcapng");
    let mut cmd = hosts.server.exec(rstwatch());
    cmd.args(["-i", &hosts.server_if.name, "--format", "json", "--capture"]).arg(&file).arg("--capture-handshakes");
    let proc = watching(&hosts, &mut cmd)?;
    let server = SocketAddr::new(ip("10.78.2.2"), 81);
    let aborted = SocketAddr::new(ip("10.78.2.2"), 8443);
    let mut traffic = Command::new(env!("CARGO_BIN_EXE_rst-traffic"));
    traffic
        .args(["--client-ns", hosts.client.name(), "--server-ns", hosts.server.name(), "--rounds", "4"])
        .arg(format!("refused:10.78.1.2->{server}"))
        .arg(format!("client-abort:10.78.1.2->{aborted}"));
    let generated = Proc::spawn(&mut traffic)?.finish(Duration::from_secs(120))?;
    ensure!(generated.status.success(), "traffic generator failed: {}", generated.stderr);
    let fin = stop_ok(proc)?;
    let live = summary(&fin)?;
    let (written, dropped) = accounted(&live)?;
    assert_eq!((written, dropped), (8, 0), "four refused and four aborted connections: {}", live["capture"]);
    assert_eq!(count(&live, "/totals/tx/resets")?, 4, "the server's kernel refused four");

    let packets = tshark(&file)?;
    let resets: Vec<&Packet> = packets.iter().filter(|p| p.reset).collect();
    assert_eq!(resets.len() as u64, written, "{packets:#?}");
    assert!(packets.iter().all(|p| p.iface == hosts.server_if.name), "{packets:#?}");
    let refused: Vec<&&Packet> = resets.iter().filter(|p| p.comment.contains("rstwatch: refused")).collect();
    assert_eq!(refused.len(), 4, "{resets:#?}");
    assert!(refused.iter().all(|p| p.direction == 2 && p.comment.contains("sent by this host")), "{refused:#?}");
    let received: Vec<&&Packet> = resets.iter().filter(|p| p.direction == 1).collect();
    assert_eq!(received.len(), 4, "{resets:#?}");
    assert!(received.iter().all(|p| p.comment.contains("side=client")), "{received:#?}");
    // --capture-handshakes: each reset connection's SYN (and, for the aborted ones, SYN+ACK).
    let handshakes = packets.iter().filter(|p| p.comment.contains("handshake of a connection reset later")).count();
    assert!(handshakes >= 8, "at least one handshake segment per reset connection: {packets:#?}");
    // The statistics block at the end: what the interface counted, dropped and delivered.
    assert_eq!(statistics_blocks(&file)?, [(0, Some(8), Some(0), Some(8))]);

    let replay = Command::new(rstwatch()).arg("replay").arg(&file).args(["--format", "json"]).output()?;
    ensure!(replay.status.success(), "replay failed: {}", String::from_utf8_lossy(&replay.stderr));
    let replayed = lab::summary_line(&String::from_utf8_lossy(&replay.stdout))?;
    assert_eq!(count(&replayed, "/totals/resets")?, count(&live, "/totals/resets")?);
    let flows = |s: &Value| -> BTreeMap<(String, u64, String, u64), u64> {
        s["flows"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| {
                let text = |k: &str| f[k].as_str().unwrap_or_default().to_owned();
                (
                    (text("src"), f["sport"].as_u64().unwrap_or(0), text("dst"), f["dport"].as_u64().unwrap_or(0)),
                    f["resets"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    };
    assert_eq!(flows(&replayed), flows(&live), "replay of the capture counts each flow as the live run did");
    Ok(())
}

/// Far more RSTs than the budget: the capture takes at most the budget per second, the rest
/// are dropped and counted, and counting stays exact.
#[test]
fn a_flood_beyond_the_budget_is_cut_and_every_reset_accounted_for() -> Result<()> {
    let Some(lab) = flood_lab()? else { return Ok(()) };
    let scratch = Scratch::new("budget")?;
    let file = scratch.path("flood.pcapng");
    let proc = start(&lab, &file, &["--interval", "500ms", "--capture-budget", "2000"])?;
    let started = std::time::Instant::now();
    let gen = one_pass(&lab, 16, 0, 20_000)?;
    let seconds = started.elapsed().as_secs_f64();
    let fin = stop_ok(proc)?;
    let summary = summary(&fin)?;
    flood::check_exact(&output(&fin, &summary)?, gen.delivered, &gen.expected)?;
    let (written, dropped) = accounted(&summary)?;
    assert!(dropped > 0 && count(&summary, "/capture/over_budget")? > 0, "{}", summary["capture"]);
    // The budget holds per second, to within one RST per CPU at each second's turn.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let bound = 2000 * (seconds.ceil() as u64 + 1) + 2 * cpus;
    assert!(written > 0 && written <= bound, "written {written} in {seconds:.2} s, bound {bound}");
    let packets = tshark(&file)?;
    assert_eq!(packets.iter().filter(|p| p.reset).count() as u64, written);
    Ok(())
}

/// `--capture-max-size` with `--capture-files 3`: never more than three files, each under the
/// cap and each readable, the newest holding the last RSTs.
#[test]
fn rotation_keeps_at_most_n_files_under_the_cap() -> Result<()> {
    let Some(lab) = flood_lab()? else { return Ok(()) };
    let scratch = Scratch::new("rotate")?;
    let proc = start(&lab, &scratch.path("r.pcapng"), &["--capture-max-size", "20k", "--capture-files", "3"])?;
    let gen = one_pass(&lab, 8, 0, 400)?;
    let fin = stop_ok(proc)?;
    let summary = summary(&fin)?;
    let (written, dropped) = accounted(&summary)?;
    assert_eq!((written, dropped), (gen.delivered, 0), "{}", summary["capture"]);
    let mut names: Vec<String> = std::fs::read_dir(&scratch.dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    assert_eq!(names, ["r.0.pcapng", "r.1.pcapng", "r.2.pcapng"]);
    let listed = summary["capture"]["files"].as_array().context("capture.files")?;
    assert_eq!(listed.len(), 3, "{listed:?}");
    let mut in_files = 0;
    for name in &names {
        let path = scratch.path(name);
        let size = std::fs::metadata(&path)?.len();
        assert!(size <= 20_000, "{name} is {size} bytes, over the cap");
        in_files += tshark(&path)?.iter().filter(|p| p.reset).count() as u64;
    }
    // 3200 RSTs of ~200 bytes each need many 20 kB files: only the last three remain.
    assert!(in_files > 100 && in_files < written, "{in_files} in the files, {written} written");
    Ok(())
}

/// A 256 KiB tmpfs fills up: one line says the capture stopped, counting goes on to the end,
/// the exit status is a failure and the file is readable up to its last complete block.
#[test]
fn a_full_disk_stops_the_capture_and_counting_goes_on() -> Result<()> {
    let Some(lab) = flood_lab()? else { return Ok(()) };
    let scratch = Scratch::tmpfs("full", "256k")?;
    let file = scratch.path("full.pcapng");
    let proc = start(&lab, &file, &["--interval", "500ms", "--capture-budget", "1000000"])?;
    let gen = one_pass(&lab, 16, 0, 2_000)?;
    let fin = stop(proc)?;
    assert!(!fin.status.success(), "the exit status must say the capture stopped; stderr: {}", fin.stderr);
    let stopped: Vec<&str> = fin.stderr.lines().filter(|l| l.contains("capture stopped: ")).collect();
    assert_eq!(stopped.len(), 1, "one line when it happens: {}", fin.stderr);
    assert!(stopped[0].contains("No space left on device"), "{}", stopped[0]);
    let summary = summary(&fin)?;
    flood::check_exact(&output(&fin, &summary)?, gen.delivered, &gen.expected)?;
    let (written, dropped) = accounted(&summary)?;
    assert!(written > 0 && dropped > 0, "{}", summary["capture"]);
    assert!(summary["capture"]["error"].as_str().is_some_and(|e| e.contains("No space left")));
    assert_eq!(tshark(&file)?.iter().filter(|p| p.reset).count() as u64, written);
    Ok(())
}

/// The file removed while rstwatch writes it: said once, capture stops, counting goes on.
#[test]
fn a_file_removed_mid_run_stops_the_capture_and_counting_goes_on() -> Result<()> {
    let Some(lab) = flood_lab()? else { return Ok(()) };
    let scratch = Scratch::new("removed")?;
    let file = scratch.path("gone.pcapng");
    let proc = start(&lab, &file, &[])?;
    let first = one_pass(&lab, 4, 0, 100)?;
    std::thread::sleep(Duration::from_millis(300));
    std::fs::remove_file(&file)?;
    std::thread::sleep(Duration::from_millis(600));
    let second = one_pass(&lab, 4, 10, 100)?;
    let fin = stop(proc)?;
    assert!(!fin.status.success(), "stderr: {}", fin.stderr);
    assert_eq!(
        fin.stderr.lines().filter(|l| l.contains("capture stopped: ") && l.contains("removed")).count(),
        1,
        "{}",
        fin.stderr
    );
    let summary = summary(&fin)?;
    assert_eq!(count(&summary, "/totals/resets")?, first.delivered + second.delivered, "counting went on");
    let (written, dropped) = accounted(&summary)?;
    assert_eq!((written, dropped), (first.delivered, second.delivered), "{}", summary["capture"]);
    assert!(!file.exists());
    Ok(())
}

/// kill -9 in the middle of a flood: the file ends at a complete block and tshark reads it.
#[test]
fn kill_9_mid_capture_leaves_a_file_tshark_reads() -> Result<()> {
    let Some(lab) = flood_lab()? else { return Ok(()) };
    let scratch = Scratch::new("kill9")?;
    let file = scratch.path("killed.pcapng");
    let proc = start(&lab, &file, &["--capture-budget", "1000000"])?;
    std::thread::scope(|scope| -> Result<()> {
        let flood = scope.spawn(|| {
            flood::generate(&lab, &GenPlan { flows: 16, first: 0, repeat: 2_000, length: GenLength::Seconds(1.5) })
        });
        std::thread::sleep(Duration::from_millis(700));
        proc.signal(libc::SIGKILL)?;
        flood.join().map_err(|_| anyhow::anyhow!("the generator thread panicked"))??;
        Ok(())
    })?;
    let fin = proc.finish(EXIT_TIMEOUT)?;
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&fin.status), Some(libc::SIGKILL));
    let packets = tshark(&file)?;
    assert!(packets.iter().filter(|p| p.reset).count() > 100, "{} packets", packets.len());
    assert!(!lab.mon_if.xdp_attached()?, "kill -9 leaves nothing attached");
    Ok(())
}

/// A path that exists, or a symlink, is refused before anything is attached, and left as it was.
#[test]
fn an_existing_file_or_a_symlink_is_never_opened() -> Result<()> {
    let Some(lab) = flood_lab()? else { return Ok(()) };
    let scratch = Scratch::new("exists")?;
    let theirs = scratch.path("theirs.pcapng");
    std::fs::write(&theirs, b"not rstwatch's")?;
    let link = scratch.path("link.pcapng");
    let target = scratch.path("target");
    std::os::unix::fs::symlink(&target, &link)?;
    for path in [&theirs, &link] {
        let mut cmd = lab.mon.exec(rstwatch());
        cmd.args(["-i", &lab.mon_if.name, "--duration", "5s", "--capture"]).arg(path);
        let fin = Proc::spawn(&mut cmd)?.finish(EXIT_TIMEOUT)?;
        assert!(!fin.status.success());
        let lines: Vec<&str> = fin.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {}", fin.stderr);
        assert!(lines[0].contains("already exists") && lines[0].contains("never overwrites"), "{}", lines[0]);
        assert!(!fin.stderr.contains("attached to"), "{}", fin.stderr);
    }
    assert_eq!(std::fs::read(&theirs)?, b"not rstwatch's");
    assert!(!target.exists(), "the symlink was not followed");
    Ok(())
}

/// An RST with text in it, sent from a raw socket: the flow record carries the text, the table
/// shows it, and replay of the capture finds it too.
#[test]
fn an_rst_with_a_payload_from_a_raw_socket_shows_its_text() -> Result<()> {
    let Some(hosts) = two_hosts("10.79.1.2", "10.79.2.2")? else { return Ok(()) };
    let scratch = Scratch::new("payload")?;
    let file = scratch.path("payload.pcapng");
    let mut cmd = hosts.server.exec(rstwatch());
    cmd.args(["-i", &hosts.server_if.name, "--format", "json", "--capture"]).arg(&file);
    let proc = watching(&hosts, &mut cmd)?;
    send_rst_with_payload(&hosts, From::Client, 4444)?;
    std::thread::sleep(Duration::from_millis(1500));
    let fin = stop_ok(proc)?;
    let live = summary(&fin)?;
    let flows = live["flows"].as_array().context("flows")?;
    let flow =
        flows.iter().find(|f| f["sport"] == 4444).with_context(|| format!("no flow from port 4444: {flows:?}"))?;
    assert_eq!(flow["rst_payload"], "policy deny\\x00", "{flow}");
    assert_eq!(flow["resets"], 1);
    // The capture hands over every RST's frame: no payload programs, no account of theirs.
    assert!(live["rst_payloads"].is_null(), "{}", live["rst_payloads"]);
    let table = Command::new(rstwatch()).arg("replay").arg(&file).output()?;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains(r#"payload "policy deny\x00""#), "{table}");
    Ok(())
}

/// Which host a raw-socket RST leaves from.
enum From {
    Client,
    Server,
}

/// Sends one RST+ACK with "policy deny\0" as its payload from `sport` to port 80 of the other
/// host.
fn send_rst_with_payload(hosts: &TwoHosts, from: From, sport: u16) -> Result<()> {
    let (host, src, dst) = match from {
        From::Client => (&hosts.client, "10.79.1.2", "10.79.2.2"),
        From::Server => (&hosts.server, "10.79.2.2", "10.79.1.2"),
    };
    send_raw_rst(host, (src, sport), (dst, 80), r#"b"policy deny\x00""#)
}

/// Sends one RST+ACK from `host` through a raw socket (IPPROTO_RAW: the kernel fills in the IP
/// checksum and sends the segment as written), so no stack traces it; `payload` is a Python
/// bytes literal.
fn send_raw_rst(host: &lab::Netns, (src, sport): (&str, u16), (dst, dport): (&str, u16), payload: &str) -> Result<()> {
    let script = format!(
        r#"
import socket, struct
src, dst, text = "{src}", "{dst}", {payload}
tcp = struct.pack("!HHIIBBHHH", {sport}, {dport}, 1000, 2000, 5 << 4, 0x14, 0, 0, 0) + text
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, socket.inet_aton(src), socket.inet_aton(dst))
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.sendto(ip + tcp, (dst, 0))
"#
    );
    let mut python = host.exec("python3");
    python.args(["-c", &script]);
    let sent = Proc::spawn(&mut python)?.finish(Duration::from_secs(30))?;
    ensure!(sent.status.success(), "the raw socket failed: {}", sent.stderr);
    Ok(())
}

/// The same RST without `--capture`: the default programs' payload programs hand its payload
/// over through `PAYLOAD_RING`, so the JSON flow record (XDP; TC egress for the one the server
/// sends) and the table (TC ingress) show the text.
#[test]
fn an_rst_with_a_payload_shows_its_text_without_capture_too() -> Result<()> {
    let Some(hosts) = two_hosts("10.79.1.2", "10.79.2.2")? else { return Ok(()) };
    // The default programs hand the payload over (PAYLOAD_RING): the JSON flow record...
    let mut cmd = hosts.server.exec(rstwatch());
    cmd.args(["-i", &hosts.server_if.name, "--format", "json"]);
    let proc = watching(&hosts, &mut cmd)?;
    send_rst_with_payload(&hosts, From::Client, 4446)?;
    send_rst_with_payload(&hosts, From::Server, 4448)?;
    std::thread::sleep(Duration::from_millis(1500));
    let fin = stop_ok(proc)?;
    let live = summary(&fin)?;
    let flows = live["flows"].as_array().context("flows")?;
    for (sport, direction) in [(4446, "rx"), (4448, "tx")] {
        let flow = flows
            .iter()
            .find(|f| f["sport"] == sport)
            .with_context(|| format!("no flow from port {sport}: {flows:?}"))?;
        assert_eq!(flow["rst_payload"], "policy deny\\x00", "{flow}");
        assert_eq!(flow["resets"], 1, "{flow}");
        assert_eq!(flow["direction"], direction, "{flow}");
    }
    // Every RST with data handed over, and the summary says so.
    assert_eq!(live["rst_payloads"]["handed_over"], 2, "{}", live["rst_payloads"]);
    assert_eq!(live["rst_payloads"]["dropped"], 0, "{}", live["rst_payloads"]);
    ensure!(!fin.stderr.contains("RST payloads were not handed over"), "payloads lost: {}", fin.stderr);
    // ...and the table, on TC ingress this time (the other program set's callee).
    let mut cmd = hosts.server.exec(rstwatch());
    cmd.args(["-i", &hosts.server_if.name, "--hook", "tc", "--by", "flow"]);
    let proc = watching(&hosts, &mut cmd)?;
    send_rst_with_payload(&hosts, From::Client, 4447)?;
    std::thread::sleep(Duration::from_millis(1500));
    let fin = stop_ok(proc)?;
    let line = fin.stdout.lines().rev().find(|l| l.contains(":4447") || l.contains("4447 →"));
    let line = line.with_context(|| format!("no line for port 4447: {}", fin.stdout))?;
    assert!(line.contains(r#"payload "policy deny\x00""#), "{line}");
    Ok(())
}

/// Each RST this host's stack sent carries the kernel's reason in its comment: a refused SYN
/// (`NO_SOCKET`, traced before the RST goes out) and a server's SO_LINGER 0 abort (traced only
/// after it went out, so found by the writer); an RST forged from a raw socket, which no stack
/// sent, carries none. rstwatch enters only the server's network namespace (`nsenter --net`),
/// so it has the host's tracefs for `tcp:tcp_send_reset`.
#[test]
fn the_comment_names_the_kernel_reason_of_the_hosts_own_resets_and_none_for_a_forged_one() -> Result<()> {
    let Some(hosts) = two_hosts("10.81.1.2", "10.81.2.2")? else { return Ok(()) };
    let scratch = Scratch::new("reason")?;
    let file = scratch.path("reasons.pcapng");
    let mut cmd = rst_lab::diag_lab::nsenter(&hosts.server, rstwatch());
    cmd.args(["-i", &hosts.server_if.name, "--format", "json", "--capture"]).arg(&file);
    let proc = watching(&hosts, &mut cmd)?;
    ensure!(!proc.stderr().contains("kernel reasons"), "no kernel reasons here: {}", proc.stderr());
    let mut traffic = Command::new(env!("CARGO_BIN_EXE_rst-traffic"));
    traffic
        .args(["--client-ns", hosts.client.name(), "--server-ns", hosts.server.name(), "--rounds", "3"])
        .arg("refused:10.81.1.2->10.81.2.2:81")
        .arg("server-abort:10.81.1.2->10.81.2.2:8443");
    let generated = Proc::spawn(&mut traffic)?.finish(Duration::from_secs(120))?;
    ensure!(generated.status.success(), "traffic generator failed: {}", generated.stderr);
    // Sent by the server's host, on a tuple no socket has: its stack never traced it.
    send_raw_rst(&hosts.server, ("10.81.2.2", 4444), ("10.81.1.2", 5555), r#"b"""#)?;
    std::thread::sleep(Duration::from_millis(500));
    let fin = stop_ok(proc)?;
    let (written, dropped) = accounted(&summary(&fin)?)?;
    assert_eq!((written, dropped), (7, 0), "three refused, three aborted, one forged");

    let output = Command::new("tshark")
        .arg("-r")
        .arg(&file)
        .args(["-Y", "tcp.flags.reset == 1", "-T", "fields", "-E", "separator=|", "-e", "tcp.srcport"])
        .args(["-e", "frame.comment"])
        .output()
        .context("running tshark")?;
    ensure!(output.status.success(), "tshark: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let by_port = |port: &str| -> Vec<&str> {
        stdout.lines().filter_map(|line| line.split_once('|')).filter(|(p, _)| *p == port).map(|(_, c)| c).collect()
    };
    let reason =
        |comment: &str| comment.split("; ").find_map(|part| part.strip_prefix("kernel reason=")).map(str::to_owned);
    let refused = by_port("81");
    assert_eq!(refused.len(), 3, "{stdout}");
    assert!(refused.iter().all(|c| reason(c).as_deref() == Some("NO_SOCKET")), "{refused:#?}");
    let aborted = by_port("8443");
    assert_eq!(aborted.len(), 3, "{stdout}");
    // SO_LINGER 0 closes through tcp_disconnect: TCP_STATE on 6.18 (names differ between kernels).
    let abort_reasons: std::collections::BTreeSet<Option<String>> = aborted.iter().map(|c| reason(c)).collect();
    assert!(
        abort_reasons.len() == 1 && abort_reasons.iter().all(|r| r.as_ref().is_some_and(|r| r != "NO_SOCKET")),
        "one reason of the stack's own for every abort: {aborted:#?}"
    );
    let forged = by_port("4444");
    assert_eq!(forged.len(), 1, "{stdout}");
    assert!(forged[0].contains("sent by this host") && reason(forged[0]).is_none(), "{forged:#?}");
    Ok(())
}
