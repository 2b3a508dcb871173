//! Netlink sockets: one request, one reply.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use super::{Error, Result};

/// Sends `request` (a complete netlink message) on a new `NETLINK_ROUTE` socket and returns the
/// first reply datagram (Linux 2.2; needs no capability for `RTM_GET*` requests).
///
/// # Errors
/// [`Error::Os`] from socket(2), send(2) or recv(2).
pub fn route_request(request: &[u8]) -> Result<Vec<u8>> {
    // SAFETY: plain socket(2) call with no pointers; the returned descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if fd < 0 {
        return Err(Error::last("socket(AF_NETLINK, NETLINK_ROUTE)"));
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `request` is readable for its whole length during the call.
    let sent = unsafe { libc::send(socket.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
    if sent < 0 {
        return Err(Error::last("send(NETLINK_ROUTE)"));
    }
    let mut reply = vec![0u8; 64 * 1024];
    // SAFETY: `reply` is writable for its whole length during the call.
    let received = unsafe { libc::recv(socket.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
    if received < 0 {
        return Err(Error::last("recv(NETLINK_ROUTE)"));
    }
    reply.truncate(received as usize);
    Ok(reply)
}
