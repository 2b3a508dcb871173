//! `BPF_LINK_CREATE` for XDP, which rstwatch makes itself: aya's `Xdp::attach` silently falls
//! back to a netlink attachment, which would outlive a killed rstwatch.

use std::{
    mem::size_of,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

use super::{Error, Result};

/// The `link_create` member of `union bpf_attr`, up to the fields XDP uses, plus zeroed room.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 4],
}

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_XDP: u32 = 37;

/// Attaches the XDP program behind `program` to `ifindex` through a new bpf_link (Linux 5.9),
/// with `flags` (`XDP_FLAGS_SKB_MODE`, `XDP_FLAGS_DRV_MODE`). The program stays attached while
/// the returned descriptor (or a copy of it) is open.
///
/// # Errors
/// [`Error::Os`]: `EBUSY` / `EEXIST` when an XDP program is already attached, `EPERM` /
/// `EACCES` without CAP_NET_ADMIN, `EOPNOTSUPP` for native mode on a driver without XDP.
pub fn create_xdp(program: BorrowedFd<'_>, ifindex: u32, flags: u32) -> Result<OwnedFd> {
    let attr = LinkCreateAttr {
        prog_fd: program.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags,
        ..Default::default()
    };
    // SAFETY: `attr` is a valid, zero-padded bpf_attr prefix that lives across the call, which
    // only reads it.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_LINK_CREATE, &attr as *const LinkCreateAttr, size_of::<LinkCreateAttr>())
    };
    if ret < 0 {
        return Err(Error::last("bpf(BPF_LINK_CREATE)"));
    }
    // SAFETY: on success BPF_LINK_CREATE returns a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}
