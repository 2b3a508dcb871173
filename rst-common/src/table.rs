//! The per-interval flow table: an open-addressing hash table in a plain array that every CPU
//! writes with atomics, and userspace reads by `mmap` — no kernel hash map on either side.
//!
//! Why not a BPF hash map: inserting into one costs a bucket lock, a free-list pop and a jhash
//! (about 390 ns for a cold entry here), and draining one costs a syscall's worth of work per
//! entry (400–500 ns with `BPF_MAP_LOOKUP_AND_DELETE_BATCH`). Here a new flow costs one probe
//! sequence over adjacent cache lines and a compare-and-swap, and a drain is a memory scan.
//!
//! Layout: one array of `2 << bits` [`FlowSlot`]s, the first half epoch 0's, the second epoch
//! 1's. A flow hashes to a start slot and a stride (double hashing: no clusters grow, so at
//! half load a flow needs two probes on average and 32 fail with probability 2^-32) and takes
//! the first free slot of [`FLOW_TABLE_PROBES`]; a flow that finds none overflows (counted,
//! never lost). Linear probing was tried first: at a million flows its clusters outgrew 32
//! probes.
//!
//! Exactness does not depend on memory ordering between CPUs: a slot's key is written once per
//! epoch, before its tag is published, and counts only ever change by atomic adds. A CPU that
//! misses a slot another CPU is still filling with the same flow takes another slot: the flow
//! is then stored twice, and userspace adds the two up. Nothing is counted for a key it was not
//! compared equal to.

use crate::{
    activity::Activity,
    wire::{ConnKey, ConnState, FlowKey},
};

/// Slots a flow may probe before it overflows. At the table's design load (half full, see
/// [`flow_table_bits`]) all of them are taken with probability 2^-32.
pub const FLOW_TABLE_PROBES: u32 = 32;

/// Slots per block of the used-block bitmap (map `FLOW_BLOCKS`): 64 slots, one 4 KiB page.
/// The kernel sets a block's bit when it claims a slot in it, so a drain reads only the
/// blocks that hold flows: an idle interval costs nothing however large `--max-flows` is.
pub const SLOTS_PER_BLOCK_LOG2: u32 = 6;

/// Words of the used-block bitmap for a table of `2 << bits` slots (both epochs).
pub const fn flow_block_words(bits: u32) -> u32 {
    let blocks = (2u32 << bits) >> SLOTS_PER_BLOCK_LOG2;
    if blocks < 64 {
        1
    } else {
        blocks / 64
    }
}

/// Table size bounds (log2 of one epoch's slots): 1 Ki to 32 Mi slots.
pub const MIN_FLOW_TABLE_BITS: u32 = 10;
pub const MAX_FLOW_TABLE_BITS: u32 = 25;

/// One slot of the flow table: a cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSlot {
    pub key: FlowKey,
    /// Atomic adds only, from every CPU.
    pub resets: u64,
    /// 0: free. [`FlowSlot::BUSY`]: claimed, key being written. Otherwise the key's
    /// [`FlowSlot::tag_of`] its hash: the key is complete.
    pub tag: u64,
}

wire_sizes!(FlowSlot: 64);

impl FlowSlot {
    pub const BUSY: u64 = u64::MAX;

    // SAFETY: integers and byte arrays only; all-zero is the free slot.
    pub const EMPTY: FlowSlot = unsafe { core::mem::zeroed() };

    /// A published tag: never 0 (free) nor [`FlowSlot::BUSY`].
    #[inline(always)]
    pub const fn tag_of(hash: u64) -> u64 {
        (hash >> 1) | 1
    }
}

/// Each CPU's eviction-log entries per epoch (see [`crate::wire::LoggedFlow`]): `max_flows`
/// split over the CPUs, rounded down to a power of two, from 1 to 32 768. So the logs of all
/// CPUs together hold at most `max_flows` flows — unless there are more CPUs than that, when
/// each still gets one entry.
pub const fn eviction_log_slots(max_flows: u32, cpus: u32) -> u32 {
    let share = max_flows / if cpus == 0 { 1 } else { cpus };
    let slots = if share == 0 { 1 } else { 1 << (31 - share.leading_zeros()) };
    if slots > 32_768 {
        32_768
    } else {
        slots
    }
}

