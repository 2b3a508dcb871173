//! What the kernel made of each test frame, read from the maps it left behind: a second handle
//! on the counters, the flow table, the per-CPU flow cache and the eviction logs, opened before
//! the collector takes the originals.

use std::{
    collections::{BTreeMap, HashSet},
    os::fd::AsFd as _,
};

use anyhow::bail;
use aya::maps::{Map, MapData, PerCpuArray};
use rst_common::{
    wire::{
        CacheSlot, ResetCounters, TrafficCounters, FLOW_CACHE_SLOTS, MAP_EVICTION_LOG, MAP_FLOW_BLOCKS, MAP_FLOW_CACHE,
        MAP_FLOW_TABLE, MAP_RESET_COUNTERS, MAP_TRAFFIC,
    },
    Counters, FlowKey, Observation,
};

use crate::{
    collect::flow_table::{self, EvictionLogMap, FlowTableMap},
    collect::Sample,
};

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

pub(super) struct Probe {
    traffic: PerCpuArray<MapData, TrafficCounters>,
    resets: PerCpuArray<MapData, ResetCounters>,
    /// The flow table; test runs write to epoch 0's half until the first collect.
    flows: FlowTableMap,
    /// The maps `flows` and `log` point into: mapped memory lives as long as its map.
    _flow_maps: [MapData; 3],
    /// The per-CPU flow cache in front of it (epoch 0 is its first half).
    cache: PerCpuArray<MapData, CacheSlot>,
    log: EvictionLogMap,
}

impl Probe {
    /// `second_handle` opens a map of the object by name.
    pub(super) fn open(
        second_handle: impl Fn(&str) -> Result<MapData, super::Error>,
        max_flows: u32,
    ) -> anyhow::Result<Self> {
        let traffic = PerCpuArray::try_from(Map::PerCpuArray(second_handle(MAP_TRAFFIC)?))?;
        let resets = PerCpuArray::try_from(Map::PerCpuArray(second_handle(MAP_RESET_COUNTERS)?))?;
        let cache = PerCpuArray::try_from(Map::PerCpuArray(second_handle(MAP_FLOW_CACHE)?))?;
        let flow_table = second_handle(MAP_FLOW_TABLE)?;
        let flow_blocks = second_handle(MAP_FLOW_BLOCKS)?;
        let log_data = second_handle(MAP_EVICTION_LOG)?;
        let bits = rst_common::table::flow_table_bits(max_flows);
        let flows = FlowTableMap::new(flow_table.fd().as_fd(), flow_blocks.fd().as_fd(), bits)?;
        let log = EvictionLogMap::new(
            log_data.fd().as_fd(),
            log_data.info()?.max_entries(),
            flow_table::possible_cpu_ids()?,
        )?;
        Ok(Self { traffic, resets, flows, _flow_maps: [flow_table, flow_blocks, log_data], cache, log })
    }

    /// Runs one frame (`run`) and reads the counter deltas it left.
    pub(super) fn classify(
        &self,
        run: impl FnOnce() -> Result<(), super::Error>,
        expected_key: Option<&FlowKey>,
    ) -> anyhow::Result<Verdict> {
        let traffic_before = self.traffic_totals()?;
        let resets_before = self.reset_totals()?;
        let flow_before = expected_key.map(|key| self.flow_count(key)).transpose()?;
        run()?;
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

    fn traffic_totals(&self) -> anyhow::Result<TrafficCounters> {
        let mut total = TrafficCounters::default();
        for cpu in self.traffic.get(&0, 0)?.iter() {
            total.accumulate(cpu);
        }
        Ok(total)
    }

    fn reset_totals(&self) -> anyhow::Result<ResetCounters> {
        let mut total = ResetCounters::default();
        for cpu in self.resets.get(&0, 0)?.iter() {
            total.resets += cpu.resets;
            total.overflow += cpu.overflow;
        }
        Ok(total)
    }

    pub(super) fn log_and_table_use(&self, epoch: u32) -> anyhow::Result<(u64, usize)> {
        let logged = self.resets.get(&epoch, 0)?.iter().map(|counters| counters.logged).sum();
        let mut in_table = 0;
        self.flows.visit(epoch, |_, _| in_table += 1);
        Ok((logged, in_table))
    }

    pub(super) fn cached_resets(&self) -> anyhow::Result<u64> {
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
    let mut drained = HashSet::new();
    let mut flows = BTreeMap::new();
    for (key, count) in &sample.flows {
        if !drained.insert(*key) {
            bail!("flow {key:?} drained twice");
        }
        *flows.entry(key.unclassified()).or_insert(0) += count;
    }
    Ok(flows)
}
