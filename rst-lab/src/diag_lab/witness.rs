//! Independent witnesses of what happened on the wire and in the kernel: tcpdump captures (and
//! their parser) and the `tcp:tcp_send_reset` tracepoint.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, ensure, Context as _, Result};

use super::{Rst, ACK, CAPTURE_EXIT_TIMEOUT, CAPTURE_START_TIMEOUT, FIN, PSH, RST, SYN, TRACEFS};
use crate::{
    cmd,
    lab::{Iface, Proc},
};

/// A TCP segment from a capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub flags: u8,
    /// TTL (IPv4) or hop limit (IPv6).
    pub ttl: u8,
    pub payload: usize,
    pub seq: u32,
    /// The acknowledgement number field, meaningful only with [`ACK`] set.
    pub ack: u32,
    /// The capture's timestamp, in microseconds since the Unix epoch.
    pub time_us: u64,
}

impl Segment {
    pub fn has(&self, flags: u8) -> bool {
        self.flags & flags == flags
    }

    pub fn as_rst(&self) -> Option<Rst> {
        self.has(RST).then_some(Rst { src: self.src, dst: self.dst, ack: self.has(ACK), ttl: self.ttl })
    }
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut flags = String::new();
        for (bit, c) in [(SYN, 'S'), (FIN, 'F'), (RST, 'R'), (PSH, 'P'), (ACK, '.')] {
            if self.has(bit) {
                flags.push(c);
            }
        }
        write!(f, "{} > {} [{flags}] ttl {} len {}", self.src, self.dst, self.ttl, self.payload)
    }
}

/// The TCP segments of a pcap file (Ethernet; IPv4, or IPv6 without extension headers), in order.
pub fn tcp_segments(bytes: &[u8]) -> Result<Vec<Segment>> {
    ensure!(bytes.len() >= 24, "pcap too short");
    // The magic also says whether the sub-second field counts micro- or nanoseconds.
    let (le, nanos) = match bytes[..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] => (true, false),
        [0x4d, 0x3c, 0xb2, 0xa1] => (true, true),
        [0xa1, 0xb2, 0xc3, 0xd4] => (false, false),
        [0xa1, 0xb2, 0x3c, 0x4d] => (false, true),
        _ => bail!("not a pcap file"),
    };
    let u32_at = |at: usize| {
        let w = [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
        if le {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }
    };
    ensure!(u32_at(20) == 1, "link type {} is not Ethernet", u32_at(20));
    let be16 = |b: &[u8], i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    let be32 = |b: &[u8], i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let mut segments = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let len = usize::try_from(u32_at(at + 8))?;
        let fraction = u64::from(u32_at(at + 4));
        let time_us = u64::from(u32_at(at)) * 1_000_000 + if nanos { fraction / 1000 } else { fraction };
        let frame = bytes.get(at + 16..at + 16 + len).context("truncated pcap record")?;
        at += 16 + len;
        if frame.len() < 14 {
            continue;
        }
        let ip = &frame[14..];
        let (src, dst, ttl, tcp) = match be16(frame, 12) {
            0x0800 if ip.len() >= 20 && ip[9] == 6 => {
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                let total = usize::from(be16(ip, 2)).min(ip.len());
                let a = |i: usize| IpAddr::from([ip[i], ip[i + 1], ip[i + 2], ip[i + 3]]);
                (a(12), a(16), ip[8], ip.get(ihl..total))
            }
            0x86dd if ip.len() >= 40 && ip[6] == 6 => {
                let total = (40 + usize::from(be16(ip, 4))).min(ip.len());
                let a = |i: usize| -> Result<IpAddr> { Ok(IpAddr::from(<[u8; 16]>::try_from(&ip[i..i + 16])?)) };
                (a(8)?, a(24)?, ip[7], ip.get(40..total))
            }
            _ => continue,
        };
        let Some(tcp) = tcp.filter(|t| t.len() >= 20) else {
            continue;
        };
        let offset = usize::from(tcp[12] >> 4) * 4;
        segments.push(Segment {
            src: SocketAddr::new(src, be16(tcp, 0)),
            dst: SocketAddr::new(dst, be16(tcp, 2)),
            flags: tcp[13],
            ttl,
            payload: tcp.len().saturating_sub(offset),
            seq: be32(tcp, 4),
            ack: be32(tcp, 8),
            time_us,
        });
    }
    Ok(segments)
}

/// One segment a line, for error messages.
pub fn listing<'a>(segments: impl IntoIterator<Item = &'a Segment>) -> String {
    segments.into_iter().map(|s| format!("\n    {s}")).collect()
}

