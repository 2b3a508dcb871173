//! The layouts kernel and userspace exchange through BPF maps, and the names and sizes both
//! sides build them from.
//!
//! Every type is `#[repr(C)]` with explicit padding, so the bytes the kernel hashes as a map key
//! are exactly the bytes userspace builds, and sizes are asserted at compile time. One module per
//! concern; everything is re-exported here, so `rst_common::wire::FlowKey` and the like stay the
//! paths to use.

mod capture;
mod class;
mod counters;
mod defaults;
mod firewall;
mod hash;
mod keys;
pub mod names;
mod payload;
mod socket;
mod tunnel;
mod values;
mod workload;

pub use capture::{
    reason_byte, CaptureBudget, CaptureCounters, CaptureReason, CaptureReasonKey, CaptureRecord,
    CAPTURE_DEFAULT_BUDGET, CAPTURE_DEFAULT_SNAPLEN, CAPTURE_HANDSHAKE, CAPTURE_MAX_SNAPLEN, CAPTURE_REASONS_ENTRIES,
    CAPTURE_REASON_MAX_AGE_NS, CAPTURE_RING_BYTES, CAPTURE_RST,
};
pub use class::{ResetClass, ResetContext, ResetKind};
pub use counters::{Counters, ResetCounters, TrafficCounters};
pub use defaults::{
    CONN_GENERATIONS, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_FLOWS, DEFAULT_MAX_OVERFLOW_SOURCES, DEFAULT_MAX_SERVICES,
    FLOW_CACHE_SLOTS,
};
pub use firewall::{
    hook_name, FirewallResetKey, NF_INET_FORWARD, NF_INET_HOOK_OTHER, NF_INET_LOCAL_IN, NF_INET_LOCAL_OUT,
    NF_INET_POST_ROUTING, NF_INET_PRE_ROUTING,
};
pub use keys::{
    native_words, word, ConnKey, FlowKey, ServiceKey, SourceKey, StackResetKey, DIRECTION_RX, DIRECTION_TX,
    FAMILY_IPV4, FAMILY_IPV6, IPPROTO_TCP,
};
pub use names::*;
pub use payload::{PayloadCounters, PayloadRecord, PAYLOAD_FRAME_BYTES, PAYLOAD_RING_BYTES, RST_PAYLOAD_BYTES};
pub use socket::{IdleKey, IdleValue, ListenKey, ListenValue};
pub use tunnel::{tunnel_number, TunnelKey, TunnelKind, MAX_TUNNELS, TUNNEL_INTERFACE, TUNNEL_UNRECORDED};
pub use values::{
    accept_bits, accept_from_bits, down_after_accept, down_after_turnaway, down_in_run, merge_accept, merge_turnaway,
    turnaway_bits, turnaway_from_bits, CacheSlot, ConnState, DownRun, FlowValue, LoggedFlow, OpenValue, ServiceCounts,
    ServiceValue, CONN_CLIENT_IS_LO, CONN_FIN, CONN_RESET, CONN_SYN, CONN_SYNACK, SIDE_CLIENT_FIN, SIDE_CLIENT_RST,
    SIDE_DATA_MOVED, SIDE_LATE_DATA, SIDE_SERVER_FIN, SIDE_SERVER_RST,
};
pub use workload::{WorkloadKey, ORIGIN_APPLICATION, ORIGIN_KERNEL, ORIGIN_RECEIVED};
