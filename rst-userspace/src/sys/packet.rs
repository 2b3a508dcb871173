//! An `AF_PACKET` socket that sends whole Ethernet frames out of one interface, many per
//! `sendmmsg(2)`: the benchmarks' paced flood of many distinct flows.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

pub struct PacketSender {
    socket: OwnedFd,
    addr: libc::sockaddr_ll,
}

impl PacketSender {
    /// A raw socket bound to nothing that sends to `ifindex`, past the qdisc.
    pub fn open(ifindex: u32) -> io::Result<PacketSender> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        // SAFETY: PACKET_QDISC_BYPASS takes an int; the pointer and length describe `one`. A
        // kernel without it just queues through the qdisc, so the result is not checked.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                &one as *const libc::c_int as *const libc::c_void,
                size_of::<libc::c_int>() as u32,
            )
        };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid starting value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        Ok(PacketSender { socket, addr })
    }

    /// Sends `frames` in one `sendmmsg`; how many the kernel took.
    pub fn send(&mut self, frames: &[&[u8]]) -> io::Result<usize> {
        let mut iovecs: Vec<libc::iovec> = frames
            .iter()
            .map(|frame| libc::iovec { iov_base: frame.as_ptr() as *mut libc::c_void, iov_len: frame.len() })
            .collect();
        // SAFETY: mmsghdr is plain data; zero is a valid starting value, filled in below.
        let mut messages: Vec<libc::mmsghdr> = (0..frames.len()).map(|_| unsafe { std::mem::zeroed() }).collect();
        for (message, iov) in messages.iter_mut().zip(iovecs.iter_mut()) {
            message.msg_hdr.msg_name = &mut self.addr as *mut libc::sockaddr_ll as *mut libc::c_void;
            message.msg_hdr.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
            message.msg_hdr.msg_iov = iov;
            message.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every message points at a live iovec, frame and address for the whole call;
        // the kernel only reads them.
        let ret = unsafe { libc::sendmmsg(self.socket.as_raw_fd(), messages.as_mut_ptr(), messages.len() as u32, 0) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ret as usize)
    }
}
