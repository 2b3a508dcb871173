//! Part 3: the userspace read cost. Flow tables filled with N entries (the way the kernel stores
//! them), then the real `Collector::collect()` timed; the table scan alone; the same with every
//! CPU's eviction log full; and the grace period alone (the epoch-flip latency).

use std::{os::fd::AsFd as _, time::Instant};

use anyhow::{ensure, Context as _};
use aya::maps::{Array, Map, MapData, PerCpuArray, PerCpuValues};
use rst_bench_report::{median, DrainReport, DrainRow};
use rst_common::wire::{FlowKey, MAP_EPOCH, MAP_FLOW_BLOCKS, MAP_FLOW_TABLE};
use rstwatch::{
    collect::flow_table::FlowTableMap,
    load::testrun::Harness,
    load::Counting,
    sys::{map_batch, membarrier},
};

use super::flood_flow;

/// Stores `keys[i]` with `values[i]` resets in `epoch`'s half of the flow table, the way the
/// kernel does ([`rst_common::table::add_to_flow_table`]).
fn fill_table(table: &FlowTableMap, epoch: u32, keys: &[FlowKey], values: &[u64]) -> anyhow::Result<()> {
    for (key, &resets) in keys.iter().zip(values) {
        let added = rst_common::table::add_to_flow_table(table, table.bits(), epoch, key, resets);
        ensure!(added == rst_common::table::Added::Stored, "the flow table answered {added:?} for {key:?}");
    }
    Ok(())
}

/// How long one grace period takes: what every epoch flip waits for.
fn membarrier_ns() -> anyhow::Result<f64> {
    let started = Instant::now();
    membarrier::global().context("membarrier(MEMBARRIER_CMD_GLOBAL)")?;
    Ok(started.elapsed().as_nanos() as f64)
}

