//! Reading the kernel's counts exactly, once per interval.
//!
//! The program writes into the pair (flow-table half `e`, `COUNTERS[e]`) selected by `EPOCH = e`.
//! [`Collector::collect`] flips `EPOCH`, waits for an RCU grace period — after which no program
//! run that read the old epoch can still be in flight — and then owns the old pair alone: it
//! scans the flow table's half of that epoch through its memory mapping (emptying it as it
//! goes), drains the smaller hash tables with batch syscalls and zeroes the counter slot. Nothing races, so nothing is lost or counted twice, and every interval's flow
//! counts add up to its counters: `sum(flows) + overflow == resets`.

pub mod connections;
pub mod flow_table;
pub mod jiffies;
pub mod payloads;
pub mod sockets;

use std::{collections::HashMap, os::fd::AsFd as _, time::Instant};

use aya::{
    maps::{Array, Map, MapData, PerCpuArray, PerCpuValues},
    Ebpf,
};
use rst_common::{
    wire::{
        CacheSlot, FirewallResetKey, IdleKey, IdleValue, ListenKey, ListenValue, ResetCounters, ServiceKey,
        ServiceValue, SourceKey, StackResetKey, TrafficCounters, WorkloadKey, DIRECTION_RX, DIRECTION_TX,
        FLOW_CACHE_SLOTS, MAP_EPOCH, MAP_EVICTION_LOG, MAP_FIREWALL_OVERFLOW, MAP_FIREWALL_RESETS, MAP_FLOW_BLOCKS,
        MAP_FLOW_CACHE, MAP_FLOW_TABLE, MAP_IDLE_GAPS, MAP_LISTEN_RESETS, MAP_OVERFLOW_SOURCES, MAP_RESET_COUNTERS,
        MAP_SERVICES, MAP_STACK_RESETS, MAP_TRAFFIC, MAP_TUNNELS, MAP_TUNNEL_COUNT, MAP_WORKLOADS,
    },
    Counters, FlowKey, FlowValue,
};

