//! This host's firewall resets, end to end: a client and a server namespace joined by a veth
//! pair of their own, an nftables `reject with tcp reset` rule in one of them, a connection
//! attempt, and the key the fentry programs on `nf_send_reset` / `nf_send_reset6` recorded.
//! Nothing touches the host's own interfaces; the namespaces go when the test does, failed or not.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use rst_common::wire::{FirewallResetKey, FAMILY_IPV4, FAMILY_IPV6, NF_INET_LOCAL_IN, NF_INET_LOCAL_OUT};
use rst_lab::Need;
use rstwatch::{collect::Collector, load};

const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 231, 7, 1);
const SERVER_V4: Ipv4Addr = Ipv4Addr::new(10, 231, 7, 2);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x231, 7, 0, 0, 0, 0, 1);
const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x231, 7, 0, 0, 0, 0, 2);
/// Rejected on the server's input hook.
const INPUT_PORT: u16 = 7777;
/// Rejected on the client's output hook.
const OUTPUT_PORT: u16 = 7778;

/// A client and a server namespace with a veth pair between them; deleted on drop.
struct Lab {
    client: String,
    server: String,
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
        let id = format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let lab = Lab { client: format!("rwfw-c-{id}"), server: format!("rwfw-s-{id}") };
        // The guard exists before anything it removes does.
        ip(&["netns", "add", &lab.client]);
        ip(&["netns", "add", &lab.server]);
        let (c, s) = (lab.client.as_str(), lab.server.as_str());
        ip(&["-n", c, "link", "add", "fwc0", "type", "veth", "peer", "name", "fws0", "netns", s]);
        for (ns, dev, v4, v6) in [(c, "fwc0", CLIENT_V4, CLIENT_V6), (s, "fws0", SERVER_V4, SERVER_V6)] {
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev]);
            ip(&["-n", ns, "-6", "addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        nft(
            s,
            &format!(
                "table inet rstwatch_fw {{\n chain input {{\n  type filter hook input priority 0;\n  \
                 tcp dport {INPUT_PORT} reject with tcp reset\n }}\n}}\n"
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

    /// Connects from the client namespace (on a thread of its own, so the test's stays put);
    /// the firewall must refuse it.
    fn connect(&self, to: IpAddr, port: u16) {
        let netns = std::fs::File::open(format!("/run/netns/{}", self.client)).expect("netns file");
        let result = std::thread::spawn(move || {
            // SAFETY: setns only moves this (short-lived) thread into the client's namespace.
            let ret = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(ret, 0, "setns: {}", std::io::Error::last_os_error());
            TcpStream::connect_timeout(&SocketAddr::new(to, port), Duration::from_secs(3))
        })
        .join()
        .expect("the connecting thread");
        let error = result.expect_err("the firewall rejects the connection");
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused, "{error}");
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
fn ours(collector: &mut Collector) -> Vec<(FirewallResetKey, u64)> {
    let sample = collector.collect().expect("collect");
    assert_eq!(sample.firewall_overflow, 0);
    let lab = [CLIENT_V4.into(), SERVER_V4.into(), CLIENT_V6.into(), SERVER_V6.into()].map(ip_bytes);
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
        Need::Root("network namespaces, nftables, BPF fentry programs"),
        Need::Bpf,
        Need::Tool("ip"),
        Need::Tool("nft"),
        Need::File(std::path::Path::new("/sys/kernel/btf/vmlinux"), "a kernel with CONFIG_DEBUG_INFO_BTF"),
    );
    let mut object = load::load(4096)?;
    if let Err(why) = object.firewall_functions() {
        rst_lab::skip::skip(&rst_lab::skip::current_test(), &format!("this kernel cannot trace its firewall: {why}"))?;
        return Ok(());
    }
    if let Err(error) = load::attach_firewall(&mut object) {
        // Root with CAP_BPF and CAP_PERFMON, and still refused: this kernel has no BPF
        // trampolines (some VM kernels), a need like any other.
        if let load::Error::FirewallProgram { refused: true, .. } = error {
            rst_lab::skip::skip(&rst_lab::skip::current_test(), &format!("{error}"))?;
            return Ok(());
        }
        return Err(error.into());
    }
    let mut collector = Collector::new(&mut object)?;
    let lab = Lab::new();
    // Whatever was counted before this lab existed.
    collector.collect()?;

    lab.connect(SERVER_V4.into(), INPUT_PORT);
    assert_one_reset(&ours(&mut collector), CLIENT_V4.into(), SERVER_V4.into(), INPUT_PORT, NF_INET_LOCAL_IN);

    lab.connect(SERVER_V4.into(), OUTPUT_PORT);
    assert_one_reset(&ours(&mut collector), CLIENT_V4.into(), SERVER_V4.into(), OUTPUT_PORT, NF_INET_LOCAL_OUT);

    lab.connect(SERVER_V6.into(), INPUT_PORT);
    assert_one_reset(&ours(&mut collector), CLIENT_V6.into(), SERVER_V6.into(), INPUT_PORT, NF_INET_LOCAL_IN);

    lab.connect(SERVER_V6.into(), OUTPUT_PORT);
    assert_one_reset(&ours(&mut collector), CLIENT_V6.into(), SERVER_V6.into(), OUTPUT_PORT, NF_INET_LOCAL_OUT);
    Ok(())
}

/// The lab on its own, so that a kernel without fentry still checks the namespaces, the rules
/// and their cleanup: each rule refuses its port, in both families.
#[test]
fn the_labs_firewall_refuses_with_a_reset_on_each_hook_and_the_lab_goes_away() -> anyhow::Result<()> {
    rst_lab::require!(Need::Root("network namespaces, nftables"), Need::Tool("ip"), Need::Tool("nft"));
    let names = {
        let lab = Lab::new();
        for server in [IpAddr::from(SERVER_V4), IpAddr::from(SERVER_V6)] {
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
