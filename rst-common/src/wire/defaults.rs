//! Table sizes: the fixed ones both sides build on, and the defaults the loader overrides.

/// Slots per CPU and epoch in the direct-mapped flow cache (a power of two).
pub const FLOW_CACHE_SLOTS: u32 = 1024;
/// Connection-table generations (map `CONN_GENERATIONS`), one per group of connections: a
/// change to one connection only invalidates cached verdicts of its group.
pub const CONN_GENERATIONS: u32 = 1024;

/// Default capacity of each of the two per-interval flow tables.
pub const DEFAULT_MAX_FLOWS: u32 = 65_536;
/// Default capacity of each of the two per-interval overflow tables (RSTs per source address
/// that found no room in the flow table): a scan floods flows, not sources.
pub const DEFAULT_MAX_OVERFLOW_SOURCES: u32 = 16_384;
/// Connections the host-side connection table (replay, tests) keeps by default; the kernel's
/// is sized with the flow table (see [`crate::table::ConnSlots`]). Forgotten connections'
/// resets are classified by inference.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 65_536;
/// Default capacity of each of the two per-interval service tables, and of the open-connection
/// counts per service (map `SERVICE_OPEN`, which lives across intervals).
pub const DEFAULT_MAX_SERVICES: u32 = 16_384;

const _: () = {
    assert!(CONN_GENERATIONS.is_power_of_two());
    assert!(FLOW_CACHE_SLOTS.is_power_of_two());
};
