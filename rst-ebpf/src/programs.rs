//! The entry points: the matrix of counting and payload programs (hook × counting × variant),
//! generated from [`rst_common::program_matrix!`], the table their name constants come from
//! too, and the two baselines.

use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use rst_common::{
    wire::{DIRECTION_RX, DIRECTION_TX},
    Cursor, Header,
};

use crate::{count::count_frame, pauses};

/// One entry point per row of [`rst_common::program_matrix!`]: its words become the parameters
/// of [`count_xdp`] / [`count_skb`] (a word no arm knows fails the build).
macro_rules! entry_points {
    ($(($constant:ident, $name:ident, $hook:ident, $counting:ident, $variant:ident)),* $(,)?) => {
        $(entry_point!($name, $hook, $counting, $variant);)*
    };
}

macro_rules! entry_point {
    ($name:ident, $hook:ident, per_cpu, $variant:ident) => {
        entry_point!(@variant $name, $hook, PER_CPU, $variant);
    };
    ($name:ident, $hook:ident, atomic, $variant:ident) => {
        entry_point!(@variant $name, $hook, ATOMIC_ADDS, $variant);
    };
    (@variant $name:ident, $hook:ident, $atomic:ident, count) => {
        entry_point!(@hook $name, $hook, $atomic, NO_CAPTURE, COUNTING);
    };
    (@variant $name:ident, $hook:ident, $atomic:ident, capture) => {
        entry_point!(@hook $name, $hook, $atomic, CAPTURE, COUNTING);
    };
    (@variant $name:ident, $hook:ident, $atomic:ident, payload) => {
        entry_point!(@hook $name, $hook, $atomic, NO_CAPTURE, PAYLOAD);
    };
    (@hook $name:ident, xdp, $atomic:ident, $capture:ident, $payload:ident) => {
        #[xdp(frags)]
        // Inlined into the macro's entry point: one function, as before the tunnel walk made
        // the body too large for LLVM to inline by itself (a BPF-to-BPF call costs a frame).
        #[inline(always)]
        pub fn $name(ctx: XdpContext) -> u32 {
            count_xdp::<$atomic, $capture, $payload>(&ctx)
        }
    };
    // The TC ingress hook (tcx, kernel ≥ 6.6), for interfaces whose XDP hook another program
    // holds: returns "next", the verdict stays with the other programs and the stack.
    (@hook $name:ident, tc, $atomic:ident, $capture:ident, $payload:ident) => {
        #[classifier]
        #[inline(always)]
        pub fn $name(ctx: TcContext) -> i32 {
            count_skb::<$atomic, $capture, $payload>(&ctx, DIRECTION_RX)
        }
    };
    // What the host sends (tcx egress): its own resets and its side of every handshake.
    (@hook $name:ident, tc_egress, $atomic:ident, $capture:ident, $payload:ident) => {
        #[classifier]
        #[inline(always)]
        pub fn $name(ctx: TcContext) -> i32 {
            count_skb::<$atomic, $capture, $payload>(&ctx, DIRECTION_TX)
        }
    };
}

rst_common::program_matrix!(entry_points);

/// Whether a program is a counting program or the payload program one tail-calls (the `PAYLOAD`
/// parameter below).
const COUNTING: bool = false;
const PAYLOAD: bool = true;

/// Whether a program hands RSTs to the capture ring (the `CAPTURE` parameter below).
const NO_CAPTURE: bool = false;
const CAPTURE: bool = true;

/// How a program counts (the `ATOMIC` parameter below): plain adds to per-CPU state, or
/// atomic adds only.
const PER_CPU: bool = false;
const ATOMIC_ADDS: bool = true;

/// The directly readable bytes of a packet (`data` .. `data_end`) as a [`Cursor`]: the first
/// buffer of a multi-buffer XDP frame, the linear part of an skb. The headers rstwatch reads
/// are there.
struct Packet {
    start: usize,
    end: usize,
}

impl Cursor for Packet {
    #[inline(always)]
    fn header<T: Header>(&self, offset: usize) -> Option<&T> {
        let Packet { start, end } = *self;
        if start + offset + core::mem::size_of::<T>() > end {
            return None;
        }
        // SAFETY: the verifier-visible check above keeps the whole T inside the packet, and
        // `Header` types have alignment 1 and accept every bit pattern.
        Some(unsafe { &*((start + offset) as *const T) })
    }
}

#[inline(always)]
fn count_xdp<const ATOMIC: bool, const CAPTURE: bool, const PAYLOAD: bool>(ctx: &XdpContext) -> u32 {
    count_frame::<ATOMIC, CAPTURE, PAYLOAD, _, _>(
        &Packet { start: ctx.data(), end: ctx.data_end() },
        ctx,
        DIRECTION_RX,
        || ctx.ingress_ifindex() as u32,
    );
    xdp_action::XDP_PASS
}

#[inline(always)]
fn count_skb<const ATOMIC: bool, const CAPTURE: bool, const PAYLOAD: bool>(ctx: &TcContext, direction: u8) -> i32 {
    count_frame::<ATOMIC, CAPTURE, PAYLOAD, _, _>(
        &Packet { start: ctx.data(), end: ctx.data_end() },
        ctx,
        direction,
        || {
            // SAFETY: `skb` is the context pointer the kernel passed to this program run.
            unsafe { (*ctx.skb.skb).ifindex }
        },
    );
    TCX_NEXT
}

/// `TCX_NEXT` (include/uapi/linux/bpf.h), the same value as `TC_ACT_UNSPEC` for clsact.
const TCX_NEXT: i32 = -1;

/// `--idle-gaps`, received: times every TCP segment's connection (see `pauses`). Attached on
/// tcx ingress after the counting program (after XDP, which runs first anyway).
#[classifier]
pub fn rstwatch_pauses(ctx: TcContext) -> i32 {
    time_skb(&ctx, DIRECTION_RX)
}

/// `--idle-gaps`, sent (tcx egress, after the counting program).
#[classifier]
pub fn rstwatch_pauses_egress(ctx: TcContext) -> i32 {
    time_skb(&ctx, DIRECTION_TX)
}

#[inline(always)]
fn time_skb(ctx: &TcContext, direction: u8) -> i32 {
    pauses::time_frame(&Packet { start: ctx.data(), end: ctx.data_end() }, direction, || {
        // SAFETY: `skb` is the context pointer the kernel passed to this program run.
        unsafe { (*ctx.skb.skb).ifindex }
    });
    TCX_NEXT
}

/// The baseline for cost measurements: the cheapest program the same hook can run.
#[xdp(frags)]
pub fn rstwatch_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The same baseline for the TC programs.
#[classifier]
pub fn rstwatch_tc_next(_ctx: TcContext) -> i32 {
    TCX_NEXT
}
