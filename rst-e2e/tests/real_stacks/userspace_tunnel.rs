//! Tunnels this kernel has no driver for (Geneve, GRE, gretap, IPIP, SIT, ip6 tunnels),
//! encapsulated in userspace exactly as the drivers do (rst-craft's `tunnel`, the headers they
//! write), while the kernel stacks of two namespaces still make the resets: each namespace has
//! a TUN device for the overlay; a pump reads what its stack sends there, wraps it and sends it
//! out of the underlay veth (AF_PACKET), and unwraps what arrives on the veth into the TUN
//! device. rstwatch on one end of the underlay sees the tunnel as a driver would have sent it.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};
use rst_craft::tunnel::Tunnel;
use rst_lab::lab::{Iface, Netns};

const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const ETH_P_ALL: u16 = 0x0003;
const PACKET_OUTGOING: u8 = 4;
/// IPv6's minimum (below it the device has no IPv6): wrapped, still under the veth's 1500.
pub(crate) const TUN_MTU: u32 = 1280;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A TUN device `name` (no packet information) in the calling thread's namespace.
fn open_tun(name: &str) -> Result<File> {
    let file =
        std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun").context("opening /dev/net/tun")?;
    let mut request = IfReq { name: [0; libc::IFNAMSIZ], flags: IFF_TUN | IFF_NO_PI, _pad: [0; 22] };
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `request` is laid out as.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut request) };
    ensure!(rc == 0, "TUNSETIFF {name}: {}", std::io::Error::last_os_error());
    Ok(file)
}

/// An AF_PACKET socket bound to `ifindex`, receiving every frame, with a read timeout.
fn packet_socket(ifindex: u32) -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(ETH_P_ALL.to_be())) };
    ensure!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
    // SAFETY: a descriptor just returned by socket(2), owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_ll; the fields that matter are set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ALL.to_be();
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: `addr` is a sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    ensure!(rc == 0, "binding the packet socket: {}", std::io::Error::last_os_error());
    let timeout = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
    // SAFETY: SO_RCVTIMEO takes a timeval, which `timeout` is.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    ensure!(rc == 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    Ok(fd)
}

/// One end of the overlay: a namespace's TUN device and its underlay veth, and the tunnel as
/// this end sends it (outer source its own).
pub(crate) struct End {
    pub(crate) ns: Netns,
    pub(crate) underlay: Iface,
    pub(crate) tun_name: &'static str,
    pub(crate) sends: Tunnel,
}

/// What a wrapped frame carries before the inner IP packet, for this tunnel.
fn header_len(tunnel: &Tunnel) -> usize {
    let probe = probe_packet();
    let wrapped = wrap(tunnel, &probe);
    wrapped.len() - probe.len()
}

/// A minimal IPv4 packet, only for measuring a tunnel's headers.
fn probe_packet() -> Vec<u8> {
    let mut ip = vec![0x45, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
    ip.truncate(20);
    ip
}

/// `packet` (an IP packet from the TUN device) inside `tunnel`: behind a made-up Ethernet
/// header, which tunnels that carry Ethernet keep and the others drop.
fn wrap(tunnel: &Tunnel, packet: &[u8]) -> Vec<u8> {
    let ether_type: u16 = if packet.first().is_some_and(|b| b >> 4 == 6) { 0x86dd } else { 0x0800 };
    let mut frame = vec![0x02, 0x11, 0, 0, 0, 2, 0x02, 0x11, 0, 0, 0, 1];
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(packet);
    tunnel.wrap_bytes(&frame, Some(14))
}

/// Pumps both ends until dropped: TUN → wrapped out of the underlay, and what arrives on the
/// underlay from the other end → unwrapped into the TUN device.
pub(crate) struct Pumps {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<Result<()>>>,
}

impl Pumps {
    pub(crate) fn start(ends: [End; 2]) -> Result<Pumps> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let [a, b] = ends;
        // What each end receives is the other's tunnel: its headers are what to strip.
        let (a_strip, b_strip) = (header_len(&b.sends), header_len(&a.sends));
        for (end, strip) in [(a, a_strip), (b, b_strip)] {
            let ifindex = end.underlay.ifindex()?;
            let (tun, socket) = rst_lab::traffic::in_netns(&end.ns, || {
                let tun = open_tun(end.tun_name)?;
                let socket = packet_socket(ifindex)?;
                Ok((tun, socket))
            })?;
            // The TUN device reads block: a thread each way, the TUN one ended by a final
            // packet the stack sends when the lab goes (or by the namespace's removal).
            let tun_in = tun.try_clone()?;
            let socket_out = socket.try_clone()?;
            let tunnel = end.sends.clone();
            let stop_out = Arc::clone(&stop);
            threads.push(thread::spawn(move || pump_out(tun_in, socket_out, &tunnel, &stop_out)));
            let stop_in = Arc::clone(&stop);
            let own_outer = end.sends.clone();
            threads.push(thread::spawn(move || pump_in(socket, tun, strip, &own_outer, &stop_in)));
        }
        Ok(Pumps { stop, threads })
    }

    /// Stops the pumps that can stop (the TUN readers end with their namespace).
    pub(crate) fn stop(mut self) -> Result<()> {
        self.stop.store(true, Ordering::Release);
        for handle in self.threads.drain(..) {
            if handle.is_finished() {
                handle.join().map_err(|_| anyhow::anyhow!("a pump panicked"))??;
            }
        }
        Ok(())
    }
}

