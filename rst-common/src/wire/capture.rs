//! What the capture programs (`--capture`) hand to userspace through the ring buffer, and the
//! counters that say what they could not hand over.

use super::{
    keys::{tuple_words, word},
    FlowKey,
};

/// Most bytes of a frame one record carries (`--snaplen` is at most this). The ring's record
/// size is a constant for the verifier, so this bounds what one RST costs the ring.
pub const CAPTURE_MAX_SNAPLEN: usize = 256;
/// `--snaplen` when not given: every header rstwatch reads, with room for options, a tunnel's
/// included (VXLAN over IPv6 around an IPv6 RST, a VLAN tag outside and inside: 160 bytes).
pub const CAPTURE_DEFAULT_SNAPLEN: u32 = 192;
/// `--capture-budget` when not given: RSTs per second.
pub const CAPTURE_DEFAULT_BUDGET: u32 = 10_000;
/// Bytes of the ring buffer (a power of two of pages): about 14 000 records.
pub const CAPTURE_RING_BYTES: u32 = 4 << 20;

/// [`CaptureRecord::what`]: an RST rstwatch counted.
pub const CAPTURE_RST: u8 = 1;
/// [`CaptureRecord::what`]: a SYN or SYN+ACK (`--capture-handshakes`), kept by userspace until
/// its connection is reset.
pub const CAPTURE_HANDSHAKE: u8 = 2;

/// One captured frame. `class`, `rst_ttl` and `peer_ttl` are the classifier's verdict on an RST
/// (as in [`super::FlowKey`]); zero for a handshake segment.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CaptureRecord {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub time_ns: u64,
    pub ifindex: u32,
    /// The frame's length on the wire.
    pub wire_len: u32,
    /// How many bytes of `data` hold the frame's first bytes.
    pub captured: u16,
    /// [`super::DIRECTION_RX`] or [`super::DIRECTION_TX`].
    pub direction: u8,
    /// [`CAPTURE_RST`] or [`CAPTURE_HANDSHAKE`].
    pub what: u8,
    pub class: u8,
    pub rst_ttl: u8,
    pub peer_ttl: u8,
    /// The kernel's reason for an RST this host's stack sent (see [`CaptureReason`]), as
    /// [`reason_byte`] encodes it; 0 when there is none.
    pub kernel_reason: u8,
    pub data: [u8; CAPTURE_MAX_SNAPLEN],
}

/// Per CPU, cumulative: every RST a capture program counted goes to exactly one of these, so
/// `sent + over_budget + ring_full + unreadable` is the resets counted while capturing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureCounters {
    /// Reserved in the ring and submitted.
    pub sent: u64,
    /// Beyond `--capture-budget` in its second.
    pub over_budget: u64,
    /// The ring had no room (userspace fell behind).
    pub ring_full: u64,
    /// The frame's bytes could not be read (the record was discarded).
    pub unreadable: u64,
}

impl CaptureCounters {
    /// What the kernel did not hand over.
    pub fn dropped(&self) -> u64 {
        let CaptureCounters { sent: _, over_budget, ring_full, unreadable } = *self;
        over_budget + ring_full + unreadable
    }

    pub fn add(&mut self, other: &CaptureCounters) {
        let CaptureCounters { sent, over_budget, ring_full, unreadable } = *other;
        self.sent += sent;
        self.over_budget += over_budget;
        self.ring_full += ring_full;
        self.unreadable += unreadable;
    }
}

/// The shared budget window: when its second ends (`bpf_ktime_get_ns`) and the records sent in it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CaptureBudget {
    pub ends_ns: u64,
    pub used: u64,
}

impl CaptureRecord {
    /// The kernel's reason code (`enum sk_rst_reason`) for this RST, when its stack sent it.
    pub fn kernel_reason(&self) -> Option<u32> {
        self.kernel_reason.checked_sub(1).map(u32::from)
    }
}

/// [`CaptureRecord::kernel_reason`]'s byte for reason `code`: `code + 1`, so that 0 says "none".
/// Linux 6.18 has 26 reasons; a code beyond 254 is recorded as none rather than as a wrong one.
#[inline(always)]
pub const fn reason_byte(code: u32) -> u8 {
    if code < u8::MAX as u32 {
        code as u8 + 1
    } else {
        0
    }
}

