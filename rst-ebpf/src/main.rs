//! rstwatch's kernel side: an XDP program (and the same count on the TC ingress hook) that
//! counts TCP resets per directional 5-tuple, a TC egress program for what the host sends, and
//! a tracepoint program that records the reason the host's TCP stack gives for its own resets.
//!
//! Minimum kernel: 5.18 (XDP multi-buffer, `xdp.frags`); bpf_link attachment needs 5.9, tcx
//! links 6.6, the `reason` of `tcp:tcp_send_reset` 6.10 (without it the rest works).
//! The programs never change a frame: XDP always returns `XDP_PASS`, TC always "next".
#![no_std]
#![no_main]
// Rust's BPF target declares no compare-and-swap, so `AtomicU64` has neither `fetch_add` nor
// `compare_exchange` there; the intrinsics lower to BPF's atomic add and, for 64-bit values,
// BPF_CMPXCHG (Linux ≥ 5.12; LLVM needs no `alu32` / v3 for the 64-bit form).
#![feature(core_intrinsics)]
#![allow(internal_features)]

// Declared in this order so the globals keep their order in `.rodata` (and with it the offsets
// the programs load them at).
mod workload;

mod capture;

mod service_down;

mod payload;

mod maps;

mod stack_reset;

mod programs;

mod count;

mod services;

mod tables;

mod pauses;

mod tunnels;

// Its globals land in `.rodata` by name (the linker sorts them there): CAPTURE_* to
// KERNFS_NODE_ID_OFFSET keep their offsets, the tracepoint-only RECEIVE_RESET_* to WORKLOADS_ON
// move, and every program loads its globals through symbol relocations, so no instruction of
// another program changes (`llvm-objdump -d -r` of xdp.frags, classifier and tracepoint is
// byte-identical with and without this module's kfree_skb program).
mod firewall;
// Last: see its module doc.
mod socket;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
