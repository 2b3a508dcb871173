//! Service tracking: open connections per service across intervals (`SERVICE_OPEN`) and each
//! interval's attempts, SYN+ACKs, extremes and turn-aways (`SERVICES_0` / `SERVICES_1`).

use core::intrinsics::{atomic_cxchg, atomic_xadd, AtomicOrdering};

use aya_ebpf::bindings::BPF_NOEXIST;
use rst_common::{
    service_counts,
    wire::{
        accept_bits, accept_from_bits, merge_accept, merge_turnaway, turnaway_bits, turnaway_from_bits, OpenValue,
        ServiceKey, ServiceValue,
    },
    OpenConnections, Opened, ServiceChange, TurnAway,
};

use crate::{
    count::add_local,
    maps::{current_epoch, RESET_COUNTERS, SERVICES_0, SERVICES_1, SERVICE_OPEN},
    service_down,
    tables::EEXIST,
};

/// The kernel's [`OpenConnections`]: the `SERVICE_OPEN` map, every writer atomic.
struct ServiceOpen;

impl OpenConnections for ServiceOpen {
    #[inline(always)]
    fn open(&mut self, service: &ServiceKey) -> Opened {
        let value = match SERVICE_OPEN.get_ptr_mut(service) {
            Some(value) => value,
            // Inserted empty and counted below like any other: a non-zero constant would have
            // LLVM keep it in a `.rodata.cst16` section, a map the object contract does not allow.
            None => match SERVICE_OPEN.insert(service, OpenValue::default(), BPF_NOEXIST as u64) {
                // Another CPU may have created it a moment ago (-EEXIST): found either way.
                Ok(()) | Err(_) => match SERVICE_OPEN.get_ptr_mut(service) {
                    Some(value) => value,
                    None => return Opened::default(),
                },
            },
        };
        // SAFETY: a live element for this program run; every writer uses atomics.
        let open = unsafe { &raw mut (*value).open };
        // BPF's fetching add needs `-mcpu=v3`, which the object is not built for: a
        // compare-and-swap tells the count before; when it keeps losing, a plain atomic add still
        // counts the connection, only its accept goes without an open count.
        // SAFETY: as above.
        let before = match unsafe { update_word(open, |open| open + 1) } {
            Some(before) => Some(before.min(u64::from(u32::MAX)) as u32),
            None => {
                // SAFETY: as above.
                unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(open, 1) };
                None
            }
        };
        // SAFETY: as above.
        let ended_down = unsafe { service_down::end(&raw mut (*value).down) };
        Opened { before, ended_down }
    }

    #[inline(always)]
    fn close(&mut self, service: &ServiceKey) {
        if let Some(value) = SERVICE_OPEN.get_ptr_mut(service) {
            // SAFETY: as in `open`. Never below 0; a dropped update (see `update_word`) leaves
            // one connection too many counted.
            unsafe { update_word(&raw mut (*value).open, |open| open.saturating_sub(1)) };
        }
    }

    #[inline(always)]
    fn turn_away(&mut self, service: &ServiceKey, closes: bool) -> TurnAway {
        let Some(value) = SERVICE_OPEN.get_ptr_mut(service) else {
            return TurnAway::default();
        };
        // SAFETY: as in `open`.
        let open = unsafe { &raw mut (*value).open };
        if closes {
            // SAFETY: as in `close`.
            unsafe { update_word(open, |open| open.saturating_sub(1)) };
        }
        // SAFETY: as in `open`; an aligned u64 is never torn.
        let open = unsafe { core::ptr::read_volatile(open) }.min(u64::from(u32::MAX)) as u32;
        if open != 0 {
            return TurnAway { open, down: 0 };
        }
        // SAFETY: as in `open`.
        TurnAway { open, down: unsafe { service_down::turned_away(&raw mut (*value).down) } }
    }

    #[inline(always)]
    fn open_now(&mut self, service: &ServiceKey) -> u32 {
        match SERVICE_OPEN.get_ptr(service) {
            Some(value) => {
                // SAFETY: as in `open`; an aligned u64 is never torn.
                unsafe { core::ptr::read_volatile(&raw const (*value).open) }.min(u64::from(u32::MAX)) as u32
            }
            None => 0,
        }
    }
}

