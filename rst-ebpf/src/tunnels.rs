//! Tunnels for the counting programs: which UDP ports are VXLAN and Geneve beyond the
//! well-known ones (`--vxlan-port`, `--geneve-port`), and the number each tunnel's flows count
//! under (see [`rst_common::wire::TUNNEL_INTERFACE`]).
//!
//! Only a segment inside a tunnel reaches this, and of those only SYN, FIN and RST ask for a
//! number: the port globals are read for UDP frames alone, the table never for plain TCP.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use rst_common::{
    parse::Tunnels,
    wire::{TunnelKey, MAX_TUNNELS, TUNNEL_UNRECORDED},
};

use crate::services::update_word;

/// Every tunnel seen, numbered in the order first seen; userspace reads it back to name the
/// tunnel of a flow. Never flipped: a number stays its tunnel's for the run. Not preallocated:
/// room for 65 536 tunnels would otherwise cost ~6 MiB of kernel memory on every host, most of
/// which see none; an entry is allocated once per tunnel, when first seen.
#[map]
static TUNNELS: HashMap<TunnelKey, u32> = HashMap::with_max_entries(MAX_TUNNELS, BPF_F_NO_PREALLOC);
/// The next number to hand out (slot 0). A u64 taken by compare-and-swap: BPF's atomic add
/// returns the old value only from cpu v3 on, and the object is built for v1.
#[map]
static TUNNEL_COUNT: Array<u64> = Array::with_max_entries(1, 0);

/// Where [`Tunnels::conceal`] puts a tunnel the walk found, per CPU.
#[map]
static TUNNEL_FOUND: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Extra VXLAN and Geneve ports, two to a word (low half first), 0 for none; the loader sets
/// them.
#[unsafe(no_mangle)]
static VXLAN_PORTS_0: u32 = 0;
#[unsafe(no_mangle)]
static VXLAN_PORTS_1: u32 = 0;
#[unsafe(no_mangle)]
static GENEVE_PORTS_0: u32 = 0;
#[unsafe(no_mangle)]
static GENEVE_PORTS_1: u32 = 0;

#[inline(always)]
fn global(value: &'static u32) -> u32 {
    // SAFETY: a plain read of an aligned static the loader may have rewritten before load;
    // volatile so the compiler does not fold in the default.
    unsafe { core::ptr::read_volatile(value) }
}

/// Whether `port` (not 0) is one of the two ports packed in `word`.
#[inline(always)]
fn packed(word: u32, port: u16) -> bool {
    port != 0 && (word & 0xffff == u32::from(port) || word >> 16 == u32::from(port))
}

/// The kernel's [`Tunnels`]: numbers handed out once per tunnel, with a table lookup.
pub(crate) struct KernelTunnels;

impl Tunnels for KernelTunnels {
    #[inline(always)]
    fn vxlan_port(&self, port: u16) -> bool {
        port == rst_common::parse::VXLAN_PORTS[0]
            || port == rst_common::parse::VXLAN_PORTS[1]
            || packed(global(&VXLAN_PORTS_0), port)
            || packed(global(&VXLAN_PORTS_1), port)
    }

    #[inline(always)]
    fn geneve_port(&self, port: u16) -> bool {
        port == rst_common::parse::GENEVE_PORT
            || packed(global(&GENEVE_PORTS_0), port)
            || packed(global(&GENEVE_PORTS_1), port)
    }

    #[inline(always)]
    fn conceal(&self, words: [u64; 2]) -> Option<[u64; 2]> {
        conceal(words)
    }

    #[inline(always)]
    fn number(&mut self, tunnel: &TunnelKey) -> u32 {
        // SAFETY: the value is a u32 the map holds for this program run.
        if let Some(number) = unsafe { TUNNELS.get(tunnel) } {
            return *number;
        }
        let Some(count) = TUNNEL_COUNT.get_ptr_mut(0) else {
            return TUNNEL_UNRECORDED;
        };
        // SAFETY: a live array element, written only through `update_word`.
        let taken = unsafe { update_word(count, |next| if next < u64::from(MAX_TUNNELS) { next + 1 } else { next }) };
        if let Some(number) = taken.filter(|&number| number < u64::from(MAX_TUNNELS)) {
            if TUNNELS.insert(tunnel, number as u32, BPF_NOEXIST as u64).is_ok() {
                return number as u32;
            }
        }
        // Another CPU numbered it first (its number wins; this one goes unused), numbers or
        // the table ran out, or other CPUs kept taking numbers meanwhile.
        // SAFETY: as above.
        unsafe { TUNNELS.get(tunnel) }.copied().unwrap_or(TUNNEL_UNRECORDED)
    }
}

/// [`KernelTunnels`] that never hands out a number: for the `--idle-gaps` programs, which time
/// only connections the counting programs already know.
pub(crate) struct KnownTunnels;

impl Tunnels for KnownTunnels {
    #[inline(always)]
    fn vxlan_port(&self, port: u16) -> bool {
        KernelTunnels.vxlan_port(port)
    }

    #[inline(always)]
    fn geneve_port(&self, port: u16) -> bool {
        KernelTunnels.geneve_port(port)
    }

    #[inline(always)]
    fn conceal(&self, words: [u64; 2]) -> Option<[u64; 2]> {
        conceal(words)
    }

    #[inline(always)]
    fn number(&mut self, tunnel: &TunnelKey) -> u32 {
        // SAFETY: as in `KernelTunnels::number`.
        unsafe { TUNNELS.get(tunnel) }.copied().unwrap_or(TUNNEL_UNRECORDED)
    }
}

/// `words` written to this CPU's `TUNNEL_FOUND` slot and read back: the verifier knows map
/// memory only as unknown scalars, so every header layout continues as the same state (the
/// walk bounds the offsets again). Without it the programs' states multiplied past the
/// verifier's million instructions.
#[inline(always)]
fn conceal(words: [u64; 2]) -> Option<[u64; 2]> {
    let slot = TUNNEL_FOUND.get_ptr_mut(0)?;
    // SAFETY: this CPU's live slot; no other program run on this CPU interleaves between the
    // writes and the reads (a later run overwrites it with its own words first).
    unsafe {
        let slot = slot.cast::<u64>();
        core::ptr::write_volatile(slot, words[0]);
        core::ptr::write_volatile(slot.add(1), words[1]);
        Some([core::ptr::read_volatile(slot), core::ptr::read_volatile(slot.add(1))])
    }
}
