//! `--metrics ADDR`: Prometheus exposition of the run's totals, the top resetters of the last
//! interval, and rstwatch's own health.
//!
//! Label sets stay bounded whatever the traffic: interfaces are the ones given with `-i`, and
//! the resetter gauges are cleared and refilled each interval with at most `--top` series.
//! The endpoint serves only `GET /metrics`, caps concurrent connections and times out slow
//! clients, so a misbehaving scraper cannot stall the counting.

mod slots;

use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};

use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::Semaphore};

use self::slots::Slots;
use crate::{
    collect::Sample,
    model::aggregate::{
        model::{Direction, Interval, Service, Workload, WorkloadResets},
        InterfaceResets,
    },
};

/// Scrapers served at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 64;
/// A client must send its request headers within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection (keep-alive included) lives at most this long.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    rank: u32,
    iface: String,
    addr: String,
    port: u16,
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
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceKeyLabels {
    addr: String,
    port: u16,
}

/// The label sets of the `*_by_source` / `*_by_service` counters: see [`slots`].
struct Fleet {
    sources: Slots<IpAddr>,
    services: Slots<(IpAddr, u16)>,
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
    reason_names: Vec<String>,
    fleet: std::sync::Mutex<Fleet>,
}

impl Metrics {
    /// `interfaces`: ifindex → name of every interface watched.
    /// `reason_names`: the kernel's reset reasons, index = code.
    pub fn new(interfaces: HashMap<u32, String>, max_flows: u32, reason_names: Vec<String>) -> Self {
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

    /// Folds one interval of length `elapsed` into the per-resetter and per-service counters:
    /// `sources` every resetter of the interval with its resets, largest first (see
    /// `Aggregator::interval_source_resets`), `services` every service of the interval, ranked
    /// (`Aggregator::interval_services`).
    pub fn observe_fleet(&self, elapsed: Duration, sources: &[(IpAddr, u64)], services: &[Service]) {
        let mut fleet = self.fleet.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for src in fleet.sources.tick(elapsed) {
            self.resets_by_source.remove(&SourceLabels { src: src.to_string() });
        }
        let service_families =
            [&self.attempts_by_service, &self.accepted_by_service, &self.refused_by_service, &self.resets_by_service];
        for (addr, port) in fleet.services.tick(elapsed) {
            let labels = ServiceKeyLabels { addr: addr.to_string(), port };
            for family in service_families {
                family.remove(&labels);
            }
        }
        let mut other = 0;
        for (src, resets) in sources {
            if fleet.sources.admit(src) {
                self.resets_by_source.get_or_create(&SourceLabels { src: src.to_string() }).inc_by(*resets);
            } else {
                other += resets;
            }
        }
        if other > 0 {
            self.resets_by_source.get_or_create(&SourceLabels { src: OTHER_SOURCE.to_owned() }).inc_by(other);
        }
        for service in services {
            let Service { addr, port, attempts, synacks, refused, resets, .. } = service;
            if (*attempts == 0 && *resets == 0) || !fleet.services.admit(&(*addr, *port)) {
                continue;
            }
            let labels = ServiceKeyLabels { addr: addr.to_string(), port: *port };
            for (family, count) in service_families.into_iter().zip([attempts, synacks, refused, resets]) {
                family.get_or_create(&labels).inc_by(*count);
            }
        }
    }

    /// Folds one interval in: its model (`interval`, `by_interface`, see
    /// `Aggregator::interval_by_interface`), the run's top services (cumulative, see
    /// `Aggregator::top_services`), and from the raw sample what only it knows (the overflowed
    /// resets' interfaces, the kernel's reasons, the collector's own health).
    pub fn observe(
        &self,
        sample: &Sample,
        interval: &Interval,
        by_interface: &[InterfaceResets],
        services: &[Service],
        workloads: &[WorkloadResets],
    ) {
        let totals = &interval.totals;
        for (direction, frames, tcp) in [
            (Direction::Rx, totals.frames.saturating_sub(totals.tx.frames), totals.tcp.saturating_sub(totals.tx.tcp)),
            (Direction::Tx, totals.tx.frames, totals.tx.tcp),
        ] {
            let labels = DirectionLabels { direction: direction.name() };
            self.frames.get_or_create(&labels).inc_by(frames);
            self.tcp.get_or_create(&labels).inc_by(tcp);
        }
        self.malformed.inc_by(totals.malformed);
        self.fragments.inc_by(totals.fragments);
        self.overflow.inc_by(totals.overflow);
        self.source_overflow.inc_by(totals.source_overflow);
        self.unattributed_resets.inc_by(totals.source_overflow);
        self.intervals.inc();
        for verdict in &interval.verdicts {
            self.resets_by_cause.get_or_create(&CauseLabels { cause: verdict.cause().name() }).inc_by(verdict.resets);
        }
        for group in by_interface {
            let InterfaceResets { iface, direction, kinds, middlebox } = group;
            for (kind, resets) in kinds.present() {
                let labels = ResetLabels { iface: iface.clone(), direction: direction.name(), kind: kind.name() };
                self.resets.get_or_create(&labels).inc_by(resets);
            }
            if *middlebox > 0 {
                self.middlebox_resets
                    .get_or_create(&InterfaceLabels { iface: iface.clone(), direction: direction.name() })
                    .inc_by(*middlebox);
            }
        }
        // Resets the flow table had no room for: counted per sender only, neither direction nor
        // kind known.
        let mut overflowed: HashMap<u32, u64> = HashMap::new();
        for (key, resets) in &sample.overflow_sources {
            *overflowed.entry(key.ifindex).or_default() += resets;
        }
        if !overflowed.is_empty() {
            let names = self.names.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (ifindex, resets) in overflowed {
                let iface = names.get(&ifindex).cloned().unwrap_or_else(|| format!("if{ifindex}"));
                let labels = ResetLabels { iface, direction: "unknown", kind: "unclassified" };
                self.resets.get_or_create(&labels).inc_by(resets);
            }
        }
        for (key, count) in &sample.stack_resets {
            let reason =
                self.reason_names.get(key.reason as usize).cloned().unwrap_or_else(|| format!("REASON_{}", key.reason));
            self.kernel_resets.get_or_create(&ReasonLabels { reason }).inc_by(*count);
        }
        for family in [&self.service_attempts, &self.service_synacks, &self.service_resets] {
            family.clear();
        }
        for (rank, service) in services.iter().enumerate() {
            let labels = ServiceLabels {
                rank: rank as u32 + 1,
                iface: service.iface.clone(),
                addr: service.addr.to_string(),
                port: service.port,
            };
            self.service_attempts.get_or_create(&labels).set(service.attempts as i64);
            self.service_synacks.get_or_create(&labels).set(service.synacks as i64);
            self.service_resets.get_or_create(&labels).set(service.resets as i64);
        }
        for family in [&self.workload_sent_resets, &self.workload_received_resets] {
            family.clear();
        }
        for (rank, resets) in workloads.iter().enumerate() {
            let Workload { cgroup, unit, pod, container, processes: _ } = &resets.workload;
            let labels = WorkloadLabels {
                rank: rank as u32 + 1,
                cgroup: cgroup.clone(),
                unit: unit.clone().unwrap_or_default(),
                namespace: pod.as_ref().and_then(|pod| pod.namespace.clone()).unwrap_or_default(),
                pod: pod.as_ref().map(|pod| pod.name.clone().unwrap_or_else(|| pod.uid.clone())).unwrap_or_default(),
                container: container.clone().unwrap_or_default(),
            };
            self.workload_sent_resets.get_or_create(&labels).set(resets.sent as i64);
            self.workload_received_resets.get_or_create(&labels).set(resets.received as i64);
        }
        self.top_resetters.clear();
        for (rank, source) in interval.sources.iter().enumerate() {
            let labels = ResetterLabels { rank: rank as u32 + 1, src: source.src.to_string() };
            self.top_resetters.get_or_create(&labels).set(source.resets as i64);
        }
        self.flow_table_fill.set(sample.flows.len() as f64 / f64::from(self.max_flows.max(1)));
        self.read_seconds.set(sample.read_time.as_secs_f64());
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

/// A `--metrics` value that is neither a port nor an address and port.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is neither a port nor ADDR:PORT (e.g. 9101, 127.0.0.1:9101, [::1]:9101)")]
pub struct ListenError(String);

/// Parses `--metrics`: `PORT` alone binds 127.0.0.1, otherwise `ADDR:PORT` / `[V6]:PORT`.
pub fn parse_listen(text: &str) -> Result<SocketAddr, ListenError> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse::<SocketAddr>().map_err(|_| ListenError(text.to_owned()))
}

/// Serves `GET /metrics` on `listener` until the runtime stops.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // EMFILE and friends: back off rather than spin.
                tracing::warn!("metrics endpoint: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!("metrics endpoint: {MAX_CONNECTIONS} connections open, closing a new one");
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |request| respond(request, Arc::clone(&metrics)));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
        });
    }
}

