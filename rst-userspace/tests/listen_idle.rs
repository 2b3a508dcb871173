//! What the reset tracepoints read from the socket behind a reset, against real sockets in two
//! network namespaces of the test's own (a veth between them; removed with the lab, even when
//! the test fails): (a) a listener that never accepts, with backlog 1, `TCP_DEFER_ACCEPT` and
//! `tcp_abort_on_overflow=1`, refuses connections with resets that must be keyed by each
//! client's tuple and counted for the listener with its full accept queue; (b) a connection
//! idle for 1.5 s, then aborted (`SO_LINGER` 0), must show that gap on both sides.
//!
//! The loader stays in the host's namespace (the tracepoints are global: they fire for the
//! namespaces' sockets too); nothing is attached to any interface.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a panic is the failure report

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{FromRawFd as _, OwnedFd},
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;
use rst_common::wire::{IdleKey, ListenKey, ListenValue, StackResetKey, DIRECTION_RX, DIRECTION_TX, FAMILY_IPV4};
use rst_lab::{lab::TwoHosts, Need};
use rstwatch::{
    collect::{Collector, IdleGap, Sample},
    load::{self, Counting},
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 13, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 13, 2);
const LISTEN_PORT: u16 = 7101;
const IDLE_PORT: u16 = 7102;
const IDLE: Duration = Duration::from_millis(1500);

fn v4(addr: &[u8; 16]) -> Ipv4Addr {
    Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])
}

/// Runs `f` on a thread inside `ns`: sockets it makes belong there.
fn in_ns<T: Send + 'static>(ns: &rst_lab::lab::Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.clone();
    thread::spawn(move || {
        ns.enter_current_thread().expect("setns");
        f()
    })
    .join()
    .expect("namespace thread")
}

/// A listener on `SERVER:port` with `listen(backlog)` and, when given, TCP_DEFER_ACCEPT.
fn listener(port: u16, backlog: i32, defer_accept_s: Option<i32>) -> TcpListener {
    // SAFETY: plain socket syscalls on a descriptor this function owns; the sockaddr is a
    // fully initialized sockaddr_in whose size is passed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let owned = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let int = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, (&raw const one).cast(), int);
        if let Some(seconds) = defer_accept_s {
            let rc = libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, (&raw const seconds).cast(), int);
            assert_eq!(rc, 0, "TCP_DEFER_ACCEPT: {}", std::io::Error::last_os_error());
        }
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(SERVER.octets()) },
            sin_zero: [0; 8],
        };
        let rc = libc::bind(fd, (&raw const addr).cast(), std::mem::size_of_val(&addr) as libc::socklen_t);
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        assert_eq!(libc::listen(fd, backlog), 0, "listen: {}", std::io::Error::last_os_error());
        TcpListener::from(owned)
    }
}

