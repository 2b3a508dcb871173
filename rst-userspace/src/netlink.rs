//! Which XDP program an interface already holds, asked of the kernel over rtnetlink, so that
//! rstwatch can name what it refuses to replace.

use std::{io, mem::size_of};

use crate::sys;

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_PROG_ID: u16 = 4;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_ERROR: u16 = 2;

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

fn parse_link_message(message: &[u8]) -> sys::Result<Option<AttachedXdp>> {
    let malformed = || sys::Error::Malformed { call: CALL, what: "a reply shorter than its headers say" };
    let kind = u16_at(message, 4).ok_or_else(malformed)?;
    if kind == NLMSG_ERROR {
        let errno = u32_at(message, size_of::<libc::nlmsghdr>()).ok_or_else(malformed)? as i32;
        return Err(sys::Error::Os { call: CALL, source: io::Error::from_raw_os_error(-errno) });
    }
    if kind != RTM_NEWLINK {
        return Err(malformed());
    }
    let attrs = message.get(size_of::<libc::nlmsghdr>() + IFINFOMSG_LEN..).ok_or_else(malformed)?;
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
    fn truncated_replies_are_errors_not_panics() {
        assert!(parse_link_message(&[1, 2, 3]).is_err());
        let mut message = link_message(&attribute(IFLA_XDP, &attribute(IFLA_XDP_PROG_ID, &5u32.to_ne_bytes())));
        message.truncate(message.len() - 3);
        let _ = parse_link_message(&message);
    }
}
