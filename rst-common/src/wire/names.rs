//! The names of the object's maps, programs and globals, shared so the loader and the contract
//! test (`rst-userspace/tests/object.rs`) cannot drift from the object.

/// Both epochs' flow tables in one mmap-able array (see [`crate::table`]).
pub const MAP_FLOW_TABLE: &str = "FLOW_TABLE";
/// The flow table's used-block bitmap (see [`crate::table::SLOTS_PER_BLOCK_LOG2`]).
pub const MAP_FLOW_BLOCKS: &str = "FLOW_BLOCKS";
/// The global holding log2 of one epoch's flow-table slots (and of the connection table's); the
/// loader sets it.
pub const GLOBAL_FLOW_TABLE_BITS: &str = "FLOW_TABLE_BITS";
pub const MAP_OVERFLOW_SOURCES: [&str; 2] = ["OVERFLOW_SOURCES_0", "OVERFLOW_SOURCES_1"];
pub const MAP_FLOW_CACHE: &str = "FLOW_CACHE";
/// The epoch is the object's only zero-initialized global (`EPOCH` in `rst-ebpf`), so the
/// loader makes the `.bss` section a one-entry array map holding just that u32.
pub const MAP_EPOCH: &str = ".bss";
/// The global in [`MAP_EPOCH`].
pub const GLOBAL_EPOCH: &str = "EPOCH";
/// Per connection group, a generation the kernel bumps on every change (see
/// [`crate::wire::CONN_GENERATIONS`]); only the programs use it.
pub const MAP_CONN_GENERATIONS: &str = "CONN_GENERATIONS";
pub const MAP_TRAFFIC: &str = "TRAFFIC";
pub const MAP_RESET_COUNTERS: &str = "RESET_COUNTERS";
pub const MAP_CONNECTIONS: &str = "CONNECTIONS";
pub const MAP_CONN_FINGERPRINTS: &str = "CONN_FINGERPRINTS";
pub const MAP_EVICTION_LOG: &str = "EVICTION_LOG";
/// The global holding each CPU's eviction-log entries per epoch; the loader sets it.
pub const GLOBAL_EVICTION_LOG_SLOTS: &str = "EVICTION_LOG_SLOTS";
pub const MAP_SERVICES: [&str; 2] = ["SERVICES_0", "SERVICES_1"];
/// Open connections per service, across intervals (see [`crate::services`]); only the
/// programs use it.
pub const MAP_SERVICE_OPEN: &str = "SERVICE_OPEN";
pub const MAP_STACK_RESETS: [&str; 2] = ["STACK_RESETS_0", "STACK_RESETS_1"];
pub const PROG_XDP: &str = "rstwatch_xdp";
pub const PROG_TC: &str = "rstwatch_tc";
pub const PROG_TC_EGRESS: &str = "rstwatch_tc_egress";
/// The same three programs counting with atomic adds only and without the per-CPU flow cache,
/// for kernels where two programs on one CPU may interleave (PREEMPT_RT).
pub const PROG_XDP_ATOMIC: &str = "rstwatch_xdp_atomic";
pub const PROG_TC_ATOMIC: &str = "rstwatch_tc_atomic";
pub const PROG_TC_EGRESS_ATOMIC: &str = "rstwatch_tc_egress_atomic";

/// The names of one set of counting programs (XDP, TC ingress, TC egress).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CountingPrograms {
    pub xdp: &'static str,
    pub tc: &'static str,
    pub tc_egress: &'static str,
}

