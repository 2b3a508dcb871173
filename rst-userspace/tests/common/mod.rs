//! The real XDP object under `BPF_PROG_TEST_RUN`, shared by the kernel and corpus tests.
//!
//! [`Kernel`] loads the object the way rstwatch does (`rstwatch::loader::load`), builds the real
//! [`Collector`] before any frame runs (its traffic baseline is taken there), and also keeps a
//! second handle on the maps it needs to look at after every single frame: the per-frame deltas
//! say how the kernel classified each frame, so a disagreement names the frame, not just a
//! total.

#![allow(dead_code)] // Each test crate uses its own part of the harness.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};
use aya::{
    maps::{Map, MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use rst_common::{
    wire::{
        CacheSlot, ResetCounters, TrafficCounters, FLOW_CACHE_SLOTS, MAP_EVICTION_LOG, MAP_FLOW_BLOCKS, MAP_FLOW_CACHE,
        MAP_FLOW_TABLE, MAP_RESET_COUNTERS, MAP_TRAFFIC,
    },
    Counters, FlowKey, Observation,
};
use rstwatch::{
    collector::{Collector, Sample},
    flow_table::{EvictionLogMap, FlowTableMap},
    loader::Counting,
    testrun::XdpMd,
};

/// `XDP_PASS` from include/uapi/linux/bpf.h.
pub const XDP_PASS: u32 = 2;
/// The loopback's ifindex in every network namespace: what a test run without `ctx_in`
/// reports as the ingress interface.
pub const LOOPBACK_IFINDEX: u32 = 1;
/// `BPF_PROG_TEST_RUN` refuses XDP input shorter than an Ethernet header (`ETH_HLEN`).
pub const MIN_FRAME: usize = 14;

/// How the kernel classified one frame, read from the counter deltas it left behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    NotTcp,
    Malformed,
    Fragment,
    Segment,
    Reset,
}

impl Verdict {
    pub fn expected(observation: &Observation) -> Self {
        match observation {
            Observation::NotTcp => Verdict::NotTcp,
            Observation::Malformed => Verdict::Malformed,
            Observation::Fragment => Verdict::Fragment,
            Observation::Segment | Observation::Control(_) => Verdict::Segment,
            Observation::Reset(_) => Verdict::Reset,
        }
    }
}

pub struct Kernel {
    ebpf: rstwatch::loader::LoadedObject,
    collector: Collector,
    traffic: PerCpuArray<MapData, TrafficCounters>,
    resets: PerCpuArray<MapData, ResetCounters>,
    /// The flow table; test runs write to epoch 0's half until the first collect.
    flows: FlowTableMap,
    _flow_table: [MapData; 2],
    /// The per-CPU flow cache in front of it (epoch 0 is its first half).
    cache: PerCpuArray<MapData, CacheSlot>,
    log: EvictionLogMap,
    _log: MapData,
}

impl Kernel {
    pub fn load(max_flows: u32) -> anyhow::Result<Self> {
        Self::load_counting(max_flows, Counting::Auto)
    }

    pub fn load_counting(max_flows: u32, counting: Counting) -> anyhow::Result<Self> {
        let mut ebpf = rstwatch::loader::load_counting(max_flows, counting)
            .context("loading the eBPF object (tests need root)")?;
        let traffic = PerCpuArray::try_from(second_handle(&ebpf, MAP_TRAFFIC)?)?;
        let resets = PerCpuArray::try_from(second_handle(&ebpf, MAP_RESET_COUNTERS)?)?;
        let Map::Array(flow_table) = second_handle(&ebpf, MAP_FLOW_TABLE)? else {
            bail!("{MAP_FLOW_TABLE} is not an array");
        };
        let Map::Array(flow_blocks) = second_handle(&ebpf, MAP_FLOW_BLOCKS)? else {
            bail!("{MAP_FLOW_BLOCKS} is not an array");
        };
        let bits = rst_common::table::flow_table_bits(max_flows);
        let flows = FlowTableMap::new(
            std::os::fd::AsFd::as_fd(flow_table.fd()),
            std::os::fd::AsFd::as_fd(flow_blocks.fd()),
            bits,
        )?;
        let cache = PerCpuArray::try_from(second_handle(&ebpf, MAP_FLOW_CACHE)?)?;
        let Map::Array(log_data) = second_handle(&ebpf, MAP_EVICTION_LOG)? else {
            bail!("{MAP_EVICTION_LOG} is not an array");
        };
        let cpu_ids = rstwatch::flow_table::possible_cpu_ids()?;
        let log =
            EvictionLogMap::new(std::os::fd::AsFd::as_fd(log_data.fd()), log_data.info()?.max_entries(), cpu_ids)?;
        let collector = Collector::new(&mut ebpf)?;
        Ok(Self {
            ebpf,
            collector,
            traffic,
            resets,
            flows,
            _flow_table: [flow_table, flow_blocks],
            cache,
            log,
            _log: log_data,
        })
    }

    /// `"per-cpu"` or `"atomic"`: which counting programs were loaded.
    pub fn counting_mode(&self) -> &'static str {
        self.ebpf.counting().as_str()
    }

    pub fn program(&self) -> anyhow::Result<&Xdp> {
        let name = self.ebpf.programs().xdp;
        let program = self.ebpf.program(name).with_context(|| format!("no program {name}"))?;
        Ok(program.try_into()?)
    }

    /// Runs `frame` through the program `repeat` times, as arriving on the loopback.
    pub fn run(&self, frame: &[u8], repeat: u32) -> anyhow::Result<()> {
        run_xdp(self.program()?, frame, None, repeat)
    }

    /// Runs `frame` once as arriving on `ifindex` (which must exist in this network namespace).
    pub fn run_on(&self, frame: &[u8], ifindex: u32) -> anyhow::Result<()> {
        run_xdp(self.program()?, frame, Some(ifindex), 1)
    }

    /// Runs one frame and reports how the kernel classified it. For a reset, also checks that
    /// `expected_key`'s entry grew by exactly one.
    pub fn classify(&self, frame: &[u8], expected_key: Option<&FlowKey>) -> anyhow::Result<Verdict> {
        let traffic_before = self.traffic_totals()?;
        let resets_before = self.reset_totals()?;
        let flow_before = expected_key.map(|key| self.flow_count(key)).transpose()?;
        self.run(frame, 1)?;
        let traffic = self.traffic_totals()?.since(&traffic_before);
        let resets = self.reset_totals()?.resets - resets_before.resets;
        let verdict = match (traffic.frames(), traffic.tcp, traffic.malformed, traffic.fragments, resets) {
            (1, 0, 0, 0, 0) => Verdict::NotTcp,
            (1, 0, 1, 0, 0) => Verdict::Malformed,
            (1, 0, 0, 1, 0) => Verdict::Fragment,
            (1, 1, 0, 0, 0) => Verdict::Segment,
            (1, 1, 0, 0, 1) => Verdict::Reset,
            _ => bail!("one frame left impossible counter deltas: {traffic:?}, resets +{resets}"),
        };
        if let (Verdict::Reset, Some(key), Some(before)) = (verdict, expected_key, flow_before) {
            let after = self.flow_count(key)?;
            if after != before + 1 {
                bail!("reset counted, but the entry for {key:?} went from {before} to {after}");
            }
        }
        Ok(verdict)
    }

    /// Ends the epoch the test runs wrote to and returns what it counted.
    pub fn collect(&mut self) -> anyhow::Result<Sample> {
        self.collector.collect()
    }

    fn traffic_totals(&self) -> anyhow::Result<TrafficCounters> {
        Ok(TrafficCounters::sum(self.traffic.get(&0, 0)?.iter()))
    }

    fn reset_totals(&self) -> anyhow::Result<ResetCounters> {
        Ok(ResetCounters::sum(self.resets.get(&0, 0)?.iter()))
    }

    /// In `epoch`: eviction-log entries used, all CPUs, and flow-table slots used.
    pub fn log_and_table_use(&self, epoch: u32) -> anyhow::Result<(u64, usize)> {
        let logged = self.resets.get(&epoch, 0)?.iter().map(|counters| counters.logged).sum();
        let mut in_table = 0;
        self.flows.visit(epoch, |_, _| in_table += 1);
        Ok((logged, in_table))
    }

    /// Resets held in the per-CPU flow cache, both epochs, all CPUs.
    pub fn cached_resets(&self) -> anyhow::Result<u64> {
        let mut cached = 0;
        for slot in 0..2 * FLOW_CACHE_SLOTS {
            cached += self.cache.get(&slot, 0)?.iter().map(|cpu| cpu.resets).sum::<u64>();
        }
        Ok(cached)
    }

    /// What epoch 0 holds for `key` (unclassified: every classification of the flow): its
    /// table entries plus its slots in every CPU's cache and entries in every CPU's log.
    fn flow_count(&self, key: &FlowKey) -> anyhow::Result<u64> {
        let mut in_table = 0;
        self.flows.visit(0, |stored, resets| {
            if stored.unclassified() == *key {
                in_table += resets;
            }
        });
        let mut cached = 0;
        for slot in 0..FLOW_CACHE_SLOTS {
            for cpu in self.cache.get(&slot, 0)?.iter() {
                if cpu.resets > 0 && cpu.key.unclassified() == *key {
                    cached += cpu.resets;
                }
            }
        }
        // Epoch 0's runs of the eviction logs, each CPU's first `logged` (the kernel is idle:
        // the harness runs the programs itself).
        let used: Vec<u64> = self.resets.get(&0, 0)?.iter().map(|counters| counters.logged).collect();
        let mut logged = 0;
        self.log.visit(0, &used, |stored, resets| {
            if stored.unclassified() == *key {
                logged += resets;
            }
        });
        Ok(in_table + cached + logged)
    }
}

