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