use crate::{
    collect::flow_table::{EvictionLogMap, FlowTableMap},
    sys::map_batch::{drain_hash_map, lookup_per_cpu_array, update_per_cpu_array},
};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// What the kernel counted during one epoch.
#[derive(Debug, Default)]
pub struct Sample {
    pub counters: Counters,
    /// Tunnels numbered so far (a number each: see [`rst_common::wire::TUNNEL_INTERFACE`]),
    /// at least those numbered since the previous sample.
    pub tunnels: Vec<(u32, rst_common::wire::TunnelKey)>,
    pub flows: Vec<(FlowKey, u64)>,
    /// Per sender, the resets that found no room in the flow table (`counters.overflow`).
    pub overflow_sources: Vec<(SourceKey, u64)>,
    /// Connection attempts and SYN+ACKs per service.
    pub services: Vec<(ServiceKey, ServiceValue)>,
    /// Resets this host's TCP stack sent, per 4-tuple and kernel reason.
    pub stack_resets: Vec<(StackResetKey, u64)>,
    /// Resets per socket cgroup and origin (see [`crate::model::workload`]).
    pub workloads: Vec<(WorkloadKey, u64)>,
    /// Per listener address and port (the address the clients connected to), the resets it
    /// sent while in `TCP_LISTEN` (refused connections: an accept-queue overflow under
    /// `net.ipv4.tcp_abort_on_overflow`, a stray ACK), with the largest accept queue
    /// (`backlog`) seen at one of them and its limit (`max_backlog`), in connections. Each such
    /// reset is in `stack_resets` too, under the refused connection's own tuple. Live only
    /// (`tcp:tcp_send_reset`); empty in replay, and when unavailable
    /// ([`crate::load::LoadedObject::listen_resets`]).
    pub listen_resets: Vec<(ListenKey, ListenValue)>,
    /// Per reset's 4-tuple and direction (`DIRECTION_TX`: a local socket sent it, `DIRECTION_RX`:
    /// one received it; `src` is the RST's sender, as in flows), how long the local socket had
    /// been quiet before it, in ms ([`IdleGap`]). Full sockets only: not the kernel's answers
    /// for no socket, TIME_WAIT or pending handshakes, nor a listener's. Live only (both reset
    /// tracepoints); empty in replay, and when unavailable
    /// ([`crate::load::LoadedObject::idle_gaps`] or no known HZ).
    pub idle_gaps: Vec<(IdleKey, IdleGap)>,
    /// Resets this host's firewall sent (`reject with tcp reset`), per RST tuple and netfilter
    /// hook (see [`crate::load::firewall`]); empty where the programs are not attached, and in
    /// replay (a capture shows no netfilter).
    pub firewall_resets: Vec<(FirewallResetKey, u64)>,
    /// Firewall resets that found no room in the kernel's table (so not in `firewall_resets`).
    pub firewall_overflow: u64,
    /// How long the flip + grace period + drain took.
    pub read_time: std::time::Duration,
    /// Flow-table writes that raced with another CPU's (`ResetCounters::table_races`): when
    /// non-zero the table's slots were summed by key.
    pub table_races: u64,
    /// Per flow whose RSTs answered late segments after their sender's own FIN, the longest
    /// time since that FIN, in ms: replay's, which sees every segment's time (the kernel keeps
    /// no time per connection), so empty live.
    pub close_gaps: Vec<(FlowKey, u64)>,
    /// Per flow whose RSTs followed their sender's own FIN: how long the connection had gone
    /// without data when the sender closed, ms (replay's, as `close_gaps`).
    pub idle_before_close: Vec<(FlowKey, u64)>,
    /// Per flow: the pause before its first RST of the interval, ms (replay's; live, the
    /// kernel's `idle_gaps` tell it for local sockets).
    pub pauses: Vec<(FlowKey, u64)>,
    /// Per flow whose sender answered a segment from an address it never opened a connection
    /// to while its endpoint held a live connection to another (replay's): that connection's
    /// service, address and port.
    pub nat_lost: Vec<(FlowKey, ([u8; 16], u16))>,
}

/// How long a socket had been quiet before its reset ([`IdleValue`] in milliseconds), of the
/// last reset of its key in the interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdleGap {
    /// Resets of the key in the interval (usually 1).
    pub resets: u64,
    /// Since the socket last received data (or, without any, since its handshake), ms.
    pub since_received_ms: u64,
    /// Since it last sent data (or since its handshake), ms.
    pub since_sent_ms: u64,
    /// The idle gap: since it last received or sent data, whichever was later, ms. Resolution:
    /// one jiffy (4 ms at HZ=250).
    pub idle_ms: u64,
}

impl IdleGap {
    /// The pause before the reset: the silence before the segment it answers (the socket's
    /// first use after the pause, seen just before it: one of its two times is recent, the other
    /// from before the pause), or up to the reset when nothing broke it (a local abort after a
    /// quiet spell). Replay measures the same from segment times.
    pub fn pause_ms(&self) -> u64 {
        self.idle_ms.max(self.since_received_ms.abs_diff(self.since_sent_ms))
    }

    /// The kernel's value, its jiffies turned into ms at `hz`.
    pub fn of(value: &IdleValue, hz: u32) -> IdleGap {
        IdleGap {
            resets: value.resets,
            since_received_ms: jiffies::to_ms(value.since_received, hz),
            since_sent_ms: jiffies::to_ms(value.since_sent, hz),
            idle_ms: jiffies::to_ms(value.idle(), hz),
        }
    }
}

