//! The pauses of every connection, for `--idle-gaps`: programs of their own on tcx ingress
//! and egress (`rstwatch_pauses`, `rstwatch_pauses_egress`), attached after the counting
//! programs. Each TCP segment of a connection the table holds stamps its [`Activity`]; an RST
//! records the pause before it in the idle-gap table, which the reset tracepoints fill for
//! this host's own sockets. A router or a tap has no socket of the connection: this is the
//! only idle gap it can have.
//!
//! Every TCP segment of a known connection pays a walk, a table lookup, a clock read and two
//! stores (BENCHMARKS.md, "Idle gaps on a router"), so they are programs of their own, attached
//! only when asked for: the counting programs never touch [`Activity`] and carry nothing of
//! this. Running after them, a SYN finds the slot the counting program just gave its
//! connection. `bpf_jiffies64` needs Linux 5.5; its clock is the one the sockets' times use,
//! which userspace turns into ms for both.

use aya_ebpf::helpers::bpf_jiffies64;
use rst_common::{
    parse::{in_tunnel, tcp_event},
    table::conn_activity,
    walk_with,
    wire::{FlowKey, IdleKey},
    Activity, Cursor, Walk,
};

use crate::{maps::table_bits, socket::record_pause, tables::Connections, tunnels::KnownTunnels};

/// Times one frame's TCP segment, if it is one.
#[inline(always)]
pub(crate) fn time_frame<C: Cursor>(frame: &C, direction: u8, ifindex: impl FnOnce() -> u32) {
    let Walk::Tcp(segment) = walk_with(frame, &KnownTunnels) else {
        return;
    };
    // A tunnelled connection is known by its tunnel's number, if the counting program gave
    // it one.
    let event = match tcp_event(frame, &segment, direction, ifindex()) {
        Some(event) if segment.tunnel.kind != 0 => in_tunnel(frame, &segment.tunnel, event, &mut KnownTunnels),
        event => event,
    };
    if let Some(event) = event {
        time_segment(&event.key, event.flags);
    }
}

/// A segment of `key`'s connection with TCP `flags` (see [`Activity::segment`]); an RST's pause
/// goes to the idle-gap table under the RST's own tuple.
#[inline(always)]
fn time_segment(key: &FlowKey, flags: u8) {
    let (conn, _) = key.connection();
    let Some(activity) = conn_activity(&Connections, table_bits(), &conn) else {
        return;
    };
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_jiffies64() } as u32;
    // SAFETY: a live slot of the connection array for this program run. Two CPUs stamping one
    // connection at once can mix their two words: a pause off by the time between them, never
    // a count.
    let activity: &mut Activity = unsafe { &mut *activity };
    if let Some(pause) = activity.segment(flags, now) {
        record_pause(&IdleKey::of_reset(key), pause);
    }
}
