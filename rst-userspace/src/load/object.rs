//! Loading the object: the maps sized to `--max-flows`, the loader-set globals (table bits,
//! eviction log slots, tracepoint and workload offsets, the capture's budget), the counting
//! programs of the chosen [`Counting`], and the payload programs they tail-call.

use std::io;

use aya::{
    programs::{SchedClassifier, Xdp},
    Ebpf, EbpfLoader,
};
use caps::Capability;
use rst_common::wire::{
    CountingPrograms, GLOBAL_CAPTURE_BUDGET, GLOBAL_CAPTURE_HANDSHAKES, GLOBAL_CAPTURE_REASONS, GLOBAL_CAPTURE_SNAPLEN,
    GLOBAL_EVICTION_LOG_SLOTS, GLOBAL_FLOW_TABLE_BITS, GLOBAL_GENEVE_PORTS, GLOBAL_SEND_RESET_DADDR_OFFSET,
    GLOBAL_SEND_RESET_REASON_OFFSET, GLOBAL_SEND_RESET_SADDR_OFFSET, GLOBAL_VXLAN_PORTS, MAP_CAPTURE_REASONS,
    MAP_CONNECTIONS, MAP_CONN_FINGERPRINTS, MAP_EVICTION_LOG, MAP_FIREWALL_RESETS, MAP_FLOW_BLOCKS, MAP_FLOW_TABLE,
    MAP_IDLE_GAPS, MAP_LISTEN_RESETS, MAP_OVERFLOW_SOURCES, MAP_SERVICES, MAP_STACK_RESETS, MAP_WORKLOADS,
};

use super::{
    caps::has_capability,
    counting::{this_kernel_is_preempt_rt, Counting, CountingMode},
    firewall::{FirewallOffsets, FirewallTargets},
    kernel_events::SendResetFormat,
    socket_reads::SocketReads,
    tail_call::install_payload_programs,
    Error, EBPF_OBJECT,
};
use crate::availability::Availability;

/// Capacity of the overflow-source tables for a given flow-table capacity: a quarter of it, so
/// memory stays proportional to what the operator asked for, within sane bounds.
pub fn overflow_sources_for(max_flows: u32) -> u32 {
    (max_flows / 4).clamp(256, 262_144)
}

/// Loads the object with both epochs' flow tables sized to hold `max_flows` flows each at half
/// load ([`rst_common::table::flow_table_bits`]), the connection table to as many slots as
/// one epoch's flow table, the overflow-source tables to [`overflow_sources_for`], services
/// and kernel events (stack resets, workloads, listener resets, idle gaps, firewall resets: each
/// two epochs' tables, fixed at load) to a quarter of it, and loads the XDP and TC programs. The tracepoint program is loaded by
/// [`super::attach_kernel_events`].
pub fn load(max_flows: u32) -> Result<LoadedObject, Error> {
    load_counting(max_flows, Counting::Auto)
}

/// The loaded object together with how its programs count, decided once by [`load_counting`]
/// so that nothing has to guess it back from which programs have a file descriptor.
///
/// It derefs to the [`Ebpf`]: maps and programs are taken from it as from any aya object.
pub struct LoadedObject {
    ebpf: Ebpf,
    counting: CountingMode,
    /// Whether the workload programs found their offsets.
    workload_offsets: Availability,
    /// Whether the listener resets and the idle gaps are recorded (see [`super::socket_reads`]).
    listen_resets: Availability,
    idle_gaps: Availability,
    /// The ways in the firewall programs have on this kernel, or why none.
    firewall: Result<FirewallTargets, String>,
    /// Whether the capturing programs were loaded (`--capture`).
    capturing: bool,
    /// Whether the payload programs are in place (see `install_payload_programs`).
    reads_payloads: bool,
}

impl LoadedObject {
    pub fn counting(&self) -> CountingMode {
        self.counting
    }

    /// Whether the programs record workloads.
    pub fn workload_offsets(&self) -> &Availability {
        &self.workload_offsets
    }

