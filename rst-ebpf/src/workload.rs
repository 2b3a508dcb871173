//! Workloads: the cgroup (v2) of the socket behind each reset, taken when it happens, from the
//! two tracepoints the stack fires for resets only — `tcp:tcp_send_reset` (this host's stack
//! sends one; a NULL socket there means the kernel answered for nobody) and
//! `tcp:tcp_receive_reset` (a local socket accepted one). Nothing here runs per packet: the
//! XDP and TC programs are unchanged.
//!
//! The cgroup is read through the socket pointer the tracepoint records, at offsets the loader
//! takes from the kernel's BTF (`sock.sk_cgrp_data.cgroup`, `cgroup.kn`, `kernfs_node.id`;
//! Linux ≥ 5.15 keeps the cgroup pointer there), with `bpf_probe_read_kernel` (CAP_PERFMON).
//! `WORKLOADS_ON` stays 0 unless the loader found them all.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use rst_common::wire::{
    FlowValue, IdleKey, WorkloadKey, DEFAULT_MAX_SERVICES, DIRECTION_RX, DIRECTION_TX, FAMILY_IPV4, FAMILY_IPV6,
    ORIGIN_APPLICATION, ORIGIN_KERNEL, ORIGIN_RECEIVED,
};

use crate::{
    maps::current_epoch,
    socket,
    stack_reset::{AF_INET, AF_INET6},
    tables::add_to_table,
};

/// Resets per socket cgroup, origin and 4-tuple; flipped and drained like `STACK_RESETS_*`.
#[map]
static WORKLOADS_0: HashMap<WorkloadKey, FlowValue> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);
#[map]
static WORKLOADS_1: HashMap<WorkloadKey, FlowValue> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);

#[unsafe(no_mangle)]
static WORKLOADS_ON: u32 = 0;
// Linux 6.10–6.18's layouts (x86_64); the loader sets them from the format files and BTF.
#[unsafe(no_mangle)]
static SEND_RESET_SKADDR_OFFSET: u32 = 16;
#[unsafe(no_mangle)]
static SEND_RESET_STATE_OFFSET: u32 = 24;
#[unsafe(no_mangle)]
static RECEIVE_RESET_SKADDR_OFFSET: u32 = 8;
#[unsafe(no_mangle)]
static RECEIVE_RESET_SPORT_OFFSET: u32 = 16;
#[unsafe(no_mangle)]
static RECEIVE_RESET_DPORT_OFFSET: u32 = 18;
#[unsafe(no_mangle)]
static RECEIVE_RESET_FAMILY_OFFSET: u32 = 20;
#[unsafe(no_mangle)]
static RECEIVE_RESET_SADDR_OFFSET: u32 = 22;
#[unsafe(no_mangle)]
static RECEIVE_RESET_DADDR_OFFSET: u32 = 26;
#[unsafe(no_mangle)]
static RECEIVE_RESET_SADDR_V6_OFFSET: u32 = 30;
#[unsafe(no_mangle)]
static RECEIVE_RESET_DADDR_V6_OFFSET: u32 = 46;
#[unsafe(no_mangle)]
static SOCK_CGROUP_OFFSET: u32 = 672;
#[unsafe(no_mangle)]
static CGROUP_KN_OFFSET: u32 = 256;
#[unsafe(no_mangle)]
static KERNFS_NODE_ID_OFFSET: u32 = 96;

/// `TCP_TIME_WAIT` and `TCP_NEW_SYN_RECV`: sockets without the full `struct sock` (no cgroup).
const TCP_TIME_WAIT: i32 = 6;
const TCP_NEW_SYN_RECV: i32 = 12;

/// A loader-set global, read so the compiler does not fold in the default.
#[inline(always)]
fn global(value: &'static u32) -> u32 {
    // SAFETY: a volatile read of an aligned static the loader may have rewritten before load.
    unsafe { core::ptr::read_volatile(value) }
}

#[inline(always)]
fn on() -> bool {
    global(&WORKLOADS_ON) != 0
}

/// The cgroup v2 id of a full socket, or 0 when any pointer on the way cannot be read.
#[inline(always)]
fn cgroup_of(sk: u64) -> u64 {
    let read = |at: u64| -> u64 {
        // SAFETY: bpf_probe_read_kernel checks the address; a failed read is an error, not a
        // fault.
        unsafe { bpf_probe_read_kernel(at as *const u64) }.unwrap_or(0)
    };
    let cgroup = read(sk + u64::from(global(&SOCK_CGROUP_OFFSET)));
    if cgroup == 0 {
        return 0;
    }
    let kn = read(cgroup + u64::from(global(&CGROUP_KN_OFFSET)));
    if kn == 0 {
        return 0;
    }
    read(kn + u64::from(global(&KERNFS_NODE_ID_OFFSET)))
}

