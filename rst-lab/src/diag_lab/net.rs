//! Plumbing the labs share: sysctl and nftables in a namespace, sockets that wait for what the
//! peer has seen, and ICMP echo to wait for reachability.

use std::{
    io::{self, Read as _, Write as _},
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use socket2::{Domain, Protocol, Socket, Type};

use super::{Family, IO_TIMEOUT, PING_TIMEOUT, REQUEST_LEN};
use crate::{
    cmd,
    lab::Netns,
    traffic::{in_netns, readable},
};

pub fn sysctl(ns: &Netns, setting: &str) -> Result<()> {
    let mut c = ns.exec("sysctl");
    c.args(["-q", "-w", setting]);
    cmd::output(&mut c)?;
    Ok(())
}

/// `nft -f -` inside `ns`, the ruleset on stdin.
pub fn nft(ns: &Netns, ruleset: &str) -> Result<()> {
    let mut c = ns.exec("nft");
    c.args(["-f", "-"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let what = cmd::describe(&c);
    let mut child = c.spawn().with_context(|| format!("cannot start `{what}`"))?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(ruleset.as_bytes())
        .with_context(|| format!("writing the ruleset to `{what}`"))?;
    let out = child.wait_with_output().with_context(|| format!("waiting for `{what}`"))?;
    ensure!(
        out.status.success(),
        "`{what}` failed ({}): {}\nruleset:\n{ruleset}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

pub fn tcp_socket(family: Family) -> Result<Socket> {
    let sock = Socket::new(family.domain(), Type::STREAM, Some(Protocol::TCP))?;
    if family == Family::V6 {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    Ok(sock)
}

pub fn listener(addr: SocketAddr) -> Result<Socket> {
    let sock = tcp_socket(Family::of(&addr.ip()))?;
    sock.bind(&addr.into()).with_context(|| format!("binding {addr}"))?;
    sock.listen(16)?;
    Ok(sock)
}

pub fn accept(listener: &Socket) -> Result<Socket> {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(!left.is_zero(), "no connection within {IO_TIMEOUT:?}");
        if readable(listener, left.min(Duration::from_millis(100)))? {
            let (conn, _) = listener.accept()?;
            return Ok(conn);
        }
    }
}

/// Polls `done` every millisecond until it is true or `IO_TIMEOUT` passes.
pub fn wait_until(what: &str, mut done: impl FnMut() -> io::Result<bool>) -> Result<()> {
    let deadline = Instant::now() + IO_TIMEOUT;
    while !done().with_context(|| format!("waiting until {what}"))? {
        ensure!(Instant::now() < deadline, "not {what} within {IO_TIMEOUT:?}");
        thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Segments sent and not yet acknowledged (`tcpi_unacked`).
pub fn unacked(sock: &Socket) -> io::Result<u32> {
    Ok(tcp_info(sock)?.tcpi_unacked)
}

/// The socket's `TCP_INFO`: its state, unacknowledged segments and the rest.
pub fn tcp_info(sock: &Socket) -> io::Result<libc::tcp_info> {
    // SAFETY: tcp_info is plain data; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::tcp_info>()).unwrap_or(libc::socklen_t::MAX);
    // SAFETY: `info` and `len` are valid for writes of the sizes given for the whole call.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            std::ptr::addr_of_mut!(info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

/// Bytes received and not yet read (`FIONREAD`).
pub fn queued(sock: &Socket) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which is valid for the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Closes with SO_LINGER {on, 0}: a RST instead of a FIN.
pub fn abort(sock: Socket) -> Result<()> {
    sock.set_linger(Some(Duration::ZERO)).context("SO_LINGER {on, 0}")?;
    drop(sock);
    Ok(())
}

pub fn send_request(mut sock: &Socket) -> Result<()> {
    sock.write_all(&[b'q'; REQUEST_LEN]).context("sending the request")
}

pub fn read_request(mut sock: &Socket) -> Result<()> {
    let mut buf = [0u8; REQUEST_LEN];
    sock.read_exact(&mut buf).context("reading the request")
}

/// The next read must report the peer's (or the middlebox's) RST.
pub fn expect_reset(mut sock: &Socket) -> Result<()> {
    let mut buf = [0u8; 64];
    match sock.read(&mut buf) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(()),
        Ok(0) => bail!("got a FIN where a RST was due"),
        Ok(n) => bail!("got {n} bytes where a RST was due"),
        Err(e) => bail!("waiting for a RST: {e}"),
    }
}

pub fn recv_signal(rx: &mpsc::Receiver<()>, what: &str) -> Result<()> {
    rx.recv_timeout(IO_TIMEOUT).map_err(|e| anyhow!("waiting for the peer thread ({what}): {e}"))
}

pub fn send_signal(tx: &mpsc::Sender<()>, what: &str) -> Result<()> {
    tx.send(()).map_err(|_| anyhow!("the peer thread is gone ({what})"))
}

pub fn bound_client(client_ip: IpAddr) -> Result<(Socket, SocketAddr)> {
    let sock = tcp_socket(Family::of(&client_ip))?;
    sock.bind(&SocketAddr::new(client_ip, 0).into()).with_context(|| format!("binding to {client_ip}"))?;
    let local = sock.local_addr()?.as_socket().context("the client socket has no IP address")?;
    Ok((sock, local))
}

static PING_ID: AtomicU32 = AtomicU32::new(0);

/// ICMP echo from inside `ns` to `dst` until one is answered (no `ping` binary needed: a raw
/// socket, as root). Fails after `PING_TIMEOUT`.
pub fn ping(ns: &Netns, dst: IpAddr) -> Result<()> {
    let id = u16::try_from((std::process::id() ^ PING_ID.fetch_add(1, Ordering::Relaxed)) & 0xffff).unwrap_or(0);
    in_netns(ns, || {
        let family = Family::of(&dst);
        let (domain, proto) = match family {
            Family::V4 => (Domain::IPV4, Protocol::ICMPV4),
            Family::V6 => (Domain::IPV6, Protocol::ICMPV6),
        };
        let sock = Socket::new(domain, Type::RAW, Some(proto)).context("raw ICMP socket")?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let deadline = Instant::now() + PING_TIMEOUT;
        let mut seq: u16 = 0;
        let mut last_err = String::from("no reply");
        while Instant::now() < deadline {
            seq = seq.wrapping_add(1);
            let request = echo_request(family, id, seq);
            if let Err(e) = sock.send_to(&request, &SocketAddr::new(dst, 0).into()) {
                // Unreachable for a moment while routes and neighbours settle.
                last_err = e.to_string();
                thread::sleep(Duration::from_millis(100));
                continue;
            }
            let until = Instant::now() + Duration::from_millis(500);
            while Instant::now() < until {
                let mut buf = [0u8; 1500];
                let n = match (&sock).read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        last_err = e.to_string();
                        break;
                    }
                };
                if is_echo_reply(family, &buf[..n], id, seq) {
                    return Ok(());
                }
            }
        }
        bail!("{dst} does not answer pings from {} within {PING_TIMEOUT:?}: {last_err}", ns.name())
    })
}

fn echo_request(family: Family, id: u16, seq: u16) -> Vec<u8> {
    let kind = match family {
        Family::V4 => 8,
        Family::V6 => 128,
    };
    let mut p = vec![kind, 0, 0, 0];
    p.extend(id.to_be_bytes());
    p.extend(seq.to_be_bytes());
    p.extend(b"rstwatch diag lab");
    // The kernel fills in the ICMPv6 checksum (it covers a pseudo header); ICMPv4's is ours.
    if family == Family::V4 {
        let sum = internet_checksum(&p);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    p
}

fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 =
        bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0xffff)
}

/// A raw ICMPv4 socket reads the IP header too; an ICMPv6 one does not.
fn is_echo_reply(family: Family, packet: &[u8], id: u16, seq: u16) -> bool {
    let (icmp, reply) = match family {
        Family::V4 => {
            let Some(&first) = packet.first() else { return false };
            (packet.get(usize::from(first & 0x0f) * 4..), 0)
        }
        Family::V6 => (Some(packet), 129),
    };
    icmp.is_some_and(|m| m.len() >= 8 && m[0] == reply && m[4..6] == id.to_be_bytes() && m[6..8] == seq.to_be_bytes())
}

/// `nsenter --net=/run/netns/NS prog`: like `Netns::exec`, but keeps the host's /sys (and so
/// tracefs), which `ip netns exec` replaces with a fresh sysfs mount.
pub fn nsenter(ns: &Netns, prog: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{}", ns.name())).arg(prog);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmp_checksum_matches_rfc1071_example() {
        // RFC 1071's example words sum to 0xddf2; the checksum is its complement.
        assert_eq!(internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
        let req = echo_request(Family::V4, 7, 9);
        assert_eq!(internet_checksum(&req), 0, "a packet with its checksum sums to zero");
    }
}
