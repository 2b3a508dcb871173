//! RST payloads in every live run: the counting programs hand each RST that carries data to
//! `PAYLOAD_RING` (see `rst-ebpf/src/payload.rs`; with `--capture`, the capture's frames carry
//! them instead), and each interval this gives them to the flow records' `rst_payload`, through
//! the same walk and escape as replay. What the kernel could not hand over is counted there and
//! said here, in the log.

use std::collections::HashMap;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use rst_common::{
    parse::{walk_with, Observation},
    wire::{PayloadCounters, PayloadRecord, MAP_PAYLOAD_COUNTERS, MAP_PAYLOAD_RING},
};

use super::Error;
use crate::model::aggregate::{
    model::PayloadSummary,
    payload,
    tunnels::{FrameFlow, FrameTunnel, TunnelPortSet},
    Aggregator,
};

/// Flows whose payload arrived before their first count (an RST between the collector's flip
/// and this drain): kept for one more interval, at most this many.
const MAX_PENDING: usize = 4096;

pub struct Payloads {
    ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, PayloadCounters>,
    /// Payloads of flows the run did not list yet, from the last drain.
    pending: HashMap<FrameFlow, (Vec<u8>, usize)>,
    /// What the kernel had not handed over at the last look, so each loss is said once.
    dropped: u64,
    /// Whether the payload programs are in place, so the counters mean anything.
    installed: bool,
    ports: TunnelPortSet,
}

impl Payloads {
    /// Takes the ring and its counters from the object; `installed`: whether the loader put
    /// the payload programs in place (see [`crate::load::LoadedObject::reads_payloads`]).
    /// The frames are walked with `ports`, the run's tunnel ports.
    pub fn open(ebpf: &mut aya::Ebpf, installed: bool, ports: TunnelPortSet) -> Result<Payloads, Error> {
        let mut take = |name: &str| ebpf.take_map(name).ok_or_else(|| Error::MissingMap(name.to_owned()));
        let ring = RingBuf::try_from(take(MAP_PAYLOAD_RING)?)
            .map_err(|source| Error::Map { what: "opening the payload ring buffer", source })?;
        let counters = PerCpuArray::try_from(take(MAP_PAYLOAD_COUNTERS)?)
            .map_err(|source| Error::Map { what: "opening the payload counters", source })?;
        Ok(Payloads { ring, counters, pending: HashMap::new(), dropped: 0, installed, ports })
    }

    /// Gives every payload handed over since the last call — through the ring, or `captured`
    /// from the frames `--capture` wrote — to its flow in `aggregator` (the last one wins), and
    /// says in the log what the kernel dropped since. A payload whose flow the run does not list
    /// yet waits for the next call.
    pub fn drain(&mut self, aggregator: &mut Aggregator, captured: HashMap<FrameFlow, (Vec<u8>, usize)>) {
        let mut pending = std::mem::take(&mut self.pending);
        pending.retain(|id, (bytes, len)| !aggregator.rst_payload_of(id, bytes, *len));
        let mut deliver = |id: FrameFlow, bytes: Vec<u8>, len: usize| {
            if !aggregator.rst_payload_of(&id, &bytes, len)
                && (self.pending.len() < MAX_PENDING || self.pending.contains_key(&id))
            {
                self.pending.insert(id, (bytes, len));
            }
        };
        for (id, (bytes, len)) in captured {
            deliver(id, bytes, len);
        }
        while let Some(item) = self.ring.next() {
            if let Some((id, bytes, len)) = of_record(&item, &self.ports) {
                deliver(id, bytes, len);
            }
        }
        self.report();
    }

    /// The kernel's counts, summed over the CPUs.
    pub fn counters(&self) -> Result<PayloadCounters, Error> {
        let per_cpu =
            self.counters.get(&0, 0).map_err(|source| Error::Map { what: "reading the payload counters", source })?;
        let mut total = PayloadCounters::default();
        for counters in per_cpu.iter() {
            total.add(counters);
        }
        Ok(total)
    }

    /// The run's account of RSTs with data, for the summary: none when the payload programs
    /// are not in place (capturing, or refused by the kernel) or the counters cannot be read
    /// (said in the log).
    pub fn summary(&self) -> Option<PayloadSummary> {
        if !self.installed {
            return None;
        }
        match self.counters() {
            Ok(PayloadCounters { sent, ring_full, unreadable }) => {
                Some(PayloadSummary { handed_over: sent, ring_full, unreadable })
            }
            Err(error) => {
                tracing::warn!("{error:#}");
                None
            }
        }
    }

    fn report(&mut self) {
        match self.counters() {
            Ok(counters) if counters.dropped() > self.dropped => {
                let PayloadCounters { sent, ring_full, unreadable } = counters;
                tracing::warn!(
                    ring_full,
                    unreadable,
                    sent,
                    "{} RST payloads were not handed over since the last interval (ring full or unreadable): \
                     their flows show the last payload that was",
                    counters.dropped() - self.dropped
                );
                self.dropped = counters.dropped();
            }
            Ok(_) => {}
            Err(error) => tracing::warn!("{error:#}"),
        }
    }
}

/// The flow (its [`rst_common::FlowKey::flow_id`] and tunnel), first bytes and length of the payload in one
/// record.
fn of_record(item: &[u8], ports: &TunnelPortSet) -> Option<(FrameFlow, Vec<u8>, usize)> {
    if item.len() < std::mem::size_of::<PayloadRecord>() {
        return None;
    }
    // SAFETY: the ring item holds a whole record (checked above); read unaligned, and every
    // bit pattern is a valid `PayloadRecord` (integers and bytes only).
    let record = unsafe { item.as_ptr().cast::<PayloadRecord>().read_unaligned() };
    let PayloadRecord { ifindex, captured, direction, _pad: _, data } = record;
    let data = &data[..usize::from(captured).min(data.len())];
    let mut tunnel = FrameTunnel::new(ports);
    let Observation::Reset(event) = rst_common::inspect_tunnels(data, direction, || ifindex, &mut tunnel) else {
        return None;
    };
    let (bytes, len) = payload::of_frame(data, walk_with(data, &tunnel))?;
    Some(((event.key.flow_id(), tunnel.found), bytes.to_vec(), len))
}