/// log2 of one epoch's slots for a table that must hold `max_flows` flows: at most half full.
pub const fn flow_table_bits(max_flows: u32) -> u32 {
    let wanted = if max_flows == 0 { 2 } else { max_flows as u64 * 2 };
    let bits = 64 - (wanted - 1).leading_zeros();
    if bits < MIN_FLOW_TABLE_BITS {
        MIN_FLOW_TABLE_BITS
    } else if bits > MAX_FLOW_TABLE_BITS {
        MAX_FLOW_TABLE_BITS
    } else {
        bits
    }
}

impl FlowKey {
    /// The flow table's hash: a multiply-rotate over the key's words, strong enough that
    /// neighbouring addresses and ports (a scan) do not land in neighbouring slots.
    #[inline(always)]
    pub fn table_hash(&self) -> u64 {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let w = self.words();
        let mut hash = 0u64;
        for pair in 0..6 {
            let word = u64::from(w[2 * pair]) | (u64::from(w[2 * pair + 1]) << 32);
            hash = (hash.rotate_left(23) ^ word).wrapping_mul(K);
        }
        hash ^ (hash >> 29)
    }
}

/// Whether the key at `stored` is `key`, read a word at a time (no copy: the BPF stack is
/// small, and no reference into memory other CPUs write).
///
/// # Safety
/// `stored` points to a live, 4-byte-aligned `FlowKey`.
#[inline(always)]
unsafe fn same_flow_at(stored: *const FlowKey, key: &FlowKey) -> bool {
    let words = key.words();
    let stored = stored.cast::<u32>();
    let mut differ = 0;
    for (i, word) in words.iter().enumerate() {
        // SAFETY: FlowKey is 12 words (asserted in `wire`), in bounds by the caller's contract.
        differ |= unsafe { core::ptr::read_volatile(stored.add(i)) } ^ word;
    }
    differ == 0
}

/// Where a flow table lives, and the atomics its writers use. The kernel implements it over
/// its array map; host tests and benchmarks over the same memory mapped into the process.
pub trait SlotArray {
    /// Slot `index` of the whole table (both epochs); `None` outside it.
    fn slot(&self, index: u32) -> Option<*mut FlowSlot>;

    /// Sets `*tag` from 0 to [`FlowSlot::BUSY`] atomically; true if this call did.
    ///
    /// # Safety
    /// `tag` points to a live slot's `tag`.
    unsafe fn claim(tag: *mut u64) -> bool;

    /// `*counter += n`, atomically.
    ///
    /// # Safety
    /// `counter` points to a live slot's `resets`.
    unsafe fn add(counter: *mut u64, n: u64);

    /// Reads a slot's tag, with acquire ordering where the platform has it.
    ///
    /// # Safety
    /// `tag` points to a live slot's `tag`.
    unsafe fn load_tag(tag: *const u64) -> u64;

    /// Publishes a slot's tag once its key is written, with release ordering where the
    /// platform has it.
    ///
    /// # Safety
    /// `tag` points to a live slot's `tag`, claimed by this caller.
    unsafe fn publish_tag(tag: *mut u64, value: u64);

    /// Sets bit `block % 64` of word `block / 64` of the used-block bitmap, atomically
    /// (another CPU may set a bit of the same word). False if the word does not exist.
    fn mark_block(&self, block: u32) -> bool;
}

/// What [`add_to_flow_table`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Added {
    Stored,
    /// Stored, after passing a slot that another CPU was filling or that it could not compare
    /// (its tag matched, its key was not yet visible): the flow may now sit in two slots.
    /// Also when the used-block bitmap could not mark the slot's block. Userspace must then
    /// read the epoch's whole half and sum its slots by key; otherwise the marked blocks hold
    /// every flow, each once.
    Raced,
    /// All [`FLOW_TABLE_PROBES`] slots hold other flows: the caller counts the resets as
    /// overflow.
    Full,
}

