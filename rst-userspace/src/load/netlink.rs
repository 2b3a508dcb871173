//! Which XDP program an interface already holds, asked of the kernel over rtnetlink, so that
//! rstwatch can name what it refuses to replace; and which network namespace a link's other
//! end is in (a veth's peer), as the kernel's namespace ids.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use crate::sys;

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_PROG_ID: u16 = 4;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_ERROR: u16 = 2;
const IFLA_LINK_NETNSID: u16 = 37;
const RTM_NEWNSID: u16 = 88;
const RTM_GETNSID: u16 = 90;
const NETNSA_NSID: u16 = 1;
const NETNSA_FD: u16 = 3;
/// `NETNSA_NSID_NOT_ASSIGNED`: the namespace has no id in ours.
const NSID_NOT_ASSIGNED: i32 = -1;

/// The XDP program attached to an interface, as rtnetlink reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachedXdp {
    pub program_id: u32,
    /// XDP_ATTACHED_DRV / SKB / HW / MULTI from include/uapi/linux/if_link.h.
    pub mode: &'static str,
}

/// Returns the XDP program on `ifindex`, if any. Needs no capability.
///
/// # Errors
/// The socket's errors, the kernel's answer to the request (`ENODEV`), a malformed reply.
pub fn attached_xdp(ifindex: u32) -> sys::Result<Option<AttachedXdp>> {
    parse_link_message(&sys::netlink::route_request(&getlink_request(ifindex))?)
}

const CALL: &str = "rtnetlink RTM_GETLINK";

/// `struct ifinfomsg`: family, pad, type (u8, u8, u16), index (i32), flags, change (u32, u32).
const IFINFOMSG_LEN: usize = 16;

/// An `RTM_GETLINK` request for one interface: a `nlmsghdr` and an `ifinfomsg`.
fn getlink_request(ifindex: u32) -> Vec<u8> {
    let len = size_of::<libc::nlmsghdr>() + IFINFOMSG_LEN;
    let mut request = Vec::with_capacity(len);
    request.extend_from_slice(&(len as u32).to_ne_bytes());
    request.extend_from_slice(&RTM_GETLINK.to_ne_bytes());
    request.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    // Sequence number, then port id 0: the kernel.
    request.extend_from_slice(&1u32.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    // ifinfomsg: family, pad, type, then the index; flags and change stay zero.
    request.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    request.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    request.resize(len, 0);
    request
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Walks the route attributes (4-byte aligned `len, type, payload`) of `bytes`.
fn attributes(bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(bytes, at)?);
        let kind = u16_at(bytes, at + 2)? & NLA_TYPE_MASK;
        let payload = bytes.get(at + 4..at + len.max(4))?;
        at += (len + 3) & !3;
        if len < 4 {
            return None;
        }
        Some((kind, payload))
    })
}

/// The route attributes of a reply of type `kind` whose fixed header is `header_len` bytes, or
/// the error the kernel answered with.
fn reply_attributes<'m>(message: &'m [u8], kind: u16, header_len: usize, call: &'static str) -> sys::Result<&'m [u8]> {
    let malformed = || sys::Error::Malformed { call, what: "a reply shorter than its headers say" };
    let got = u16_at(message, 4).ok_or_else(malformed)?;
    if got == NLMSG_ERROR {
        let errno = u32_at(message, size_of::<libc::nlmsghdr>()).ok_or_else(malformed)? as i32;
        return Err(sys::Error::Os { call, source: io::Error::from_raw_os_error(-errno) });
    }
    if got != kind {
        return Err(malformed());
    }
    message.get(size_of::<libc::nlmsghdr>() + header_len..).ok_or_else(malformed)
}

fn parse_link_message(message: &[u8]) -> sys::Result<Option<AttachedXdp>> {
    let attrs = reply_attributes(message, RTM_NEWLINK, IFINFOMSG_LEN, CALL)?;
    let Some((_, xdp)) = attributes(attrs).find(|(kind, _)| *kind == IFLA_XDP) else {
        return Ok(None);
    };
    let mut program_id = 0;
    let mut mode = "none";
    for (kind, payload) in attributes(xdp) {
        match kind {
            IFLA_XDP_PROG_ID => program_id = u32_at(payload, 0).unwrap_or(0),
            IFLA_XDP_ATTACHED => {
                mode = match payload.first() {
                    Some(1) => "native",
                    Some(2) => "generic",
                    Some(3) => "offloaded",
                    Some(4) => "several modes",
                    _ => "none",
                }
            }
            _ => {}
        }
    }
    Ok((program_id != 0 || mode == "several modes").then_some(AttachedXdp { program_id, mode }))
}