pub struct Collector {
    flows: FlowTableMap,
    /// Keep the table's maps alive while mapped.
    _flow_table: [MapData; 2],
    /// Where [`merge_flows`] sums a flow's slots; kept between collects for its capacity.
    merged: FastMap<FlowKey, u64>,
    overflow_sources: [MapData; 2],
    services: [MapData; 2],
    stack_resets: [MapData; 2],
    workloads: [MapData; 2],
    listen_resets: [MapData; 2],
    idle_gaps: [MapData; 2],
    /// The kernel's HZ, for the idle gaps; `None` (said once at start) drops them.
    hz: Option<u32>,
    firewall_resets: [MapData; 2],
    firewall_overflow: PerCpuArray<MapData, u64>,
    flow_cache: MapData,
    log: EvictionLogMap,
    _log: MapData,
    /// Zeroes for one epoch's half of the flow cache, all CPUs.
    empty_cache: Vec<CacheSlot>,
    epoch: Array<MapData, u32>,
    reset_counters: PerCpuArray<MapData, ResetCounters>,
    traffic: PerCpuArray<MapData, TrafficCounters>,
    /// Traffic totals (all, sent) at the previous collect: the kernel's are cumulative.
    traffic_before: [TrafficCounters; 2],
    cpus: usize,
    active: u32,
    warned_no_membarrier: bool,
    /// The kernel's tunnel numbers (never drained) and how many it handed out; see
    /// [`Collector::tunnels`].
    tunnels: aya::maps::HashMap<MapData, rst_common::wire::TunnelKey, u32>,
    tunnel_count: Array<MapData, u64>,
    tunnels_read: usize,
}

impl Sample {
    /// Whether the interval counted anything at all: the frame counters are read after the
    /// epoch flip, so a flood's last resets can land in an interval whose frames the previous
    /// one already holds.
    pub fn counted_anything(&self) -> bool {
        let Counters { frames, tcp, resets, overflow, tx_frames, .. } = self.counters;
        frames + tcp + resets + overflow + tx_frames > 0
            || !self.flows.is_empty()
            || !self.services.is_empty()
            || !self.stack_resets.is_empty()
            || !self.workloads.is_empty()
            || !self.listen_resets.is_empty()
            || !self.idle_gaps.is_empty()
            || !self.firewall_resets.is_empty()
            || self.firewall_overflow > 0
    }
}

impl Collector {
    /// The kernel's tunnel table, whenever it may hold a tunnel not read yet: the count of
    /// numbers handed out is one read; the table (small: one entry per tunnel and pair of
    /// endpoints) is read whole only then. A number lost in a race between CPUs is never in
    /// the table, so the count can stay ahead of it and the table be read again: harmless.
    fn tunnels(&mut self) -> Result<Vec<(u32, rst_common::wire::TunnelKey)>, Error> {
        let handed_out = self.tunnel_count.get(&0, 0).map_err(map("reading the tunnel count"))?;
        if handed_out as usize <= self.tunnels_read {
            return Ok(Vec::new());
        }
        let mut tunnels = Vec::new();
        for entry in self.tunnels.iter() {
            let (key, number) = entry.map_err(map("reading the tunnel table"))?;
            tunnels.push((number, key));
        }
        self.tunnels_read = tunnels.len();
        Ok(tunnels)
    }