pub fn drain(sizes: &[u32], trials: usize) -> anyhow::Result<DrainReport> {
    let largest = *sizes.iter().max().context("--flows is empty")?;
    let mut harness = Harness::load(largest.max(1024), Counting::Auto)?;
    let second_handle = |name| harness.second_handle(name);
    let table_map = second_handle(MAP_FLOW_TABLE)?;
    let blocks_map = second_handle(MAP_FLOW_BLOCKS)?;
    let bits = rst_common::table::flow_table_bits(largest.max(1024));
    let mut table = FlowTableMap::new(table_map.fd().as_fd(), blocks_map.fd().as_fd(), bits)?;
    let epoch: Array<MapData, u32> = Map::Array(second_handle(MAP_EPOCH)?).try_into()?;
    let cache = second_handle(rst_common::wire::MAP_FLOW_CACHE)?;
    let log_data = second_handle(rst_common::wire::MAP_EVICTION_LOG)?;
    let log_entries = log_data.info()?.max_entries();
    let mut log: Array<MapData, rst_common::wire::LoggedFlow> = Map::Array(log_data).try_into()?;
    let mut resets: PerCpuArray<MapData, rst_common::wire::ResetCounters> =
        Map::PerCpuArray(second_handle(rst_common::wire::MAP_RESET_COUNTERS)?).try_into()?;

    let mut flips = Vec::new();
    let mut empty = Vec::new();
    for _ in 0..trials.max(5) {
        flips.push(membarrier_ns()?);
        let sample = harness.collect()?;
        empty.push(sample.read_time.as_nanos() as f64);
    }
    let empty_ns = median(empty.iter().copied());
    // The flow cache's share of every collect: one batch read and one batch clear of an epoch's
    // half (1024 slots per CPU).
    let cpus = aya::util::nr_cpus().map_err(|(what, error)| anyhow::anyhow!("{what}: {error}"))?;
    let slots = rst_common::wire::FLOW_CACHE_SLOTS;
    let zeroes = vec![rst_common::wire::CacheSlot::EMPTY; slots as usize * cpus];
    let (mut cache_read, mut cache_clear) = (Vec::new(), Vec::new());
    for _ in 0..trials.max(5) {
        let started = Instant::now();
        let _: Vec<rst_common::wire::CacheSlot> =
            map_batch::lookup_per_cpu_array(cache.fd().as_fd(), slots, slots, cpus)?;
        cache_read.push(started.elapsed().as_nanos() as f64);
        let started = Instant::now();
        map_batch::update_per_cpu_array(cache.fd().as_fd(), slots, &zeroes, cpus)?;
        cache_clear.push(started.elapsed().as_nanos() as f64);
    }
    let mut rows = Vec::new();
    for &n in sizes {
        let keys: Vec<FlowKey> = (0..n)
            .map(|i| {
                let mut key = flood_flow(i).flow_key(7);
                key.sport = (i % 50_000) as u16;
                key
            })
            .collect();
        let values: Vec<u64> = (0..n).map(|i| u64::from(i % 7 + 1)).collect();
        let expected: u64 = values.iter().sum();
        let mut times = Vec::new();
        let mut fill = Vec::new();
        for _ in 0..trials {
            // Fill the table of the epoch the kernel is writing now: the next collect drains it.
            let active = epoch.get(&0, 0)? & 1;
            let started = Instant::now();
            fill_table(&table, active, &keys, &values)?;
            fill.push(started.elapsed().as_nanos() as f64);
            let sample = harness.collect()?;
            ensure!(sample.flows.len() == n as usize, "drained {} of {n} flows", sample.flows.len());
            let total: u64 = sample.flows.iter().map(|(_, r)| r).sum();
            ensure!(total == expected, "drained {total} resets, filled {expected}");
            times.push(sample.read_time.as_nanos() as f64);
        }
        // The table scan alone (read and empty every slot), without merging by key.
        let mut raw = Vec::new();
        for _ in 0..trials {
            let active = epoch.get(&0, 0)? & 1;
            fill_table(&table, active, &keys, &values)?;
            let started = Instant::now();
            let drained = table.drain(active, false, |_, _| {});
            raw.push(started.elapsed().as_nanos() as f64);
            ensure!(drained == n as usize, "the scan emptied {drained} slots for {n} flows");
        }
        // The same table with every CPU's eviction log full as well (distinct flows): the log
        // entries go through the merge map, and then every table slot is looked up in it.
        let cpu_ids = rstwatch::collect::flow_table::possible_cpu_ids()?;
        let log_slots = log_entries / (2 * rstwatch::collect::flow_table::eviction_log_cpus(&cpu_ids));
        let logged: Vec<(u32, rst_common::wire::LoggedFlow)> = cpu_ids
            .iter()
            .flat_map(|&cpu| (0..log_slots).map(move |n| (cpu, n)))
            .map(|(cpu, n)| {
                let key = flood_flow(n + (cpu * log_slots)).flow_key(9);
                (cpu, rst_common::wire::LoggedFlow { key, resets: 1 })
            })
            .collect();
        let mut with_logs = Vec::new();
        for _ in 0..trials {
            let active = epoch.get(&0, 0)? & 1;
            fill_table(&table, active, &keys, &values)?;
            for (at, (cpu, entry)) in logged.iter().enumerate() {
                let n = at as u32 % log_slots;
                log.set((cpu * 2 + active) * log_slots + n, entry, 0)?;
            }
            let counters = rst_common::wire::ResetCounters { logged: u64::from(log_slots), ..Default::default() };
            resets.set(active, PerCpuValues::try_from(vec![counters; cpus])?, 0)?;
            let sample = harness.collect()?;
            let total: u64 = sample.flows.iter().map(|(_, r)| r).sum();
            ensure!(total == expected + logged.len() as u64, "drained {total} resets with the logs");
            with_logs.push(sample.read_time.as_nanos() as f64);
        }
        let with_logs_ns = median(with_logs.iter().copied());
        let entries_with_logs = f64::from(n) + logged.len() as f64;
        let collect_ns = median(times.iter().copied());
        let raw_ns = median(raw.iter().copied());
        rows.push(DrainRow {
            with_full_logs_collect_ms: with_logs_ns / 1e6,
            with_full_logs_entries: entries_with_logs,
            with_full_logs_ns_per_entry: with_logs_ns / entries_with_logs,
            scan_ms: raw_ns / 1e6,
            scan_ns_per_entry: raw_ns / f64::from(n),
            flows: n,
            collect_ms: collect_ns / 1e6,
            ns_per_entry: collect_ns / f64::from(n),
            ns_per_entry_over_empty: (collect_ns - empty_ns) / f64::from(n),
            fill_ms: median(fill.iter().copied()) / 1e6,
        });
    }
    Ok(DrainReport {
        trials,
        grace_period_ms: median(flips.iter().copied()) / 1e6,
        empty_collect_ms: empty_ns / 1e6,
        cache_read_ms: median(cache_read.iter().copied()) / 1e6,
        cache_clear_ms: median(cache_clear.iter().copied()) / 1e6,
        rows,
    })
}
