//! The layouts kernel and userspace exchange through BPF maps.
//!
//! Every type is `#[repr(C)]` with explicit padding, so the bytes the kernel hashes as a map key
//! are exactly the bytes userspace builds, and sizes are asserted at compile time.

pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;
pub const IPPROTO_TCP: u8 = 6;

/// Map names, shared so the loader cannot drift from the object.
pub const MAP_FLOWS: [&str; 2] = ["FLOWS_0", "FLOWS_1"];
pub const MAP_OVERFLOW_SOURCES: [&str; 2] = ["OVERFLOW_SOURCES_0", "OVERFLOW_SOURCES_1"];
pub const MAP_FLOW_CACHE: &str = "FLOW_CACHE";
pub const MAP_EPOCH: &str = "EPOCH";
pub const MAP_TRAFFIC: &str = "TRAFFIC";
pub const MAP_RESET_COUNTERS: &str = "RESET_COUNTERS";
pub const PROG_XDP: &str = "rstwatch_xdp";
pub const PROG_TC: &str = "rstwatch_tc";
/// An empty XDP_PASS program in the same object: the baseline for cost measurements.
pub const PROG_XDP_BASELINE: &str = "rstwatch_xdp_pass";

/// Slots per CPU and epoch in the direct-mapped flow cache (a power of two).
pub const FLOW_CACHE_SLOTS: u32 = 1024;

/// Default capacity of each of the two per-interval flow tables.
pub const DEFAULT_MAX_FLOWS: u32 = 65_536;
/// Default capacity of each of the two per-interval overflow tables (RSTs per source address
/// that found no room in the flow table): a scan floods flows, not sources.
pub const DEFAULT_MAX_OVERFLOW_SOURCES: u32 = 16_384;

/// One direction of a TCP connection on one interface: who sent the RST to whom.
///
/// IPv4 addresses occupy the first 4 bytes of `src` / `dst`; the rest stays zero.
/// Ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub ifindex: u32,
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    pub protocol: u8,
    pub _pad: [u8; 2],
}

/// One slot of the per-CPU flow cache (map `FLOW_CACHE`, `2 * FLOW_CACHE_SLOTS` slots per CPU,
/// the half `epoch * FLOW_CACHE_SLOTS ..` belonging to each epoch). A repeated RST on a cached
/// flow is a per-CPU add: no hashing, no atomics. A slot is written back to the flow table when
/// another flow needs it, and userspace drains what is left at the end of the epoch.
/// `resets == 0` marks a free slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheSlot {
    pub key: FlowKey,
    pub _pad: u32,
    pub resets: u64,
}

impl FlowKey {
    /// The key as eleven 32-bit words: for hashing and comparing without byte loops on BPF.
    #[inline(always)]
    pub fn words(&self) -> [u32; 11] {
        // SAFETY: FlowKey is repr(C), 44 bytes without implicit padding (asserted below), so
        // all of its bytes are initialized and any 44 bytes form a valid [u32; 11].
        unsafe { core::mem::transmute_copy(self) }
    }

    /// Slot of this flow in one epoch's half of the flow cache.
    #[inline(always)]
    pub fn cache_slot(&self) -> u32 {
        // A collision only costs a write-back, so a fold and one multiply are enough; the ports
        // word keeps the two directions of a connection apart.
        let mut fold = 0u32;
        for word in self.words() {
            fold ^= word;
        }
        fold.wrapping_mul(0x9e37_79b1) >> (32 - FLOW_CACHE_SLOTS.trailing_zeros())
    }

    #[inline(always)]
    pub fn same_flow(&self, other: &FlowKey) -> bool {
        let (a, b) = (self.words(), other.words());
        let mut differ = 0;
        for i in 0..a.len() {
            differ |= a[i] ^ b[i];
        }
        differ == 0
    }
}

/// The sender of RSTs that found no room in the flow table, on one interface. Addresses as in
/// [`FlowKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey {
    pub src: [u8; 16],
    pub ifindex: u32,
    pub family: u8,
    pub _pad: [u8; 3],
}

