//! A throw-away network lab: network namespaces joined by veth pairs, torn down in `Drop` (also
//! while a test unwinds from a panic).
//!
//! Every interface is created directly inside a lab namespace, so nothing ever touches the
//! machine's own interfaces and all traffic stays between the namespaces. Names carry the pid and
//! a per-process counter, so concurrent labs (nextest runs tests as parallel processes, `cargo
//! test` as parallel threads) never collide, and `sweep_stale` can tell which leftovers belong to
//! a process that no longer exists.

use std::{
    ffi::OsStr,
    fs::File,
    io::{BufRead as _, BufReader, Read},
    net::IpAddr,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Condvar, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::cmd;

/// Every lab namespace is named `rw-<pid>-<lab>-<role>`; interfaces `rw<pid hex>-<lab hex><n><a|b>`.
pub const NS_PREFIX: &str = "rw-";
const IF_PREFIX: &str = "rw";
const IFNAMSIZ_MAX: usize = 15;

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// `ip` in its own process group: a Ctrl-C aimed at the foreground job must not kill the very
/// commands that are tearing the lab down.
fn ip() -> Command {
    let mut c = Command::new("ip");
    c.process_group(0);
    c
}

fn ip_run<I, S>(args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = ip();
    c.args(args);
    cmd::output(&mut c)
}

/// A named network namespace (`/run/netns/NAME`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// An existing namespace, by name.
    pub fn open(name: &str) -> Result<Netns> {
        ensure!(netns_exists(name), "no network namespace named {name:?}");
        Ok(Netns { name: name.to_owned() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME prog`: runs `prog` inside the namespace, with a /sys of its own.
    pub fn exec(&self, prog: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(prog);
        c
    }

    /// `ip -n NAME args...`
    pub fn ip<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = ip();
        c.args(["-n", &self.name]).args(args);
        cmd::output(&mut c)
    }

    /// Moves the calling thread (only it) into the namespace: sockets it creates from now on
    /// belong there for good, whichever thread uses them later.
    pub fn enter_current_thread(&self) -> Result<()> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: the fd is open for the whole call; CLONE_NEWNET only switches this thread's
        // network namespace, which is allowed in a multi-threaded process.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("setns into {}", self.name));
        }
        Ok(())
    }

    /// Processes whose network namespace is this one.
    pub fn pids(&self) -> Result<Vec<u32>> {
        let out = ip_run(["netns", "pids", &self.name])?;
        Ok(out.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// SIGKILLs every process left in the namespace (never this one) and waits for them to go.
    fn kill_all(&self) -> Result<()> {
        let me = std::process::id();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids: Vec<u32> = self.pids()?.into_iter().filter(|&p| p != me).collect();
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("processes {pids:?} in {} did not exit after SIGKILL", self.name);
            }
            for pid in pids {
                // Only processes we started live in a lab namespace; a pid that is already gone
                // is exactly what we want, so the error is irrelevant.
                let _ = crate::signal::send(pid, libc::SIGKILL);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn delete(&self) -> Result<()> {
        self.kill_all()?;
        ip_run(["netns", "del", &self.name])?;
        Ok(())
    }
}

/// One end of a veth pair, inside a lab namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    pub ns: Netns,
    pub name: String,
}

impl Iface {
    /// Adds `addr/prefix`; IPv6 addresses skip duplicate address detection so they are usable
    /// at once instead of after a second or so of "tentative".
    pub fn add_addr(&self, addr: IpAddr, prefix: u8) -> Result<()> {
        let cidr = format!("{addr}/{prefix}");
        match addr {
            IpAddr::V4(_) => self.ns.ip(["addr", "add", &cidr, "dev", &self.name])?,
            IpAddr::V6(_) => self.ns.ip(["-6", "addr", "add", &cidr, "dev", &self.name, "nodad"])?,
        };
        Ok(())
    }

    /// `ip -d link show` for this interface.
    pub fn details(&self) -> Result<String> {
        self.ns.ip(["-d", "link", "show", "dev", &self.name])
    }

    /// Whether any XDP program (native, generic or offloaded) is attached.
    pub fn xdp_attached(&self) -> Result<bool> {
        Ok(details_show_xdp(&self.details()?))
    }

    pub fn ifindex(&self) -> Result<u32> {
        let out = self.details()?;
        let index = out.split(':').next().unwrap_or("").trim();
        index.parse().with_context(|| format!("no ifindex in `ip link show {}`: {out}", self.name))
    }
}

/// `ip -d link show` marks attached programs with `xdp`, `xdpgeneric`, `xdpdrv`, `xdpoffload`
/// or `xdpmulti` after the MTU, and lists them as `prog/xdp...`.
pub fn details_show_xdp(details: &str) -> bool {
    details.split_whitespace().any(|w| w.starts_with("xdp") || w.starts_with("prog/xdp"))
}

/// The start of every interface name of lab `n` of process `pid`. The counter is wrapped so names
/// stay within IFNAMSIZ; 4096 labs of one process are never alive at once.
fn if_tag(pid: u32, n: u32) -> String {
    format!("{IF_PREFIX}{pid:x}-{:x}", n & 0xfff)
}

/// Namespaces and veth pairs that disappear with the value.
pub struct Lab {
    ns_tag: String,
    if_tag: String,
    namespaces: Vec<Netns>,
    /// The `a` side of each pair: deleting it deletes its peer.
    pairs: Vec<Iface>,
}

impl Lab {
    pub fn new() -> Result<Lab> {
        let pid = std::process::id();
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        Ok(Lab {
            ns_tag: format!("{NS_PREFIX}{pid}-{n}"),
            if_tag: if_tag(pid, n),
            namespaces: Vec::new(),
            pairs: Vec::new(),
        })
    }

    /// A new namespace with loopback up. `role` (letters and digits) ends its name.
    pub fn add_ns(&mut self, role: &str) -> Result<Netns> {
        ensure!(
            !role.is_empty() && role.chars().all(|c| c.is_ascii_alphanumeric()),
            "namespace role {role:?} must be letters and digits"
        );
        let ns = Netns { name: format!("{}-{role}", self.ns_tag) };
        ip_run(["netns", "add", &ns.name])?;
        self.namespaces.push(ns.clone());
        ns.ip(["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A veth pair with one end in `a` and the other in `b`, both up.
    pub fn add_veth(&mut self, a: &Netns, b: &Netns) -> Result<(Iface, Iface)> {
        let n = self.pairs.len();
        ensure!(n < 16, "a lab has at most 16 veth pairs");
        let name_a = format!("{}{n:x}a", self.if_tag);
        let name_b = format!("{}{n:x}b", self.if_tag);
        ensure!(name_a.len() <= IFNAMSIZ_MAX, "interface name {name_a} is too long");
        // Created inside the namespaces directly: never in (and never visible to) the host's.
        ip_run(["link", "add", &name_a, "netns", &a.name, "type", "veth", "peer", "name", &name_b, "netns", &b.name])?;
        let end_a = Iface { ns: a.clone(), name: name_a };
        let end_b = Iface { ns: b.clone(), name: name_b };
        self.pairs.push(end_a.clone());
        end_a.ns.ip(["link", "set", &end_a.name, "up"])?;
        end_b.ns.ip(["link", "set", &end_b.name, "up"])?;
        Ok((end_a, end_b))
    }

    /// Deletes everything this lab created, killing whatever still runs inside. Idempotent.
    pub fn teardown(&mut self) -> Result<()> {
        let mut failures = Vec::new();
        for ns in &self.namespaces {
            if let Err(e) = ns.kill_all() {
                failures.push(format!("{e:#}"));
            }
        }
        for end in self.pairs.drain(..) {
            // Also removes the peer. The interface may already be gone with its namespace.
            if let Err(e) = end.ns.ip(["link", "del", &end.name]) {
                if netns_exists(end.ns.name()) && link_exists(&end) {
                    failures.push(format!("{e:#}"));
                }
            }
        }
        for ns in self.namespaces.drain(..) {
            if let Err(e) = ns.delete() {
                failures.push(format!("{e:#}"));
            }
        }
        if !failures.is_empty() {
            bail!("lab teardown: {}", failures.join("; "));
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("rst-lab: {e:#}");
        }
    }
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn link_exists(iface: &Iface) -> bool {
    iface.details().is_ok()
}

/// Two hosts on one veth: `client` and `server`, each with the given addresses. IPv4 addresses
/// get a /16 and IPv6 ones a /64, so pick addresses that share such a prefix to be on-link.
pub struct TwoHosts {
    pub client: Netns,
    pub server: Netns,
    /// The client's end of the veth (rstwatch there sees what the server sends).
    pub client_if: Iface,
    /// The server's end (rstwatch there sees what the clients send).
    pub server_if: Iface,
    pub lab: Lab,
}

impl TwoHosts {
    pub fn new(client_addrs: &[IpAddr], server_addrs: &[IpAddr]) -> Result<TwoHosts> {
        let mut lab = Lab::new()?;
        let client = lab.add_ns("cli")?;
        let server = lab.add_ns("srv")?;
        let (client_if, server_if) = lab.add_veth(&client, &server)?;
        for (iface, addrs) in [(&client_if, client_addrs), (&server_if, server_addrs)] {
            for &addr in addrs {
                iface.add_addr(addr, if addr.is_ipv4() { 16 } else { 64 })?;
            }
        }
        Ok(TwoHosts { client, server, client_if, server_if, lab })
    }
}

/// Removes lab namespaces left behind by processes that no longer exist (a test killed with
/// SIGKILL, say). Returns the names removed.
pub fn sweep_stale() -> Result<Vec<String>> {
    let listing = ip_run(["netns", "list"])?;
    let mut removed = Vec::new();
    for name in listing.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name.strip_prefix(NS_PREFIX).and_then(|rest| rest.split('-').next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let ns = Netns { name: name.to_owned() };
        // The namespace's veths go with it once nothing inside holds it. Another process may be
        // sweeping the same leftovers: losing that race is not an error.
        match ns.delete() {
            Ok(()) => removed.push(name.to_owned()),
            Err(_) if !netns_exists(name) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// Output collected from a child while it runs.
#[derive(Default)]
struct Collected {
    stdout: String,
    stderr: String,
}

/// A child process that is killed (and reaped) when dropped, with its output collected in the
/// background so a test can wait for a line on stderr while the child keeps running.
pub struct Proc {
    child: Child,
    what: String,
    collected: Arc<(Mutex<Collected>, Condvar)>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

/// The end of a `Proc`.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr captured.
    pub fn spawn(cmd: &mut Command) -> Result<Proc> {
        Self::spawn_with(cmd, true, false)
    }

    /// `capture_stdout: false` leaves stdout to the parent's; `echo_stderr` copies each stderr
    /// line to ours as it arrives (it is still collected).
    pub fn spawn_with(cmd: &mut Command, capture_stdout: bool, echo_stderr: bool) -> Result<Proc> {
        let what = cmd::describe(cmd);
        cmd.stdin(Stdio::null()).stderr(Stdio::piped());
        cmd.stdout(if capture_stdout { Stdio::piped() } else { Stdio::inherit() });
        let mut child = cmd.spawn().with_context(|| format!("cannot start `{what}`"))?;
        let collected = Arc::new((Mutex::new(Collected::default()), Condvar::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(reader(out, Arc::clone(&collected), false, false));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(reader(err, Arc::clone(&collected), true, echo_stderr));
        }
        Ok(Proc { child, what, collected, readers, status: None })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        crate::signal::send(self.id(), signal)
    }

    /// Stderr so far.
    pub fn stderr(&self) -> String {
        self.collected.0.lock().map(|c| c.stderr.clone()).unwrap_or_default()
    }

    /// Waits until stderr has a line containing `needle`, or the process exits, or `timeout`.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stderr().lines().any(|l| l.contains(needle)) {
                return Ok(());
            }
            if let Some(status) = self.try_wait()? {
                bail!("`{}` exited ({status}) before printing {needle:?}; stderr: {}", self.what, self.stderr().trim());
            }
            let now = Instant::now();
            if now >= deadline {
                bail!("`{}` did not print {needle:?} within {timeout:?}; stderr: {}", self.what, self.stderr().trim());
            }
            let (lock, cvar) = &*self.collected;
            let guard = lock.lock().map_err(|_| anyhow::anyhow!("output collector poisoned"))?;
            let wait = (deadline - now).min(Duration::from_millis(100));
            drop(cvar.wait_timeout(guard, wait).map_err(|_| anyhow::anyhow!("output collector poisoned"))?);
        }
    }

    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait().with_context(|| format!("waiting for `{}`", self.what))?;
        }
        Ok(self.status)
    }

    /// Waits for the exit (killing the process after `timeout`, which is then an error) and
    /// returns everything it printed.
    pub fn finish(mut self, timeout: Duration) -> Result<Finished> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!("`{}` still running after {timeout:?}; killed it. stderr: {}", self.what, self.stderr().trim());
            }
            thread::sleep(Duration::from_millis(20));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let (lock, _) = &*self.collected;
        let mut c = lock.lock().map_err(|_| anyhow::anyhow!("output collector poisoned"))?;
        Ok(Finished { status, stdout: std::mem::take(&mut c.stdout), stderr: std::mem::take(&mut c.stderr) })
    }

    fn kill(&mut self) {
        if self.status.is_none() {
            // Already exited or never started properly: both leave nothing to kill.
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn reader(
    stream: impl Read + Send + 'static,
    collected: Arc<(Mutex<Collected>, Condvar)>,
    is_stderr: bool,
    echo: bool,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut lines = BufReader::new(stream);
        let mut line = String::new();
        loop {
            line.clear();
            match lines.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if echo {
                eprint!("{line}");
            }
            let (lock, cvar) = &*collected;
            if let Ok(mut c) = lock.lock() {
                if is_stderr { &mut c.stderr } else { &mut c.stdout }.push_str(&line);
            }
            cvar.notify_all();
        }
    })
}

/// The one `summary` object of rstwatch's JSON Lines output, which must be its last line; every
/// other line must be an `interval` object.
pub fn summary_line(stdout: &str) -> Result<serde_json::Value> {
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut summaries = Vec::new();
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("stdout line is not JSON: {line}"))?;
        match v["type"].as_str() {
            Some("interval") => {}
            Some("summary") => summaries.push(v),
            other => anyhow::bail!("unexpected JSON line type {other:?}: {line}"),
        }
    }
    ensure!(
        summaries.len() == 1 && lines.last().is_some_and(|l| l.contains("\"summary\"")),
        "want exactly one summary line, and last: {} summary lines",
        summaries.len()
    );
    Ok(summaries.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdp_is_recognised_in_ip_link_details() {
        let bare = "3: a@b: <BROADCAST,MULTICAST,UP> mtu 1500 qdisc noqueue state UP\n    veth addrgenmode eui64";
        assert!(!details_show_xdp(bare));
        for attached in [
            "3: a@b: <UP> mtu 1500 xdp qdisc noqueue\n    prog/xdp id 42 name rst tag 00 jited",
            "3: a@b: <UP> mtu 1500 xdpgeneric qdisc noqueue\n    prog/xdpgeneric id 7",
        ] {
            assert!(details_show_xdp(attached), "{attached}");
        }
    }

    #[test]
    fn interface_names_fit_ifnamsiz_for_any_pid() {
        // PID_MAX_LIMIT is 2^22; pair index 15, side `a`.
        for n in [0, 0xfff, u32::MAX] {
            let name = format!("{}fa", if_tag(1 << 22, n));
            assert!(name.len() <= IFNAMSIZ_MAX, "{name}");
        }
    }
}