async fn respond(
    request: Request<hyper::body::Incoming>,
    metrics: Arc<Metrics>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let plain = |status: StatusCode, body: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *response.status_mut() = status;
        response
    };
    // Prometheus asks for OpenMetrics; curl and promtool get the classic text format.
    let openmetrics = request
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    Ok(match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => match metrics.encode() {
            Ok(text) => {
                let (body, content_type) = if openmetrics {
                    (text, "application/openmetrics-text; version=1.0.0; charset=utf-8")
                } else {
                    (prometheus_text(&text), "text/plain; version=0.0.4; charset=utf-8")
                };
                let mut response = Response::new(Full::new(Bytes::from(body)));
                if let Ok(value) = content_type.parse() {
                    response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
                }
                response
            }
            Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
        },
        (&Method::GET, _) => plain(StatusCode::NOT_FOUND, "rstwatch serves /metrics\n"),
        _ => plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n"),
    })
}

/// OpenMetrics text as the classic Prometheus format: counters' HELP and TYPE name the
/// `_total` sample, and there is no `# EOF`. Only what prometheus-client emits is handled.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let header = ["# HELP ", "# TYPE "].into_iter().find(|prefix| line.starts_with(prefix));
        match header {
            Some(prefix) => {
                let rest = &line[prefix.len()..];
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    text.push_str(&format!("{prefix}{name}_total {tail}\n"));
                } else {
                    text.push_str(line);
                    text.push('\n');
                }
            }
            None => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    text
}