    /// Takes ownership of the maps the collector drains.
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, Error> {
        let mut take = |name: &str| ebpf.take_map(name).ok_or_else(|| Error::MissingMap(name.to_owned()));
        let flow_table = match take(MAP_FLOW_TABLE)? {
            Map::Array(data) => data,
            other => return Err(Error::map_type("an array", "the flow table", &other)),
        };
        let slots = flow_table.info().map_err(map("reading the flow table's size"))?.max_entries();
        if !(slots.is_power_of_two() && slots >= 2) {
            return Err(Error::FlowTableSlots(slots));
        }
        let flow_blocks = match take(MAP_FLOW_BLOCKS)? {
            Map::Array(data) => data,
            other => return Err(Error::map_type("an array", "the flow table's block bitmap", &other)),
        };
        let flows = FlowTableMap::new(flow_table.fd().as_fd(), flow_blocks.fd().as_fd(), (slots / 2).trailing_zeros())
            .map_err(table("mapping the flow table (Linux >= 5.5)"))?;
        let overflow_sources =
            [hash_map_data(take(MAP_OVERFLOW_SOURCES[0])?)?, hash_map_data(take(MAP_OVERFLOW_SOURCES[1])?)?];
        let services = [hash_map_data(take(MAP_SERVICES[0])?)?, hash_map_data(take(MAP_SERVICES[1])?)?];
        let stack_resets = [hash_map_data(take(MAP_STACK_RESETS[0])?)?, hash_map_data(take(MAP_STACK_RESETS[1])?)?];
        let workloads = [hash_map_data(take(MAP_WORKLOADS[0])?)?, hash_map_data(take(MAP_WORKLOADS[1])?)?];
        let listen_resets = [hash_map_data(take(MAP_LISTEN_RESETS[0])?)?, hash_map_data(take(MAP_LISTEN_RESETS[1])?)?];
        let idle_gaps = [hash_map_data(take(MAP_IDLE_GAPS[0])?)?, hash_map_data(take(MAP_IDLE_GAPS[1])?)?];
        let firewall_resets =
            [hash_map_data(take(MAP_FIREWALL_RESETS[0])?)?, hash_map_data(take(MAP_FIREWALL_RESETS[1])?)?];
        let firewall_overflow: PerCpuArray<MapData, u64> =
            take(MAP_FIREWALL_OVERFLOW)?.try_into().map_err(map("opening the firewall overflow counters"))?;
        let flow_cache = match take(MAP_FLOW_CACHE)? {
            Map::PerCpuArray(data) => data,
            other => return Err(Error::map_type("a per-CPU array", "the flow cache", &other)),
        };
        let cpus = aya::util::nr_cpus().map_err(|(what, source)| Error::Cpus { what, source })?;
        let log_data = match take(MAP_EVICTION_LOG)? {
            Map::Array(data) => data,
            other => return Err(Error::map_type("an array", "the eviction log", &other)),
        };
        let log_entries = log_data.info().map_err(map("reading the eviction log's size"))?.max_entries();
        let cpu_ids = crate::collect::flow_table::possible_cpu_ids().map_err(table("reading the possible CPUs"))?;
        let log = EvictionLogMap::new(log_data.fd().as_fd(), log_entries, cpu_ids)
            .map_err(table("mapping the eviction log"))?;
        let epoch: Array<MapData, u32> =
            take(MAP_EPOCH)?.try_into().map_err(map("the epoch global (the object's .bss) must be a single u32"))?;
        let reset_counters: PerCpuArray<MapData, ResetCounters> =
            take(MAP_RESET_COUNTERS)?.try_into().map_err(map("opening the reset counters"))?;
        let traffic: PerCpuArray<MapData, TrafficCounters> =
            take(MAP_TRAFFIC)?.try_into().map_err(map("opening the traffic counters"))?;
        let active = epoch.get(&0, 0).map_err(map("reading the epoch"))? & 1;
        let tunnels = take(MAP_TUNNELS)?.try_into().map_err(map("opening the tunnel table"))?;
        let tunnel_count = take(MAP_TUNNEL_COUNT)?.try_into().map_err(map("opening the tunnel count"))?;
        let mut collector = Self {
            flows,
            _flow_table: [flow_table, flow_blocks],
            merged: FastMap::default(),
            overflow_sources,
            services,
            stack_resets,
            workloads,
            listen_resets,
            idle_gaps,
            hz: None,
            firewall_resets,
            firewall_overflow,
            flow_cache,
            log,
            _log: log_data,
            empty_cache: vec![CacheSlot::EMPTY; FLOW_CACHE_SLOTS as usize * cpus],
            epoch,
            reset_counters,
            traffic,
            traffic_before: [TrafficCounters::default(); 2],
            cpus,
            active,
            warned_no_membarrier: false,
            tunnels,
            tunnel_count,
            tunnels_read: 0,
        };
        collector.traffic_before = collector.read_traffic()?;
        collector.hz = match jiffies::kernel_hz() {
            Ok((hz, source)) => {
                tracing::debug!("the kernel's HZ is {hz} ({source:?}): idle gaps are counted in its ticks");
                Some(hz)
            }
            Err(why) => {
                tracing::warn!("idle gaps before resets are unavailable: {why}");
                None
            }
        };
        Ok(collector)
    }