impl CountingPrograms {
    /// Per-CPU counting (the default), or atomic counting.
    pub const fn new(atomic: bool) -> CountingPrograms {
        if atomic {
            CountingPrograms { xdp: PROG_XDP_ATOMIC, tc: PROG_TC_ATOMIC, tc_egress: PROG_TC_EGRESS_ATOMIC }
        } else {
            CountingPrograms { xdp: PROG_XDP, tc: PROG_TC, tc_egress: PROG_TC_EGRESS }
        }
    }
}
/// `--capture`: the same three counting programs (per-CPU and atomic sets) that also hand each
/// RST to userspace through [`MAP_CAPTURE_RING`]; loaded instead of the plain ones, so the plain
/// programs carry nothing of it.
pub const PROG_XDP_CAPTURE: &str = "rstwatch_xdp_capture";
pub const PROG_TC_CAPTURE: &str = "rstwatch_tc_capture";
pub const PROG_TC_EGRESS_CAPTURE: &str = "rstwatch_tc_egress_capture";
pub const PROG_XDP_ATOMIC_CAPTURE: &str = "rstwatch_xdp_atomic_capture";
pub const PROG_TC_ATOMIC_CAPTURE: &str = "rstwatch_tc_atomic_capture";
pub const PROG_TC_EGRESS_ATOMIC_CAPTURE: &str = "rstwatch_tc_egress_atomic_capture";
/// The BPF ring buffer of [`crate::wire::CaptureRecord`]s.
pub const MAP_CAPTURE_RING: &str = "CAPTURE_RING";
/// Per CPU, what the capture programs sent and dropped ([`crate::wire::CaptureCounters`]).
pub const MAP_CAPTURE_COUNTERS: &str = "CAPTURE_COUNTERS";
/// The shared per-second budget window ([`crate::wire::CaptureBudget`]).
pub const MAP_CAPTURE_BUDGET: &str = "CAPTURE_BUDGET";
/// The BPF ring buffer of [`crate::wire::PayloadRecord`]s: every counting program hands over
/// the payload of each RST that has one.
pub const MAP_PAYLOAD_RING: &str = "PAYLOAD_RING";
/// Per CPU, what the counting programs handed over of RST payloads and what they could not
/// ([`crate::wire::PayloadCounters`]).
pub const MAP_PAYLOAD_COUNTERS: &str = "PAYLOAD_COUNTERS";
/// The counting programs' tail calls for an RST with a payload: slot 0 the loaded set's XDP
/// program, slots `DIRECTION_RX` / `DIRECTION_TX` its TC ones (see [`CountingPrograms::payload`]).
pub const MAP_PAYLOAD_XDP_PROGRAMS: &str = "PAYLOAD_XDP_PROGRAMS";
pub const MAP_PAYLOAD_TC_PROGRAMS: &str = "PAYLOAD_TC_PROGRAMS";
/// What counts an RST with a payload and hands it to [`MAP_PAYLOAD_RING`], per set of
/// [`CountingPrograms`]: the counting program tail-calls it (the capturing sets do not: they
/// hand over every RST's frame).
pub const PROG_XDP_PAYLOAD: &str = "rstwatch_xdp_payload";
pub const PROG_TC_PAYLOAD: &str = "rstwatch_tc_payload";
pub const PROG_TC_EGRESS_PAYLOAD: &str = "rstwatch_tc_egress_payload";
pub const PROG_XDP_ATOMIC_PAYLOAD: &str = "rstwatch_xdp_atomic_payload";
pub const PROG_TC_ATOMIC_PAYLOAD: &str = "rstwatch_tc_atomic_payload";
pub const PROG_TC_EGRESS_ATOMIC_PAYLOAD: &str = "rstwatch_tc_egress_atomic_payload";

impl CountingPrograms {
    /// The payload programs the set [`CountingPrograms::new`]`(atomic)` tail-calls.
    pub const fn payload(atomic: bool) -> CountingPrograms {
        if atomic {
            CountingPrograms {
                xdp: PROG_XDP_ATOMIC_PAYLOAD,
                tc: PROG_TC_ATOMIC_PAYLOAD,
                tc_egress: PROG_TC_EGRESS_ATOMIC_PAYLOAD,
            }
        } else {
            CountingPrograms { xdp: PROG_XDP_PAYLOAD, tc: PROG_TC_PAYLOAD, tc_egress: PROG_TC_EGRESS_PAYLOAD }
        }
    }
}