/// The RSTs among `segments` are exactly `want` (in any order); the error names `place` and
/// lists every segment.
pub fn ensure_rsts(place: &str, mut want: Vec<Rst>, segments: &[Segment]) -> Result<()> {
    let mut got: Vec<Rst> = segments.iter().filter_map(Segment::as_rst).collect();
    want.sort();
    got.sort();
    let list = |rsts: &[Rst]| rsts.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    ensure!(
        got == want,
        "RSTs on {place} differ from the lab's account\n  want: {}\n  got:  {}\n  all segments:{}",
        list(&want),
        list(&got),
        listing(segments)
    );
    Ok(())
}

static CAPTURES: AtomicU32 = AtomicU32::new(0);

/// tcpdump on one lab interface, every TCP segment to a file: a temporary one of its own
/// (removed on drop) or one the caller keeps.
pub struct Capture {
    proc: Option<Proc>,
    path: PathBuf,
    keep: bool,
}

impl Capture {
    pub fn start(iface: &Iface) -> Result<Capture> {
        let n = CAPTURES.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("rstwatch-diag-{}-{n}.pcap", std::process::id()));
        Self::spawn(iface, path, false, "tcp")
    }

    /// Like [`Capture::start`], but into `path`, which stays when the capture ends.
    pub fn to_file(iface: &Iface, path: &Path) -> Result<Capture> {
        Self::spawn(iface, path.to_owned(), true, "tcp")
    }

    /// [`Capture::to_file`] of what tcpdump's `filter` passes: `"udp or tcp or ip proto 47
    /// or ip proto 4 or ip6"` for tunnels, whose TCP is inside UDP, GRE or IP.
    pub fn to_file_filtered(iface: &Iface, path: &Path, filter: &str) -> Result<Capture> {
        Self::spawn(iface, path.to_owned(), true, filter)
    }

    fn spawn(iface: &Iface, path: PathBuf, keep: bool, filter: &str) -> Result<Capture> {
        let mut cmd = iface.ns.exec("tcpdump");
        // --immediate-mode: without it packets reach tcpdump in blocks, and those of the last
        // block before SIGINT can be lost. Immediate mode gives every frame a ring slot of the
        // snap length: at the default 262 144 bytes libpcap's 2 MiB ring holds 7 frames, and a
        // burst while tcpdump waits for a CPU was dropped ("22 packets dropped by kernel"). The
        // lab's segments are small: a 2 KiB snap length and a 16 MiB ring hold thousands.
        cmd.args(["-i", &iface.name, "-nn", "-U", "--immediate-mode", "-s", "2048", "-B", "16384", "-Z", "root", "-w"])
            .arg(&path)
            .arg(filter);
        let mut proc = Proc::spawn(&mut cmd)?;
        proc.wait_for_stderr("listening on", CAPTURE_START_TIMEOUT)?;
        Ok(Capture { proc: Some(proc), path, keep })
    }

    /// Stops tcpdump and returns what it captured.
    pub fn stop(mut self) -> Result<Vec<Segment>> {
        let proc = self.proc.take().context("capture already stopped")?;
        proc.signal(libc::SIGINT)?;
        let fin = proc.finish(CAPTURE_EXIT_TIMEOUT)?;
        ensure!(fin.status.success(), "tcpdump failed ({}): {}", fin.status, fin.stderr);
        // A witness that lost frames cannot judge anything: say so rather than "misbehaved".
        if let Some(line) = fin.stderr.lines().find(|l| l.contains("dropped by kernel") && !l.starts_with("0 ")) {
            bail!("tcpdump on {} lost frames: {line}", self.path.display());
        }
        let bytes = std::fs::read(&self.path).with_context(|| format!("reading {}", self.path.display()))?;
        tcp_segments(&bytes).with_context(|| format!("parsing {}", self.path.display()))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        drop(self.proc.take());
        if !self.keep {
            // Never written if tcpdump failed to start.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Mounts tracefs at /sys/kernel/tracing unless it is there (rstwatch and [`ResetTrace`] need
/// the tcp tracepoints).
pub fn ensure_tracefs() -> Result<()> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(());
    }
    cmd::output(&mut cmd::command("mount", ["-t", "tracefs", "nodev", TRACEFS]))?;
    ensure!(
        Path::new(TRACEFS).join("events/tcp/tcp_send_reset").is_dir(),
        "{TRACEFS} has no tcp:tcp_send_reset tracepoint"
    );
    Ok(())
}