/// Adds `resets` to `key`'s slot in `epoch`'s half of a table of `2 << bits` slots, claiming
/// a free slot for it if it has none.
#[inline(always)]
pub fn add_to_flow_table<T: SlotArray>(table: &T, bits: u32, epoch: u32, key: &FlowKey, resets: u64) -> Added {
    let bits = bits.clamp(MIN_FLOW_TABLE_BITS, MAX_FLOW_TABLE_BITS);
    let hash = key.table_hash();
    let tag = FlowSlot::tag_of(hash);
    let mask = (1u32 << bits) - 1;
    let start = (hash >> 32) as u32;
    // Odd, so coprime with the power-of-two size: the probes visit distinct slots.
    let stride = (hash as u32) | 1;
    let base = (epoch & 1) << bits;
    let mut raced = false;
    let stored = |raced: bool| if raced { Added::Raced } else { Added::Stored };
    for probe in 0..FLOW_TABLE_PROBES {
        let index = base | (start.wrapping_add(probe.wrapping_mul(stride)) & mask);
        let Some(slot) = table.slot(index) else {
            return Added::Full;
        };
        // SAFETY: `slot` is a live slot of the table for the whole call (the kernel's array
        // elements are never freed while a program runs; the host's mapping outlives `table`).
        // Other CPUs write it concurrently, so it is only touched through raw pointers: the key
        // is compared word by word as it is read.
        unsafe {
            let seen = T::load_tag(&raw const (*slot).tag);
            if seen == tag {
                if same_flow_at(&raw const (*slot).key, key) {
                    T::add(&raw mut (*slot).resets, resets);
                    return stored(raced);
                }
                // Another key with the same 63-bit tag, or (on weakly ordered CPUs) this key
                // not yet visible behind its published tag.
                raced = true;
                continue;
            }
            if seen == 0 {
                if T::claim(&raw mut (*slot).tag) {
                    core::ptr::write_volatile(&raw mut (*slot).key, *key);
                    T::add(&raw mut (*slot).resets, resets);
                    T::publish_tag(&raw mut (*slot).tag, tag);
                    // Sized by the loader to cover every block; were it not, the drain's full
                    // scan fallback still finds the slot (see `Added::Raced`).
                    if !table.mark_block(index >> SLOTS_PER_BLOCK_LOG2) {
                        return Added::Raced;
                    }
                    return stored(raced);
                }
                raced = true;
            } else if seen == FlowSlot::BUSY {
                raced = true;
            }
        }
        // Another flow's slot, or one another CPU is filling right now (perhaps with this
        // flow: then it may end up stored twice, and userspace sums both).
    }
    Added::Full
}

/// One slot of the connection table (map `CONNECTIONS`): a cache line. All zeroes is free (no
/// real key has interface 0).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnSlot {
    pub key: ConnKey,
    pub state: ConnState,
    /// Written only by the programs that time every connection (`--idle-gaps`), which set it
    /// at each SYN and SYN+ACK, after any store that gave the slot a new key: the others leave
    /// it as it was, stale or zero.
    pub activity: Activity,
}

wire_sizes!(ConnSlot: 64);

impl ConnSlot {
    // SAFETY: integers and byte arrays only; all-zero is the free slot.
    pub const EMPTY: ConnSlot = unsafe { core::mem::zeroed() };
}

impl ConnKey {
    #[inline(always)]
    fn words(&self) -> [u32; 11] {
        // SAFETY: ConnKey is repr(C), 44 bytes without implicit padding (asserted in `wire`).
        unsafe { core::mem::transmute_copy(self) }
    }

    #[inline(always)]
    fn same_connection(&self, other: &ConnKey) -> bool {
        let (a, b) = (self.words(), other.words());
        let mut differ = 0;
        for i in 0..a.len() {
            differ |= a[i] ^ b[i];
        }
        differ == 0
    }

    #[inline(always)]
    fn conn_hash(&self) -> u64 {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut hash = 0u64;
        for word in self.words() {
            hash = (hash.rotate_left(23) ^ u64::from(word)).wrapping_mul(K);
        }
        hash
    }

    /// The pair of slots of a table of `1 << bits` this connection may occupy (its first
    /// slot), and its fingerprint there (never 0, which marks a free slot).
    #[inline(always)]
    fn conn_place(&self, bits: u32) -> (u32, u8) {
        let hash = self.conn_hash();
        let set = ((hash >> 32) as u32 & ((1u32 << bits) - 1)) & !1;
        // Bits the set index does not use; the low bit forced so no fingerprint is 0.
        (set, (hash >> 24) as u8 | 1)
    }
}

/// Words of [`ConnSlots::fingerprints`] for a connection table of `1 << bits` slots: one
/// byte per slot, eight slots to a word.
pub const fn conn_fingerprint_words(bits: u32) -> u32 {
    if bits < 3 {
        1
    } else {
        1 << (bits - 3)
    }
}

