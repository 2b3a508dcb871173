//! What the reset tracepoints read from the socket behind a reset, beyond its tuple (see
//! [`rst_common::wire::ListenKey`], [`rst_common::wire::IdleKey`]):
//! - a listener's resets (`tcp:tcp_send_reset` with state `TCP_LISTEN`: a client's segment the
//!   listener refused, e.g. an accept-queue overflow under `tcp_abort_on_overflow`): the
//!   tracepoint gives the listener's own address (peer `0.0.0.0:0`), so the connection's tuple
//!   is read from the segment answered (`skb->head` + network / transport header), together
//!   with the accept queue (`sk_ack_backlog`, `sk_max_ack_backlog`);
//! - the idle gap before a full socket's reset, sent or received: `jiffies` against
//!   `icsk_ack.lrcvtime` and `lsndtime` (the last data received and sent).
//!
//! Only the reset tracepoints call this, never a per-packet program, with one exception: the
//! programs that time every connection (`--idle-gaps`, see `pauses`) record the pauses of
//! connections without a socket here in the same idle-gap table ([`record_pause`]). Reads go through
//! `bpf_probe_read_kernel` (CAP_PERFMON) at offsets the loader takes from the kernel's BTF;
//! `bpf_jiffies64` needs Linux 5.5. Each part stays off (a constant the verifier prunes)
//! unless the loader found all its offsets.
//!
//! Declared last in `main.rs`: its globals then follow every other in `.rodata`, so the
//! counting programs load theirs at the offsets they always had.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_probe_read_kernel},
    macros::map,
    maps::HashMap,
    programs::TracePointContext,
};
use rst_common::wire::{IdleKey, IdleValue, ListenKey, ListenValue, DEFAULT_MAX_SERVICES, FAMILY_IPV4, FAMILY_IPV6};

use crate::{maps::current_epoch, tables::insert_or_existing};

#[map]
static LISTEN_RESETS_0: HashMap<ListenKey, ListenValue> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);
#[map]
static LISTEN_RESETS_1: HashMap<ListenKey, ListenValue> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);
#[map]
static IDLE_GAPS_0: HashMap<IdleKey, IdleValue> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);
#[map]
static IDLE_GAPS_1: HashMap<IdleKey, IdleValue> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);

#[unsafe(no_mangle)]
static LISTEN_RESETS_ON: u32 = 0;
#[unsafe(no_mangle)]
static IDLE_GAPS_ON: u32 = 0;
// Linux 6.18's layouts (x86_64); the loader sets them from the format file and BTF.
#[unsafe(no_mangle)]
static SEND_RESET_SKBADDR_OFFSET: u32 = 8;
#[unsafe(no_mangle)]
pub(crate) static SKB_HEAD_OFFSET: u32 = 192;
#[unsafe(no_mangle)]
pub(crate) static SKB_NETWORK_HEADER_OFFSET: u32 = 180;
#[unsafe(no_mangle)]
static SKB_TRANSPORT_HEADER_OFFSET: u32 = 178;
#[unsafe(no_mangle)]
static SOCK_ACK_BACKLOG_OFFSET: u32 = 600;
#[unsafe(no_mangle)]
static SOCK_MAX_ACK_BACKLOG_OFFSET: u32 = 604;
#[unsafe(no_mangle)]
static ICSK_LRCVTIME_OFFSET: u32 = 1264;
#[unsafe(no_mangle)]
static TCP_LSNDTIME_OFFSET: u32 = 1584;

/// `TCP_LISTEN`.
pub(crate) const TCP_LISTEN: i32 = 10;

/// A loader-set global, read so the compiler does not fold in the default.
#[inline(always)]
fn global(value: &'static u32) -> u32 {
    // SAFETY: a volatile read of an aligned static the loader may have rewritten before load.
    unsafe { core::ptr::read_volatile(value) }
}

#[inline(always)]
pub(crate) fn listen_on() -> bool {
    global(&LISTEN_RESETS_ON) != 0
}

#[inline(always)]
pub(crate) fn idle_on() -> bool {
    global(&IDLE_GAPS_ON) != 0
}

/// A kernel value at `at`, or `None` when it cannot be read.
#[inline(always)]
fn read<T>(at: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address; a failed read is an error, not a fault.
    unsafe { bpf_probe_read_kernel(at as *const T) }.ok()
}

/// The two addresses of an IPv6 header, aligned so the words load whole.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Addrs6([u32; 8]);

/// Family, source and destination addresses, (source port, destination port).
pub(crate) type Tuple = (u8, [u32; 4], [u32; 4], (u16, u16));