/// Globals the loader sets for the capture programs: RSTs per second, bytes per frame, and
/// whether SYN / SYN+ACK segments go to the ring too (0 or 1).
pub const GLOBAL_CAPTURE_BUDGET: &str = "CAPTURE_BUDGET_PER_SECOND";
pub const GLOBAL_CAPTURE_SNAPLEN: &str = "CAPTURE_SNAPLEN";
pub const GLOBAL_CAPTURE_HANDSHAKES: &str = "CAPTURE_HANDSHAKES";
/// The kernel's reason for each RST this host's stack sent, by the RST's tuple
/// ([`crate::wire::CaptureReasonKey`] → [`crate::wire::CaptureReason`]): written by
/// `tcp:tcp_send_reset` only while capturing, read by the capture programs for the record.
pub const MAP_CAPTURE_REASONS: &str = "CAPTURE_REASONS";
/// Whether `tcp:tcp_send_reset` writes [`MAP_CAPTURE_REASONS`] (0 or 1, set with `--capture`).
pub const GLOBAL_CAPTURE_REASONS: &str = "CAPTURE_REASONS_ON";

impl CountingPrograms {
    /// The capturing set of [`CountingPrograms::new`].
    pub const fn capturing(atomic: bool) -> CountingPrograms {
        if atomic {
            CountingPrograms {
                xdp: PROG_XDP_ATOMIC_CAPTURE,
                tc: PROG_TC_ATOMIC_CAPTURE,
                tc_egress: PROG_TC_EGRESS_ATOMIC_CAPTURE,
            }
        } else {
            CountingPrograms { xdp: PROG_XDP_CAPTURE, tc: PROG_TC_CAPTURE, tc_egress: PROG_TC_EGRESS_CAPTURE }
        }
    }
}
/// Tracepoint `tcp:tcp_send_reset` (kernel ≥ 6.10 for its `reason`).
pub const PROG_SEND_RESET: &str = "rstwatch_send_reset";
/// Globals the loader sets from the tracepoint's format file before loading.
pub const GLOBAL_SEND_RESET_REASON_OFFSET: &str = "SEND_RESET_REASON_OFFSET";
pub const GLOBAL_SEND_RESET_SADDR_OFFSET: &str = "SEND_RESET_SADDR_OFFSET";
pub const GLOBAL_SEND_RESET_DADDR_OFFSET: &str = "SEND_RESET_DADDR_OFFSET";
/// Tracepoint `tcp:tcp_receive_reset`: the receiving socket's cgroup (see [`MAP_WORKLOADS`]).
pub const PROG_RECEIVE_RESET: &str = "rstwatch_receive_reset";
/// Resets per socket cgroup and origin ([`crate::wire::WorkloadKey`]), flipped and drained
/// like the stack-reset tables.
pub const MAP_WORKLOADS: [&str; 2] = ["WORKLOADS_0", "WORKLOADS_1"];
/// Whether the tracepoint programs record workloads (0 or 1); the loader sets it with the
/// offsets below, read from the kernel's BTF and the tracepoints' format files.
pub const GLOBAL_WORKLOADS_ON: &str = "WORKLOADS_ON";
pub const GLOBAL_SEND_RESET_SKADDR_OFFSET: &str = "SEND_RESET_SKADDR_OFFSET";
pub const GLOBAL_SEND_RESET_STATE_OFFSET: &str = "SEND_RESET_STATE_OFFSET";
pub const GLOBAL_RECEIVE_RESET_SKADDR_OFFSET: &str = "RECEIVE_RESET_SKADDR_OFFSET";
pub const GLOBAL_RECEIVE_RESET_SPORT_OFFSET: &str = "RECEIVE_RESET_SPORT_OFFSET";
pub const GLOBAL_RECEIVE_RESET_DPORT_OFFSET: &str = "RECEIVE_RESET_DPORT_OFFSET";
pub const GLOBAL_RECEIVE_RESET_FAMILY_OFFSET: &str = "RECEIVE_RESET_FAMILY_OFFSET";
pub const GLOBAL_RECEIVE_RESET_SADDR_OFFSET: &str = "RECEIVE_RESET_SADDR_OFFSET";
pub const GLOBAL_RECEIVE_RESET_DADDR_OFFSET: &str = "RECEIVE_RESET_DADDR_OFFSET";
pub const GLOBAL_RECEIVE_RESET_SADDR_V6_OFFSET: &str = "RECEIVE_RESET_SADDR_V6_OFFSET";
pub const GLOBAL_RECEIVE_RESET_DADDR_V6_OFFSET: &str = "RECEIVE_RESET_DADDR_V6_OFFSET";
/// `struct sock` → its cgroup pointer (`sk_cgrp_data.cgroup`), `struct cgroup` → `kn`,
/// `struct kernfs_node` → `id` (the cgroup id: the cgroup directory's inode number).
pub const GLOBAL_SOCK_CGROUP_OFFSET: &str = "SOCK_CGROUP_OFFSET";
pub const GLOBAL_CGROUP_KN_OFFSET: &str = "CGROUP_KN_OFFSET";
pub const GLOBAL_KERNFS_NODE_ID_OFFSET: &str = "KERNFS_NODE_ID_OFFSET";
/// An empty XDP_PASS program in the same object: the baseline for cost measurements.
pub const PROG_XDP_BASELINE: &str = "rstwatch_xdp_pass";
/// An empty TC program returning "next": the baseline for the TC programs.
pub const PROG_TC_BASELINE: &str = "rstwatch_tc_next";