/// `SO_LINGER` {on, 0}: closing the socket then aborts the connection with an RST.
fn linger_zero(stream: &TcpStream) {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt with a live descriptor and a linger struct whose size is passed.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of_val(&linger) as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

/// The per-reset cost of the tracepoint programs, when `kernel.bpf_stats_enabled` is 1.
fn print_program_cost(ebpf: &load::LoadedObject) {
    let enabled = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    if enabled.trim() != "1" {
        eprintln!("(kernel.bpf_stats_enabled is 0: no per-run cost)");
        return;
    }
    for name in [rst_common::wire::PROG_SEND_RESET, rst_common::wire::PROG_RECEIVE_RESET] {
        let Some(info) = ebpf.program(name).and_then(|program| program.info().ok()) else {
            continue;
        };
        let (time, count) = (info.run_time(), info.run_count());
        eprintln!(
            "{name}: {count} runs, {} ns total, {} ns per run",
            time.as_nanos(),
            time.as_nanos() / u128::from(count.max(1))
        );
    }
}

#[test]
fn listener_resets_and_idle_gaps_are_read_from_the_sockets() -> Result<()> {
    rst_lab::require!(Need::Root("network namespaces, BPF, tracefs and the kernel's BTF"));
    let hosts = TwoHosts::new(&[IpAddr::V4(CLIENT)], &[IpAddr::V4(SERVER)])?;
    // Per namespace: the host's own setting is untouched.
    let status = hosts.server.exec("sysctl").args(["-qw", "net.ipv4.tcp_abort_on_overflow=1"]).status()?;
    assert!(status.success(), "sysctl in the server's namespace");

    let mut ebpf = load::load_with(1024, Counting::Auto, false, None)?;
    assert_eq!(ebpf.listen_resets().why_not(), None, "listener resets on this kernel");
    assert_eq!(ebpf.idle_gaps().why_not(), None, "idle gaps on this kernel");
    let mut collector = Collector::new(&mut ebpf)?;
    load::attach_kernel_events(&mut ebpf)?;
    load::attach_receive_reset(&mut ebpf, false)?;

    // (a) Four handshakes complete while the listener defers them (the first ones as pending
    // requests, the later ones through SYN cookies, the request queue being as short as the
    // backlog); then data arrives last-connected first: the cookies' connections fill the
    // accept queue, and each pending request's data finds it full and is refused with a reset.
    let overflowing = in_ns(&hosts.server, || listener(LISTEN_PORT, 1, Some(5)));
    let clients: Vec<TcpStream> = in_ns(&hosts.client, || {
        let to = SocketAddr::from((SERVER, LISTEN_PORT));
        (0..4).filter_map(|_| TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()).collect()
    });
    assert!(clients.len() >= 3, "only {} clients connected", clients.len());
    for mut client in clients.iter().rev() {
        let _ = client.write_all(b"hello");
        thread::sleep(Duration::from_millis(50));
    }
    let client_ports: Vec<u16> = clients.iter().map(|c| c.local_addr().expect("local").port()).collect();

    // (b) One exchange, a quiet pause, then the client aborts.
    let accepting = in_ns(&hosts.server, || listener(IDLE_PORT, 16, None));
    let mut idle_client =
        in_ns(&hosts.client, || TcpStream::connect(SocketAddr::from((SERVER, IDLE_PORT))).expect("connect"));
    let (mut served, _) = accepting.accept()?;
    idle_client.write_all(b"ping")?;
    let mut buf = [0u8; 4];
    served.read_exact(&mut buf)?;
    served.write_all(b"pong")?;
    idle_client.read_exact(&mut buf)?;
    let idle_port = idle_client.local_addr()?.port();
    let quiet = Instant::now();
    thread::sleep(IDLE);
    linger_zero(&idle_client);
    drop(idle_client);
    let measured_quiet = quiet.elapsed();
    // The server's socket takes the RST.
    served.set_read_timeout(Some(Duration::from_secs(2)))?;
    let error = served.read(&mut buf).expect_err("the server's socket was reset");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");

    thread::sleep(Duration::from_millis(100));
    let sample = collector.collect()?;
    print_program_cost(&ebpf);
    drop((clients, overflowing, accepting, served));
    check_listener_resets(&sample, &client_ports);
    check_idle_gaps(&sample, idle_port, measured_quiet);
    Ok(())
}

fn ours(addr: &[u8; 16]) -> bool {
    [CLIENT, SERVER].contains(&v4(addr))
}

fn check_listener_resets(sample: &Sample, client_ports: &[u16]) {
    let stack: Vec<&(StackResetKey, u64)> =
        sample.stack_resets.iter().filter(|(key, _)| ours(&key.src) || ours(&key.dst)).collect();
    for (key, resets) in &stack {
        eprintln!(
            "stack reset {}:{} -> {}:{} reason {} x{resets}",
            v4(&key.src),
            key.sport,
            v4(&key.dst),
            key.dport,
            key.reason
        );
    }
    let listen: Vec<&(ListenKey, ListenValue)> =
        sample.listen_resets.iter().filter(|(key, _)| key.family == FAMILY_IPV4 && ours(&key.addr)).collect();
    eprintln!("listener resets: {listen:?}");
    let [(key, value)] = listen[..] else {
        panic!("one listener with resets expected: {listen:?}");
    };
    assert_eq!((v4(&key.addr), key.port), (SERVER, LISTEN_PORT));
    assert!(value.resets >= 1, "{value:?}");
    assert_eq!(value.max_backlog, 1, "listen(fd, 1)");
    assert!(value.backlog >= value.max_backlog, "a full queue at the resets: {value:?}");
    // Each listener reset is keyed by the connection it refused, not by the listener's own
    // address and the 0.0.0.0:0 peer the tracepoint gives.
    assert!(
        !stack.iter().any(|(key, _)| v4(&key.dst) == Ipv4Addr::UNSPECIFIED),
        "a reset keyed by the listener's own address: {stack:?}"
    );
    // INVALID_SYN: what tcp_check_req's embryonic reset gives on Linux 6.10 and later.
    const INVALID_SYN: u32 = 10;
    let refused: Vec<u16> = stack
        .iter()
        .filter(|(key, _)| {
            key.reason == INVALID_SYN
                && (v4(&key.src), key.sport, v4(&key.dst)) == (SERVER, LISTEN_PORT, CLIENT)
                && client_ports.contains(&key.dport)
        })
        .map(|(key, _)| key.dport)
        .collect();
    assert_eq!(refused.len() as u64, value.resets, "every listener reset under a client's tuple: {stack:?}");
}

fn check_idle_gaps(sample: &Sample, idle_port: u16, quiet: Duration) {
    let gaps: Vec<&(IdleKey, IdleGap)> =
        sample.idle_gaps.iter().filter(|(key, _)| ours(&key.src) && ours(&key.dst)).collect();
    eprintln!("idle gaps (quiet for {quiet:?}): {gaps:?}");
    let expected = IDLE.as_millis() as u64;
    for direction in [DIRECTION_TX, DIRECTION_RX] {
        // The client sent the RST: the flow's sender is the client either way.
        let found = gaps.iter().find(|(key, _)| {
            key.direction == direction
                && (v4(&key.src), key.sport, v4(&key.dst), key.dport) == (CLIENT, idle_port, SERVER, IDLE_PORT)
        });
        let (_, gap) = found.unwrap_or_else(|| panic!("no idle gap for direction {direction}: {gaps:?}"));
        assert_eq!(gap.resets, 1, "{gap:?}");
        assert!(
            gap.idle_ms >= expected * 3 / 4 && gap.idle_ms <= expected * 5 / 4,
            "direction {direction}: idle {} ms, expected {expected} ms ± 25 %: {gap:?}",
            gap.idle_ms
        );
    }
    // A listener has no connection to be idle on: its resets carry no sent-side gap. The
    // refused clients' sockets, which received them, do.
    assert!(!gaps.iter().any(|(key, _)| key.sport == LISTEN_PORT && key.direction == DIRECTION_TX), "{gaps:?}");
    assert!(gaps.iter().any(|(key, _)| key.sport == LISTEN_PORT && key.direction == DIRECTION_RX), "{gaps:?}");
}