/// The RST's tuple for a reset answering the segment `tcp:tcp_send_reset` records (`skbaddr`):
/// (family, RST source = the segment's destination, RST destination, (sport, dport)).
#[inline(always)]
pub(crate) fn answered_tuple(ctx: &TracePointContext) -> Option<Tuple> {
    // SAFETY: bpf_probe_read of the tracepoint record at the offset its format file gives.
    let skb = unsafe { ctx.read_at::<u64>(global(&SEND_RESET_SKBADDR_OFFSET) as usize) }.ok()?;
    if skb == 0 {
        return None;
    }
    let head = read::<u64>(skb + u64::from(global(&SKB_HEAD_OFFSET)))?;
    let network = read::<u16>(skb + u64::from(global(&SKB_NETWORK_HEADER_OFFSET)))?;
    let transport = read::<u16>(skb + u64::from(global(&SKB_TRANSPORT_HEADER_OFFSET)))?;
    let ip = head + u64::from(network);
    // Source and destination ports, in network order, in one read.
    let ports = read::<[u8; 4]>(head + u64::from(transport))?;
    let (peer_port, local_port) = (u16::from_be_bytes([ports[0], ports[1]]), u16::from_be_bytes([ports[2], ports[3]]));
    let version = read::<u8>(ip)? >> 4;
    let (family, peer, local) = if version == 4 {
        // saddr, daddr at bytes 12 and 16.
        let [peer, local] = read::<[u32; 2]>(ip + 12)?;
        (FAMILY_IPV4, [peer, 0, 0, 0], [local, 0, 0, 0])
    } else if version == 6 {
        // saddr, daddr at bytes 8 and 24.
        let Addrs6(a) = read::<Addrs6>(ip + 8)?;
        (FAMILY_IPV6, [a[0], a[1], a[2], a[3]], [a[4], a[5], a[6], a[7]])
    } else {
        return None;
    };
    Some((family, local, peer, (local_port, peer_port)))
}

/// Counts a reset a listener (`sk`) sent from `addr`:`port` while its accept queue was full
/// (the kernel's `sk_acceptq_is_full`: more queued than the limit). A listener also answers a
/// segment of a connection it does not hold (a late ACK, a standby's VIP): not an overflow.
#[inline(always)]
pub(crate) fn listen_reset(sk: u64, addr: [u32; 4], port: u16, family: u8) {
    let backlog = read::<u32>(sk + u64::from(global(&SOCK_ACK_BACKLOG_OFFSET))).unwrap_or(0);
    let max_backlog = read::<u32>(sk + u64::from(global(&SOCK_MAX_ACK_BACKLOG_OFFSET))).unwrap_or(0);
    if backlog <= max_backlog {
        return;
    }
    let key = ListenKey::new(addr, port, family);
    let table = match current_epoch() {
        0 => &LISTEN_RESETS_0,
        _ => &LISTEN_RESETS_1,
    };
    let fresh = ListenValue { resets: 1, backlog, max_backlog };
    // Full: the reset still counts in the stack-reset table.
    if let Some(value) = insert_or_existing(table, &key, &fresh) {
        // SAFETY: a live map element for this program run (freed only after an RCU grace
        // period); the count is added atomically, the backlog fields are single aligned u32
        // stores whose races only lose a sample (documented on ListenValue).
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*value).resets, 1);
            if backlog > core::ptr::read_volatile(&raw const (*value).backlog) {
                core::ptr::write_volatile(&raw mut (*value).backlog, backlog);
            }
            core::ptr::write_volatile(&raw mut (*value).max_backlog, max_backlog);
        }
    }
}

/// Records how long full socket `sk` had been quiet before the reset `key` names.
#[inline(always)]
pub(crate) fn idle_gap(sk: u64, key: &IdleKey) {
    let Some(received) = read::<u32>(sk + u64::from(global(&ICSK_LRCVTIME_OFFSET))) else {
        return;
    };
    let Some(sent) = read::<u32>(sk + u64::from(global(&TCP_LSNDTIME_OFFSET))) else {
        return;
    };
    // The socket's stamps are `tcp_jiffies32`, the low 32 bits: wrapping differences are right
    // for gaps under 2^31 jiffies (99 days at HZ=250).
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_jiffies64() } as u32;
    let gap = IdleValue { resets: 1, since_received: now.wrapping_sub(received), since_sent: now.wrapping_sub(sent) };
    let table = match current_epoch() {
        0 => &IDLE_GAPS_0,
        _ => &IDLE_GAPS_1,
    };
    // Full: the reset still counts elsewhere; only its gap is lost.
    if let Some(value) = insert_or_existing(table, key, &gap) {
        // SAFETY: a live map element for this program run; the count is added atomically, the
        // gaps are aligned u32 stores (the last reset's win, as IdleValue documents).
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*value).resets, 1);
            core::ptr::write_volatile(&raw mut (*value).since_received, gap.since_received);
            core::ptr::write_volatile(&raw mut (*value).since_sent, gap.since_sent);
        }
    }
}

/// Records the pause (jiffies) before an RST of a connection the per-packet programs timed
/// (`pauses`): the first of the interval's RSTs of `key` keeps its pause, as replay does; a
/// socket's own gap ([`idle_gap`]) replaces it, whichever comes first.
#[inline(always)]
pub(crate) fn record_pause(key: &IdleKey, pause: u32) {
    let table = match current_epoch() {
        0 => &IDLE_GAPS_0,
        _ => &IDLE_GAPS_1,
    };
    let fresh = IdleValue { resets: 1, since_received: pause, since_sent: pause };
    // Full: the reset still counts elsewhere; only its gap is lost.
    if let Some(value) = insert_or_existing(table, key, &fresh) {
        // SAFETY: a live map element for this program run; the count is added atomically.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*value).resets, 1) };
    }
}
