//! This host's firewall resets, end to end: a client and a server namespace joined by a veth
//! pair of their own, an nftables `reject with tcp reset` rule in one of them, a connection
//! attempt, and the key recorded by whichever way in the kernel allows: the fentry programs on
//! `nf_send_reset` / `nf_send_reset6`, or (where fentry is refused, as on this project's VM
//! kernels and so in CI) the `skb:kfree_skb` BTF tracepoint on netfilter's drops.
//! Nothing touches the host's own interfaces; the namespaces go when the test does, failed or not.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::Context as _;
use rst_common::wire::{FirewallResetKey, FAMILY_IPV4, FAMILY_IPV6, NF_INET_LOCAL_IN, NF_INET_LOCAL_OUT, PROG_NF_DROP};
use rst_lab::Need;
use rstwatch::{
    collect::Collector,
    load::{self, FirewallHook},
};

/// Rejected on the server's input hook.
const INPUT_PORT: u16 = 7777;
/// Rejected on the client's output hook.
const OUTPUT_PORT: u16 = 7778;
/// Dropped (not rejected) on the server's input hook.
const DROP_PORT: u16 = 7779;

/// A client and a server namespace with a veth pair between them; deleted on drop. Each lab's
/// addresses are its own: the kfree_skb program sees every namespace's drops, so two labs
/// (tests running in parallel, here or in another process) must not share a tuple.
struct Lab {
    client: String,
    server: String,
    /// Client and server, IPv4 then IPv6.
    v4: [Ipv4Addr; 2],
    v6: [Ipv6Addr; 2],
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).stdout(Stdio::null()).status().expect("ip runs");
    assert!(status.success(), "ip {args:?}");
}

fn nft(namespace: &str, rules: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", namespace, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft runs");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), rules.as_bytes()).expect("rules written");
    assert!(child.wait().expect("nft exits").success(), "nft -f: {rules}");
}

impl Lab {
    fn new() -> Lab {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let (pid, n) = (std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let id = format!("{pid}-{n}");
        // Only inside the lab's namespaces, so a clash could only confuse the filter in `ours`.
        let net = pid.wrapping_mul(31).wrapping_add(n);
        let [a, b] = [(net >> 8) as u8, net as u8];
        let v6 = |host| Ipv6Addr::new(0xfd00, 0x231, (net >> 16) as u16, net as u16, 0, 0, 0, host);
        let lab = Lab {
            client: format!("rwfw-c-{id}"),
            server: format!("rwfw-s-{id}"),
            v4: [Ipv4Addr::new(10, a, b, 1), Ipv4Addr::new(10, a, b, 2)],
            v6: [v6(1), v6(2)],
        };
        // The guard exists before anything it removes does.
        ip(&["netns", "add", &lab.client]);
        ip(&["netns", "add", &lab.server]);
        let (c, s) = (lab.client.as_str(), lab.server.as_str());
        ip(&["-n", c, "link", "add", "fwc0", "type", "veth", "peer", "name", "fws0", "netns", s]);
        for (ns, dev, v4, v6) in [(c, "fwc0", lab.v4[0], lab.v6[0]), (s, "fws0", lab.v4[1], lab.v6[1])] {
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev]);
            ip(&["-n", ns, "-6", "addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        nft(
            s,
            &format!(
                "table inet rstwatch_fw {{\n chain input {{\n  type filter hook input priority 0;\n  \
                 tcp dport {INPUT_PORT} reject with tcp reset\n  tcp dport {DROP_PORT} drop\n }}\n}}\n"
            ),
        );
        nft(
            c,
            &format!(
                "table inet rstwatch_fw {{\n chain output {{\n  type filter hook output priority 0;\n  \
                 tcp dport {OUTPUT_PORT} reject with tcp reset\n }}\n}}\n"
            ),
        );
        lab
    }

    /// Connects from the client namespace; the firewall must refuse it.
    fn connect(&self, to: IpAddr, port: u16) {
        let error =
            self.try_connect(to, port, Duration::from_secs(3)).expect_err("the firewall rejects the connection");
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused, "{error}");
    }

