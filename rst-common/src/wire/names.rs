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
/// The counting programs and the payload programs they tail-call, in one table from which both
/// their name constants here and their entry points in `rst-ebpf` are generated (a program's
/// name is its function's name), so neither can drift from the other.
///
/// `program_matrix!(callback)` calls `callback!` with one row per program,
/// `(CONSTANT, function, hook, counting, variant)`:
/// - hook: `xdp` (XDP), `tc` (tcx ingress), `tc_egress` (tcx egress: what the host sends);
/// - counting: `per_cpu` (the default: plain adds to per-CPU state and a per-CPU flow cache in
///   front of the flow table) or `atomic` (atomic adds only, without the flow cache and the
///   eviction logs, whose multi-field updates no atomic covers: for kernels where two programs
///   on one CPU may interleave, PREEMPT_RT); the loader loads one set or the other;
/// - variant: `count` (the counting program), `capture` (`--capture`: the same, handing each RST
///   to userspace through [`MAP_CAPTURE_RING`]; loaded instead of the plain one, so the plain
///   programs carry nothing of it), `payload` (what the counting program of the same hook and
///   counting tail-calls for an RST with a payload: hands the payload to [`MAP_PAYLOAD_RING`]
///   and counts the RST; the capturing programs do not call it, they hand over every RST's frame).
///
/// Separate programs rather than flags the verifier folds: one more branch in the default
/// program cost it up to ~10 ns per RST in register spills.
#[macro_export]
macro_rules! program_matrix {
    ($callback:ident) => {
        $callback! {
            (PROG_XDP, rstwatch_xdp, xdp, per_cpu, count),
            (PROG_TC, rstwatch_tc, tc, per_cpu, count),
            (PROG_TC_EGRESS, rstwatch_tc_egress, tc_egress, per_cpu, count),
            (PROG_XDP_ATOMIC, rstwatch_xdp_atomic, xdp, atomic, count),
            (PROG_TC_ATOMIC, rstwatch_tc_atomic, tc, atomic, count),
            (PROG_TC_EGRESS_ATOMIC, rstwatch_tc_egress_atomic, tc_egress, atomic, count),
            (PROG_XDP_CAPTURE, rstwatch_xdp_capture, xdp, per_cpu, capture),
            (PROG_TC_CAPTURE, rstwatch_tc_capture, tc, per_cpu, capture),
            (PROG_TC_EGRESS_CAPTURE, rstwatch_tc_egress_capture, tc_egress, per_cpu, capture),
            (PROG_XDP_ATOMIC_CAPTURE, rstwatch_xdp_atomic_capture, xdp, atomic, capture),
            (PROG_TC_ATOMIC_CAPTURE, rstwatch_tc_atomic_capture, tc, atomic, capture),
            (PROG_TC_EGRESS_ATOMIC_CAPTURE, rstwatch_tc_egress_atomic_capture, tc_egress, atomic, capture),
            (PROG_XDP_PAYLOAD, rstwatch_xdp_payload, xdp, per_cpu, payload),
            (PROG_TC_PAYLOAD, rstwatch_tc_payload, tc, per_cpu, payload),
            (PROG_TC_EGRESS_PAYLOAD, rstwatch_tc_egress_payload, tc_egress, per_cpu, payload),
            (PROG_XDP_ATOMIC_PAYLOAD, rstwatch_xdp_atomic_payload, xdp, atomic, payload),
            (PROG_TC_ATOMIC_PAYLOAD, rstwatch_tc_atomic_payload, tc, atomic, payload),
            (PROG_TC_EGRESS_ATOMIC_PAYLOAD, rstwatch_tc_egress_atomic_payload, tc_egress, atomic, payload),
        }
    };
}

/// A row's hook, counting and variant as values.
#[derive(Clone, Copy)]
enum Hook {
    Xdp,
    Tc,
    TcEgress,
}

#[derive(Clone, Copy)]
enum Variant {
    Count,
    Capture,
    Payload,
}

macro_rules! matrix_hook {
    (xdp) => {
        Hook::Xdp
    };
    (tc) => {
        Hook::Tc
    };
    (tc_egress) => {
        Hook::TcEgress
    };
}

macro_rules! matrix_atomic {
    (per_cpu) => {
        false
    };
    (atomic) => {
        true
    };
}

macro_rules! matrix_variant {
    (count) => {
        Variant::Count
    };
    (capture) => {
        Variant::Capture
    };
    (payload) => {
        Variant::Payload
    };
}