/// A new file descriptor for one of the object's maps, so the harness can read it after the
/// collector has taken the original.
fn second_handle(ebpf: &Ebpf, name: &str) -> anyhow::Result<Map> {
    let map = ebpf.map(name).with_context(|| format!("the eBPF object has no map {name}"))?;
    let data = match map {
        Map::HashMap(data) | Map::PerCpuArray(data) | Map::Array(data) => data,
        other => bail!("unexpected map type for {name}: {other:?}"),
    };
    let id = data.info()?.id();
    Ok(Map::from_map_data(MapData::from_id(id)?)?)
}

/// One `BPF_PROG_TEST_RUN` that must return `XDP_PASS`. With `ifindex`, a `struct xdp_md`
/// context sets the ingress interface; without, the kernel uses the loopback.
pub fn run_xdp(program: &Xdp, frame: &[u8], ifindex: Option<u32>, repeat: u32) -> anyhow::Result<()> {
    if frame.len() < MIN_FRAME {
        bail!("a test run needs at least {MIN_FRAME} bytes, got {}", frame.len());
    }
    let context = ifindex.map(|ifindex| XdpMd::arriving(frame.len(), ifindex));
    let context_bytes = context.as_ref().map(XdpMd::as_bytes);
    let result = program
        .test_run(TestRunOptions { data_in: Some(frame), ctx_in: context_bytes, repeat, ..TestRunOptions::new() })
        .with_context(|| format!("BPF_PROG_TEST_RUN with a {}-byte frame", frame.len()))?;
    if result.return_value != XDP_PASS {
        bail!("the program returned {} instead of XDP_PASS for a {}-byte frame", result.return_value, frame.len());
    }
    Ok(())
}

