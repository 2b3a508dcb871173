//! Interface names to indices.

use std::ffi::CStr;

/// The index of the interface called `name` in this network namespace, or `None` when there is
/// none (`if_nametoindex(3)`, any kernel).
pub fn index_of(name: &CStr) -> Option<u32> {
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call, which only
    // reads it.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (ifindex != 0).then_some(ifindex)
}

/// Every interface of this network namespace, name and index (`if_nameindex(3)`, any kernel:
/// netlink in the calling thread's namespace, unlike `/sys/class/net`, which shows the
/// namespace sysfs was mounted in).
///
/// # Errors
/// [`super::Error::Os`] when the list cannot be read (out of memory, no netlink socket).
pub fn interfaces() -> super::Result<Vec<(String, u32)>> {
    // SAFETY: no preconditions; the result is freed below with if_freenameindex.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(super::Error::last("if_nameindex"));
    }
    let mut found = Vec::new();
    let mut entry = list;
    // SAFETY: the array ends with an entry whose index is 0 and name NULL; every name before it
    // is a NUL-terminated string owned by the list until it is freed.
    unsafe {
        while (*entry).if_index != 0 && !(*entry).if_name.is_null() {
            found.push((CStr::from_ptr((*entry).if_name).to_string_lossy().into_owned(), (*entry).if_index));
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    Ok(found)
}