/// Tries a bounded number of times to replace the word at `word` with `next` of it, with
/// BPF_CMPXCHG, and returns the word it replaced (or found already as wanted). Every CPU writing
/// the word comes through here (or adds atomically), so a try fails only when another CPU
/// changed the word in between; after four such failures the update is dropped (`None`; see
/// `count_service` for what that costs).
///
/// # Safety
/// `word` points into a live map element every writer of which uses atomics.
#[inline(always)]
pub(crate) unsafe fn update_word(word: *mut u64, next: impl Fn(u64) -> u64) -> Option<u64> {
    // SAFETY: the caller's pointer; an aligned u64 is never torn.
    let mut current = unsafe { core::ptr::read_volatile(word) };
    for _ in 0..CAS_TRIES {
        let wanted = next(current);
        if wanted == current {
            return Some(current);
        }
        // SAFETY: as above.
        let (seen, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(word, current, wanted)
        };
        if swapped {
            return Some(current);
        }
        current = seen;
    }
    None
}

const CAS_TRIES: u32 = 4;

/// Applies a tracked change to `SERVICE_OPEN` and counts it in the interval's service table.
#[inline(always)]
pub(crate) fn record_service<const ATOMIC: bool>(change: &ServiceChange) {
    if let Some(counts) = service_counts(&mut ServiceOpen, change) {
        count_service::<ATOMIC>(&change.service, counts);
    }
}

/// Adds `counts` to the service's entry of the interval: the counts with atomic adds, the
/// open-connection extremes and the TTL with [`update_word`] on their two 64-bit words (as
/// [`ServiceValue::merge`] folds them on the host). A dropped update (four CPUs changing the same
/// service's word within one try each) can only leave the interval's range too narrow, never
/// wider than what its events recorded: a max lower or a min higher than that one event's
/// count, or an older TTL; `attempts` and `synacks` are always exact.
#[inline(always)]
fn count_service<const ATOMIC: bool>(key: &ServiceKey, counts: ServiceValue) {
    let epoch = current_epoch();
    let table = match epoch {
        0 => &SERVICES_0,
        _ => &SERVICES_1,
    };
    // Looked up first: the entry usually exists (the service's SYN made it this interval), and
    // then one hash walk does. A new entry is inserted empty and counted through the atomics
    // like any other: inserting `counts` itself would have LLVM keep its 32 constant bytes in a
    // `.rodata.cst32` section, a map the object contract does not allow.
    let value = match table.get_ptr_mut(key) {
        Some(value) => Some(value),
        None => match table.insert(key, ServiceValue::default(), BPF_NOEXIST as u64) {
            Ok(()) => table.get_ptr_mut(key),
            // Another CPU made it a moment ago.
            Err(err) if err == -EEXIST => table.get_ptr_mut(key),
            Err(_) => None,
        },
    };
    let Some(value) = value else {
        if let Some(counters) = RESET_COUNTERS.get_ptr_mut(epoch) {
            // SAFETY: this CPU's live slot.
            unsafe { add_local::<ATOMIC>(&raw mut (*counters).service_overflow, 1) };
        }
        return;
    };
    // Each add only where there is something to add: an atomic add of 0 still costs a locked
    // instruction, and a turn-away adds to neither count.
    // SAFETY: a live element for this run; every writer adds atomically.
    unsafe {
        if counts.attempts != 0 {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*value).attempts, counts.attempts);
        }
        if counts.synacks != 0 {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*value).synacks, counts.synacks);
        }
    }
    let (accept_open, ttl) = counts.accept_word();
    if accept_open != 0 || ttl != 0 {
        // SAFETY: as above; the word is 8-aligned (asserted in rst-common).
        unsafe {
            update_word((&raw mut (*value).accept_open_max).cast::<u64>(), |bits| {
                accept_bits(merge_accept(accept_from_bits(bits), accept_open, ttl))
            })
        };
    }
    let (min, max) = counts.turnaway_word();
    if max != 0 {
        // SAFETY: as above.
        unsafe {
            update_word((&raw mut (*value).turnaway_open_min).cast::<u64>(), |bits| {
                turnaway_bits(merge_turnaway(turnaway_from_bits(bits), min, max))
            })
        };
    }
    // SAFETY: as above.
    unsafe { service_down::count(value, &counts) };
}