/// The name constants, and [`matrix_program`]: the name at a row's coordinates (a match the
/// compiler holds to cover every coordinate once).
macro_rules! matrix_names {
    ($(($constant:ident, $name:ident, $hook:ident, $counting:ident, $variant:ident)),* $(,)?) => {
        $(
            #[doc = concat!(
                "The program `", stringify!($name), "` (hook `", stringify!($hook), "`, `",
                stringify!($counting), "` counting, variant `", stringify!($variant),
                "`; see [`program_matrix!`](crate::program_matrix))."
            )]
            pub const $constant: &str = stringify!($name);
        )*

        /// The program of the matrix at these coordinates.
        const fn matrix_program(hook: Hook, atomic: bool, variant: Variant) -> &'static str {
            match (hook, atomic, variant) {
                $((matrix_hook!($hook), matrix_atomic!($counting), matrix_variant!($variant)) => $constant,)*
            }
        }
    };
}

program_matrix!(matrix_names);

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
        CountingPrograms::set(atomic, Variant::Count)
    }

    /// The capturing set of [`CountingPrograms::new`].
    pub const fn capturing(atomic: bool) -> CountingPrograms {
        CountingPrograms::set(atomic, Variant::Capture)
    }

    /// The payload programs the set [`CountingPrograms::new`]`(atomic)` tail-calls.
    pub const fn payload(atomic: bool) -> CountingPrograms {
        CountingPrograms::set(atomic, Variant::Payload)
    }

    const fn set(atomic: bool, variant: Variant) -> CountingPrograms {
        CountingPrograms {
            xdp: matrix_program(Hook::Xdp, atomic, variant),
            tc: matrix_program(Hook::Tc, atomic, variant),
            tc_egress: matrix_program(Hook::TcEgress, atomic, variant),
        }
    }
}

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
/// Per listener address and port, the resets it sent while in `TCP_LISTEN` with its accept
/// queue full (more queued than the limit), and the queue then ([`crate::wire::ListenKey`] →
/// [`crate::wire::ListenValue`]), written by `tcp:tcp_send_reset`; flipped and drained like the
/// stack-reset tables.
pub const MAP_LISTEN_RESETS: [&str; 2] = ["LISTEN_RESETS_0", "LISTEN_RESETS_1"];
/// Per reset's 4-tuple and direction, how long the local socket had been quiet before it
/// ([`crate::wire::IdleKey`] → [`crate::wire::IdleValue`], jiffies), written by both reset
/// tracepoints; flipped and drained like the stack-reset tables.
pub const MAP_IDLE_GAPS: [&str; 2] = ["IDLE_GAPS_0", "IDLE_GAPS_1"];
/// Whether `tcp:tcp_send_reset` reads a listener's resets from the segment it answers and
/// records them in [`MAP_LISTEN_RESETS`] (0 or 1), and whether the reset tracepoints record
/// idle gaps in [`MAP_IDLE_GAPS`]; the loader sets them with the offsets below (the
/// tracepoint's `skbaddr` field; `sk_buff.head`, `.network_header`, `.transport_header`;
/// `sock.sk_ack_backlog`, `.sk_max_ack_backlog`; `inet_connection_sock.icsk_ack.lrcvtime`,
/// `tcp_sock.lsndtime`, from the kernel's BTF).
pub const GLOBAL_LISTEN_RESETS_ON: &str = "LISTEN_RESETS_ON";
pub const GLOBAL_IDLE_GAPS_ON: &str = "IDLE_GAPS_ON";
pub const GLOBAL_SEND_RESET_SKBADDR_OFFSET: &str = "SEND_RESET_SKBADDR_OFFSET";
pub const GLOBAL_SKB_HEAD_OFFSET: &str = "SKB_HEAD_OFFSET";
pub const GLOBAL_SKB_NETWORK_HEADER_OFFSET: &str = "SKB_NETWORK_HEADER_OFFSET";
pub const GLOBAL_SKB_TRANSPORT_HEADER_OFFSET: &str = "SKB_TRANSPORT_HEADER_OFFSET";
pub const GLOBAL_SOCK_ACK_BACKLOG_OFFSET: &str = "SOCK_ACK_BACKLOG_OFFSET";
pub const GLOBAL_SOCK_MAX_ACK_BACKLOG_OFFSET: &str = "SOCK_MAX_ACK_BACKLOG_OFFSET";
pub const GLOBAL_ICSK_LRCVTIME_OFFSET: &str = "ICSK_LRCVTIME_OFFSET";
pub const GLOBAL_TCP_LSNDTIME_OFFSET: &str = "TCP_LSNDTIME_OFFSET";
/// fentry programs on netfilter's `reject with tcp reset` (kernel functions [`FN_NF_SEND_RESET`]
/// and [`FN_NF_SEND_RESET6`]; Linux >= 5.5 for fentry): the resets this host's firewall sent.
pub const PROG_NF_SEND_RESET: &str = "rstwatch_nf_send_reset";
pub const PROG_NF_SEND_RESET6: &str = "rstwatch_nf_send_reset6";
/// The kernel functions they attach to (`net/ipv4/netfilter/nf_reject_ipv4.c`, `…ipv6.c`).
pub const FN_NF_SEND_RESET: &str = "nf_send_reset";
pub const FN_NF_SEND_RESET6: &str = "nf_send_reset6";
/// Resets per [`crate::wire::FirewallResetKey`], flipped and drained like the stack-reset tables.
pub const MAP_FIREWALL_RESETS: [&str; 2] = ["FIREWALL_RESETS_0", "FIREWALL_RESETS_1"];
/// Per CPU and epoch (index = epoch), the firewall resets that found no room in
/// [`MAP_FIREWALL_RESETS`] (a u64).
pub const MAP_FIREWALL_OVERFLOW: &str = "FIREWALL_OVERFLOW";
/// Where the kernel refuses fentry: a BTF tracepoint on [`TP_KFREE_SKB`] that records netfilter's
/// drops ([`GLOBAL_NETFILTER_DROP_REASON`]) as candidate firewall resets (Linux >= 5.17).
pub const PROG_NF_DROP: &str = "rstwatch_nf_drop";
pub const TP_KFREE_SKB: &str = "kfree_skb";
/// `enum skb_drop_reason`'s `SKB_DROP_REASON_NETFILTER_DROP`, from the kernel's BTF.
pub const GLOBAL_NETFILTER_DROP_REASON: &str = "NETFILTER_DROP_REASON";
/// `sk_buff.dev`, `sk_buff._skb_refdst`, `rtable.rt_flags` and `rt6_info.rt6i_flags`: what
/// [`PROG_NF_DROP`] infers the netfilter hook by, from the kernel's BTF.
pub const GLOBAL_SKB_DEV_OFFSET: &str = "SKB_DEV_OFFSET";
pub const GLOBAL_SKB_REFDST_OFFSET: &str = "SKB_REFDST_OFFSET";
pub const GLOBAL_RTABLE_FLAGS_OFFSET: &str = "RTABLE_FLAGS_OFFSET";
pub const GLOBAL_RT6_INFO_FLAGS_OFFSET: &str = "RT6_INFO_FLAGS_OFFSET";
/// An empty XDP_PASS program in the same object: the baseline for cost measurements.
pub const PROG_XDP_BASELINE: &str = "rstwatch_xdp_pass";
/// An empty TC program returning "next": the baseline for the TC programs.
pub const PROG_TC_BASELINE: &str = "rstwatch_tc_next";
/// `--idle-gaps`: the programs that time every connection's pauses, received (tcx ingress) and
/// sent (tcx egress), attached after the counting programs (see [`crate::Activity`]).
pub const PROG_PAUSES: &str = "rstwatch_pauses";
pub const PROG_PAUSES_EGRESS: &str = "rstwatch_pauses_egress";