/// The kinds of map the object defines (`enum bpf_map_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    Hash,
    Array,
    PerCpuArray,
    ProgramArray,
    LruHash,
    RingBuf,
}

impl MapKind {
    /// The kernel's `BPF_MAP_TYPE_*` number.
    pub const fn map_type(self) -> u32 {
        match self {
            MapKind::Hash => 1,
            MapKind::Array => 2,
            MapKind::ProgramArray => 3,
            MapKind::PerCpuArray => 6,
            MapKind::LruHash => 9,
            MapKind::RingBuf => 27,
        }
    }
}

/// The kinds of program the object defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramKind {
    Xdp,
    SchedClassifier,
    TracePoint,
}

/// Every map of the object and its kind, the `.bss` data map included: a map added to the
/// object is added here, and the contract test holds the object to exactly this list.
pub const MAPS: [(&str, MapKind); 28] = [
    (MAP_FLOW_TABLE, MapKind::Array),
    (MAP_FLOW_BLOCKS, MapKind::Array),
    (MAP_OVERFLOW_SOURCES[0], MapKind::Hash),
    (MAP_OVERFLOW_SOURCES[1], MapKind::Hash),
    (MAP_EVICTION_LOG, MapKind::Array),
    (MAP_FLOW_CACHE, MapKind::PerCpuArray),
    (MAP_EPOCH, MapKind::Array),
    (MAP_CONN_GENERATIONS, MapKind::Array),
    (MAP_RESET_COUNTERS, MapKind::PerCpuArray),
    (MAP_TRAFFIC, MapKind::PerCpuArray),
    (MAP_CONNECTIONS, MapKind::Array),
    (MAP_CONN_FINGERPRINTS, MapKind::Array),
    (MAP_SERVICES[0], MapKind::Hash),
    (MAP_SERVICES[1], MapKind::Hash),
    (MAP_SERVICE_OPEN, MapKind::LruHash),
    (MAP_STACK_RESETS[0], MapKind::Hash),
    (MAP_STACK_RESETS[1], MapKind::Hash),
    (MAP_WORKLOADS[0], MapKind::Hash),
    (MAP_WORKLOADS[1], MapKind::Hash),
    (MAP_CAPTURE_RING, MapKind::RingBuf),
    (MAP_CAPTURE_COUNTERS, MapKind::PerCpuArray),
    (MAP_CAPTURE_BUDGET, MapKind::Array),
    (MAP_PAYLOAD_RING, MapKind::RingBuf),
    (MAP_PAYLOAD_COUNTERS, MapKind::PerCpuArray),
    (MAP_PAYLOAD_XDP_PROGRAMS, MapKind::ProgramArray),
    (MAP_PAYLOAD_TC_PROGRAMS, MapKind::ProgramArray),
    (MAP_CAPTURE_REASONS, MapKind::LruHash),
    // The loader's overrides of the globals below, a map aya makes from the section.
    (".rodata", MapKind::Array),
];

