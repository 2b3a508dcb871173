//! `--metrics ADDR`: Prometheus exposition of the run's totals, the top resetters of the last
//! interval, and rstwatch's own health.
//!
//! Label sets stay bounded whatever the traffic: interfaces are the ones given with `-i`, and
//! the resetter gauges are cleared and refilled each interval with at most `--top` series.
//! The endpoint serves only `GET /metrics`, caps concurrent connections and times out slow
//! clients, so a misbehaving scraper cannot stall the counting.
//!
//! This module is the registry: every metric with its labels, declared once. The model's
//! mapping onto it is `observe`, the endpoint `server`, the
//! text-format rewrite `text`, the program run-time sampling `run_time`.

mod observe;
mod run_time;
mod server;
mod slots;
mod text;

use std::{collections::HashMap, net::IpAddr, sync::atomic::AtomicU64, time::Duration};

use prometheus_client::{
    encoding::{text::encode, EncodeLabel, EncodeLabelSet, LabelSetEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use self::slots::Slots;
pub use self::{
    run_time::{RunTimeWindow, RUN_TIME_EVERY, RUN_TIME_WINDOW},
    server::{parse_listen, serve, ListenError},
    text::prometheus_text,
};
use crate::model::{aggregate::model::ServiceTunnel, kernel_reason::ReasonNames};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InterfaceLabels {
    iface: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

/// Interfaces × 2 directions × 4 kinds (+ one series per interface for overflowed resets).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResetLabels {
    iface: String,
    direction: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct ServiceLabels {
    rank: u32,
    iface: String,
    addr: String,
    port: u16,
    /// See [`tunnel_label`].
    tunnel: Option<String>,
}

impl EncodeLabelSet for ServiceLabels {
    fn encode(&self, mut encoder: LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let ServiceLabels { rank, iface, addr, port, tunnel } = self;
        ("rank", *rank).encode(encoder.encode_label())?;
        ("iface", iface.as_str()).encode(encoder.encode_label())?;
        ("addr", addr.as_str()).encode(encoder.encode_label())?;
        ("port", *port).encode(encoder.encode_label())?;
        encode_tunnel(tunnel.as_deref(), &mut encoder)
    }
}

/// A workload among the run's top ones (at most `--top`); empty strings for what it lacks.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkloadLabels {
    rank: u32,
    cgroup: String,
    unit: String,
    namespace: String,
    pod: String,
    container: String,
}

/// The kernel's reset reasons: a fixed enum.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResetterLabels {
    rank: u32,
    src: String,
}

/// One series per cause: a fixed enum.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProgramLabels {
    program: &'static str,
}

/// One of at most `--top` resetters holding a stable slot, or `other`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    src: String,
}

/// One of at most `--top` services holding a stable slot.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct ServiceKeyLabels {
    addr: String,
    port: u16,
    /// See [`tunnel_label`].
    tunnel: Option<String>,
}

impl ServiceKeyLabels {
    fn of((addr, port, tunnel): ServiceSlot) -> Self {
        ServiceKeyLabels { addr: addr.to_string(), port, tunnel: tunnel_label(tunnel.as_ref()) }
    }
}

impl EncodeLabelSet for ServiceKeyLabels {
    fn encode(&self, mut encoder: LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let ServiceKeyLabels { addr, port, tunnel } = self;
        ("addr", addr.as_str()).encode(encoder.encode_label())?;
        ("port", *port).encode(encoder.encode_label())?;
        encode_tunnel(tunnel.as_deref(), &mut encoder)
    }
}

/// A service's `tunnel` label: the tunnel it was reached through ("vxlan 42", "gre key 7"), so
/// that two tenants' services at one inner address are two series. Absent outside tunnels,
/// which keeps those series (and every rule over them) as they were: Prometheus reads an empty
/// label as no label.
fn tunnel_label(tunnel: Option<&ServiceTunnel>) -> Option<String> {
    tunnel.map(ServiceTunnel::describe)
}

fn encode_tunnel(tunnel: Option<&str>, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
    match tunnel {
        Some(tunnel) => ("tunnel", tunnel).encode(encoder.encode_label()),
        None => Ok(()),
    }
}

/// A service as the fleet counters know it: address, port, tunnel.
type ServiceSlot = (IpAddr, u16, Option<ServiceTunnel>);

/// The label sets of the `*_by_source` / `*_by_service` counters: see [`slots`].
struct Fleet {
    sources: Slots<IpAddr>,
    services: Slots<ServiceSlot>,
}

impl Fleet {
    fn new(top: usize) -> Self {
        Fleet { sources: Slots::new(top, SLOT_IDLE_AFTER), services: Slots::new(top, SLOT_IDLE_AFTER) }
    }
}

/// A resetter or service this long without activity gives its slot (and series) up.
const SLOT_IDLE_AFTER: Duration = Duration::from_secs(15 * 60);
/// `--top`'s default, until [`Metrics::tracking`] says otherwise.
const DEFAULT_TOP: usize = 10;
/// The `src` of the resets of every resetter without a slot.
const OTHER_SOURCE: &str = "other";

type GaugeF64 = Gauge<f64, AtomicU64>;

