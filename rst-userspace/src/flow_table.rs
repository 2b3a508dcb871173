//! The flow table ([`rst_common::table`]) mapped into this process: draining an epoch is a scan
//! of memory, with no syscall per entry.
//!
//! Minimum kernel: 5.5 (`BPF_F_MMAPABLE` arrays).

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use rst_common::{
    table::{FlowSlot, SlotArray},
    FlowKey,
};

/// Both epochs' halves of the table, shared with the kernel.
///
/// The kernel writes the active half at any time, so the mapping is only ever touched through
/// raw pointers with volatile or atomic accesses — never as a Rust reference.
pub struct FlowTableMap {
    slots: NonNull<FlowSlot>,
    bits: u32,
    len: usize,
}

// SAFETY: the mapping is plain shared memory with no thread affinity; `drain` takes `&mut self`
// and the `SlotArray` writers use atomics.
unsafe impl Send for FlowTableMap {}
// SAFETY: as above: shared access goes through atomics only.
unsafe impl Sync for FlowTableMap {}

impl FlowTableMap {
    /// Maps the table behind `map_fd`, an mmap-able array of `2 << bits` [`FlowSlot`]s.
    ///
    /// # Errors
    /// `mmap`'s errno (`EINVAL` for a map created without `BPF_F_MMAPABLE`).
    pub fn new(map_fd: BorrowedFd<'_>, bits: u32) -> io::Result<Self> {
        let len = (2usize << bits) * size_of::<FlowSlot>();
        // SAFETY: a new shared mapping of the map's data, which the kernel keeps alive while
        // mapped; nothing else in this process aliases it.
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
            return Err(io::Error::last_os_error());
        }
        let slots = NonNull::new(address.cast::<FlowSlot>()).ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(Self { slots, bits, len })
    }

    /// log2 of one epoch's slots.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// Passes every flow stored in `epoch`'s half to `sink` (a flow two CPUs stored twice comes
    /// twice) and leaves the half empty. Returns the number of slots it emptied.
    ///
    /// Only correct once no program can write to that half any more: after the epoch flip and
    /// an RCU grace period.
    pub fn drain(&mut self, epoch: u32, sink: impl FnMut(&FlowKey, u64)) -> usize {
        let emptied = self.scan(epoch, true, sink);
        // The emptied half must be seen empty by the programs once the epoch flips back to it
        // (the flip's syscall orders this too; weakly ordered CPUs get it in writing).
        std::sync::atomic::fence(Ordering::SeqCst);
        emptied
    }

    /// What `epoch`'s half holds now, left in place: for tests and tools that look while the
    /// programs may still be writing (a slot being filled right then may be missed).
    pub fn visit(&self, epoch: u32, sink: impl FnMut(&FlowKey, u64)) -> usize {
        self.scan(epoch, false, sink)
    }

    fn scan(&self, epoch: u32, empty: bool, mut sink: impl FnMut(&FlowKey, u64)) -> usize {
        let per_epoch = 1usize << self.bits;
        let first = (epoch as usize & 1) * per_epoch;
        let mut used = 0;
        for index in first..first + per_epoch {
            // SAFETY: `index` is inside the mapping; volatile because the memory is shared
            // with the kernel. Emptying is only asked for by `drain`, whose contract keeps the
            // kernel out of this half.
            unsafe {
                let slot = self.slots.as_ptr().add(index);
                if std::ptr::read_volatile(&raw const (*slot).tag) == 0 {
                    continue;
                }
                let FlowSlot { key, resets, .. } = std::ptr::read_volatile(slot);
                if empty {
                    std::ptr::write_volatile(slot, FlowSlot::EMPTY);
                }
                sink(&key, resets);
            }
            used += 1;
        }
        used
    }
}

impl SlotArray for FlowTableMap {
    fn slot(&self, index: u32) -> Option<*mut FlowSlot> {
        // SAFETY: in bounds of the mapping, checked first.
        ((index as usize) < (2usize << self.bits)).then(|| unsafe { self.slots.as_ptr().add(index as usize) })
    }

    unsafe fn claim(tag: *mut u64) -> bool {
        // SAFETY: the caller passes a slot's tag inside the mapping: aligned and live.
        let tag = unsafe { AtomicU64::from_ptr(tag) };
        tag.compare_exchange(0, FlowSlot::BUSY, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    unsafe fn add(counter: *mut u64, n: u64) {
        // SAFETY: as in `claim`.
        unsafe { AtomicU64::from_ptr(counter) }.fetch_add(n, Ordering::Relaxed);
    }

    unsafe fn load_tag(tag: *const u64) -> u64 {
        // SAFETY: as in `claim`; the atomic only reads.
        unsafe { AtomicU64::from_ptr(tag.cast_mut()) }.load(Ordering::Acquire)
    }

    unsafe fn publish_tag(tag: *mut u64, value: u64) {
        // SAFETY: as in `claim`.
        unsafe { AtomicU64::from_ptr(tag) }.store(value, Ordering::Release);
    }
}

impl Drop for FlowTableMap {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; no pointer into it outlives self.
        unsafe { libc::munmap(self.slots.as_ptr().cast(), self.len) };
    }
}