/// The id, in this process's network namespace, of the namespace the other end of `ifindex`
/// is in (`IFLA_LINK_NETNSID`: a veth, vxlan, ipvlan… whose peer or lower device is in another
/// namespace); `None` for a link without one (Linux 4.0; needs no capability).
///
/// # Errors
/// The socket's errors, the kernel's answer to the request (`ENODEV`), a malformed reply.
pub fn link_netnsid(ifindex: u32) -> sys::Result<Option<i32>> {
    parse_link_netnsid(&sys::netlink::route_request(&getlink_request(ifindex))?)
}

fn parse_link_netnsid(message: &[u8]) -> sys::Result<Option<i32>> {
    let attrs = reply_attributes(message, RTM_NEWLINK, IFINFOMSG_LEN, CALL)?;
    Ok(attributes(attrs)
        .find(|(kind, _)| *kind == IFLA_LINK_NETNSID)
        .and_then(|(_, payload)| u32_at(payload, 0))
        .map(|nsid| nsid as i32)
        .filter(|nsid| *nsid != NSID_NOT_ASSIGNED))
}

const NSID_CALL: &str = "rtnetlink RTM_GETNSID";

/// `struct rtgenmsg` (one byte, the family), padded to the netlink alignment.
const RTGENMSG_LEN: usize = 4;

/// The id this process's network namespace gives the namespace `netns` (an open
/// `/run/netns/NAME` or `/proc/PID/ns/net`): comparable with [`link_netnsid`]. `None` when it
/// has none: no link here leads there (Linux 4.0; needs no capability).
///
/// # Errors
/// The socket's errors, the kernel's answer (`EINVAL`: not a network namespace), a malformed
/// reply.
pub fn nsid_of(netns: BorrowedFd<'_>) -> sys::Result<Option<i32>> {
    parse_nsid_reply(&sys::netlink::route_request(&getnsid_request(netns.as_raw_fd() as u32))?)
}

/// An `RTM_GETNSID` request: a `nlmsghdr`, a `rtgenmsg` and `NETNSA_FD`.
fn getnsid_request(fd: u32) -> Vec<u8> {
    let len = size_of::<libc::nlmsghdr>() + RTGENMSG_LEN + 8;
    let mut request = Vec::with_capacity(len);
    request.extend_from_slice(&(len as u32).to_ne_bytes());
    request.extend_from_slice(&RTM_GETNSID.to_ne_bytes());
    request.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    request.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    request.extend_from_slice(&8u16.to_ne_bytes());
    request.extend_from_slice(&NETNSA_FD.to_ne_bytes());
    request.extend_from_slice(&fd.to_ne_bytes());
    request
}

fn parse_nsid_reply(message: &[u8]) -> sys::Result<Option<i32>> {
    let attrs = reply_attributes(message, RTM_NEWNSID, RTGENMSG_LEN, NSID_CALL)?;
    let (_, payload) = attributes(attrs)
        .find(|(kind, _)| *kind == NETNSA_NSID)
        .ok_or(sys::Error::Malformed { call: NSID_CALL, what: "a reply without NETNSA_NSID" })?;
    let nsid = u32_at(payload, 0).ok_or(sys::Error::Malformed { call: NSID_CALL, what: "a short NETNSA_NSID" })?;
    Ok(Some(nsid as i32).filter(|nsid| *nsid != NSID_NOT_ASSIGNED))
}