/// Declares every metric rstwatch exposes once — its field, type, exposed name (after the
/// `rstwatch_` prefix) and help — so that none can be kept but left out of the registry.
/// Exposition follows the order written here.
macro_rules! exposed_metrics {
    (
        exposed { $($field:ident: $ty:ty => $name:literal, $help:literal;)+ }
        $($other:ident: $other_ty:ty,)+
    ) => {
        pub struct Metrics {
            registry: Registry,
            $($field: $ty,)+
            $($other: $other_ty,)+
        }

        impl Metrics {
            fn registered($($other: $other_ty),+) -> Self {
                let mut registry = Registry::with_prefix("rstwatch");
                $(
                    let $field = <$ty>::default();
                    registry.register($name, $help, $field.clone());
                )+
                Metrics { registry, $($field,)+ $($other,)+ }
            }
        }
    };
}

exposed_metrics! {
    exposed {
        frames: Family<DirectionLabels, Counter> => "frames",
            "Frames the programs saw, by direction (rx received, tx sent)";
        tcp: Family<DirectionLabels, Counter> => "tcp_segments", "TCP segments among them";
        malformed: Counter => "malformed_frames", "Frames truncated or malformed inside a header";
        fragments: Counter => "fragments", "Non-first IP fragments (no TCP header to read)";
        resets: Family<ResetLabels, Counter> => "resets",
            "TCP resets in flows, by interface, direction (rx received, tx sent) and kind (refused, handshake, established, closing)";
        middlebox_resets: Family<InterfaceLabels, Counter> => "middlebox_resets",
            "Resets whose TTL differs from the claimed sender's handshake: likely injected in between";
        resets_by_cause: Family<CauseLabels, Counter> => "resets_by_cause",
            "Resets each cause explains (the verdicts: no_listener, went_down, connection_limit, state_lost, middlebox, app_abort, health_check, teardown, scan; benign: health_check, teardown)";
        kernel_resets: Family<ReasonLabels, Counter> => "kernel_resets",
            "Resets this host's TCP stack sent, by the kernel's reason (tcp:tcp_send_reset; all namespaces)";
        service_attempts: Family<ServiceLabels, Gauge> => "service_attempts",
            "Connection attempts (SYN) since the start to the run's top services by resets (at most --top series)";
        service_synacks: Family<ServiceLabels, Gauge> => "service_synacks",
            "Handshakes accepted (SYN+ACK) since the start by the run's top services";
        service_resets: Family<ServiceLabels, Gauge> => "service_resets",
            "Resets since the start on connections of the run's top services";
        workload_sent_resets: Family<WorkloadLabels, Gauge> => "workload_sent_resets",
            "Resets since the start that the run's top workloads' sockets sent (at most --top series)";
        workload_received_resets: Family<WorkloadLabels, Gauge> => "workload_received_resets",
            "Resets since the start that the run's top workloads' sockets received";
        unattributed_resets: Counter => "unattributed_resets",
            "Resets that found room in neither the flow nor the source table (no interface known)";
        overflow: Counter => "flow_overflow", "Resets that found no room in the flow table";
        source_overflow: Counter => "source_overflow",
            "Resets that found no room in the per-source overflow table either";
        intervals: Counter => "intervals", "Intervals read";
        top_resetters: Family<ResetterLabels, Gauge> => "top_resetter_resets",
            "Resets in the last interval by the top resetters (at most --top series)";
        flow_table_fill: GaugeF64 => "flow_table_fill_ratio",
            "Flows in the last interval over the flow table's capacity";
        read_seconds: GaugeF64 => "interval_read_seconds",
            "Time to flip the epoch, wait the grace period and drain the tables";
        run_seconds_per_packet: Family<ProgramLabels, GaugeF64> => "program_run_seconds_per_packet",
            "Average run time per packet, sampled for 1 s a minute with kernel BPF stats (needs CAP_SYS_ADMIN)";
        resets_by_source: Family<SourceLabels, Counter> => "resets_by_source",
            "Resets sent by each resetter holding one of --top stable slots (src=\"other\": all the others); a slot idle for 15 minutes is freed";
        attempts_by_service: Family<ServiceKeyLabels, Counter> => "attempts_by_service",
            "Connection attempts (SYN) to each service holding one of --top stable slots";
        accepted_by_service: Family<ServiceKeyLabels, Counter> => "accepted_by_service",
            "Handshakes accepted (SYN+ACK) by each service holding a slot";
        refused_by_service: Family<ServiceKeyLabels, Counter> => "refused_by_service",
            "Connection attempts each service holding a slot refused with a RST";
        resets_by_service: Family<ServiceKeyLabels, Counter> => "resets_by_service",
            "Resets on connections of each service holding a slot, from either side";
    }
    names: std::sync::Mutex<HashMap<u32, String>>,
    max_flows: u32,
    reason_names: ReasonNames,
    fleet: std::sync::Mutex<Fleet>,
}

impl Metrics {
    /// `interfaces`: ifindex → name of every interface watched.
    /// `reason_names`: the kernel's reset reasons, index = code.
    pub fn new(interfaces: HashMap<u32, String>, max_flows: u32, reason_names: ReasonNames) -> Self {
        Metrics::registered(
            std::sync::Mutex::new(interfaces),
            max_flows,
            reason_names,
            std::sync::Mutex::new(Fleet::new(DEFAULT_TOP)),
        )
    }

    /// At most `top` resetters and `top` services get their own counters (`--top`).
    pub fn tracking(self, top: usize) -> Self {
        *self.fleet.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Fleet::new(top);
        self
    }

    /// Names an interface attached after the start (one that came back with a new ifindex).
    pub fn add_interface(&self, ifindex: u32, name: &str) {
        self.names.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(ifindex, name.to_owned());
    }

    pub fn set_run_time(&self, program: &'static str, ns_per_packet: f64) {
        self.run_seconds_per_packet.get_or_create(&ProgramLabels { program }).set(ns_per_packet * 1e-9);
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }
}
