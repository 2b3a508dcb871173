//! Workload events joined to flows: by 4-tuple and direction, in the interval they arrive or
//! the next, named while the cgroup exists.

use std::{
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use rst_common::{
    wire::{WorkloadKey, DIRECTION_RX, DIRECTION_TX, FAMILY_IPV4, ORIGIN_APPLICATION, ORIGIN_KERNEL, ORIGIN_RECEIVED},
    Counters, FlowKey,
};

use super::{model::Origin, Aggregator};
use crate::{
    collect::Sample,
    model::workload::Resolver,
    output::tui::{columns::Cell, state::Snapshot},
    output::view::View,
};

struct TempTree(PathBuf);

impl Drop for TempTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn flow(direction: u8, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> FlowKey {
    let mut key =
        FlowKey { ifindex: 3, sport, dport, family: FAMILY_IPV4, protocol: 6, direction, ..FlowKey::default() };
    key.src[..4].copy_from_slice(&src);
    key.dst[..4].copy_from_slice(&dst);
    key
}

fn event(of: &FlowKey, cgroup: u64, origin: u8) -> WorkloadKey {
    WorkloadKey {
        cgroup,
        src: of.src,
        dst: of.dst,
        sport: of.sport,
        dport: of.dport,
        family: of.family,
        direction: of.direction,
        origin,
        _pad: 0,
    }
}

#[test]
fn events_name_their_flows_workload_and_origin_and_count_per_workload() {
    let tree = TempTree(std::env::temp_dir().join(format!("rstwatch-agg-workloads-{}", std::process::id())));
    let service = tree.0.join("cg/system.slice/api.service");
    std::fs::create_dir_all(&service).expect("mkdir");
    let id = std::fs::metadata(&service).expect("stat").ino();
    let mut aggregator = Aggregator::new(Vec::new(), 10);
    aggregator.workloads(Resolver::new(tree.0.join("cg"), tree.0.join("logs"), tree.0.join("proc")));

    let (host, peer) = ([10, 0, 0, 1], [10, 0, 0, 2]);
    let abort = flow(DIRECTION_TX, host, 40000, peer, 443);
    let closed = flow(DIRECTION_TX, host, 82, peer, 50000);
    let refused = flow(DIRECTION_RX, peer, 81, host, 40001);
    let forwarded = flow(DIRECTION_RX, peer, 81, [10, 0, 0, 9], 40002);
    let first = Sample {
        flows: vec![(abort, 3), (closed, 2), (refused, 1), (forwarded, 5)],
        workloads: vec![(event(&abort, id, ORIGIN_APPLICATION), 3), (event(&closed, 0, ORIGIN_KERNEL), 2)],
        counters: Counters { resets: 11, ..Counters::default() },
        ..Sample::default()
    };
    let record = aggregator.fold(&first, Duration::from_secs(1), SystemTime::now());
    // `rstwatch top`'s workload view groups the flows the same way.
    let mut snapshot = Snapshot::default();
    snapshot.follow(&record, &aggregator);
    let rows = snapshot.rows(View::Workload, None);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (&rows[0][0], &rows[0][1], &rows[0][2], &rows[0][5]),
        (&Cell::Text("api.service".into()), &Cell::Count(3), &Cell::Count(0), &Cell::Count(3))
    );
    // The receiving socket's event lands an interval after its segment; then the cgroup goes.
    let late = Sample { workloads: vec![(event(&refused, id, ORIGIN_RECEIVED), 1)], ..Sample::default() };
    aggregator.fold(&late, Duration::from_secs(1), SystemTime::now());
    std::fs::remove_dir(&service).expect("rmdir");

    let run = aggregator.summary();
    let of = |sport: u16, dport: u16| run.flows.iter().find(|f| f.sport == sport && f.dport == dport).expect("flow");
    let named = |sport, dport| of(sport, dport).workload.as_ref().map(|w| w.cgroup.clone());
    assert_eq!(
        (named(40000, 443), of(40000, 443).origin),
        (Some("/system.slice/api.service".into()), Some(Origin::Application))
    );
    assert_eq!((named(82, 50000), of(82, 50000).origin), (None, Some(Origin::Kernel)));
    assert_eq!((named(81, 40001), of(81, 40001).origin), (Some("/system.slice/api.service".into()), None));
    assert_eq!((named(81, 40002), of(81, 40002).origin), (None, None));
    let [only] = run.workloads.as_slice() else { panic!("one workload: {:?}", run.workloads) };
    assert_eq!((only.workload.unit.as_deref(), only.sent, only.received), (Some("api.service"), 3, 1));
    let sentences = super::diagnosis::sentences(&run);
    for wanted in ["api.service sent 3 resets to 10.0.0.2:443", "api.service received 1 refusal from 10.0.0.2:81"] {
        assert!(sentences.iter().any(|s| s == wanted), "{wanted:?} in {sentences:#?}");
    }
    assert!(
        sentences.iter().any(|s| s.starts_with("this host's kernel sent 2 resets for no socket")),
        "{sentences:#?}"
    );
}

#[test]
fn without_a_resolver_there_are_no_workloads_and_no_origins() {
    let mut aggregator = Aggregator::new(Vec::new(), 10);
    let abort = flow(DIRECTION_TX, [10, 0, 0, 1], 40000, [10, 0, 0, 2], 443);
    let sample = Sample {
        flows: vec![(abort, 1)],
        workloads: vec![(event(&abort, 7, ORIGIN_APPLICATION), 1)],
        ..Sample::default()
    };
    aggregator.fold(&sample, Duration::from_secs(1), SystemTime::now());
    let run = aggregator.summary();
    assert!(run.workloads.is_empty());
    assert_eq!((run.flows[0].workload.as_ref(), run.flows[0].origin), (None, None));
}

#[test]
fn a_vanished_cgroup_keeps_its_name_while_the_run_reports_it_and_goes_an_hour_after_its_last_use() {
    let tree = TempTree(std::env::temp_dir().join(format!("rstwatch-agg-forget-{}", std::process::id())));
    let (listed, unlisted) = (tree.0.join("cg/listed.service"), tree.0.join("cg/unlisted.service"));
    let mut ids = Vec::new();
    for dir in [&listed, &unlisted] {
        std::fs::create_dir_all(dir).expect("mkdir");
        ids.push(std::fs::metadata(dir).expect("stat").ino());
    }
    // One flow fits the summary: the second one's resets go unlisted, its name only ever
    // reported in its interval.
    let mut aggregator = Aggregator::new(Vec::new(), 10).limit_flows(1);
    aggregator.workloads(Resolver::new(tree.0.join("cg"), tree.0.join("logs"), tree.0.join("proc")));
    let (host, peer) = ([10, 0, 0, 1], [10, 0, 0, 2]);
    for (sport, id) in [(40000, ids[0]), (40001, ids[1])] {
        let abort = flow(DIRECTION_TX, host, sport, peer, 443);
        let sample = Sample {
            flows: vec![(abort, 1)],
            workloads: vec![(event(&abort, id, ORIGIN_APPLICATION), 1)],
            ..Sample::default()
        };
        aggregator.fold(&sample, Duration::from_secs(60), SystemTime::now());
        assert!(aggregator.workload_name(id).is_some());
    }
    std::fs::remove_dir(&listed).expect("rmdir");
    std::fs::remove_dir(&unlisted).expect("rmdir");
    // Two hours of quiet intervals on the run's clock.
    for _ in 0..120 {
        aggregator.fold(&Sample::default(), Duration::from_secs(60), SystemTime::now());
    }
    assert_eq!(aggregator.workload_name(ids[1]).map(|w| w.cgroup.as_str()), None, "unused for over an hour");
    let run = aggregator.summary();
    let [only] = run.flows.as_slice() else { panic!("one listed flow: {:?}", run.flows) };
    assert_eq!(only.workload.as_ref().map(|w| w.cgroup.as_str()), Some("/listed.service"));
    assert_eq!(run.workloads.len(), 1);
}