impl SourceKey {
    #[inline(always)]
    pub fn of(flow: &FlowKey) -> Self {
        SourceKey { src: flow.src, ifindex: flow.ifindex, family: flow.family, _pad: [0; 3] }
    }
}

/// Per-flow counts for one interval.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// Updated with atomic adds: one entry is shared by all CPUs.
    pub resets: u64,
}

/// Per-CPU, cumulative counts of everything the program sees (map `TRAFFIC`). Kept apart from
/// the per-epoch reset counts so the path non-RST frames take never reads the epoch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub frames: u64,
    pub tcp: u64,
    pub malformed: u64,
    pub fragments: u64,
}

/// Per-CPU reset counts of one epoch (map `RESET_COUNTERS`, indexed by epoch). `overflow`
/// counts the resets that found no room in the flow table (they are in `resets` too);
/// `source_overflow` those of them that found no room in the overflow-source table either.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResetCounters {
    pub resets: u64,
    pub overflow: u64,
    pub source_overflow: u64,
}

/// What userspace reports for a period: traffic deltas plus that period's reset counts.
/// Each frame lands in at most one of `tcp`, `malformed`, `fragments`; RSTs are TCP segments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub frames: u64,
    pub tcp: u64,
    pub resets: u64,
    pub malformed: u64,
    pub fragments: u64,
    pub overflow: u64,
    pub source_overflow: u64,
}

impl Counters {
    /// Adds `other` field by field (wrapping: kernel counters never reset but may wrap).
    pub fn accumulate(&mut self, other: &Counters) {
        let Counters { frames, tcp, resets, malformed, fragments, overflow, source_overflow } = other;
        self.frames = self.frames.wrapping_add(*frames);
        self.tcp = self.tcp.wrapping_add(*tcp);
        self.resets = self.resets.wrapping_add(*resets);
        self.malformed = self.malformed.wrapping_add(*malformed);
        self.fragments = self.fragments.wrapping_add(*fragments);
        self.overflow = self.overflow.wrapping_add(*overflow);
        self.source_overflow = self.source_overflow.wrapping_add(*source_overflow);
    }

    /// `self - earlier`, field by field.
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            frames: self.frames.wrapping_sub(earlier.frames),
            tcp: self.tcp.wrapping_sub(earlier.tcp),
            resets: self.resets.wrapping_sub(earlier.resets),
            malformed: self.malformed.wrapping_sub(earlier.malformed),
            fragments: self.fragments.wrapping_sub(earlier.fragments),
            overflow: self.overflow.wrapping_sub(earlier.overflow),
            source_overflow: self.source_overflow.wrapping_sub(earlier.source_overflow),
        }
    }
}

const _: () = {
    assert!(core::mem::size_of::<FlowKey>() == 44);
    assert!(core::mem::size_of::<FlowValue>() == 8);
    assert!(core::mem::size_of::<SourceKey>() == 24);
    assert!(core::mem::size_of::<CacheSlot>() == 56);
    assert!(FLOW_CACHE_SLOTS.is_power_of_two());
    assert!(core::mem::size_of::<Counters>() == 56);
    assert!(core::mem::size_of::<TrafficCounters>() == 32);
    assert!(core::mem::size_of::<ResetCounters>() == 24);
};

macro_rules! frame_counters {
    ($counters:ty) => {
        impl crate::parse::FrameCounters for $counters {
            #[inline(always)]
            fn frame(&mut self) {
                self.frames += 1;
            }
            #[inline(always)]
            fn tcp(&mut self) {
                self.tcp += 1;
            }
            #[inline(always)]
            fn malformed(&mut self) {
                self.malformed += 1;
            }
            #[inline(always)]
            fn fragment(&mut self) {
                self.fragments += 1;
            }
        }
    };
}

frame_counters!(TrafficCounters);
frame_counters!(Counters);