    /// Whether `tcp:tcp_send_reset` records listener resets by the connection refused, with the
    /// accept queue.
    pub fn listen_resets(&self) -> &Availability {
        &self.listen_resets
    }

    /// Whether the reset tracepoints record the idle gap before each connection's reset.
    pub fn idle_gaps(&self) -> &Availability {
        &self.idle_gaps
    }

    /// The ways in this kernel has for the firewall programs (their globals set), or why they
    /// cannot run.
    pub fn firewall_targets(&self) -> Result<&FirewallTargets, &str> {
        self.firewall.as_ref().map_err(String::as_str)
    }

    /// The counting programs that were loaded.
    pub fn programs(&self) -> CountingPrograms {
        programs_for(self.counting, self.capturing)
    }

    /// Whether the counting programs hand RSTs with data to the payload ring (not when
    /// capturing: the capture hands over every RST's frame).
    pub fn reads_payloads(&self) -> bool {
        self.reads_payloads
    }
}

fn programs_for(counting: CountingMode, capturing: bool) -> CountingPrograms {
    if capturing {
        CountingPrograms::capturing(counting == CountingMode::Atomic)
    } else {
        counting.programs()
    }
}

/// What the capturing programs are loaded with (`--capture`, see [`crate::output::capture`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureLoad {
    /// RSTs per second handed to the ring.
    pub budget: u32,
    /// Bytes of each frame.
    pub snaplen: u32,
    pub handshakes: bool,
}

impl std::ops::Deref for LoadedObject {
    type Target = Ebpf;

    fn deref(&self) -> &Ebpf {
        &self.ebpf
    }
}

