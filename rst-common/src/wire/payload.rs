//! What the default counting programs hand to userspace for an RST that carries data (the
//! text some devices put in a reset, a flow record's `rst_payload`), and the counters that say
//! what they could not hand over. Only RSTs with a payload reach this; bare ones never do.

/// Bytes of an RST's payload a record (and a flow record) keeps.
pub const RST_PAYLOAD_BYTES: usize = 64;
/// Bytes of the payload ring buffer (a power of two of pages): about 1 000 records, far more
/// RSTs with data than one interval sees outside a flood of them.
pub const PAYLOAD_RING_BYTES: u32 = 256 << 10;

/// Most bytes of a frame one record carries: every header rstwatch walks and
/// [`RST_PAYLOAD_BYTES`] of payload behind them, unless options and extension headers take
/// more (then the payload shows shorter, marked as cut).
pub const PAYLOAD_FRAME_BYTES: usize = 256;

/// One RST with a payload: the frame's first bytes up to the payload's first
/// [`RST_PAYLOAD_BYTES`], which userspace walks with the same parser as every frame (for the
/// flow and the payload's place, as for a captured frame), with the interface and direction
/// the walk cannot tell.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PayloadRecord {
    pub ifindex: u32,
    /// How many bytes of `data` hold the frame's first bytes.
    pub captured: u16,
    /// [`super::DIRECTION_RX`] or [`super::DIRECTION_TX`].
    pub direction: u8,
    pub _pad: u8,
    pub data: [u8; PAYLOAD_FRAME_BYTES],
}

/// Per CPU, cumulative: every RST with a payload goes to exactly one of these.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PayloadCounters {
    /// Reserved in the ring and submitted.
    pub sent: u64,
    /// The ring had no room (userspace fell behind an interval's worth).
    pub ring_full: u64,
    /// The payload's bytes could not be read (the record was discarded).
    pub unreadable: u64,
}

impl PayloadCounters {
    /// What the kernel did not hand over.
    pub fn dropped(&self) -> u64 {
        let PayloadCounters { sent: _, ring_full, unreadable } = *self;
        ring_full + unreadable
    }

    pub fn add(&mut self, other: &PayloadCounters) {
        let PayloadCounters { sent, ring_full, unreadable } = *other;
        self.sent += sent;
        self.ring_full += ring_full;
        self.unreadable += unreadable;
    }
}

wire_sizes!(PayloadRecord: 264, PayloadCounters: 24);
