//! mmap(2) of BPF array maps created with `BPF_F_MMAPABLE` (Linux 5.5): the kernel's memory in
//! this process, read and written without a syscall per element.

use std::{
    marker::PhantomData,
    os::fd::{AsRawFd as _, BorrowedFd},
    ptr::NonNull,
};

use super::{Error, Result};

/// A shared, read-write mapping of a BPF array's values, handed out only as raw pointers to
/// elements inside it: the kernel writes the memory at any time, so no Rust reference to it may
/// exist, and every pointer given out is in bounds by construction.
pub struct Mapping<T> {
    start: NonNull<T>,
    elements: usize,
}

impl<T> Mapping<T> {
    /// Maps the first `elements` values of the array behind `map_fd`.
    ///
    /// # Errors
    /// [`Error::Os`] with mmap's errno: `EINVAL` for a map created without `BPF_F_MMAPABLE`,
    /// `EINVAL` or `ENXIO` when it has fewer than `elements` values, `EPERM` without
    /// write access to the map.
    pub fn new(map_fd: BorrowedFd<'_>, elements: usize) -> Result<Self> {
        let len = elements
            .checked_mul(size_of::<T>())
            .filter(|&len| len > 0)
            .ok_or(Error::Malformed { call: "mmap", what: "a mapping of no bytes, or more than the address space" })?;
        // SAFETY: a new shared mapping of the map's data, which the kernel keeps alive while
        // mapped; no pointer is passed in, and nothing else in this process aliases the result.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map_fd.as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(Error::last("mmap"));
        }
        let start =
            NonNull::new(address.cast::<T>()).ok_or(Error::Malformed { call: "mmap", what: "returned NULL" })?;
        Ok(Self { start, elements })
    }

    /// Element `index`, or `None` past the end.
    pub fn at(&self, index: usize) -> Option<*mut T> {
        self.run(index, 1).map(|run| run.start)
    }

    /// Elements `first .. first + len`, or `None` unless all of them are inside the mapping: one
    /// bounds check for a whole run (a block of the flow table, a CPU's log), then pointers that
    /// cannot leave it.
    pub fn run(&self, first: usize, len: usize) -> Option<Run<'_, T>> {
        let end = first.checked_add(len).filter(|&end| end <= self.elements)?;
        // SAFETY: `first <= end <= elements`, so the offset stays inside (or one past the end
        // of) the mapping, one allocation of `elements` values.
        let start = unsafe { self.start.as_ptr().add(first) };
        Some(Run { start, len: end - first, _mapping: PhantomData })
    }
}

/// Consecutive elements of a [`Mapping`], known to be inside it while it lives.
pub struct Run<'a, T> {
    start: *mut T,
    len: usize,
    _mapping: PhantomData<&'a Mapping<T>>,
}

impl<T> Run<'_, T> {
    /// Pointers to each element, in order.
    pub fn iter(&self) -> impl Iterator<Item = *mut T> + '_ {
        // SAFETY: `n < len`, and the run lies inside the mapping (checked in `Mapping::run`).
        (0..self.len).map(|n| unsafe { self.start.add(n) })
    }
}

impl<T> Drop for Mapping<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, of exactly this length, unmapped once; pointers
        // handed out are raw and documented not to outlive it.
        unsafe { libc::munmap(self.start.as_ptr().cast(), self.elements * size_of::<T>()) };
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd as _;

    use super::*;

    #[test]
    fn no_element_outside_the_mapping_is_handed_out() {
        // Any file maps like a BPF array does; a scratch file needs no root.
        let path = std::env::temp_dir().join(format!("rstwatch-mmap-{}", std::process::id()));
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        file.set_len(4096).unwrap();
        std::fs::remove_file(&path).unwrap();
        let mapping = Mapping::<u64>::new(file.as_fd(), 512).unwrap();
        assert!(mapping.at(0).is_some() && mapping.at(511).is_some());
        assert!(mapping.at(512).is_none());
        assert_eq!(mapping.run(500, 12).map(|run| run.iter().count()), Some(12));
        assert!(mapping.run(500, 13).is_none());
        assert!(mapping.run(usize::MAX, 2).is_none());
        let last = mapping.at(511).unwrap();
        // SAFETY: inside the mapping, which lives; nothing else touches the file.
        unsafe { last.write_volatile(7) };
        assert_eq!(
            // SAFETY: as above.
            mapping.run(511, 1).unwrap().iter().map(|element| unsafe { element.read_volatile() }).sum::<u64>(),
            7
        );
        assert!(Mapping::<u64>::new(file.as_fd(), 0).is_err());
    }
}
