//! `tcp:tcp_send_reset`: the resets this host's TCP stack sends, per 4-tuple and reason.
//!
//! A listener's resets (state `TCP_LISTEN`: a refused connection, e.g. an accept-queue
//! overflow under `tcp_abort_on_overflow`) carry the listener's own address and a `0.0.0.0:0`
//! peer in the tracepoint; they are keyed by the refused connection's tuple, read from the
//! segment answered (see [`crate::socket`]), so their reason joins that flow.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use rst_common::wire::{IdleKey, StackResetKey, DIRECTION_TX, FAMILY_IPV4, FAMILY_IPV6};

use crate::{
    capture,
    maps::{current_epoch, RESET_COUNTERS, STACK_RESETS_0, STACK_RESETS_1},
    socket,
    tables::add_to_table,
    workload,
};

/// Where `tcp:tcp_send_reset` keeps its fields; the loader sets them from the tracepoint's
/// format file, the defaults are Linux 6.10–6.18's.
#[unsafe(no_mangle)]
static SEND_RESET_REASON_OFFSET: u32 = 28;
#[unsafe(no_mangle)]
static SEND_RESET_SADDR_OFFSET: u32 = 32;
#[unsafe(no_mangle)]
static SEND_RESET_DADDR_OFFSET: u32 = 60;

/// `tcp:tcp_send_reset`: this host's stack decided to send an RST, and why. Always returns 0.
#[tracepoint]
pub fn rstwatch_send_reset(ctx: TracePointContext) -> u32 {
    let _ = record_stack_reset(&ctx);
    0
}

pub(crate) const AF_INET: u16 = 2;
pub(crate) const AF_INET6: u16 = 10;

/// The tracepoint's `saddr` / `daddr`: a `struct sockaddr_in` or `sockaddr_in6`. Aligned so
/// its address words load whole (stack accesses must be aligned).
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct SockAddr([u8; 28]);

#[inline(always)]
fn record_stack_reset(ctx: &TracePointContext) -> Result<(), i32> {
    // SAFETY: plain reads of statics the loader may have rewritten before load; volatile so the
    // compiler does not fold in the defaults.
    let (reason_offset, saddr_offset, daddr_offset) = unsafe {
        (
            core::ptr::read_volatile(&raw const SEND_RESET_REASON_OFFSET),
            core::ptr::read_volatile(&raw const SEND_RESET_SADDR_OFFSET),
            core::ptr::read_volatile(&raw const SEND_RESET_DADDR_OFFSET),
        )
    };
    // SAFETY: bpf_probe_read of the tracepoint record at offsets its format file gives.
    let (reason, src, dst) = unsafe {
        (
            ctx.read_at::<u32>(reason_offset as usize)?,
            ctx.read_at::<SockAddr>(saddr_offset as usize)?,
            ctx.read_at::<SockAddr>(daddr_offset as usize)?,
        )
    };
    let Some((mut family, mut sport, mut src)) = sockaddr(&src) else {
        return Ok(());
    };
    let Some((_, mut dport, mut dst)) = sockaddr(&dst) else {
        return Ok(());
    };
    if socket::listen_on() || socket::idle_on() {
        let (sk, state) = workload::send_reset_socket(ctx);
        if state == socket::TCP_LISTEN {
            // A listener's addresses are its own (peer 0.0.0.0:0): the connection's are in the
            // segment it answers.
            if socket::listen_on() && sk != 0 {
                if let Some(tuple) = socket::answered_tuple(ctx) {
                    (family, src, dst, (sport, dport)) = tuple;
                    socket::listen_reset(sk, src, sport, family);
                }
            }
        } else if socket::idle_on() && workload::is_full_socket(sk, state) {
            socket::idle_gap(sk, &IdleKey::new(src, dst, (sport, dport), family, DIRECTION_TX));
        }
    }
    workload::sent(ctx, src, dst, (sport, dport), family);
    capture::stack_reset(src, dst, (sport, dport), family, reason);
    let key = StackResetKey::new(src, dst, sport, dport, family, reason);
    let epoch = current_epoch();
    let recorded = match epoch {
        0 => add_to_table(&STACK_RESETS_0, &key, 1),
        _ => add_to_table(&STACK_RESETS_1, &key, 1),
    };
    if !recorded {
        if let Some(counters) = RESET_COUNTERS.get_ptr_mut(epoch) {
            // SAFETY: a live per-CPU slot; atomic because a tracepoint program may run in
            // process context, where another program on this CPU could interleave.
            unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*counters).stack_overflow, 1) };
        }
    }
    Ok(())
}

/// Family, port (host order) and address (as in [`FlowKey`], native-endian words) of a sockaddr.
#[inline(always)]
fn sockaddr(raw: &SockAddr) -> Option<(u8, u16, [u32; 4])> {
    let raw = &raw.0;
    let family = u16::from_ne_bytes([raw[0], raw[1]]);
    let port = u16::from_be_bytes([raw[2], raw[3]]);
    let word = |at: usize| u32::from_ne_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
    match family {
        AF_INET => Some((FAMILY_IPV4, port, [word(4), 0, 0, 0])),
        // A dual-stack socket (`[::]` listeners) speaking IPv4 reports ::ffff:a.b.c.d; the
        // segment on the wire, and so its flow, is IPv4.
        AF_INET6 if word(8) == 0 && word(12) == 0 && word(16) == u32::from_ne_bytes([0, 0, 0xff, 0xff]) => {
            Some((FAMILY_IPV4, port, [word(20), 0, 0, 0]))
        }
        // sin6_port, sin6_flowinfo, then the address.
        AF_INET6 => Some((FAMILY_IPV6, port, [word(8), word(12), word(16), word(20)])),
        _ => None,
    }
}