/// How often the program's run time is sampled, and for how long. Kernel BPF stats add tens of
/// nanoseconds to every run of every program on the machine while they are on, so they are on
/// only for this window, through a `BPF_ENABLE_STATS` file descriptor: closing it restores the
/// previous state, whatever `kernel.bpf_stats_enabled` says, also if rstwatch is killed.
pub const RUN_TIME_EVERY: Duration = Duration::from_secs(60);
pub const RUN_TIME_WINDOW: Duration = Duration::from_secs(1);

/// One sampling window of kernel BPF run-time statistics.
pub struct RunTimeWindow {
    _stats: std::os::fd::OwnedFd,
    run_time: Duration,
    run_count: u64,
}

impl RunTimeWindow {
    /// Turns stats on and takes the first reading. Needs CAP_SYS_ADMIN (BPF_ENABLE_STATS).
    pub fn open(program: &aya::programs::Program) -> anyhow::Result<Self> {
        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
        let info = program.info()?;
        Ok(RunTimeWindow { _stats: stats, run_time: info.run_time(), run_count: info.run_count() })
    }

    /// Takes the second reading and turns stats off again (unless someone else keeps them on).
    /// Returns nanoseconds per run, or `None` if the program did not run.
    pub fn close(self, program: &aya::programs::Program) -> anyhow::Result<Option<f64>> {
        let info = program.info()?;
        let runs = info.run_count().saturating_sub(self.run_count);
        let time = info.run_time().saturating_sub(self.run_time);
        Ok((runs > 0).then(|| time.as_nanos() as f64 / runs as f64))
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use rst_common::{
        wire::{ResetClass, ResetKind, DIRECTION_TX, FAMILY_IPV4},
        FlowKey,
    };

    use super::*;
    use crate::model::aggregate::{
        model::{AttachMode, Interface},
        Aggregator,
    };

    #[test]
    fn resets_are_counted_per_interface_direction_and_kind_from_the_model() {
        let key = |direction: u8, kind: ResetKind, sport: u16, peer_ttl: u8| FlowKey {
            src: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ifindex: 7,
            sport,
            dport: 80,
            family: FAMILY_IPV4,
            direction,
            class: ResetClass::new(kind, true, true, true, false).0,
            rst_ttl: 64,
            peer_ttl,
            ..FlowKey::default()
        };
        let sample = Sample {
            flows: vec![
                (key(DIRECTION_TX, ResetKind::Refused, 1, 0), 3),
                (key(DIRECTION_TX, ResetKind::Refused, 2, 0), 2),
                (key(0, ResetKind::Closing, 3, 60), 4),
            ],
            ..Sample::default()
        };
        let interfaces = vec![Interface {
            iface: "veth9".into(),
            ifindex: 7,
            mode: AttachMode::Capture(crate::cmd::replay::link::Link::Ethernet),
            peer_netns: None,
        }];
        let mut aggregator = Aggregator::new(interfaces, 10);
        let interval = aggregator.add(&sample, Duration::from_secs(1), SystemTime::now());
        let metrics = Metrics::new(HashMap::from([(7, "veth9".to_string())]), 1024, Vec::new());
        metrics.observe(&sample, &interval, &aggregator.interval_by_interface(), &aggregator.top_services(), &[]);
        let text = metrics.encode().unwrap();
        for series in [
            r#"rstwatch_resets_total{iface="veth9",direction="tx",kind="refused"} 5"#,
            r#"rstwatch_resets_total{iface="veth9",direction="rx",kind="closing"} 4"#,
            r#"rstwatch_middlebox_resets_total{iface="veth9",direction="rx"} 4"#,
            r#"rstwatch_top_resetter_resets{rank="1",src="10.0.0.1"} 9"#,
            // The verdicts: the closing RST's connection shows 10.0.0.1's own TTL (60), so every
            // RST claiming to be it with 64 — the refusals too — was forged in between.
            r#"rstwatch_resets_by_cause_total{cause="middlebox"} 9"#,
        ] {
            assert!(text.contains(series), "{series} missing in\n{text}");
        }
        assert!(!text.contains(r#"direction="tx",kind="closing""#), "no series for kinds that did not happen");
        assert!(!text.contains(r#"cause="no_listener""#), "forged refusals are not a closed port");
    }

    #[test]
    fn resetters_and_services_keep_counters_in_at_most_top_slots() {
        let ip = |last: u8| IpAddr::from([10, 0, 0, last]);
        let service = |last: u8, port: u16, attempts: u64, refused: u64| Service {
            iface: "veth9".into(),
            ifindex: 7,
            addr: ip(last),
            port,
            attempts,
            synacks: attempts - refused,
            resets: refused,
            refused,
            refused_share: 0.0,
            kinds: Default::default(),
        };
        let metrics = Metrics::new(HashMap::new(), 1024, Vec::new()).tracking(2);
        let second = Duration::from_secs(1);
        metrics.observe_fleet(
            second,
            &[(ip(1), 5), (ip(2), 3), (ip(3), 2)],
            &[service(1, 80, 10, 4), service(2, 81, 3, 3), service(3, 82, 9, 9)],
        );
        // The next interval: 10.0.0.3 is still without a slot, 10.0.0.2 was quiet but keeps its.
        metrics.observe_fleet(second, &[(ip(3), 4), (ip(1), 1)], &[service(1, 80, 2, 1), service(3, 82, 1, 1)]);
        let text = metrics.encode().unwrap();
        for series in [
            r#"rstwatch_resets_by_source_total{src="10.0.0.1"} 6"#,
            r#"rstwatch_resets_by_source_total{src="10.0.0.2"} 3"#,
            r#"rstwatch_resets_by_source_total{src="other"} 6"#,
            r#"rstwatch_attempts_by_service_total{addr="10.0.0.1",port="80"} 12"#,
            r#"rstwatch_accepted_by_service_total{addr="10.0.0.1",port="80"} 7"#,
            r#"rstwatch_refused_by_service_total{addr="10.0.0.1",port="80"} 5"#,
            r#"rstwatch_resets_by_service_total{addr="10.0.0.2",port="81"} 3"#,
        ] {
            assert!(text.contains(series), "{series} missing in\n{text}");
        }
        assert!(!text.contains(r#"src="10.0.0.3""#) && !text.contains(r#"port="82""#), "only two slots:\n{text}");
        // Fifteen quiet minutes later every slot is free again, and its series gone.
        metrics.observe_fleet(SLOT_IDLE_AFTER, &[(ip(3), 1)], &[service(3, 82, 1, 1)]);
        let text = metrics.encode().unwrap();
        assert!(text.contains(r#"rstwatch_resets_by_source_total{src="10.0.0.3"} 1"#), "{text}");
        assert!(!text.contains(r#"src="10.0.0.1""#) && !text.contains(r#"port="80""#), "idle series removed:\n{text}");
        assert!(text.contains(r#"rstwatch_refused_by_service_total{addr="10.0.0.3",port="82"} 1"#), "{text}");
    }

    #[test]
    fn workloads_are_the_top_ones_with_their_names_as_labels() {
        use crate::model::aggregate::model::{Pod, Workload, WorkloadResets};
        let workload = |cgroup: &str, pod: Option<Pod>, sent, received| WorkloadResets {
            workload: Workload { cgroup: cgroup.into(), unit: Some("u.scope".into()), pod, ..Workload::default() },
            sent,
            received,
        };
        let pod = Pod { namespace: Some("shop".into()), name: Some("cart".into()), uid: "u1".into() };
        let metrics = Metrics::new(HashMap::new(), 1024, Vec::new());
        let (sample, interval) = (
            Sample::default(),
            Aggregator::new(Vec::new(), 1).fold(&Sample::default(), Duration::from_secs(1), SystemTime::now()),
        );
        let top = [workload("/a", Some(pod), 3, 1), workload("/b", None, 0, 2)];
        metrics.observe(&sample, &interval, &[], &[], &top);
        let text = metrics.encode().unwrap();
        for series in [
            r#"rstwatch_workload_sent_resets{rank="1",cgroup="/a",unit="u.scope",namespace="shop",pod="cart",container=""} 3"#,
            r#"rstwatch_workload_received_resets{rank="2",cgroup="/b",unit="u.scope",namespace="",pod="",container=""} 2"#,
        ] {
            assert!(text.contains(series), "{series} missing in\n{text}");
        }
        // Refilled each interval: a workload that left the top is gone.
        metrics.observe(&sample, &interval, &[], &[], &top[1..]);
        assert!(!metrics.encode().unwrap().contains(r#"cgroup="/a""#));
    }

    #[test]
    fn counters_get_their_total_suffix_in_help_and_type() {
        let openmetrics = "# HELP rstwatch_frames Frames.\n# TYPE rstwatch_frames counter\nrstwatch_frames_total 3\n# HELP rstwatch_fill Fill.\n# TYPE rstwatch_fill gauge\nrstwatch_fill 0.5\n# EOF\n";
        assert_eq!(
            prometheus_text(openmetrics),
            "# HELP rstwatch_frames_total Frames.\n# TYPE rstwatch_frames_total counter\nrstwatch_frames_total 3\n# HELP rstwatch_fill Fill.\n# TYPE rstwatch_fill gauge\nrstwatch_fill 0.5\n"
        );
    }

    #[test]
    fn listen_addresses_default_to_loopback() {
        assert_eq!(parse_listen("9101"), Ok(SocketAddr::from(([127, 0, 0, 1], 9101))));
        assert_eq!(parse_listen("0.0.0.0:80"), Ok(SocketAddr::from(([0, 0, 0, 0], 80))));
        assert!(parse_listen("[::1]:9101").is_ok());
        assert!(parse_listen("localhost:9101").is_err());
        assert!(parse_listen("99999").is_err());
    }
}
