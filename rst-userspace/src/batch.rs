//! `BPF_MAP_LOOKUP_AND_DELETE_BATCH`, which aya 0.14 does not wrap.
//!
//! Draining a hash map with `iter()` + `remove()` costs a lookup, a get-next-key walk and a
//! delete per entry (quadratic in the worst case); the batch command moves thousands of entries
//! per syscall. Minimum kernel: 5.6.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use aya::Pod;

const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;

/// The `batch` member of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const _: () = assert!(size_of::<BatchAttr>() == 56);

/// Entries moved per syscall. Large enough that no hash bucket overflows it in practice; a
/// bucket that does gets `ENOSPC`, and the buffer grows.
const INITIAL_CHUNK: usize = 8192;

/// Removes every entry from the hash map behind `map_fd` and passes each to `sink`.
///
/// Only correct for maps no BPF program writes to while this runs (rstwatch drains the table
/// of the previous epoch, after a grace period). Returns the number of entries drained.
///
/// # Errors
/// The syscall's errno, except `ENOENT` (end of map) which ends the drain normally.
pub fn drain_hash_map<K: Pod, V: Pod>(
    map_fd: BorrowedFd<'_>,
    mut sink: impl FnMut(&K, &V),
) -> io::Result<usize> {
    let mut chunk = INITIAL_CHUNK;
    let mut keys: Vec<K> = Vec::with_capacity(chunk);
    let mut values: Vec<V> = Vec::with_capacity(chunk);
    // Hash maps use a u32 bucket index as the batch token; 8 bytes leaves room to spare.
    let mut token = [0u64; 1];
    let mut have_token = false;
    let mut drained = 0;
    loop {
        let mut attr = BatchAttr {
            in_batch: if have_token { token.as_ptr() as u64 } else { 0 },
            out_batch: token.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: map_fd.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: `attr` is a valid bpf_attr prefix whose pointers reference buffers with room
        // for `count` keys and values and a token of at least 4 bytes, all alive for the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_AND_DELETE_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>(),
            )
        };
        let error = (ret < 0).then(io::Error::last_os_error);
        let returned = (attr.count as usize).min(chunk);
        // SAFETY: the kernel wrote `returned` complete keys and values (both Pod) into the
        // buffers, whose capacity is `chunk`.
        unsafe {
            keys.set_len(returned);
            values.set_len(returned);
        }
        for (key, value) in keys.iter().zip(values.iter()) {
            sink(key, value);
        }
        drained += returned;
        keys.clear();
        values.clear();
        match error {
            None => have_token = true,
            Some(error) if error.raw_os_error() == Some(libc::ENOENT) => return Ok(drained),
            Some(error) if error.raw_os_error() == Some(libc::ENOSPC) && returned == 0 => {
                // The token now names the bucket that did not fit: retry it with more room.
                have_token = true;
                chunk *= 2;
                keys.reserve(chunk);
                values.reserve(chunk);
            }
            Some(error) => return Err(error),
        }
    }
}