/// Every program of the object and its kind.
pub const PROGRAMS: [(&str, ProgramKind); 22] = [
    (PROG_XDP, ProgramKind::Xdp),
    (PROG_TC, ProgramKind::SchedClassifier),
    (PROG_TC_EGRESS, ProgramKind::SchedClassifier),
    (PROG_XDP_ATOMIC, ProgramKind::Xdp),
    (PROG_TC_ATOMIC, ProgramKind::SchedClassifier),
    (PROG_TC_EGRESS_ATOMIC, ProgramKind::SchedClassifier),
    (PROG_SEND_RESET, ProgramKind::TracePoint),
    (PROG_RECEIVE_RESET, ProgramKind::TracePoint),
    (PROG_XDP_BASELINE, ProgramKind::Xdp),
    (PROG_TC_BASELINE, ProgramKind::SchedClassifier),
    (PROG_XDP_CAPTURE, ProgramKind::Xdp),
    (PROG_TC_CAPTURE, ProgramKind::SchedClassifier),
    (PROG_TC_EGRESS_CAPTURE, ProgramKind::SchedClassifier),
    (PROG_XDP_ATOMIC_CAPTURE, ProgramKind::Xdp),
    (PROG_TC_ATOMIC_CAPTURE, ProgramKind::SchedClassifier),
    (PROG_TC_EGRESS_ATOMIC_CAPTURE, ProgramKind::SchedClassifier),
    (PROG_XDP_PAYLOAD, ProgramKind::Xdp),
    (PROG_TC_PAYLOAD, ProgramKind::SchedClassifier),
    (PROG_TC_EGRESS_PAYLOAD, ProgramKind::SchedClassifier),
    (PROG_XDP_ATOMIC_PAYLOAD, ProgramKind::Xdp),
    (PROG_TC_ATOMIC_PAYLOAD, ProgramKind::SchedClassifier),
    (PROG_TC_EGRESS_ATOMIC_PAYLOAD, ProgramKind::SchedClassifier),
];

/// The u32 globals the loader sets before loading (read-only to the programs).
pub const LOADER_GLOBALS: [&str; 23] = [
    GLOBAL_FLOW_TABLE_BITS,
    GLOBAL_EVICTION_LOG_SLOTS,
    GLOBAL_SEND_RESET_REASON_OFFSET,
    GLOBAL_SEND_RESET_SADDR_OFFSET,
    GLOBAL_SEND_RESET_DADDR_OFFSET,
    GLOBAL_WORKLOADS_ON,
    GLOBAL_SEND_RESET_SKADDR_OFFSET,
    GLOBAL_SEND_RESET_STATE_OFFSET,
    GLOBAL_RECEIVE_RESET_SKADDR_OFFSET,
    GLOBAL_RECEIVE_RESET_SPORT_OFFSET,
    GLOBAL_RECEIVE_RESET_DPORT_OFFSET,
    GLOBAL_RECEIVE_RESET_FAMILY_OFFSET,
    GLOBAL_RECEIVE_RESET_SADDR_OFFSET,
    GLOBAL_RECEIVE_RESET_DADDR_OFFSET,
    GLOBAL_RECEIVE_RESET_SADDR_V6_OFFSET,
    GLOBAL_RECEIVE_RESET_DADDR_V6_OFFSET,
    GLOBAL_SOCK_CGROUP_OFFSET,
    GLOBAL_CGROUP_KN_OFFSET,
    GLOBAL_KERNFS_NODE_ID_OFFSET,
    GLOBAL_CAPTURE_BUDGET,
    GLOBAL_CAPTURE_SNAPLEN,
    GLOBAL_CAPTURE_HANDSHAKES,
    GLOBAL_CAPTURE_REASONS,
];
