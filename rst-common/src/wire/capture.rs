//! What the capture programs (`--capture`) hand to userspace through the ring buffer, and the
//! counters that say what they could not hand over.

/// Most bytes of a frame one record carries (`--snaplen` is at most this). The ring's record
/// size is a constant for the verifier, so this bounds what one RST costs the ring.
pub const CAPTURE_MAX_SNAPLEN: usize = 256;
/// `--snaplen` when not given: every header rstwatch reads, with room for options.
pub const CAPTURE_DEFAULT_SNAPLEN: u32 = 128;
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
    pub _pad: u8,
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

wire_sizes!(CaptureRecord: 280, CaptureCounters: 32, CaptureBudget: 16);