/// What a sample must contain after `observations` ran once each (no table overflow).
pub fn expected_sample(observations: impl IntoIterator<Item = Observation>) -> (Counters, BTreeMap<FlowKey, u64>) {
    let mut counters = Counters::default();
    let mut flows = BTreeMap::new();
    for observation in observations {
        counters.frames += 1;
        match observation {
            Observation::NotTcp => {}
            Observation::Malformed => counters.malformed += 1,
            Observation::Fragment => counters.fragments += 1,
            Observation::Segment | Observation::Control(_) => counters.tcp += 1,
            Observation::Reset(event) => {
                counters.tcp += 1;
                counters.resets += 1;
                *flows.entry(event.key).or_insert(0) += 1;
            }
        }
    }
    (counters, flows)
}

/// The flows of a sample as a map by unclassified key (see [`FlowKey::unclassified`]),
/// failing on a key drained twice.
pub fn sample_flows(sample: &Sample) -> anyhow::Result<BTreeMap<FlowKey, u64>> {
    let mut drained = std::collections::HashSet::new();
    let mut flows = BTreeMap::new();
    for (key, count) in &sample.flows {
        if !drained.insert(*key) {
            bail!("flow {key:?} drained twice");
        }
        *flows.entry(key.unclassified()).or_insert(0) += count;
    }
    Ok(flows)
}