/// The name of a loaded program, when this process may look it up (CAP_SYS_ADMIN).
pub fn program_name(program_id: u32) -> Option<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|info| info.id() == program_id)
        .and_then(|info| info.name_as_str().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attribute(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut bytes = ((4 + payload.len()) as u16).to_ne_bytes().to_vec();
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(payload);
        bytes.resize((bytes.len() + 3) & !3, 0);
        bytes
    }

    fn link_message(attrs: &[u8]) -> Vec<u8> {
        let mut message = vec![0u8; size_of::<libc::nlmsghdr>() + IFINFOMSG_LEN];
        message[4..6].copy_from_slice(&RTM_NEWLINK.to_ne_bytes());
        message.extend_from_slice(attrs);
        message
    }

    #[test]
    fn reads_the_program_id_and_mode_from_a_nested_ifla_xdp() {
        let mut xdp = attribute(IFLA_XDP_ATTACHED, &[2]);
        xdp.extend(attribute(IFLA_XDP_PROG_ID, &77u32.to_ne_bytes()));
        let mut attrs = attribute(3, b"veth0\0");
        attrs.extend(attribute(IFLA_XDP | 0x8000, &xdp));
        let found = parse_link_message(&link_message(&attrs)).unwrap();
        assert_eq!(found, Some(AttachedXdp { program_id: 77, mode: "generic" }));
    }

    #[test]
    fn no_xdp_attribute_or_no_program_is_none() {
        assert_eq!(parse_link_message(&link_message(&attribute(3, b"veth0\0"))).unwrap(), None);
        let attrs = attribute(IFLA_XDP, &attribute(IFLA_XDP_ATTACHED, &[0]));
        assert_eq!(parse_link_message(&link_message(&attrs)).unwrap(), None);
    }

    #[test]
    fn the_request_is_one_nlmsghdr_and_ifinfomsg_for_the_interface() {
        let request = getlink_request(7);
        assert_eq!(request.len(), 32);
        assert_eq!(u32_at(&request, 0), Some(32));
        assert_eq!(u16_at(&request, 4), Some(RTM_GETLINK));
        assert_eq!(u16_at(&request, 6), Some(libc::NLM_F_REQUEST as u16));
        assert_eq!(u32_at(&request, 20), Some(7));
    }

    #[test]
    fn a_link_netnsid_is_read_and_its_absence_or_not_assigned_is_none() {
        let mut attrs = attribute(3, b"veth0\0");
        attrs.extend(attribute(IFLA_LINK_NETNSID, &3i32.to_ne_bytes()));
        assert_eq!(parse_link_netnsid(&link_message(&attrs)).unwrap(), Some(3));
        assert_eq!(parse_link_netnsid(&link_message(&attribute(3, b"veth0\0"))).unwrap(), None);
        let unassigned = attribute(IFLA_LINK_NETNSID, &(-1i32).to_ne_bytes());
        assert_eq!(parse_link_netnsid(&link_message(&unassigned)).unwrap(), None);
    }

    #[test]
    fn the_nsid_request_carries_the_fd_after_an_aligned_rtgenmsg() {
        let request = getnsid_request(9);
        assert_eq!(request.len(), 28);
        assert_eq!(u32_at(&request, 0), Some(28));
        assert_eq!(u16_at(&request, 4), Some(RTM_GETNSID));
        assert_eq!(request[16], libc::AF_UNSPEC as u8);
        assert_eq!(
            (u16_at(&request, 20), u16_at(&request, 22), u32_at(&request, 24)),
            (Some(8), Some(NETNSA_FD), Some(9))
        );
    }

    #[test]
    fn the_nsid_reply_is_its_nsid_or_none_and_an_error_is_the_errno() {
        let reply = |attrs: &[u8]| {
            let mut message = vec![0u8; size_of::<libc::nlmsghdr>() + RTGENMSG_LEN];
            message[4..6].copy_from_slice(&RTM_NEWNSID.to_ne_bytes());
            message.extend_from_slice(attrs);
            message
        };
        assert_eq!(parse_nsid_reply(&reply(&attribute(NETNSA_NSID, &5i32.to_ne_bytes()))).unwrap(), Some(5));
        assert_eq!(parse_nsid_reply(&reply(&attribute(NETNSA_NSID, &(-1i32).to_ne_bytes()))).unwrap(), None);
        assert!(parse_nsid_reply(&reply(&[])).is_err());
        let mut error = vec![0u8; size_of::<libc::nlmsghdr>() + 4];
        error[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        error[16..20].copy_from_slice(&(-libc::EINVAL).to_ne_bytes());
        assert_eq!(parse_nsid_reply(&error).unwrap_err().raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn truncated_replies_are_errors_not_panics() {
        assert!(parse_link_message(&[1, 2, 3]).is_err());
        let mut message = link_message(&attribute(IFLA_XDP, &attribute(IFLA_XDP_PROG_ID, &5u32.to_ne_bytes())));
        message.truncate(message.len() - 3);
        let _ = parse_link_message(&message);
    }
}
