//! The model's mapping onto the registry: each interval's totals, resets by interface, causes,
//! kernel reasons, top services, workloads and resetters, and the fleet counters' stable slots.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use super::{
    tunnel_label, CauseLabels, DirectionLabels, InterfaceLabels, Metrics, ReasonLabels, ResetLabels, ResetterLabels,
    ServiceKeyLabels, ServiceLabels, SourceLabels, WorkloadLabels, OTHER_SOURCE,
};
use crate::{
    collect::Sample,
    model::aggregate::{
        model::{Direction, Interval, Service, Workload, WorkloadResets},
        InterfaceResets,
    },
};

/// The metrics follow the run through the model (the endpoint serves what they hold).
impl crate::output::Output for std::sync::Arc<Metrics> {
    fn interval(&mut self, tick: &crate::output::Tick<'_>) -> anyhow::Result<()> {
        let crate::output::Tick { sample, interval, elapsed, aggregator, stub: _ } = tick;
        self.observe(
            sample,
            interval,
            &aggregator.interval_by_interface(),
            &aggregator.top_services(),
            &aggregator.top_workloads(),
        );
        self.observe_fleet(*elapsed, &aggregator.interval_source_resets(), &aggregator.interval_services());
        Ok(())
    }

    fn interface_added(&mut self, iface: &str, ifindex: u32) {
        self.add_interface(ifindex, iface);
    }

    fn finish(self: Box<Self>, _run: &mut crate::model::aggregate::model::Run) -> anyhow::Result<()> {
        Ok(())
    }
}

impl Metrics {
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
        for slot in fleet.services.tick(elapsed) {
            let labels = ServiceKeyLabels::of(slot);
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
            let Service { addr, port, attempts, synacks, refused, resets, tunnel, .. } = service;
            let slot = (*addr, *port, *tunnel);
            if (*attempts == 0 && *resets == 0) || !fleet.services.admit(&slot) {
                continue;
            }
            let labels = ServiceKeyLabels::of(slot);
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
            let reason = self.reason_names.name(key.reason).into_owned();
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
                tunnel: tunnel_label(service.tunnel.as_ref()),
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
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use rst_common::{
        wire::{ResetClass, ResetKind, DIRECTION_TX, FAMILY_IPV4},
        FlowKey,
    };

    use super::{super::SLOT_IDLE_AFTER, *};
    use crate::model::aggregate::{
        model::{AttachMode, Interface, ServiceTunnel},
        Aggregator,
    };
    use crate::model::kernel_reason::ReasonNames;

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
        let metrics = Metrics::new(HashMap::from([(7, "veth9".to_string())]), 1024, ReasonNames::default());
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

    /// A service record on veth9 whose resets are all refusals.
    fn refusing(addr: IpAddr, port: u16, attempts: u64, refused: u64, tunnel: Option<ServiceTunnel>) -> Service {
        Service {
            iface: "veth9".into(),
            ifindex: 7,
            addr,
            port,
            attempts,
            synacks: attempts - refused,
            resets: refused,
            refused,
            refused_share: 0.0,
            kinds: Default::default(),
            pauses: Default::default(),
            tunnel,
        }
    }

    #[test]
    fn resetters_and_services_keep_counters_in_at_most_top_slots() {
        let ip = |last: u8| IpAddr::from([10, 0, 0, last]);
        let service =
            |last: u8, port: u16, attempts: u64, refused: u64| refusing(ip(last), port, attempts, refused, None);
        let metrics = Metrics::new(HashMap::new(), 1024, ReasonNames::default()).tracking(2);
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

    /// Two tenants' services at one inner address, and the same address outside tunnels: three
    /// series each, the tunnel a label only where there is one.
    #[test]
    fn tenants_behind_tunnels_are_series_of_their_own() {
        use crate::model::aggregate::model::TunnelType;
        use rst_common::wire::TunnelKind;
        let vxlan = |vni| Some(ServiceTunnel { kind: TunnelType::Known(TunnelKind::Vxlan), vni: Some(vni) });
        let service = |tunnel, attempts, refused| refusing(IpAddr::from([10, 0, 0, 1]), 80, attempts, refused, tunnel);
        let services = [service(vxlan(42), 4, 4), service(vxlan(43), 5, 0), service(None, 2, 1)];
        let metrics = Metrics::new(HashMap::new(), 1024, ReasonNames::default());
        metrics.observe_fleet(Duration::from_secs(1), &[], &services);
        let (sample, interval) = (
            Sample::default(),
            Aggregator::new(Vec::new(), 1).fold(&Sample::default(), Duration::from_secs(1), SystemTime::now()),
        );
        metrics.observe(&sample, &interval, &[], &services, &[]);
        let text = metrics.encode().unwrap();
        for series in [
            r#"rstwatch_refused_by_service_total{addr="10.0.0.1",port="80",tunnel="vxlan 42"} 4"#,
            r#"rstwatch_accepted_by_service_total{addr="10.0.0.1",port="80",tunnel="vxlan 43"} 5"#,
            r#"rstwatch_refused_by_service_total{addr="10.0.0.1",port="80"} 1"#,
            r#"rstwatch_service_attempts{rank="1",iface="veth9",addr="10.0.0.1",port="80",tunnel="vxlan 42"} 4"#,
            r#"rstwatch_service_attempts{rank="3",iface="veth9",addr="10.0.0.1",port="80"} 2"#,
        ] {
            assert!(text.contains(series), "{series} missing in\n{text}");
        }
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
        let metrics = Metrics::new(HashMap::new(), 1024, ReasonNames::default());
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
}