/// The connection table: an array of [`ConnSlot`]s in pairs ("2-way set-associative"), each
/// pair keeping the two connections that hashed to it most recently. Unlike the LRU hash map
/// it replaces, finding a connection or learning it has none costs one hash and one cache
/// line (the pair shares one 128-byte span), with no lock and no allocation: a new flow's
/// RST looked a connection up in a cold LRU bucket for about 310 ns.
///
/// Writes from two CPUs to one pair at the same moment can mix two connections' bytes; the mix
/// matches neither key or gives one connection the other's flags. Only a classification can
/// suffer — as with the LRU map, whose in-place updates could lose a flag — never a count.
pub trait ConnSlots {
    /// Slot `index`; `None` outside the table.
    fn slot(&self, index: u32) -> Option<*mut ConnSlot>;

    /// The fingerprints of the pair starting at slot `set` (even), one byte per slot, 0 for a
    /// free one: 2 bytes of a dense array ([`conn_fingerprint_words`]) that stays in the CPU
    /// caches, so that most segments of connections the table does not hold — every RST of a
    /// scan or a flood — are answered without touching a cold slot (one cache miss, about
    /// 150 ns, less per new flow). `None` outside the table.
    fn fingerprints(&self, set: u32) -> Option<*mut [u8; 2]>;
}

/// `key`'s state in a table of `1 << bits` slots, to read and update in place.
///
/// A fingerprint that another CPU's store left out of step with its slot can only hide a
/// connection (as if forgotten) or cost a slot compare that fails: never a wrong state.
#[inline(always)]
pub fn conn_lookup<T: ConnSlots>(table: &T, bits: u32, key: &ConnKey) -> Option<*mut ConnState> {
    // SAFETY: a live slot; only its field's address is taken, nothing is read.
    conn_find(table, bits, key, |slot| unsafe { &raw mut (*slot).state })
}

/// `key`'s [`Activity`] in a table of `1 << bits` slots, to read and update in place; as
/// [`conn_lookup`].
#[inline(always)]
pub fn conn_activity<T: ConnSlots>(table: &T, bits: u32, key: &ConnKey) -> Option<*mut Activity> {
    // SAFETY: as in `conn_lookup`.
    conn_find(table, bits, key, |slot| unsafe { &raw mut (*slot).activity })
}

/// The `field` of `key`'s slot. The field's address is taken where the key matched, as before
/// [`conn_activity`] existed: the counting programs' instructions stay what they were.
#[inline(always)]
fn conn_find<T: ConnSlots, F>(
    table: &T,
    bits: u32,
    key: &ConnKey,
    field: impl Fn(*mut ConnSlot) -> *mut F,
) -> Option<*mut F> {
    let (set, fingerprint) = key.conn_place(bits.clamp(1, MAX_FLOW_TABLE_BITS + 1));
    // SAFETY: a live element of the fingerprint array; bytes, so no torn read.
    let fingerprints = unsafe { core::ptr::read_volatile(table.fingerprints(set)?) };
    for way in 0..2 {
        if fingerprints[way as usize] != fingerprint {
            continue;
        }
        let slot = table.slot(set | way)?;
        // SAFETY: a live slot of the table for the whole call.
        if unsafe { (*slot).key.same_connection(key) } {
            return Some(field(slot));
        }
    }
    None
}

