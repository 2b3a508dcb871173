//! Which XDP program an interface already holds, asked of the kernel over rtnetlink, so that
//! rstwatch can name what it refuses to replace.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_PROG_ID: u16 = 4;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_ERROR: u16 = 2;

#[repr(C)]
struct Request {
    header: libc::nlmsghdr,
    info: IfInfoMsg,
}

#[repr(C)]
struct IfInfoMsg {
    family: u8,
    _pad: u8,
    kind: u16,
    index: i32,
    flags: u32,
    change: u32,
}

/// The XDP program attached to an interface, as rtnetlink reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachedXdp {
    pub program_id: u32,
    /// XDP_ATTACHED_DRV / SKB / HW / MULTI from include/uapi/linux/if_link.h.
    pub mode: &'static str,
}

/// Returns the XDP program on `ifindex`, if any. Needs no capability.
pub fn attached_xdp(ifindex: u32) -> io::Result<Option<AttachedXdp>> {
    // SAFETY: plain socket(2) call; the returned descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let request = Request {
        header: libc::nlmsghdr {
            nlmsg_len: size_of::<Request>() as u32,
            nlmsg_type: RTM_GETLINK,
            nlmsg_flags: libc::NLM_F_REQUEST as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        info: IfInfoMsg { family: libc::AF_UNSPEC as u8, _pad: 0, kind: 0, index: ifindex as i32, flags: 0, change: 0 },
    };
    // SAFETY: `request` is a fully initialized repr(C) value that outlives the call.
    let sent = unsafe { libc::send(socket.as_raw_fd(), (&request as *const Request).cast(), size_of::<Request>(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buffer = vec![0u8; 64 * 1024];
    // SAFETY: `buffer` is writable for its whole length during the call.
    let received = unsafe { libc::recv(socket.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), 0) };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    parse_link_message(&buffer[..received as usize])
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

fn parse_link_message(message: &[u8]) -> io::Result<Option<AttachedXdp>> {
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, "malformed rtnetlink reply");
    let kind = u16_at(message, 4).ok_or_else(malformed)?;
    if kind == NLMSG_ERROR {
        let errno = u32_at(message, size_of::<libc::nlmsghdr>()).ok_or_else(malformed)? as i32;
        return Err(io::Error::from_raw_os_error(-errno));
    }
    if kind != RTM_NEWLINK {
        return Err(malformed());
    }
    let attrs = message.get(size_of::<libc::nlmsghdr>() + size_of::<IfInfoMsg>()..).ok_or_else(malformed)?;
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
        let mut message = vec![0u8; size_of::<libc::nlmsghdr>() + size_of::<IfInfoMsg>()];
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
    fn truncated_replies_are_errors_not_panics() {
        assert!(parse_link_message(&[1, 2, 3]).is_err());
        let mut message = link_message(&attribute(IFLA_XDP, &attribute(IFLA_XDP_PROG_ID, &5u32.to_ne_bytes())));
        message.truncate(message.len() - 3);
        let _ = parse_link_message(&message);
    }
}