/// Every tunnel the counting programs saw a connection in ([`crate::wire::TunnelKey`] → its
/// number, see [`crate::wire::TUNNEL_INTERFACE`]), and the next number to hand out (an array
/// of one u32). Never flipped: userspace reads the table to name a flow's tunnel.
pub const MAP_TUNNELS: &str = "TUNNELS";
pub const MAP_TUNNEL_COUNT: &str = "TUNNEL_COUNT";
/// Per CPU, the tunnel the walk just found (scratch: see `rst_common::parse::Tunnels::conceal`).
pub const MAP_TUNNEL_FOUND: &str = "TUNNEL_FOUND";
/// UDP ports beyond the well-known ones that carry VXLAN and Geneve (`--vxlan-port`,
/// `--geneve-port`): two to a u32 global, the first in the low half, 0 for none.
pub const GLOBAL_VXLAN_PORTS: [&str; 2] = ["VXLAN_PORTS_0", "VXLAN_PORTS_1"];
pub const GLOBAL_GENEVE_PORTS: [&str; 2] = ["GENEVE_PORTS_0", "GENEVE_PORTS_1"];

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
    /// A BTF-attached fentry program.
    FEntry,
    /// A BTF tracepoint (`tp_btf`): a raw tracepoint with typed arguments.
    BtfTracePoint,
}