impl Drop for Pumps {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Whether `fd` has something to read within 50 ms.
fn readable(fd: &File) -> bool {
    let mut poll = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut poll, 1, 50) > 0 }
}

fn pump_out(mut tun: File, socket: OwnedFd, tunnel: &Tunnel, stop: &AtomicBool) -> Result<()> {
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Acquire) {
        if !readable(&tun) {
            continue;
        }
        let n = match tun.read(&mut buf) {
            Ok(n) => n,
            Err(_) => return Ok(()),
        };
        let frame = wrap(tunnel, &buf[..n]);
        // SAFETY: `frame` is a readable buffer of its length; the socket is bound to a device.
        let sent = unsafe { libc::send(socket.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        ensure!(sent >= 0, "sending a wrapped frame: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn pump_in(socket: OwnedFd, mut tun: File, strip: usize, own: &Tunnel, stop: &AtomicBool) -> Result<()> {
    let mut buf = vec![0u8; 65_536];
    // Frames this end sent itself come back as PACKET_OUTGOING; the other end's carry its
    // outer source, not this end's, and the same ethertype and protocol.
    let own_frame = wrap(own, &probe_packet());
    let l3 = own.outer_l3();
    let v6 = own_frame.get(l3).is_some_and(|b| b >> 4 == 6);
    let (protocol_at, source) = if v6 { (l3 + 6, l3 + 8..l3 + 24) } else { (l3 + 9, l3 + 12..l3 + 16) };
    while !stop.load(Ordering::Acquire) {
        // SAFETY: all-zero is a valid sockaddr_ll, filled in by recvfrom.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `buf` and `from` are writable buffers of the sizes given.
        let n = unsafe {
            libc::recvfrom(
                socket.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut from).cast(),
                &mut from_len,
            )
        };
        if n < 0 {
            continue;
        }
        let frame = &buf[..n as usize];
        if from.sll_pkttype == PACKET_OUTGOING || frame.len() <= strip {
            continue;
        }
        // IP in IPv4 says its inner family in the protocol (4 or 41): any will do there.
        let any_protocol = matches!(own.encapsulation, rst_craft::tunnel::Encapsulation::Ip) && !v6;
        let same_kind = frame.get(12..14) == own_frame.get(12..14)
            && (any_protocol || frame.get(protocol_at) == own_frame.get(protocol_at));
        if !same_kind || frame.get(source.clone()) == own_frame.get(source.clone()) {
            continue;
        }
        let _ = tun.write(&frame[strip..]);
    }
    Ok(())
}

/// The TUN device's configuration once it exists: up, its MTU, the overlay addresses.
pub(crate) fn configure(ns: &Netns, name: &str, v4: &str, v6: &str) -> Result<()> {
    ns.ip(["link", "set", name, "mtu", &TUN_MTU.to_string(), "up"])?;
    ns.ip(["addr", "add", v4, "dev", name])?;
    ns.ip(["-6", "addr", "add", v6, "dev", name, "nodad"])?;
    // Let the stack settle (the TUN device's own first packets) before the test's traffic.
    thread::sleep(Duration::from_millis(100));
    Ok(())
}
