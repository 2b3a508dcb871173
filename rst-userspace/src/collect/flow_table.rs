//! The flow table ([`rst_common::table`]) mapped into this process: draining an epoch is a scan
//! of the memory blocks that hold flows, with no syscall per entry.
//!
//! Minimum kernel: 5.5 (`BPF_F_MMAPABLE` arrays).

use std::{
    io,
    os::fd::BorrowedFd,
    sync::atomic::{AtomicU64, Ordering},
};

use rst_common::{
    table::{flow_block_words, FlowSlot, SlotArray, MAX_FLOW_TABLE_BITS, MIN_FLOW_TABLE_BITS, SLOTS_PER_BLOCK_LOG2},
    wire::LoggedFlow,
    FlowKey,
};

use crate::sys::{self, mmap::Mapping};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("a flow table of 2 << {bits} slots is outside {MIN_FLOW_TABLE_BITS}..={MAX_FLOW_TABLE_BITS} bits")]
    TableBits { bits: u32 },
    #[error("an eviction log of {entries} entries is not two runs for each CPU id up to {highest_cpu:?}")]
    LogLayout { entries: u32, highest_cpu: Option<u32> },
    #[error("mapping the map into this process")]
    Map(#[from] sys::Error),
    #[error("reading {POSSIBLE_CPUS}")]
    ReadCpus(#[source] io::Error),
    #[error("{POSSIBLE_CPUS}: cannot parse {0:?}")]
    ParseCpus(String),
}

const POSSIBLE_CPUS: &str = "/sys/devices/system/cpu/possible";

/// Both epochs' halves of the table and the used-block bitmap, shared with the kernel.
///
/// The kernel writes the active half at any time, so the mapping is only ever touched through
/// raw pointers with volatile or atomic accesses — never as a Rust reference.
pub struct FlowTableMap {
    slots: Mapping<FlowSlot>,
    blocks: Mapping<u64>,
    bits: u32,
}

// SAFETY: the mappings are plain shared memory with no thread affinity; `drain` takes
// `&mut self` and the `SlotArray` writers use atomics.
unsafe impl Send for FlowTableMap {}
// SAFETY: as above: shared access goes through atomics only.
unsafe impl Sync for FlowTableMap {}

impl FlowTableMap {
    /// Maps the table behind `table_fd`, an mmap-able array of `2 << bits` [`FlowSlot`]s, and
    /// its used-block bitmap behind `blocks_fd`, one of [`flow_block_words`]`(bits)` words.
    ///
    /// # Errors
    /// [`Error::TableBits`], or [`Error::Map`] with `mmap`'s errno (`EINVAL` for a map created
    /// without `BPF_F_MMAPABLE`, or smaller).
    pub fn new(table_fd: BorrowedFd<'_>, blocks_fd: BorrowedFd<'_>, bits: u32) -> Result<Self, Error> {
        if !(MIN_FLOW_TABLE_BITS..=MAX_FLOW_TABLE_BITS).contains(&bits) {
            return Err(Error::TableBits { bits });
        }
        Ok(Self {
            slots: Mapping::new(table_fd, 2usize << bits)?,
            blocks: Mapping::new(blocks_fd, flow_block_words(bits) as usize)?,
            bits,
        })
    }

    /// log2 of one epoch's slots.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// Passes every flow stored in `epoch`'s half to `sink` (a flow two CPUs stored twice comes
    /// twice) and leaves the half empty. Returns the number of slots it emptied.
    ///
    /// Reads only the blocks the kernel marked as used, unless `whole_half`: after the kernel
    /// reported a race (a block it may have failed to mark, see
    /// [`rst_common::table::Added::Raced`]) every slot of the half is read.
    ///
    /// Only correct once no program can write to that half any more: after the epoch flip and
    /// an RCU grace period.
    pub fn drain(&mut self, epoch: u32, whole_half: bool, mut sink: impl FnMut(&FlowKey, u64)) -> usize {
        let blocks_per_epoch = 1usize << (self.bits - SLOTS_PER_BLOCK_LOG2);
        let first_block = (epoch as usize & 1) * blocks_per_epoch;
        let mut emptied = 0;
        let mut block = first_block;
        while block < first_block + blocks_per_epoch {
            let (word, first_bit) = (block / 64, block % 64);
            let bits_here = (64 - first_bit).min(first_block + blocks_per_epoch - block);
            let mask = if bits_here == 64 { u64::MAX } else { ((1u64 << bits_here) - 1) << first_bit };
            // The bitmap has a bit for every block of both halves (`flow_block_words`).
            let Some(bitmap_word) = self.blocks.at(word) else { break };
            // SAFETY: a word inside the bitmap mapping, aligned; the programs set bits of the
            // other half in the same word concurrently, so this clears with an atomic too.
            let taken = unsafe { AtomicU64::from_ptr(bitmap_word) }.fetch_and(!mask, Ordering::AcqRel) & mask;
            for bit in first_bit..first_bit + bits_here {
                if whole_half || taken & (1 << bit) != 0 {
                    emptied += self.scan_block(word * 64 + bit, true, &mut sink);
                }
            }
            block += bits_here;
        }
        // The emptied half must be seen empty by the programs once the epoch flips back to it
        // (the flip's syscall orders this too; weakly ordered CPUs get it in writing).
        std::sync::atomic::fence(Ordering::SeqCst);
        emptied
    }

    /// What `epoch`'s half holds now, left in place: for tests and tools that look while the
    /// programs may still be writing (a slot being filled right then may be missed).
    pub fn visit(&self, epoch: u32, mut sink: impl FnMut(&FlowKey, u64)) -> usize {
        let blocks_per_epoch = 1usize << (self.bits - SLOTS_PER_BLOCK_LOG2);
        let first_block = (epoch as usize & 1) * blocks_per_epoch;
        (first_block..first_block + blocks_per_epoch).map(|block| self.scan_block(block, false, &mut sink)).sum()
    }

    fn scan_block(&self, block: usize, empty: bool, sink: &mut impl FnMut(&FlowKey, u64)) -> usize {
        // Every block of both halves is inside the table, `2 << bits` slots.
        let Some(slots) = self.slots.run(block << SLOTS_PER_BLOCK_LOG2, 1 << SLOTS_PER_BLOCK_LOG2) else { return 0 };
        let mut used = 0;
        for slot in slots.iter() {
            // SAFETY: a slot inside the mapping; volatile because the memory is shared with
            // the kernel. Emptying is only asked for by `drain`, whose contract keeps the
            // kernel out of this half.
            unsafe {
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
        self.slots.at(index as usize)
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

    fn mark_block(&self, block: u32) -> bool {
        let Some(word) = self.blocks.at(block as usize / 64) else { return false };
        // SAFETY: inside the bitmap mapping, aligned; every writer uses atomics.
        unsafe { AtomicU64::from_ptr(word) }.fetch_or(1 << (block % 64), Ordering::Relaxed);
        true
    }
}

/// The ids of the CPUs the kernel may run on (`/sys/devices/system/cpu/possible`), in the order
/// per-CPU map values come in. Not always `0..n`: the list can have holes.
///
/// # Errors
/// [`Error::ReadCpus`], [`Error::ParseCpus`].
pub fn possible_cpu_ids() -> Result<Vec<u32>, Error> {
    let list = std::fs::read_to_string(POSSIBLE_CPUS).map_err(Error::ReadCpus)?;
    parse_cpu_list(list.trim()).ok_or(Error::ParseCpus(list))
}

/// `0-3,8,10-11` → `[0, 1, 2, 3, 8, 10, 11]`; `None` unless every part is a number or an
/// ascending range and the ids ascend.
fn parse_cpu_list(list: &str) -> Option<Vec<u32>> {
    let mut ids: Vec<u32> = Vec::new();
    for part in list.split(',') {
        let (first, last) = match part.split_once('-') {
            Some((first, last)) => (first.parse().ok()?, last.parse().ok()?),
            None => {
                let id = part.parse().ok()?;
                (id, id)
            }
        };
        if first > last || ids.last().is_some_and(|&previous| previous >= first) {
            return None;
        }
        ids.extend(first..=last);
    }
    Some(ids)
}

/// The eviction logs ([`LoggedFlow`]) mapped into this process: each CPU's run of entries per
/// epoch, read after the epoch is flipped and a grace period has passed — no syscall per entry.
pub struct EvictionLogMap {
    entries: Mapping<LoggedFlow>,
    slots: u32,
    /// The possible CPUs' ids, in per-CPU value order; runs are laid out by id.
    cpu_ids: Vec<u32>,
}

// SAFETY: plain shared memory; only read, through volatile reads, in `read`.
unsafe impl Send for EvictionLogMap {}
// SAFETY: as above.
unsafe impl Sync for EvictionLogMap {}

impl EvictionLogMap {
    /// Maps the log behind `log_fd`, an mmap-able array of `entries` [`LoggedFlow`]s laid out
    /// as two runs (epochs) for every CPU id up to the highest of `cpu_ids` (see
    /// [`eviction_log_cpus`]).
    ///
    /// # Errors
    /// [`Error::LogLayout`] when `entries` is not two equal runs per CPU id, [`Error::Map`].
    pub fn new(log_fd: BorrowedFd<'_>, entries: u32, cpu_ids: Vec<u32>) -> Result<Self, Error> {
        let runs = eviction_log_cpus(&cpu_ids)
            .checked_mul(2)
            .filter(|&runs| runs > 0 && entries.is_multiple_of(runs) && entries > 0);
        let Some(runs) = runs else {
            return Err(Error::LogLayout { entries, highest_cpu: cpu_ids.last().copied() });
        };
        Ok(Self { entries: Mapping::new(log_fd, entries as usize)?, slots: entries / runs, cpu_ids })
    }

    /// Entries per CPU and epoch.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// The possible CPUs' ids, in per-CPU value order.
    pub fn cpu_ids(&self) -> &[u32] {
        &self.cpu_ids
    }

    /// Passes each CPU's first `logged` entries of its run for `epoch` to `sink` and zeroes
    /// their counts, so that an entry a program skipped (programs interleaving on one CPU,
    /// possible on PREEMPT_RT) can only count 0 later, never an old flow again; `logged` in
    /// per-CPU value order (the possible CPUs, ascending). Only for an epoch no program writes
    /// any more.
    pub fn drain(&mut self, epoch: u32, logged: &[u64], mut sink: impl FnMut(&FlowKey, u64)) {
        self.each(epoch, logged, |entry| {
            // SAFETY: an entry of the mapping (see `each`) no program writes now; volatile:
            // the kernel's memory.
            let LoggedFlow { key, resets } = unsafe {
                let read = std::ptr::read_volatile(entry);
                std::ptr::write_volatile(&raw mut (*entry).resets, 0);
                read
            };
            sink(&key, resets);
        });
    }

    /// [`drain`](Self::drain) without emptying anything: for tests and diagnostics.
    pub fn visit(&self, epoch: u32, logged: &[u64], mut sink: impl FnMut(&FlowKey, u64)) {
        self.each(epoch, logged, |entry| {
            // SAFETY: an entry of the mapping (see `each`); volatile: the kernel's memory.
            let LoggedFlow { key, resets } = unsafe { std::ptr::read_volatile(entry) };
            sink(&key, resets);
        });
    }

    fn each(&self, epoch: u32, logged: &[u64], mut entry: impl FnMut(*mut LoggedFlow)) {
        for (&cpu, &used) in self.cpu_ids.iter().zip(logged) {
            let first = (cpu * 2 + (epoch & 1)) as usize * self.slots as usize;
            // Inside the mapping, two runs for every id up to the highest: `new` checked it.
            if let Some(run) = self.entries.run(first, used.min(u64::from(self.slots)) as usize) {
                run.iter().for_each(&mut entry);
            }
        }
    }
}

/// CPU ids the eviction log has runs for: every id up to the highest possible one, so that a
/// CPU's run is found from its id alone (what the kernel program has).
pub fn eviction_log_cpus(cpu_ids: &[u32]) -> u32 {
    cpu_ids.last().map_or(1, |&highest| highest + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_with_holes_and_refuse_nonsense() {
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("0-3"), Some(vec![0, 1, 2, 3]));
        assert_eq!(parse_cpu_list("0,2-3,8"), Some(vec![0, 2, 3, 8]));
        assert_eq!(eviction_log_cpus(&[0, 2, 3, 8]), 9);
        for bad in ["", "a", "3-1", "0,0", "2,1", "0-", "-1"] {
            assert_eq!(parse_cpu_list(bad), None, "{bad:?}");
        }
    }
}