/// Every map of the object and its kind, the `.bss` data map included: a map added to the
/// object is added here, and the contract test holds the object to exactly this list.
pub const MAPS: [(&str, MapKind); 38] = [
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
    (MAP_LISTEN_RESETS[0], MapKind::Hash),
    (MAP_LISTEN_RESETS[1], MapKind::Hash),
    (MAP_IDLE_GAPS[0], MapKind::Hash),
    (MAP_IDLE_GAPS[1], MapKind::Hash),
    (MAP_CAPTURE_RING, MapKind::RingBuf),
    (MAP_CAPTURE_COUNTERS, MapKind::PerCpuArray),
    (MAP_CAPTURE_BUDGET, MapKind::Array),
    (MAP_PAYLOAD_RING, MapKind::RingBuf),
    (MAP_PAYLOAD_COUNTERS, MapKind::PerCpuArray),
    (MAP_PAYLOAD_XDP_PROGRAMS, MapKind::ProgramArray),
    (MAP_PAYLOAD_TC_PROGRAMS, MapKind::ProgramArray),
    (MAP_CAPTURE_REASONS, MapKind::LruHash),
    (MAP_FIREWALL_RESETS[0], MapKind::Hash),
    (MAP_FIREWALL_RESETS[1], MapKind::Hash),
    (MAP_FIREWALL_OVERFLOW, MapKind::PerCpuArray),
    (MAP_TUNNELS, MapKind::Hash),
    (MAP_TUNNEL_COUNT, MapKind::Array),
    (MAP_TUNNEL_FOUND, MapKind::PerCpuArray),
    // The loader's overrides of the globals below, a map aya makes from the section.
    (".rodata", MapKind::Array),
];

/// Every program of the object and its kind.
pub const PROGRAMS: [(&str, ProgramKind); 27] = [
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
    (PROG_PAUSES, ProgramKind::SchedClassifier),
    (PROG_PAUSES_EGRESS, ProgramKind::SchedClassifier),
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
    (PROG_NF_SEND_RESET, ProgramKind::FEntry),
    (PROG_NF_SEND_RESET6, ProgramKind::FEntry),
    (PROG_NF_DROP, ProgramKind::BtfTracePoint),
];

/// The u32 globals the loader sets before loading (read-only to the programs).
pub const LOADER_GLOBALS: [&str; 42] = [
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
    GLOBAL_LISTEN_RESETS_ON,
    GLOBAL_IDLE_GAPS_ON,
    GLOBAL_SEND_RESET_SKBADDR_OFFSET,
    GLOBAL_SKB_HEAD_OFFSET,
    GLOBAL_SKB_NETWORK_HEADER_OFFSET,
    GLOBAL_SKB_TRANSPORT_HEADER_OFFSET,
    GLOBAL_SOCK_ACK_BACKLOG_OFFSET,
    GLOBAL_SOCK_MAX_ACK_BACKLOG_OFFSET,
    GLOBAL_ICSK_LRCVTIME_OFFSET,
    GLOBAL_TCP_LSNDTIME_OFFSET,
    GLOBAL_NETFILTER_DROP_REASON,
    GLOBAL_SKB_DEV_OFFSET,
    GLOBAL_SKB_REFDST_OFFSET,
    GLOBAL_RTABLE_FLAGS_OFFSET,
    GLOBAL_RT6_INFO_FLAGS_OFFSET,
    GLOBAL_VXLAN_PORTS[0],
    GLOBAL_VXLAN_PORTS[1],
    GLOBAL_GENEVE_PORTS[0],
    GLOBAL_GENEVE_PORTS[1],
];

#[cfg(test)]
mod tests {
    extern crate std;

    use std::{format, string::String, vec::Vec};

    use super::*;

    /// Every row of the matrix as its name and the name its coordinates spell.
    macro_rules! spelled {
        ($(($constant:ident, $name:ident, $hook:ident, $counting:ident, $variant:ident)),* $(,)?) => {
            [$(($constant, spell(stringify!($hook), stringify!($counting), stringify!($variant)))),*]
        };
    }

    fn spell(hook: &str, counting: &str, variant: &str) -> String {
        let counting = if counting == "atomic" { "_atomic" } else { "" };
        let variant = if variant == "count" { String::new() } else { format!("_{variant}") };
        format!("rstwatch_{hook}{counting}{variant}")
    }

    #[test]
    fn each_program_of_the_matrix_is_named_by_its_coordinates_once() {
        let rows = program_matrix!(spelled);
        for (name, spelled) in &rows {
            assert_eq!(*name, spelled);
        }
        let mut names: Vec<&str> = rows.iter().map(|(name, _)| *name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 18);
        for (name, _) in &rows {
            assert!(PROGRAMS.iter().any(|(listed, _)| listed == name), "{name} is not in PROGRAMS");
        }
    }

    #[test]
    fn the_sets_pick_their_coordinates() {
        for atomic in [false, true] {
            let counting = if atomic { "atomic" } else { "per_cpu" };
            for (set, variant) in [
                (CountingPrograms::new(atomic), "count"),
                (CountingPrograms::capturing(atomic), "capture"),
                (CountingPrograms::payload(atomic), "payload"),
            ] {
                assert_eq!(set.xdp, spell("xdp", counting, variant));
                assert_eq!(set.tc, spell("tc", counting, variant));
                assert_eq!(set.tc_egress, spell("tc_egress", counting, variant));
            }
        }
        assert_eq!(CountingPrograms::new(false).xdp, "rstwatch_xdp");
        assert_eq!(CountingPrograms::payload(true).tc_egress, "rstwatch_tc_egress_atomic_payload");
    }
}