    /// Ends the current epoch and returns everything counted in it.
    pub fn collect(&mut self) -> Result<Sample, Error> {
        let started = Instant::now();
        let finished = self.active;
        let next = finished ^ 1;
        self.epoch.set(0, next, 0).map_err(map("flipping the epoch"))?;
        self.active = next;
        self.wait_for_grace_period();

        let per_cpu = self.reset_counters.get(&finished, 0).map_err(map("reading the reset counters"))?;
        let logged: Vec<u64> = per_cpu.iter().map(|cpu| cpu.logged).collect();
        let resets = ResetCounters::sum(per_cpu.iter());
        log_rare_events(finished, &per_cpu, self.log.cpu_ids(), self.log.slots());
        let traffic = self.read_traffic()?;
        let [before, tx_before] = std::mem::replace(&mut self.traffic_before, traffic);
        let counters = Counters::of_period(&traffic[0].since(&before), &traffic[1].since(&tx_before), &resets);

        let first_slot = finished * FLOW_CACHE_SLOTS;
        let cached_slots: Vec<CacheSlot> =
            lookup_per_cpu_array(self.flow_cache.fd().as_fd(), first_slot, FLOW_CACHE_SLOTS, self.cpus)
                .map_err(sys("reading the flow cache"))?;
        update_per_cpu_array(self.flow_cache.fd().as_fd(), first_slot, &self.empty_cache, self.cpus)
            .map_err(sys("clearing the flow cache"))?;
        let mut logged_flows = Vec::new();
        self.log.drain(finished, &logged, |key, resets| logged_flows.push((*key, resets)));
        let cached_flows = cached_slots.iter().map(|slot| (slot.key, slot.resets));
        let table = &mut self.flows;
        let whole_half = resets.table_races > 0;
        let drain_table = |sink: &mut dyn FnMut(&FlowKey, u64)| {
            table.drain(finished, whole_half, sink);
        };
        let flows = merge_flows(cached_flows.chain(logged_flows), drain_table, resets.table_races, &mut self.merged);
        let half = finished as usize;
        let overflow_sources = if counters.overflow > 0 {
            drain(
                &self.overflow_sources[half],
                "draining the overflow-source table",
                |key: &SourceKey, value: &FlowValue| Some((*key, value.resets)),
            )?
        } else {
            Vec::new()
        };
        let services =
            drain(&self.services[half], "draining the service table", |key: &ServiceKey, value: &ServiceValue| {
                Some((*key, *value))
            })?;
        let stack_resets = drain(
            &self.stack_resets[half],
            "draining the kernel-reset table",
            |key: &StackResetKey, value: &FlowValue| Some((*key, value.resets)),
        )?;
        let workloads =
            drain(&self.workloads[half], "draining the workload table", |key: &WorkloadKey, value: &FlowValue| {
                Some((*key, value.resets))
            })?;
        let listen_resets = drain(
            &self.listen_resets[half],
            "draining the listener-reset table",
            |key: &ListenKey, value: &ListenValue| Some((*key, *value)),
        )?;
        // Without a known HZ the gaps cannot be said in ms: drained, not reported.
        let hz = self.hz;
        let idle_gaps =
            drain(&self.idle_gaps[half], "draining the idle-gap table", |key: &IdleKey, value: &IdleValue| {
                hz.map(|hz| (*key, IdleGap::of(value, hz)))
            })?;
        let firewall_resets = drain(
            &self.firewall_resets[half],
            "draining the firewall-reset table",
            |key: &FirewallResetKey, value: &FlowValue| Some((*key, value.resets)),
        )?;
        let firewall_overflow = self.take_firewall_overflow(finished)?;
        // Last: until everything of the epoch is read, its counts (and the logs' lengths) stay.
        let zeroes = PerCpuValues::try_from(vec![ResetCounters::default(); self.cpus]).map_err(Error::CpuValues)?;
        self.reset_counters.set(finished, zeroes, 0).map_err(map("resetting the reset counters"))?;
        let tunnels = self.tunnels()?;
        Ok(Sample {
            counters,
            tunnels,
            flows,
            overflow_sources,
            services,
            stack_resets,
            workloads,
            listen_resets,
            idle_gaps,
            firewall_resets,
            firewall_overflow,
            read_time: started.elapsed(),
            table_races: resets.table_races,
            // The kernel keeps no time per connection.
            close_gaps: Vec::new(),
            idle_before_close: Vec::new(),
            pauses: Vec::new(),
            nat_lost: Vec::new(),
        })
    }

