//! Where a key lands: its flow-cache slot and its connection group's generation slot.

use super::{
    defaults::{CONN_GENERATIONS, FLOW_CACHE_SLOTS},
    keys::{ConnKey, FlowKey},
};

impl ConnKey {
    /// See [`FlowKey::generation_slot`].
    #[inline(always)]
    pub fn generation_slot(&self) -> u32 {
        // SAFETY: ConnKey is repr(C), 44 bytes without implicit padding (asserted below).
        let w: [u32; 11] = unsafe { core::mem::transmute_copy(self) };
        generation_slot([w[0], w[1], w[2], w[3]], [w[4], w[5], w[6], w[7]], self.ifindex, self.lo_port ^ self.hi_port)
    }
}

/// Symmetric in the two endpoints: XOR does not care which is which.
#[inline(always)]
fn generation_slot(a: [u32; 4], b: [u32; 4], ifindex: u32, ports: u16) -> u32 {
    generation_of_fold(address_fold(&[a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]]), ifindex, ports)
}

/// The XOR of the eight address words, which both slots of a flow start from.
#[inline(always)]
fn address_fold(addresses: &[u32; 8]) -> u32 {
    let mut fold = 0;
    for word in addresses {
        fold ^= word;
    }
    fold
}

#[inline(always)]
fn generation_of_fold(addresses: u32, ifindex: u32, ports: u16) -> u32 {
    (addresses ^ ifindex ^ u32::from(ports)).wrapping_mul(0x9e37_79b1) >> (32 - CONN_GENERATIONS.trailing_zeros())
}

impl FlowKey {
    /// Slot of this flow in one epoch's half of the flow cache.
    #[inline(always)]
    pub fn cache_slot(&self) -> u32 {
        self.cache_and_generation_slots().0
    }

    /// The connection's group in `CONN_GENERATIONS`: the same for both directions, and the same
    /// as [`ConnKey::generation_slot`] of [`FlowKey::connection`].
    #[inline(always)]
    pub fn generation_slot(&self) -> u32 {
        self.cache_and_generation_slots().1
    }

    /// [`FlowKey::cache_slot`] and [`FlowKey::generation_slot`] from one fold of the address
    /// words: every RST needs both, and on BPF each word of a key is a reload from the stack.
    #[inline(always)]
    pub fn cache_and_generation_slots(&self) -> (u32, u32) {
        let w = self.words();
        let addresses = address_fold(&[w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        // A cache collision only costs a write-back, so a fold of all twelve words and one
        // multiply are enough; the ports word keeps the two directions of a connection apart.
        let cache = (addresses ^ w[8] ^ w[9] ^ w[10] ^ w[11]).wrapping_mul(0x9e37_79b1)
            >> (32 - FLOW_CACHE_SLOTS.trailing_zeros());
        (cache, generation_of_fold(addresses, self.ifindex, self.sport ^ self.dport))
    }
}