/// One `tcp:tcp_send_reset` event: a RST a TCP stack sent (addresses are the RST's own).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelReset {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub state: String,
    pub reason: String,
}

static TRACES: AtomicU32 = AtomicU32::new(0);
const TRACE_PREFIX: &str = "rstwatch-diag-";

/// Disables and removes the instances of processes that no longer exist (killed before their
/// `ResetTrace` was dropped), so no event stays enabled for nobody.
fn sweep_stale_instances(instances: &Path) {
    let Ok(entries) = std::fs::read_dir(instances) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(TRACE_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        // Another process may be sweeping the same leftover: losing that race is fine.
        let _ = std::fs::write(entry.path().join("events/tcp/tcp_send_reset/enable"), "0");
        let _ = std::fs::remove_dir(entry.path());
    }
}

/// `tcp:tcp_send_reset` recorded in a tracefs instance of our own, so the global trace buffer
/// and other tracers are left alone. The event is machine-wide: filter by address and port.
/// Disabled and removed on drop.
pub struct ResetTrace {
    dir: PathBuf,
    enabled: bool,
}

impl ResetTrace {
    pub fn start() -> Result<ResetTrace> {
        ensure_tracefs()?;
        let instances = Path::new(TRACEFS).join("instances");
        sweep_stale_instances(&instances);
        let n = TRACES.fetch_add(1, Ordering::Relaxed);
        let dir = instances.join(format!("{TRACE_PREFIX}{}-{n}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("creating tracefs instance {}", dir.display()))?;
        let mut trace = ResetTrace { dir, enabled: false };
        trace.set_enabled(true)?;
        Ok(trace)
    }

    fn set_enabled(&mut self, on: bool) -> Result<()> {
        let enable = self.dir.join("events/tcp/tcp_send_reset/enable");
        std::fs::write(&enable, if on { "1" } else { "0" }).with_context(|| format!("writing {}", enable.display()))?;
        self.enabled = on;
        Ok(())
    }

    /// Stops recording and returns every event (from every namespace on the machine).
    pub fn stop(mut self) -> Result<Vec<KernelReset>> {
        self.set_enabled(false)?;
        let path = self.dir.join("trace");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(text.lines().filter_map(parse_send_reset).collect())
    }
}

impl Drop for ResetTrace {
    fn drop(&mut self) {
        if self.enabled {
            let _ = self.set_enabled(false);
        }
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            eprintln!("rst-lab: removing tracefs instance {}: {e}", self.dir.display());
        }
    }
}

/// `... tcp_send_reset: skbaddr=.. skaddr=.. src=10.88.2.2:7001 dest=10.88.1.2:40000 state=.. reason=..`
/// (IPv6 addresses in brackets).
pub fn parse_send_reset(line: &str) -> Option<KernelReset> {
    let (_, fields) = line.split_once("tcp_send_reset: ")?;
    let field =
        |key: &str| fields.split_whitespace().find_map(|f| f.strip_prefix(key).and_then(|v| v.strip_prefix('=')));
    Some(KernelReset {
        src: field("src")?.parse().ok()?,
        dst: field("dest")?.parse().ok()?,
        state: field("state")?.to_owned(),
        reason: field("reason")?.to_owned(),
    })
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_reset_lines_parse_for_both_families() {
        let v4 = "          <idle>-0       [003] ..s2.   12.345678: tcp_send_reset: skbaddr=000000001 \
                  skaddr=0000000000000000 src=10.88.2.2:7001 dest=10.88.1.2:41000 state=UNKNOWN reason=NO_SOCKET";
        let r = parse_send_reset(v4).expect("v4 line");
        assert_eq!(r.src, "10.88.2.2:7001".parse::<SocketAddr>().expect("addr"));
        assert_eq!(r.dst.port(), 41000);
        assert_eq!((r.state.as_str(), r.reason.as_str()), ("UNKNOWN", "NO_SOCKET"));
        let v6 = "x-1 [000] ..... 1.0: tcp_send_reset: skbaddr=0 skaddr=1 src=[fd88:1::2]:40000 \
                  dest=[fd88:2::2]:7005 state=TCP_ESTABLISHED reason=TCP_STATE";
        let r = parse_send_reset(v6).expect("v6 line");
        assert_eq!(r.dst, "[fd88:2::2]:7005".parse::<SocketAddr>().expect("addr"));
        assert!(parse_send_reset("x: tcp_receive_reset: src=1").is_none());
    }
}