    /// The epoch's firewall overflow, summed over CPUs, and zeroed for its next turn.
    fn take_firewall_overflow(&mut self, epoch: u32) -> Result<u64, Error> {
        let per_cpu = self.firewall_overflow.get(&epoch, 0).map_err(map("reading the firewall overflow counters"))?;
        let overflow = per_cpu.iter().sum();
        if overflow > 0 {
            let zeroes = PerCpuValues::try_from(vec![0u64; self.cpus]).map_err(Error::CpuValues)?;
            self.firewall_overflow.set(epoch, zeroes, 0).map_err(map("resetting the firewall overflow counters"))?;
        }
        Ok(overflow)
    }

    /// Cumulative traffic: both directions together, and what was sent.
    fn read_traffic(&self) -> Result<[TrafficCounters; 2], Error> {
        let [received, sent] = [DIRECTION_RX, DIRECTION_TX].map(|direction| {
            let per_cpu = self.traffic.get(&u32::from(direction), 0).map_err(map("reading the traffic counters"))?;
            Ok::<_, Error>(TrafficCounters::sum(per_cpu.iter()))
        });
        let (received, sent) = (received?, sent?);
        Ok([TrafficCounters::sum([&received, &sent]), sent])
    }

    /// After this returns, every BPF program run that started before it has finished.
    fn wait_for_grace_period(&mut self) {
        if let Err(error) = crate::sys::membarrier::global() {
            // nohz_full kernels refuse it. Programs run for microseconds; a pause orders of
            // magnitude longer is a safe, if not formally exact, substitute.
            if !self.warned_no_membarrier {
                self.warned_no_membarrier = true;
                tracing::warn!("{:#}; waiting 50 ms per interval instead", anyhow::Error::from(error));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// The tracing target of the kernel side's rare events.
pub const KERNEL_LOG_TARGET: &str = "rstwatch::kernel";

/// The kernel side's rare events in `epoch` — a CPU's eviction log filling, resets finding the
/// flow table full, races for a flow-table slot — at debug level, per CPU (`per_cpu` in the
/// order of `cpu_ids`). Told from the counters the programs keep anyway, so they cost the
/// programs nothing (see "Why no aya-log" in docs/design.md).
fn log_rare_events(epoch: u32, per_cpu: &[ResetCounters], cpu_ids: &[u32], log_slots: u32) {
    for (cpu, counters) in cpu_ids.iter().zip(per_cpu) {
        if counters.logged >= u64::from(log_slots) {
            tracing::debug!(
                target: KERNEL_LOG_TARGET,
                "CPU {cpu} filled its eviction log ({log_slots} entries) in epoch {epoch}: later evictions went to the flow table"
            );
        }
        if counters.overflow > 0 {
            tracing::debug!(
                target: KERNEL_LOG_TARGET,
                "CPU {cpu} found the flow table full for {} resets in epoch {epoch}: counted per source instead",
                counters.overflow
            );
        }
        if counters.table_races > 0 {
            tracing::debug!(
                target: KERNEL_LOG_TARGET,
                "CPU {cpu} raced another CPU for a flow-table slot {} times in epoch {epoch}: the drain summed the whole half",
                counters.table_races
            );
        }
    }
}

/// One epoch's flows with unique keys: `per_cpu` — the per-CPU caches' occupied slots and the
/// eviction logs' entries (a flow may sit in several CPUs' caches and logs, several times in
/// one log, and in the table) — and the table's slots, which `drain_table` passes to its sink.
/// The table holds a key at most once unless the kernel reported `table_races`; only then does
/// every table slot go through `merged` (a map kept between calls for its capacity, left
/// empty): summing a million slots through a million-entry map costs several times the scan.
fn merge_flows(
    per_cpu: impl Iterator<Item = (FlowKey, u64)>,
    drain_table: impl FnOnce(&mut dyn FnMut(&FlowKey, u64)),
    table_races: u64,
    merged: &mut FastMap<FlowKey, u64>,
) -> Vec<(FlowKey, u64)> {
    merged.clear();
    // Free cache slots count nothing.
    for (key, resets) in per_cpu.filter(|&(_, resets)| resets > 0) {
        *merged.entry(key).or_default() += resets;
    }
    let mut flows: Vec<(FlowKey, u64)> = Vec::new();
    if table_races > 0 {
        drain_table(&mut |key, resets| *merged.entry(*key).or_default() += resets);
    } else {
        drain_table(&mut |key, resets| {
            let also_cached = if merged.is_empty() { 0 } else { merged.remove(key).unwrap_or(0) };
            flows.push((*key, resets + also_cached));
        });
    }
    flows.extend(merged.drain());
    flows
}

/// Empties one epoch's half of a table the programs fill, keeping what `keep` makes of each
/// entry; `what` says it in an error.
fn drain<K: aya::Pod, V: aya::Pod, T>(
    map: &MapData,
    what: &'static str,
    mut keep: impl FnMut(&K, &V) -> Option<T>,
) -> Result<Vec<T>, Error> {
    let mut kept = Vec::new();
    drain_hash_map::<K, V>(map.fd().as_fd(), |key, value| kept.extend(keep(key, value))).map_err(sys(what))?;
    Ok(kept)
}

fn hash_map_data(map: Map) -> Result<MapData, Error> {
    match map {
        Map::HashMap(data) => Ok(data),
        other => Err(Error::map_type("a hash map", "a drained table", &other)),
    }
}

/// Why the collector cannot open or read the kernel's maps.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the eBPF object has no map {0}")]
    MissingMap(String),
    /// A map of another type than the collector reads it as: an object from another build.
    #[error("expected {expected} for {what}, got {got}")]
    MapType { expected: &'static str, what: &'static str, got: String },
    #[error("the flow table has {0} slots, not two epochs of a power of two")]
    FlowTableSlots(u32),
    #[error("{what}: {source}")]
    Cpus { what: &'static str, source: std::io::Error },
    #[error("one value per CPU")]
    CpuValues(#[source] std::io::Error),
    /// A map operation through aya (`what`: which).
    #[error("{what}")]
    Map {
        what: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    /// A batch or per-CPU operation of the collector's own (`what`: which).
    #[error("{what}")]
    Sys {
        what: &'static str,
        #[source]
        source: crate::sys::Error,
    },
    /// Mapping the flow table or the eviction log (`what`: which).
    #[error("{what}")]
    Table {
        what: &'static str,
        #[source]
        source: flow_table::Error,
    },
}

impl Error {
    fn map_type(expected: &'static str, what: &'static str, got: &Map) -> Error {
        Error::MapType { expected, what, got: format!("{got:?}") }
    }
}

fn map(what: &'static str) -> impl FnOnce(aya::maps::MapError) -> Error {
    move |source| Error::Map { what, source }
}

fn sys(what: &'static str) -> impl FnOnce(crate::sys::Error) -> Error {
    move |source| Error::Sys { what, source }
}

fn table(what: &'static str) -> impl FnOnce(flow_table::Error) -> Error {
    move |source| Error::Table { what, source }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rst_common::wire::{DIRECTION_RX, FAMILY_IPV4};

    use super::*;

    fn flow(port: u16) -> FlowKey {
        FlowKey::from_parts([0x0a00_0001, 0, 0, 0], [0x0a00_0002, 0, 0, 0], 2, port, 80, FAMILY_IPV4, DIRECTION_RX, 64)
    }

    fn cached(port: u16, resets: u64) -> CacheSlot {
        CacheSlot { key: flow(port), resets, ..CacheSlot::EMPTY }
    }

    fn merge(cache: &[CacheSlot], table: &[(u16, u64)], races: u64) -> Vec<(FlowKey, u64)> {
        let mut merged = FastMap::default();
        let flows = merge_flows(
            cache.iter().map(|slot| (slot.key, slot.resets)),
            |sink| {
                for &(port, resets) in table {
                    sink(&flow(port), resets);
                }
            },
            races,
            &mut merged,
        );
        assert!(merged.is_empty(), "the reused map is left empty");
        flows
    }

    fn by_port(flows: &[(FlowKey, u64)]) -> BTreeMap<u16, u64> {
        let ports: BTreeMap<u16, u64> = flows.iter().map(|(key, resets)| (key.sport, *resets)).collect();
        assert_eq!(ports.len(), flows.len(), "a key came twice: {flows:?}");
        ports
    }

    #[test]
    fn cache_and_table_slots_of_a_flow_are_summed_once() {
        // Flow 1 in two CPUs' caches and the table, flow 2 only cached, flow 3 only in the table;
        // an empty cache slot counts nothing.
        let cache = [cached(1, 2), cached(2, 5), cached(1, 1), CacheSlot::EMPTY];
        let flows = merge(&cache, &[(1, 10), (3, 7)], 0);
        assert_eq!(by_port(&flows), BTreeMap::from([(1, 13), (2, 5), (3, 7)]));
    }

    #[test]
    fn cache_log_and_table_entries_of_a_flow_are_summed_once() {
        // Flow 1 cached, logged three times (two CPUs) and in the table; flows 2 and 3 logged.
        let logged = [(1, 1), (1, 4), (2, 2), (3, 8), (1, 16)].map(|(port, resets)| (flow(port), resets));
        let mut merged = FastMap::default();
        let flows = merge_flows(
            [cached(1, 32)].iter().map(|slot| (slot.key, slot.resets)).chain(logged),
            |sink| sink(&flow(1), 64),
            0,
            &mut merged,
        );
        assert_eq!(by_port(&flows), BTreeMap::from([(1, 1 + 4 + 16 + 32 + 64), (2, 2), (3, 8)]));
    }

    #[test]
    fn after_a_race_a_flow_stored_twice_comes_out_once() {
        let flows = merge(&[cached(4, 1)], &[(4, 3), (5, 1), (4, 2), (5, 6)], 1);
        assert_eq!(by_port(&flows), BTreeMap::from([(4, 6), (5, 7)]));
    }

    #[test]
    fn without_a_race_the_table_is_taken_as_it_is() {
        // What the kernel promises when it reports no race: the table's keys are unique. The
        // fast path does not look for duplicates, so it passes one through — which is why the
        // kernel must report every race (see `rst_common::table::Added::Raced`).
        let flows = merge(&[], &[(6, 1), (6, 1)], 0);
        assert_eq!(flows.len(), 2);
        assert_eq!(merge(&[], &[], 0), Vec::new());
    }
}
