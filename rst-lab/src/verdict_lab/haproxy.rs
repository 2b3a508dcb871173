//! HAProxy (Debian's package) on the client host, health-checking the backend with a plain TCP
//! connect check every [`CHECK_INTERVAL`].
//!
//! What tcpdump shows HAProxy 2.6 doing: SYN, the backend's SYN+ACK, then RST+ACK (seq ISN+1,
//! ack the backend's ISN+1) *instead of* the third ACK — it turns quick ACKs off on connect, and
//! closes with SO_LINGER {on, 0} as soon as the connect succeeded. So the backend never accepts
//! a check; its kernel drops the half-open request and counts it as `Tcp: AttemptFails`. The
//! account of each check comes from a capture on the backend's veth (HAProxy is not ours to
//! instrument), cross-checked against that kernel counter.

use std::{
    net::SocketAddr,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use socket2::Socket;

use super::{
    host_of, next_tag, service, Account, Cause, Clock, ConnRecord, Details, Outcome, VerdictLab, CHECKED_PORT, CLIENT,
};
use crate::{
    diag_lab::{listener, Capture, ACK, RST},
    lab::{Netns, Proc},
    traffic::in_netns,
};

pub const CHECK_INTERVAL: Duration = Duration::from_millis(250);
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// HAProxy checking the backend, and the backend's listener. HAProxy is killed on drop.
pub struct HealthChecks {
    service: SocketAddr,
    backend_ns: Netns,
    haproxy: Option<Proc>,
    capture: Option<Capture>,
    /// Keeps the port open, so the backend's kernel answers the checks' SYNs.
    _listener: Socket,
    failed_before: u64,
    dir: PathBuf,
}

impl HealthChecks {
    /// Starts the backend and HAProxy; returns once the first check has come and gone.
    pub fn start(lab: &VerdictLab) -> Result<HealthChecks> {
        let host = lab.host(host_of(Cause::HealthCheck));
        let svc = service(host.role, CHECKED_PORT);
        let listening = in_netns(&host.ns, || listener(svc))?;
        let capture = Capture::start(&host.iface)?;
        let dir = std::env::temp_dir().join(format!("rstwatch-haproxy-{}-{}", std::process::id(), next_tag()));
        let mut hc = HealthChecks {
            service: svc,
            backend_ns: host.ns.clone(),
            haproxy: None,
            capture: Some(capture),
            _listener: listening,
            failed_before: attempt_fails(&host.ns)?,
            dir,
        };
        std::fs::create_dir_all(&hc.dir).with_context(|| format!("creating {}", hc.dir.display()))?;
        let config = hc.dir.join("haproxy.cfg");
        std::fs::write(&config, haproxy_config(svc)).with_context(|| format!("writing {}", config.display()))?;
        let mut cmd = lab.client.exec("haproxy");
        // -db: stay in the foreground, so the process we kill is HAProxy itself.
        cmd.args(["-db", "-f"]).arg(&config);
        hc.haproxy = Some(Proc::spawn(&mut cmd).context("starting haproxy (apt package haproxy)")?);
        hc.wait_for_check(0, START_TIMEOUT).context("HAProxy's first check")?;
        Ok(hc)
    }

    /// Checks that have ended so far (reset while the backend's kernel held them half-open).
    fn checks(&self) -> Result<u64> {
        Ok(attempt_fails(&self.backend_ns)?.saturating_sub(self.failed_before))
    }

    /// Waits until more than `after` checks have ended.
    fn wait_for_check(&mut self, after: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.checks()? <= after {
            if let Some(proc) = self.haproxy.as_mut() {
                if let Some(status) = proc.try_wait()? {
                    bail!("haproxy exited ({status}): {}", proc.stderr().trim());
                }
            }
            ensure!(Instant::now() < deadline, "no check within {timeout:?}");
            thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Kills HAProxy right after a check has ended (the next is an interval away, so none is
    /// cut in half) and returns the account.
    pub fn stop(mut self, clock: &Clock) -> Result<Account> {
        let now = self.checks()?;
        self.wait_for_check(now, CHECK_INTERVAL * 4)?;
        if let Some(proc) = self.haproxy.take() {
            proc.signal(libc::SIGKILL)?;
            drop(proc);
        }
        let checks = self.checks()?;
        // tcpdump may not have read the last check's RST off its ring yet.
        thread::sleep(Duration::from_millis(100));
        let segments = self.capture.take().context("capture already stopped")?.stop()?;
        let mut account = Account::new(Cause::HealthCheck, self.service);
        for s in segments.iter().filter(|s| s.dst == self.service && s.has(RST | ACK)) {
            let at_ms = (s.time_us / 1000).saturating_sub(clock.start_unix_ms());
            account.conns.push(ConnRecord { client: s.src, server: self.service, outcome: Outcome::Reset, at_ms });
        }
        ensure!(
            u64::try_from(account.conns.len()).ok() == Some(checks),
            "the backend's kernel counted {checks} reset checks, its veth carried {} RSTs",
            account.conns.len()
        );
        account.details = Details::HealthCheck {
            checker: CLIENT.into(),
            interval_ms: u64::try_from(CHECK_INTERVAL.as_millis()).unwrap_or(u64::MAX),
        };
        Ok(account)
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        drop(self.haproxy.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `Tcp: AttemptFails` of `ns`: connections that went from SYN-RECEIVED (or SYN-SENT) to
/// CLOSED, here each check HAProxy reset before completing the handshake.
fn attempt_fails(ns: &Netns) -> Result<u64> {
    let mut cat = ns.exec("cat");
    cat.arg("/proc/net/snmp");
    let snmp = crate::cmd::output(&mut cat)?;
    snmp_field(&snmp, "Tcp:", "AttemptFails").context("no Tcp: AttemptFails in /proc/net/snmp")
}

/// A field of /proc/net/snmp: a header line of names, then a line of values, both led by `group`.
pub fn snmp_field(snmp: &str, group: &str, name: &str) -> Option<u64> {
    let mut lines = snmp.lines().filter(|l| l.starts_with(group));
    let names = lines.next()?;
    let values = lines.next()?;
    let at = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// `check` on a server in TCP mode is a connect-only check. HAProxy refuses to run without a
/// listener: it gets one on the client's loopback, which nothing uses.
pub fn haproxy_config(backend: SocketAddr) -> String {
    let inter = CHECK_INTERVAL.as_millis();
    format!(
        "global\n\
         \tmaxconn 64\n\
         defaults\n\
         \tmode tcp\n\
         \ttimeout connect 1s\n\
         \ttimeout client 1s\n\
         \ttimeout server 1s\n\
         \ttimeout check 1s\n\
         listen checked\n\
         \tbind 127.0.0.1:{CHECKED_PORT}\n\
         \tserver app {backend} check inter {inter}ms\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp_fields_are_read_by_name() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm ActiveOpens AttemptFails\nTcp: 1 5 17\n";
        assert_eq!(snmp_field(snmp, "Tcp:", "AttemptFails"), Some(17));
        assert_eq!(snmp_field(snmp, "Ip:", "DefaultTTL"), Some(64));
        assert_eq!(snmp_field(snmp, "Tcp:", "Nope"), None);
    }
}