impl std::ops::DerefMut for LoadedObject {
    fn deref_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

/// [`load`], counting as `counting` says.
pub fn load_counting(max_flows: u32, counting: Counting) -> Result<LoadedObject, Error> {
    load_with(max_flows, counting, true, None)
}

/// [`load_counting`], with the workload programs' recording on or off (`--no-workloads`: the
/// reset tracepoints then skip it, a constant the verifier prunes), and the capturing programs
/// instead of the plain ones when `capture` is given.
pub fn load_with(
    max_flows: u32,
    counting: Counting,
    workloads: bool,
    capture: Option<CaptureLoad>,
) -> Result<LoadedObject, Error> {
    load_with_ports(max_flows, counting, workloads, capture, &crate::cli::TunnelPorts::default())
}

/// The globals that hold extra tunnel ports: two to a word, the first in the low half, 0 for
/// none (see `rst_common::wire::GLOBAL_VXLAN_PORTS`).
fn port_words(kind: &'static str, ports: &[u16]) -> Result<[u32; 2], Error> {
    if ports.len() > 4 {
        return Err(Error::TooManyTunnelPorts { kind, count: ports.len() });
    }
    let port = |i: usize| u32::from(ports.get(i).copied().unwrap_or(0));
    Ok([port(0) | (port(1) << 16), port(2) | (port(3) << 16)])
}

/// [`load_with`], walking into VXLAN and Geneve on `tunnel_ports` too.
pub fn load_with_ports(
    max_flows: u32,
    counting: Counting,
    workloads: bool,
    capture: Option<CaptureLoad>,
    tunnel_ports: &crate::cli::TunnelPorts,
) -> Result<LoadedObject, Error> {
    let vxlan_ports = port_words("VXLAN", &tunnel_ports.vxlan)?;
    let geneve_ports = port_words("Geneve", &tunnel_ports.geneve)?;
    let mode = counting.resolve();
    match (counting, mode) {
        (Counting::Auto, CountingMode::Atomic) => tracing::info!(
            "PREEMPT_RT kernel: counting with atomic adds and no per-CPU flow cache, so that programs \
             preempting each other on one CPU lose nothing (each RST costs more)"
        ),
        (Counting::Atomic, _) => {
            tracing::info!("counting with atomic adds and no per-CPU flow cache (--counting atomic)")
        }
        (Counting::PerCpu, _) if this_kernel_is_preempt_rt() => tracing::warn!(
            "--counting per-cpu on a PREEMPT_RT kernel: programs preempting each other on one CPU can lose counts"
        ),
        _ => {}
    }
    let programs = programs_for(mode, capture.is_some());
    let max_sources = overflow_sources_for(max_flows);
    let offsets = SendResetFormat::read();
    // Parsed once for all three; dropped once the offsets are had.
    let btf = super::btf::Types::of_kernel();
    let socket_reads = SocketReads::read(btf.as_ref());
    let workload_offsets = if workloads {
        crate::model::workload::Offsets::read(btf.as_ref()).map_err(|e| format!("{e:#}"))
    } else {
        Err("off".to_owned())
    };
    let firewall = FirewallOffsets::read(btf.as_ref());
    drop(btf);
    let table_bits = rst_common::table::flow_table_bits(max_flows);
    let cpu_ids = crate::collect::flow_table::possible_cpu_ids().map_err(Error::PossibleCpus)?;
    let cpus = u32::try_from(cpu_ids.len()).map_err(|_| Error::TooManyCpus)?;
    let log_slots = rst_common::table::eviction_log_slots(max_flows, cpus);
    let log_runs = 2 * crate::collect::flow_table::eviction_log_cpus(&cpu_ids);
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(MAP_FLOW_TABLE, 2 << table_bits)
        .map_max_entries(MAP_FLOW_BLOCKS, rst_common::table::flow_block_words(table_bits))
        .override_global(GLOBAL_FLOW_TABLE_BITS, &table_bits, true)
        .map_max_entries(MAP_EVICTION_LOG, log_runs * log_slots)
        .override_global(GLOBAL_EVICTION_LOG_SLOTS, &log_slots, true)
        .override_global(GLOBAL_VXLAN_PORTS[0], &vxlan_ports[0], true)
        .override_global(GLOBAL_VXLAN_PORTS[1], &vxlan_ports[1], true)
        .override_global(GLOBAL_GENEVE_PORTS[0], &geneve_ports[0], true)
        .override_global(GLOBAL_GENEVE_PORTS[1], &geneve_ports[1], true)
        .map_max_entries(MAP_OVERFLOW_SOURCES[0], max_sources)
        .map_max_entries(MAP_OVERFLOW_SOURCES[1], max_sources)
        .map_max_entries(MAP_CONNECTIONS, 1 << table_bits)
        .map_max_entries(MAP_CONN_FINGERPRINTS, rst_common::table::conn_fingerprint_words(table_bits))
        .map_max_entries(MAP_SERVICES[0], max_sources)
        .map_max_entries(MAP_SERVICES[1], max_sources)
        .map_max_entries(MAP_STACK_RESETS[0], max_sources)
        .map_max_entries(MAP_STACK_RESETS[1], max_sources)
        .map_max_entries(MAP_WORKLOADS[0], max_sources)
        .map_max_entries(MAP_WORKLOADS[1], max_sources)
        .map_max_entries(MAP_LISTEN_RESETS[0], max_sources)
        .map_max_entries(MAP_LISTEN_RESETS[1], max_sources)
        .map_max_entries(MAP_IDLE_GAPS[0], max_sources)
        .map_max_entries(MAP_IDLE_GAPS[1], max_sources)
        .map_max_entries(MAP_FIREWALL_RESETS[0], max_sources)
        .map_max_entries(MAP_FIREWALL_RESETS[1], max_sources);
    if let Ok(firewall) = &firewall {
        firewall.apply(&mut loader);
    }
    if let Ok(workload) = &workload_offsets {
        workload.apply(&mut loader);
    }
    socket_reads.apply(&mut loader);
    if let Ok(format) = &offsets {
        loader
            .override_global(GLOBAL_SEND_RESET_REASON_OFFSET, &format.reason, true)
            .override_global(GLOBAL_SEND_RESET_SADDR_OFFSET, &format.saddr, true)
            .override_global(GLOBAL_SEND_RESET_DADDR_OFFSET, &format.daddr, true);
    }
    let capture_globals =
        capture.map(|CaptureLoad { budget, snaplen, handshakes }| (budget, snaplen, u32::from(handshakes)));
    if let Some((budget, snaplen, handshakes)) = &capture_globals {
        loader
            .override_global(GLOBAL_CAPTURE_BUDGET, budget, true)
            .override_global(GLOBAL_CAPTURE_SNAPLEN, snaplen, true)
            .override_global(GLOBAL_CAPTURE_HANDSHAKES, handshakes, true)
            .override_global(GLOBAL_CAPTURE_REASONS, &1u32, true);
    } else {
        // Nothing writes it without the capture: no kernel memory for its preallocated entries.
        loader.map_max_entries(MAP_CAPTURE_REASONS, 1);
    }
    let mut ebpf = loader.load(EBPF_OBJECT).map_err(|error| load_error(Box::new(error)))?;
    let xdp: &mut Xdp =
        ebpf.program_mut(programs.xdp).ok_or_else(|| Error::MissingProgram(programs.xdp.to_owned()))?.try_into()?;
    xdp.load().map_err(|error| load_error(Box::new(error)))?;
    for name in [programs.tc, programs.tc_egress] {
        classifier(&mut ebpf, name)?.load().map_err(|error| load_error(Box::new(error)))?;
    }
    // Without them every RST still counts, in the counting program (its tail call finds no
    // program): a kernel that refuses them costs the payloads, not the run.
    let reads_payloads = capture.is_none()
        && match install_payload_programs(&mut ebpf, CountingPrograms::payload(mode == CountingMode::Atomic)) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!("RST payloads will not be read (rst_payload stays null): {error:#}");
                false
            }
        };
    let workload_offsets = Availability::of(workload_offsets.map(|_| ()));
    // The programs run only with tcp:tcp_send_reset's format (its reason field).
    let part = |part: Result<(), String>| Availability::of(offsets.as_ref().map_err(String::clone).and(part));
    let listen_resets = part(socket_reads.listen.as_ref().map(|_| ()).map_err(String::clone));
    let idle_gaps = part(socket_reads.idle.as_ref().map(|_| ()).map_err(String::clone));
    let firewall = firewall.map(|offsets| offsets.targets).map_err(|error| error.to_string());
    Ok(LoadedObject {
        ebpf,
        counting: mode,
        workload_offsets,
        listen_resets,
        idle_gaps,
        firewall,
        capturing: capture.is_some(),
        reads_payloads,
    })
}