/// Entries of [`crate::wire::names::MAP_CAPTURE_REASONS`]. The capture programs look an RST
/// up microseconds after the tracepoint wrote it (the stack's RST reaches TC egress, or a
/// watched peer veth, right after `tcp:tcp_send_reset`), so the LRU only has to hold the
/// resets in flight at once.
pub const CAPTURE_REASONS_ENTRIES: u32 = 4096;
/// How old a [`CaptureReason`] may be and still name an RST's reason: an entry is for the RST
/// sent right after it; older ones are a previous RST of the same tuple.
pub const CAPTURE_REASON_MAX_AGE_NS: u64 = 1_000_000_000;

/// An RST this host's stack sent, as `tcp:tcp_send_reset` reports it (in the RST's own
/// direction: `src` is this host), keyed for the capture programs' lookup by the RST's
/// [`FlowKey`] ([`CaptureReasonKey::of_flow`]). Addresses as in [`FlowKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CaptureReasonKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    pub _pad: [u8; 3],
}

impl CaptureReasonKey {
    /// Built word-wise (see [`word`]); addresses as in [`FlowKey`], in native-endian words.
    #[inline(always)]
    pub fn new(src: [u32; 4], dst: [u32; 4], sport: u16, dport: u16, family: u8) -> CaptureReasonKey {
        let [s0, s1, s2, s3, d0, d1, d2, d3, ports] = tuple_words(src, dst, sport, dport);
        let words = [s0, s1, s2, s3, d0, d1, d2, d3, ports, word([family, 0, 0, 0])];
        // SAFETY: CaptureReasonKey is repr(C), 40 bytes without implicit padding (asserted below).
        unsafe { core::mem::transmute::<[u32; 10], CaptureReasonKey>(words) }
    }

    /// The key of the RST `flow` counted: the same sender, receiver and ports (a [`FlowKey`]
    /// is also in the RST's direction), without the interface, which the tracepoint does not know.
    #[inline(always)]
    pub fn of_flow(flow: &FlowKey) -> CaptureReasonKey {
        let w = flow.words();
        // Word 9 is the ports as `new` builds them, word 10 starts with the family.
        let words = [w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[9], w[10] & word([0xff, 0, 0, 0])];
        // SAFETY: as in `new`.
        unsafe { core::mem::transmute::<[u32; 10], CaptureReasonKey>(words) }
    }
}

/// [`CaptureReasonKey`]'s value: the reason (`enum sk_rst_reason`) and when it was recorded
/// (`bpf_ktime_get_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureReason {
    pub time_ns: u64,
    pub reason: u32,
    pub _pad: u32,
}

wire_sizes!(
    CaptureRecord: 280,
    CaptureCounters: 32,
    CaptureBudget: 16,
    CaptureReasonKey: 40,
    CaptureReason: 16,
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{DIRECTION_TX, FAMILY_IPV6};

    #[test]
    fn a_flow_key_finds_the_tracepoints_key_of_the_same_rst() {
        let (src, dst) = ([1, 2, 3, 4], [0x0a00_0002, 0, 0, 9]);
        let flow = FlowKey::from_parts(src, dst, 7, 80, 40_000, FAMILY_IPV6, DIRECTION_TX, 64).classified(0x55, 63, 0);
        assert_eq!(CaptureReasonKey::of_flow(&flow), CaptureReasonKey::new(src, dst, 80, 40_000, FAMILY_IPV6));
        assert_ne!(CaptureReasonKey::of_flow(&flow), CaptureReasonKey::new(dst, src, 40_000, 80, FAMILY_IPV6));
    }

    #[test]
    fn the_reason_byte_keeps_zero_for_none() {
        let record = |byte| CaptureRecord { kernel_reason: byte, ..zeroed() };
        assert_eq!(record(reason_byte(0)).kernel_reason(), Some(0));
        assert_eq!(record(reason_byte(12)).kernel_reason(), Some(12));
        assert_eq!(record(0).kernel_reason(), None);
        assert_eq!(reason_byte(255), 0);
    }

    fn zeroed() -> CaptureRecord {
        CaptureRecord {
            time_ns: 0,
            ifindex: 0,
            wire_len: 0,
            captured: 0,
            direction: 0,
            what: 0,
            class: 0,
            rst_ttl: 0,
            peer_ttl: 0,
            kernel_reason: 0,
            data: [0; CAPTURE_MAX_SNAPLEN],
        }
    }
}