    /// Connects from the client namespace to a port the firewall drops: one SYN, no answer (the
    /// timeout is well under the first retransmission's second).
    fn connect_dropped(&self, to: IpAddr) {
        let error =
            self.try_connect(to, DROP_PORT, Duration::from_millis(300)).expect_err("the firewall drops the SYN");
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut, "{error}");
    }

    /// `count` empty UDP datagrams from the client to a port nobody listens on, each dropped by
    /// the server's stack (NO_SOCKET), not by netfilter.
    fn send_udp(&self, to: IpAddr, count: u32) {
        let netns = std::fs::File::open(format!("/run/netns/{}", self.client)).expect("netns file");
        std::thread::spawn(move || {
            // SAFETY: setns only moves this (short-lived) thread into the client's namespace.
            let ret = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(ret, 0, "setns: {}", std::io::Error::last_os_error());
            let any = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            let socket = std::net::UdpSocket::bind(any).expect("bind");
            for _ in 0..count {
                // An ICMP error from an earlier datagram may fail a send: it is still a drop.
                let _ = socket.send_to(&[], SocketAddr::new(to, 9));
            }
        })
        .join()
        .expect("the sending thread");
    }

    /// On a thread of its own, so the test's stays in its namespace.
    fn try_connect(&self, to: IpAddr, port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
        let netns = std::fs::File::open(format!("/run/netns/{}", self.client)).expect("netns file");
        std::thread::spawn(move || {
            // SAFETY: setns only moves this (short-lived) thread into the client's namespace.
            let ret = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(ret, 0, "setns: {}", std::io::Error::last_os_error());
            TcpStream::connect_timeout(&SocketAddr::new(to, port), timeout)
        })
        .join()
        .expect("the connecting thread")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and with it the pair.
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip_bytes(addr: IpAddr) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    match addr {
        IpAddr::V4(v4) => bytes[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => bytes = v6.octets(),
    }
    bytes
}

/// The resets of this lab (other tests' firewalls may reject too), from one interval.
fn ours(collector: &mut Collector, lab: &Lab) -> Vec<(FirewallResetKey, u64)> {
    let sample = collector.collect().expect("collect");
    assert_eq!(sample.firewall_overflow, 0);
    let lab = [lab.v4[0].into(), lab.v4[1].into(), lab.v6[0].into(), lab.v6[1].into()].map(ip_bytes);
    sample.firewall_resets.into_iter().filter(|(key, _)| lab.contains(&key.src) && lab.contains(&key.dst)).collect()
}

/// Asserts one RST, from `server`:`port` to `client` at an ephemeral port, at `hook`.
fn assert_one_reset(found: &[(FirewallResetKey, u64)], client: IpAddr, server: IpAddr, port: u16, hook: u8) {
    let family = if server.is_ipv4() { FAMILY_IPV4 } else { FAMILY_IPV6 };
    assert_eq!(found.len(), 1, "one firewall reset for {server}:{port}: {found:?}");
    let (key, count) = found[0];
    assert_eq!(count, 1, "{key:?}");
    // The RST goes from the refused destination back to the connecting client.
    assert_eq!((key.src_ip(), key.sport), (server, port), "{key:?}");
    assert_eq!(key.dst_ip(), client, "{key:?}");
    assert!(key.dport >= 1024, "the client's ephemeral port: {key:?}");
    assert_eq!((key.family, key.hook, key._pad), (family, hook, [0, 0]), "{key:?}");
}

#[test]
fn a_reject_with_tcp_reset_is_recorded_with_its_tuple_family_and_hook() -> anyhow::Result<()> {
    rst_lab::require!(
        Need::Root("network namespaces, nftables, BPF tracing programs"),
        Need::Bpf,
        Need::Tool("ip"),
        Need::Tool("nft"),
        Need::File(std::path::Path::new("/sys/kernel/btf/vmlinux"), "a kernel with CONFIG_DEBUG_INFO_BTF"),
    );
    let mut object = load::load(4096)?;
    // Either way in must work: fentry where the kernel has BPF trampolines, the kfree_skb
    // tracepoint where it refuses them (this project's VMs and CI).
    let hook = load::attach_firewall(&mut object)?;
    eprintln!("firewall resets traced by {hook}");
    let mut collector = Collector::new(&mut object)?;
    let lab = Lab::new();
    // Whatever was counted before this lab existed.
    collector.collect()?;

    for (client, server) in [(lab.v4[0].into(), lab.v4[1].into()), (lab.v6[0].into(), lab.v6[1].into())] {
        lab.connect(server, INPUT_PORT);
        assert_one_reset(&ours(&mut collector, &lab), client, server, INPUT_PORT, NF_INET_LOCAL_IN);

        lab.connect(server, OUTPUT_PORT);
        assert_one_reset(&ours(&mut collector, &lab), client, server, OUTPUT_PORT, NF_INET_LOCAL_OUT);

        // A plain drop sends no RST: fentry on the reject functions never sees it; the kfree_skb
        // fallback cannot tell it from a reject, and records the candidate (the model drops it
        // when no RST was sent on its tuple).
        lab.connect_dropped(server);
        let found = ours(&mut collector, &lab);
        match hook {
            FirewallHook::FEntry(_) => assert!(found.is_empty(), "a drop is no reset: {found:?}"),
            FirewallHook::NetfilterDrops { .. } => {
                assert_one_reset(&found, client, server, DROP_PORT, NF_INET_LOCAL_IN);
            }
        }
    }
    Ok(())
}

/// The kfree_skb program's cost per drop, run by hand: `sysctl kernel.bpf_stats_enabled=1`,
/// `cargo test --release -p rst-userspace --test firewall -- --ignored --nocapture`, and the
/// sysctl set back to 0 (it is global, and costs every program on the host a little).
/// Other drops (a UDP datagram to a closed port: NO_SOCKET) take only the reason comparison;
/// netfilter's drops the whole record. Skipped where fentry is used (its cost is the rejects').
#[test]
#[ignore = "a measurement: needs kernel.bpf_stats_enabled=1, set by hand"]
fn the_kfree_skb_programs_cost_per_drop() -> anyhow::Result<()> {
    rst_lab::require!(
        Need::Root("namespaces, BPF"),
        Need::Bpf,
        Need::Tool("ip"),
        Need::Tool("nft"),
        Need::Tool("bpftool")
    );
    let enabled = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")?;
    anyhow::ensure!(enabled.trim() == "1", "set kernel.bpf_stats_enabled=1 first (and back to 0 after)");
    let mut object = load::load(4096)?;
    let hook = load::attach_firewall(&mut object)?;
    let FirewallHook::NetfilterDrops { .. } = hook else {
        eprintln!("fentry in use ({hook}): no kfree_skb program to measure");
        return Ok(());
    };
    let id = object.program(PROG_NF_DROP).context("the kfree_skb program")?.info()?.id();
    let stats = || -> anyhow::Result<(u64, u64)> {
        let output = Command::new("bpftool").args(["prog", "show", "id", &id.to_string(), "--json"]).output()?;
        let shown: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        Ok((shown["run_time_ns"].as_u64().unwrap_or(0), shown["run_cnt"].as_u64().unwrap_or(0)))
    };
    let mut collector = Collector::new(&mut object)?;
    let lab = Lab::new();
    let per_drop = |before: (u64, u64), after: (u64, u64)| {
        let (time, runs) = (after.0 - before.0, after.1 - before.1);
        (runs, if runs == 0 { 0.0 } else { time as f64 / runs as f64 })
    };

    const DATAGRAMS: u32 = 20_000;
    let before = stats()?;
    lab.send_udp(lab.v4[1].into(), DATAGRAMS);
    let (runs, ns) = per_drop(before, stats()?);
    eprintln!("other drops: {runs} runs (>= {DATAGRAMS} datagrams to a closed port), {ns:.0} ns each");

    const REJECTS: u32 = 200;
    let before = stats()?;
    for _ in 0..REJECTS {
        lab.connect(lab.v4[1].into(), INPUT_PORT);
    }
    let (runs, ns) = per_drop(before, stats()?);
    let recorded: u64 = ours(&mut collector, &lab).iter().map(|(_, count)| count).sum();
    eprintln!("rejects: {runs} runs for {REJECTS} rejects ({recorded} recorded), {ns:.0} ns per run");
    Ok(())
}

/// The lab on its own: the namespaces, the rules and their cleanup; each rule refuses its port,
/// in both families.
#[test]
fn the_labs_firewall_refuses_with_a_reset_on_each_hook_and_the_lab_goes_away() -> anyhow::Result<()> {
    rst_lab::require!(Need::Root("network namespaces, nftables"), Need::Tool("ip"), Need::Tool("nft"));
    let names = {
        let lab = Lab::new();
        for server in [IpAddr::from(lab.v4[1]), IpAddr::from(lab.v6[1])] {
            lab.connect(server, INPUT_PORT);
            lab.connect(server, OUTPUT_PORT);
        }
        [lab.client.clone(), lab.server.clone()]
    };
    let left = String::from_utf8(Command::new("ip").args(["netns", "list"]).output()?.stdout)?;
    for name in names {
        assert!(!left.lines().any(|line| line.split_whitespace().next() == Some(&name)), "{name} left: {left}");
    }
    Ok(())
}
