//! The bpf(2) map batch commands, which aya 0.14 does not wrap: `BPF_MAP_LOOKUP_BATCH`,
//! `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_LOOKUP_AND_DELETE_BATCH`. Minimum kernel: 5.6.
//!
//! Draining a hash map with `iter()` + `remove()` costs a lookup, a get-next-key walk and a
//! delete per entry (quadratic in the worst case); the batch command moves thousands of entries
//! per syscall.

use std::{
    mem::size_of,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use aya::Pod;

use super::{Error, Result};

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

/// Removes every entry from the hash map behind `map_fd` and passes each to `sink`, with
/// `BPF_MAP_LOOKUP_AND_DELETE_BATCH` (Linux 5.6).
///
/// Only correct for maps no BPF program writes to while this runs (rstwatch drains the table
/// of the previous epoch, after a grace period). Returns the number of entries drained.
///
/// # Errors
/// [`Error::Os`] with the syscall's errno, except `ENOENT` (end of map) which ends the drain
/// normally and `ENOSPC` (a bucket larger than the buffer) which grows the buffer.
pub fn drain_hash_map<K: Pod, V: Pod>(map_fd: BorrowedFd<'_>, mut sink: impl FnMut(&K, &V)) -> Result<usize> {
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
        let error = (ret < 0).then(|| Error::last("bpf(BPF_MAP_LOOKUP_AND_DELETE_BATCH)"));
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

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Reads `count` consecutive entries of the per-CPU array behind `map_fd`, starting at index
/// `first`, with one `BPF_MAP_LOOKUP_BATCH` (Linux 5.6). Returns, per index, `cpus` values (the
/// kernel's per-CPU layout: each value padded to 8 bytes, which `V: Pod` with 8-byte size
/// already is).
///
/// # Errors
/// [`Error::Os`] with the syscall's errno, or [`Error::Partial`] when the kernel returned fewer
/// entries than asked (the range runs past the array's end).
pub fn lookup_per_cpu_array<V: Pod>(map_fd: BorrowedFd<'_>, first: u32, count: u32, cpus: usize) -> Result<Vec<V>> {
    assert_eq!(size_of::<V>() % 8, 0, "per-CPU values are laid out in 8-byte units");
    let mut keys = vec![0u32; count as usize];
    let mut values: Vec<V> = Vec::with_capacity(count as usize * cpus);
    // Array batches resume after the key in `in_batch`: start after `first - 1`.
    let start_after = first.wrapping_sub(1);
    let mut token = 0u32;
    let mut attr = BatchAttr {
        in_batch: if first == 0 { 0 } else { &start_after as *const u32 as u64 },
        out_batch: &mut token as *mut u32 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count,
        map_fd: map_fd.as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: the buffers hold `count` keys and `count * cpus` values, the tokens are u32 like
    // the array's keys, and all of it outlives the call.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &mut attr as *mut BatchAttr, size_of::<BatchAttr>())
    };
    if ret < 0 {
        let error = Error::last("bpf(BPF_MAP_LOOKUP_BATCH)");
        // ENOENT only means the batch reached the end of the array.
        if error.raw_os_error() != Some(libc::ENOENT) {
            return Err(error);
        }
    }
    if attr.count != count {
        return Err(Error::Partial { call: "bpf(BPF_MAP_LOOKUP_BATCH)", done: attr.count, asked: count });
    }
    // SAFETY: the kernel wrote `count` complete per-CPU values (Pod) for each of `count` keys.
    unsafe { values.set_len(count as usize * cpus) };
    Ok(values)
}

/// Writes `values` (`cpus` per index) to `count` consecutive indices from `first` of the
/// per-CPU array behind `map_fd`, with one `BPF_MAP_UPDATE_BATCH` (Linux 5.6).
///
/// # Errors
/// As [`update_batch`].
pub fn update_per_cpu_array<V: Pod>(map_fd: BorrowedFd<'_>, first: u32, values: &[V], cpus: usize) -> Result<()> {
    assert_eq!(size_of::<V>() % 8, 0, "per-CPU values are laid out in 8-byte units");
    let keys: Vec<u32> = (first..first + (values.len() / cpus) as u32).collect();
    update_batch(map_fd, &keys, values)
}

/// Writes `keys[i] → values[i]` (for per-CPU maps, `values` holds all CPUs' values of each key
/// in a row) with one `BPF_MAP_UPDATE_BATCH`. Minimum kernel: 5.6.
///
/// # Errors
/// [`Error::Os`] with the syscall's errno, or [`Error::Partial`] when the kernel wrote fewer
/// entries than given.
pub fn update_batch<K: Pod, V: Pod>(map_fd: BorrowedFd<'_>, keys: &[K], values: &[V]) -> Result<()> {
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: map_fd.as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: `keys` and `values` hold `count` entries (times CPUs for per-CPU values) and
    // outlive the call; the kernel only reads them.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_BATCH, &mut attr as *mut BatchAttr, size_of::<BatchAttr>())
    };
    if ret < 0 {
        return Err(Error::last("bpf(BPF_MAP_UPDATE_BATCH)"));
    }
    if attr.count as usize != keys.len() {
        return Err(Error::Partial { call: "bpf(BPF_MAP_UPDATE_BATCH)", done: attr.count, asked: keys.len() as u32 });
    }
    Ok(())
}