/// `tcp:tcp_send_reset`'s socket (0: none) and its state.
#[inline(always)]
pub(crate) fn send_reset_socket(ctx: &TracePointContext) -> (u64, i32) {
    // SAFETY: bpf_probe_read of the tracepoint record at offsets its format file gives.
    unsafe {
        (
            ctx.read_at::<u64>(global(&SEND_RESET_SKADDR_OFFSET) as usize).unwrap_or(0),
            ctx.read_at::<i32>(global(&SEND_RESET_STATE_OFFSET) as usize).unwrap_or(0),
        )
    }
}

/// Whether `tcp:tcp_send_reset`'s socket is a full `struct sock` (not TIME_WAIT's or a pending
/// request's remains), whose fields may be read.
#[inline(always)]
pub(crate) fn is_full_socket(sk: u64, state: i32) -> bool {
    sk != 0 && state != TCP_TIME_WAIT && state != TCP_NEW_SYN_RECV
}

/// Called by `tcp:tcp_send_reset` with the RST's addresses: who sent it, socket or kernel.
#[inline(always)]
pub fn sent(ctx: &TracePointContext, src: [u32; 4], dst: [u32; 4], ports: (u16, u16), family: u8) {
    if !on() {
        return;
    }
    let (sk, state) = send_reset_socket(ctx);
    let (origin, cgroup) =
        if is_full_socket(sk, state) { (ORIGIN_APPLICATION, cgroup_of(sk)) } else { (ORIGIN_KERNEL, 0) };
    count(&WorkloadKey::new(cgroup, src, dst, ports, family, DIRECTION_TX, origin));
}

/// `tcp:tcp_receive_reset`: a local socket accepted an RST. Always returns 0.
#[tracepoint]
pub fn rstwatch_receive_reset(ctx: TracePointContext) -> u32 {
    if on() || socket::idle_on() {
        let _ = received(&ctx);
    }
    0
}

#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Addr6([u8; 16]);

#[inline(always)]
fn received(ctx: &TracePointContext) -> Result<(), i32> {
    // SAFETY: bpf_probe_read of the tracepoint record at offsets its format file gives.
    let (sk, sport, dport, family) = unsafe {
        (
            ctx.read_at::<u64>(global(&RECEIVE_RESET_SKADDR_OFFSET) as usize)?,
            ctx.read_at::<u16>(global(&RECEIVE_RESET_SPORT_OFFSET) as usize)?,
            ctx.read_at::<u16>(global(&RECEIVE_RESET_DPORT_OFFSET) as usize)?,
            ctx.read_at::<u16>(global(&RECEIVE_RESET_FAMILY_OFFSET) as usize)?,
        )
    };
    // SAFETY: as above.
    let (local6, remote6) = unsafe {
        (
            ctx.read_at::<Addr6>(global(&RECEIVE_RESET_SADDR_V6_OFFSET) as usize)?,
            ctx.read_at::<Addr6>(global(&RECEIVE_RESET_DADDR_V6_OFFSET) as usize)?,
        )
    };
    let words = |raw: &Addr6| {
        let raw = &raw.0;
        let word = |at: usize| u32::from_ne_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
        [word(0), word(4), word(8), word(12)]
    };
    let (local6, remote6) = (words(&local6), words(&remote6));
    let mapped = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
    // A dual-stack socket speaking IPv4 carries ::ffff:a.b.c.d, and so does the tracepoint's
    // v6 copy of an IPv4 socket's addresses: the segment on the wire is IPv4 then.
    let (family, local, remote) = if family == AF_INET6 && !(remote6[0] == 0 && remote6[1] == 0 && remote6[2] == mapped)
    {
        (FAMILY_IPV6, local6, remote6)
    } else if family == AF_INET || family == AF_INET6 {
        // SAFETY: as above.
        let (local, remote) = unsafe {
            (
                ctx.read_at::<u32>(global(&RECEIVE_RESET_SADDR_OFFSET) as usize)?,
                ctx.read_at::<u32>(global(&RECEIVE_RESET_DADDR_OFFSET) as usize)?,
            )
        };
        (FAMILY_IPV4, [local, 0, 0, 0], [remote, 0, 0, 0])
    } else {
        return Ok(());
    };
    // The RST went from the peer to this socket: the flow's sender is the remote end.
    if on() {
        let cgroup = if sk == 0 { 0 } else { cgroup_of(sk) };
        count(&WorkloadKey::new(cgroup, remote, local, (dport, sport), family, DIRECTION_RX, ORIGIN_RECEIVED));
    }
    if socket::idle_on() && sk != 0 {
        socket::idle_gap(sk, &IdleKey::new(remote, local, (dport, sport), family, DIRECTION_RX));
    }
    Ok(())
}

#[inline(always)]
fn count(key: &WorkloadKey) {
    let epoch = current_epoch();
    // A full table loses the attribution only: the reset itself is counted by the programs
    // that saw it on the wire.
    let _ = match epoch {
        0 => add_to_table(&WORKLOADS_0, key, 1),
        _ => add_to_table(&WORKLOADS_1, key, 1),
    };
}