/// Sets `key`'s state: in its slot if it has one, else in the first of its pair, the pair's
/// previous first moving to the second (so the older of the two is forgotten).
#[inline(always)]
pub fn conn_store<T: ConnSlots>(table: &T, bits: u32, key: &ConnKey, state: &ConnState) {
    let (set, fingerprint) = key.conn_place(bits.clamp(1, MAX_FLOW_TABLE_BITS + 1));
    let (Some(first), Some(second), Some(fingerprints)) =
        (table.slot(set), table.slot(set | 1), table.fingerprints(set))
    else {
        return;
    };
    // SAFETY: live slots and fingerprints of the table for the whole call; plain stores (see
    // `ConnSlots` on what a concurrent writer can do). Slots are written before the
    // fingerprints that lead a lookup to them.
    unsafe {
        let [first_print, second_print] = core::ptr::read_volatile(fingerprints);
        if (*second).key.same_connection(key) {
            (*second).state = *state;
            core::ptr::write_volatile(fingerprints, [first_print, fingerprint]);
            return;
        }
        let second_print = if (*first).key.same_connection(key) {
            second_print
        } else {
            *second = *first;
            (*first).key = *key;
            first_print
        };
        (*first).state = *state;
        core::ptr::write_volatile(fingerprints, [fingerprint, second_print]);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{cell::UnsafeCell, vec, vec::Vec};

    use super::*;
    use crate::wire::{DIRECTION_RX, FAMILY_IPV4};

    struct Host(Vec<UnsafeCell<FlowSlot>>, UnsafeCell<Vec<u64>>);

    impl Host {
        fn new(slots: impl Iterator<Item = FlowSlot>) -> Host {
            Host(slots.map(UnsafeCell::new).collect(), UnsafeCell::new(vec![0; 1 << 16]))
        }

        fn blocks(&self) -> Vec<u64> {
            // SAFETY: single-threaded test; no reference into the cell is live.
            unsafe { (*self.1.get()).clone() }
        }
    }

    impl SlotArray for Host {
        fn slot(&self, index: u32) -> Option<*mut FlowSlot> {
            self.0.get(index as usize).map(UnsafeCell::get)
        }
        unsafe fn claim(tag: *mut u64) -> bool {
            // SAFETY: single-threaded test.
            unsafe {
                if *tag != 0 {
                    return false;
                }
                *tag = FlowSlot::BUSY;
            }
            true
        }
        unsafe fn add(counter: *mut u64, n: u64) {
            // SAFETY: single-threaded test.
            unsafe { *counter += n };
        }
        unsafe fn load_tag(tag: *const u64) -> u64 {
            // SAFETY: single-threaded test.
            unsafe { *tag }
        }
        unsafe fn publish_tag(tag: *mut u64, value: u64) {
            // SAFETY: single-threaded test.
            unsafe { *tag = value };
        }
        fn mark_block(&self, block: u32) -> bool {
            // SAFETY: single-threaded test.
            let words = unsafe { &mut *self.1.get() };
            match words.get_mut(block as usize / 64) {
                Some(word) => {
                    *word |= 1 << (block % 64);
                    true
                }
                None => false,
            }
        }
    }

    fn key(i: u32) -> FlowKey {
        FlowKey::from_parts(
            [0x0a00_0001, 0, 0, 0],
            [0x0a00_0002, 0, 0, 0],
            3,
            (i % 60_000) as u16,
            80 + (i / 60_000) as u16,
            FAMILY_IPV4,
            DIRECTION_RX,
            64,
        )
    }

    #[test]
    fn eviction_logs_share_max_flows_between_the_cpus_within_bounds() {
        assert_eq!(eviction_log_slots(65_536, 2), 32_768);
        assert_eq!(eviction_log_slots(65_536, 3), 16_384, "a power of two, rounded down");
        assert_eq!(eviction_log_slots(1 << 24, 2), 32_768);
        assert_eq!(eviction_log_slots(2, 2), 1);
        assert_eq!(eviction_log_slots(2, 4), 1, "never none");
        assert_eq!(eviction_log_slots(65_536, 0), 32_768);
        // Thousands of possible CPUs: the logs together stay within max_flows entries.
        assert_eq!(eviction_log_slots(65_536, 8_192), 8);
        assert_eq!(eviction_log_slots(65_536, 1 << 20), 1);
    }

    #[test]
    fn sizes_hold_twice_the_flows_within_bounds() {
        assert_eq!(flow_table_bits(1), MIN_FLOW_TABLE_BITS);
        assert_eq!(flow_table_bits(65_536), 17);
        assert_eq!(flow_table_bits(65_537), 18);
        assert_eq!(flow_table_bits(u32::MAX), MAX_FLOW_TABLE_BITS);
    }

    #[test]
    fn a_half_full_table_takes_every_flow_once_per_epoch() {
        let bits = flow_table_bits(10_000);
        let table = Host::new((0..2usize << bits).map(|_| FlowSlot::EMPTY));
        for round in 1..=3u64 {
            for i in 0..10_000 {
                assert_eq!(add_to_flow_table(&table, bits, 1, &key(i), round), Added::Stored, "flow {i}");
            }
        }
        // SAFETY: single-threaded test; the table is not in use.
        let slots: Vec<FlowSlot> = table.0.iter().map(|cell| unsafe { *cell.get() }).collect();
        let (epoch0, epoch1) = slots.split_at(1 << bits);
        assert!(epoch0.iter().all(|slot| *slot == FlowSlot::EMPTY), "epoch 0 was written");
        let used: Vec<&FlowSlot> = epoch1.iter().filter(|slot| slot.tag != 0).collect();
        assert_eq!(used.len(), 10_000, "each flow in exactly one slot");
        assert!(used.iter().all(|slot| slot.resets == 6 && slot.tag == FlowSlot::tag_of(slot.key.table_hash())));
        let mut keys: Vec<FlowKey> = used.iter().map(|slot| slot.key).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 10_000);
        // Exactly the blocks holding a flow are marked, all in epoch 1's half.
        let mut used_blocks = vec![0u64; table.blocks().len()];
        for (index, _) in slots.iter().enumerate().filter(|(_, slot)| slot.tag != 0) {
            let block = index >> SLOTS_PER_BLOCK_LOG2;
            used_blocks[block / 64] |= 1 << (block % 64);
        }
        assert_eq!(table.blocks(), used_blocks);
        assert!(flow_block_words(bits) as usize * 64 >= (2 << bits) >> SLOTS_PER_BLOCK_LOG2);
    }

    #[test]
    fn a_flow_that_finds_no_free_slot_overflows_and_touches_nothing() {
        let bits = MIN_FLOW_TABLE_BITS;
        let table = Host::new((0..2usize << bits).map(|_| FlowSlot::EMPTY));
        let mut stored = 0;
        let mut refused = 0;
        for i in 0..4 * (1 << bits) {
            match add_to_flow_table(&table, bits, 0, &key(i), 1) {
                Added::Stored => stored += 1,
                Added::Full => refused += 1,
                Added::Raced => panic!("no other writer, no race"),
            }
        }
        // Nearly every slot fills before flows start to overflow.
        assert!(stored <= 1 << bits && stored > (1 << bits) * 95 / 100, "stored {stored}");
        assert_eq!(stored + refused, 4 * (1 << bits));
        // SAFETY: single-threaded test; the table is not in use.
        let slots: Vec<FlowSlot> = table.0.iter().map(|cell| unsafe { *cell.get() }).collect();
        assert!(slots[1 << bits..].iter().all(|slot| *slot == FlowSlot::EMPTY));
        // A slot being filled by another CPU is skipped, not counted into, and the skip is
        // told: the flow may end up in two slots.
        let busy = Host::new((0..2usize << bits).map(|_| FlowSlot { tag: FlowSlot::BUSY, ..FlowSlot::EMPTY }));
        assert_eq!(add_to_flow_table(&busy, bits, 0, &key(1), 1), Added::Full);
        let first = (key(1).table_hash() >> 32) as usize & ((1 << bits) - 1);
        let table = Host::new(
            (0..2usize << bits)
                .map(|i| FlowSlot { tag: if i == first { FlowSlot::BUSY } else { 0 }, ..FlowSlot::EMPTY }),
        );
        assert_eq!(add_to_flow_table(&table, bits, 0, &key(1), 1), Added::Raced);
        assert_eq!(add_to_flow_table(&table, bits, 0, &key(1), 1), Added::Raced, "still passes the busy slot");
        // A tag that matches over a key that does not is a race too (it may be this flow's key
        // not yet visible).
        let stale = Host::new((0..2usize << bits).map(|i| FlowSlot {
            tag: if i == first { FlowSlot::tag_of(key(1).table_hash()) } else { 0 },
            ..FlowSlot::EMPTY
        }));
        assert_eq!(add_to_flow_table(&stale, bits, 0, &key(1), 1), Added::Raced);
        // A block the bitmap cannot mark is reported like a race: the drain then reads the
        // whole half instead of the marked blocks.
        let unmarkable =
            Host((0..2usize << bits).map(|_| UnsafeCell::new(FlowSlot::EMPTY)).collect(), UnsafeCell::new(Vec::new()));
        assert_eq!(add_to_flow_table(&unmarkable, bits, 0, &key(1), 1), Added::Raced);
    }

    /// Slots, fingerprints, and how many times a slot was handed out.
    struct HostConns(Vec<UnsafeCell<ConnSlot>>, Vec<UnsafeCell<[u8; 2]>>, std::cell::Cell<usize>);

    impl HostConns {
        fn new(bits: u32) -> HostConns {
            HostConns(
                (0..1usize << bits).map(|_| UnsafeCell::new(ConnSlot::EMPTY)).collect(),
                (0..1usize << (bits - 1)).map(|_| UnsafeCell::new([0; 2])).collect(),
                std::cell::Cell::new(0),
            )
        }
    }

    impl ConnSlots for HostConns {
        fn slot(&self, index: u32) -> Option<*mut ConnSlot> {
            self.2.set(self.2.get() + 1);
            self.0.get(index as usize).map(UnsafeCell::get)
        }
        fn fingerprints(&self, set: u32) -> Option<*mut [u8; 2]> {
            self.1.get(set as usize / 2).map(UnsafeCell::get)
        }
    }

    fn conn(i: u32) -> ConnKey {
        key(i).connection().0
    }

    #[test]
    fn a_connection_pair_keeps_the_two_latest_and_updates_in_place() {
        let bits = 4;
        let table = HostConns::new(bits);
        let state = |n: u32| ConnState::new(n, 0, 64, 0, 0);
        // Three connections sharing one pair.
        let set = conn(0).conn_place(bits).0;
        let same: Vec<ConnKey> = (0..10_000).map(conn).filter(|c| c.conn_place(bits).0 == set).take(3).collect();
        assert_eq!(same.len(), 3);
        assert_eq!(conn_lookup(&table, bits, &same[0]), None, "an empty table knows nothing");
        conn_store(&table, bits, &same[0], &state(1));
        conn_store(&table, bits, &same[1], &state(2));
        // SAFETY: a live slot of the test's table.
        let read = |c: &ConnKey| conn_lookup(&table, bits, c).map(|p| unsafe { (*p).client_isn });
        assert_eq!((read(&same[0]), read(&same[1])), (Some(1), Some(2)));
        // Updating either keeps both.
        conn_store(&table, bits, &same[0], &state(10));
        conn_store(&table, bits, &same[1], &state(20));
        assert_eq!((read(&same[0]), read(&same[1])), (Some(10), Some(20)));
        // In place, through the pointer.
        // SAFETY: a live slot of the test's table.
        unsafe { (*conn_lookup(&table, bits, &same[0]).unwrap()).flags = 7 };
        // SAFETY: a live slot of the test's table.
        assert_eq!(conn_lookup(&table, bits, &same[0]).map(|p| unsafe { (*p).flags }), Some(7));
        // A third forgets the older of the two (the one stored first into the pair).
        conn_store(&table, bits, &same[2], &state(3));
        assert_eq!((read(&same[0]), read(&same[1]), read(&same[2])), (None, Some(20), Some(3)));
        // Nothing outside the pair was touched.
        // SAFETY: single-threaded test; the table is not in use.
        let used = table.0.iter().filter(|cell| unsafe { (*cell.get()).key.ifindex } != 0).count();
        assert_eq!(used, 2);
    }

    #[test]
    fn connections_the_table_lacks_are_answered_from_the_fingerprints() {
        let bits = 12;
        let table = HostConns::new(bits);
        let state = ConnState::new(1, 0, 64, 0, 0);
        for i in 0..200 {
            conn_store(&table, bits, &conn(i), &state);
        }
        // Stored ones are found (bar the few a third connection pushed out of their pair).
        let found = (0..200).filter(|&i| conn_lookup(&table, bits, &conn(i)).is_some()).count();
        assert!(found > 190, "only {found} of 200 stored connections found");
        // Absent ones read a slot only when a fingerprint happens to match (1 in 128 per way).
        table.2.set(0);
        for i in 1_000..11_000 {
            assert_eq!(conn_lookup(&table, bits, &conn(i)), None);
        }
        assert!(table.2.get() < 100, "{} slot reads for 10 000 absent connections", table.2.get());
        // A fingerprint that matches a slot holding another connection finds nothing.
        let (set, fingerprint) = conn(5).conn_place(bits);
        // SAFETY: live elements of the test's table, single-threaded.
        unsafe { *table.fingerprints(set).unwrap() = [fingerprint, fingerprint] };
        // SAFETY: as above.
        unsafe { (*table.slot(set).unwrap()).key = conn(7) };
        // SAFETY: as above.
        unsafe { (*table.slot(set | 1).unwrap()).key = conn(8) };
        assert_eq!(conn_lookup(&table, bits, &conn(5)), None);
    }

    #[test]
    fn scans_spread_over_the_table() {
        // Consecutive ports must not pile into one run of slots.
        let bits = 12;
        let mut starts: Vec<u32> =
            (0..1000).map(|i| ((key(i).table_hash() >> 32) as u32) & ((1 << bits) - 1)).collect();
        starts.sort();
        starts.dedup();
        assert!(starts.len() > 850, "only {} distinct start slots for 1000 flows", starts.len());
    }
}