pub(super) fn load_error(error: Box<dyn std::error::Error + Send + Sync>) -> Error {
    let denied = {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
        let mut denied = false;
        while let Some(current) = source {
            if let Some(io) = current.downcast_ref::<io::Error>() {
                denied |= matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES));
            }
            source = current.source();
        }
        denied
    };
    if denied && !has_capability(Capability::CAP_PERFMON) && !has_capability(Capability::CAP_SYS_ADMIN) {
        return Error::MissingCapability {
            capability: "CAP_PERFMON",
            short: "PERFMON",
            why: "without it the verifier refuses the program's packet-pointer comparisons",
        };
    }
    Error::Load(error)
}

/// The XDP program that counts, of the set the object was loaded with.
pub fn xdp_program(object: &mut LoadedObject) -> Result<&mut Xdp, Error> {
    let name = object.programs().xdp;
    let program = object.program_mut(name).ok_or_else(|| Error::MissingProgram(name.to_owned()))?;
    Ok(program.try_into()?)
}

pub fn tc_program(object: &mut LoadedObject) -> Result<&mut SchedClassifier, Error> {
    let name = object.programs().tc;
    classifier(object, name)
}

pub fn tc_egress_program(object: &mut LoadedObject) -> Result<&mut SchedClassifier, Error> {
    let name = object.programs().tc_egress;
    classifier(object, name)
}

pub(super) fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier, Error> {
    let program = ebpf.program_mut(name).ok_or_else(|| Error::MissingProgram(name.to_owned()))?;
    Ok(program.try_into()?)
}
