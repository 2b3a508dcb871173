//! What `rstwatch top` shows, kept up to date interval by interval: every flow of the run with
//! its RSTs in the last interval and over the run, the services, the overflowed resets per
//! sender. A refresh costs what the interval brought, not what the run holds; grouping by
//! address happens when a view is drawn, so that a filter applies to the flows grouped.

use std::{fmt, net::IpAddr, sync::Arc, time::Duration};

use rst_common::{wire::ResetKind, FlowKey};

use super::columns::{self, Cell, Context};
use crate::{
    model::aggregate::{
        model::{Direction, Interval, Pauses, Service, ServiceTunnel, Totals, Verdict},
        Aggregator, FastMap,
    },
    output,
    output::view::View,
};

/// A row filter: a port number (digits only) matches either port of a flow; anything else is
/// an address substring matched against either address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    Port(u16),
    Address(String),
}

impl Filter {
    /// `None` for an empty text (no filter).
    pub fn parse(text: &str) -> Option<Filter> {
        let text = text.trim();
        let digits = text.strip_prefix(':').unwrap_or(text);
        if text.is_empty() {
            return None;
        }
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(port) = digits.parse::<u16>() {
                return Some(Filter::Port(port));
            }
        }
        Some(Filter::Address(text.to_ascii_lowercase()))
    }

    fn matches_flow(&self, flow: &FlowRow) -> bool {
        match self {
            Filter::Port(port) => flow.sport == *port || flow.dport == *port,
            Filter::Address(text) => {
                flow.src.to_string().contains(text.as_str()) || flow.dst.to_string().contains(text.as_str())
            }
        }
    }

    fn matches_service(&self, service: &ServiceRow) -> bool {
        match self {
            Filter::Port(port) => service.port == *port,
            Filter::Address(text) => service.addr.to_string().contains(text.as_str()),
        }
    }

    fn matches_address(&self, ip: &IpAddr) -> bool {
        match self {
            Filter::Port(_) => false,
            Filter::Address(text) => ip.to_string().contains(text.as_str()),
        }
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::Port(port) => write!(f, "port {port}"),
            Filter::Address(text) => write!(f, "address ~ {text}"),
        }
    }
}

/// One flow, with its count in the last interval and over the run.
#[derive(Clone, Debug)]
pub struct FlowRow {
    /// Shared by the interface's rows.
    pub iface: Arc<str>,
    pub direction: Direction,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// The kind most of the run's RSTs of the flow were.
    pub kind: Option<ResetKind>,
    /// RSTs in the last interval it had any in.
    pub last: Stamped,
    pub total: u64,
    /// The cgroup id of the local socket behind its RSTs, when known.
    pub workload: Option<u64>,
}

/// A count with the interval it belongs to: stamped rather than cleared, so that a refresh
/// touches only the rows it brings.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stamped {
    count: u64,
    interval: u64,
}

impl Stamped {
    pub fn new(count: u64, interval: u64) -> Stamped {
        Stamped { count, interval }
    }

    /// The count in `interval` (zero if it is from an earlier one).
    pub fn at(self, interval: u64) -> u64 {
        if self.interval == interval {
            self.count
        } else {
            0
        }
    }

    /// Adds to the count in `interval`, starting it afresh if it is from an earlier one.
    pub fn add(&mut self, count: u64, interval: u64) {
        *self = Stamped::new(self.at(interval) + count, interval);
    }
}

/// The RSTs of an address (sent, or received), in the last interval and over the run.
#[derive(Clone, Debug)]
pub struct GroupRow {
    pub ip: IpAddr,
    pub last: u64,
    pub total: u64,
}

/// One local workload: the RSTs its sockets sent and received over the run, all of them in
/// the last interval and over the run.
#[derive(Clone, Debug)]
pub struct WorkloadRow {
    pub name: Arc<str>,
    pub sent: u64,
    pub received: u64,
    pub last: u64,
    pub total: u64,
}

/// One service (server address and port; the same on several interfaces adds up): attempts
/// and refusals over the run, RSTs in the last interval and over the run.
#[derive(Clone, Debug)]
pub struct ServiceRow {
    pub addr: IpAddr,
    pub port: u16,
    /// The tunnel it was reached through (its address the inner one).
    pub tunnel: Option<ServiceTunnel>,
    pub attempts: u64,
    pub refused: u64,
    pub last: Stamped,
    pub total: u64,
    /// Its resets by the pause before them, over the run.
    pub pauses: Pauses,
}

/// One flow of a refresh: its RSTs in the interval and, when the run holds it, over the run
/// with the run's main kind.
#[derive(Clone, Copy, Debug)]
pub struct FlowChange {
    pub key: FlowKey,
    pub last: u64,
    pub run: Option<(u64, Option<ResetKind>)>,
    /// The cgroup id of its local socket, when known.
    pub workload: Option<u64>,
}

/// What the run did since the last refresh.
pub struct Refresh<'a> {
    pub interval: &'a Interval,
    /// Time covered by the run so far, and its totals.
    pub run: Duration,
    pub totals: Totals,
    /// The interval's services, all of them.
    pub services: &'a [Service],
    /// The interval's resets that overflowed the flow table, by sender.
    pub overflow: &'a [(IpAddr, u64)],
}

/// Everything one refresh shows: what the display freezes while paused.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Intervals read so far.
    pub intervals: u64,
    /// Length of the last interval.
    pub elapsed: Duration,
    /// Time covered by the run so far.
    pub run: Duration,
    /// The last interval's totals, and the run's.
    pub last: Totals,
    pub totals: Totals,
    /// Wall-clock time of the refresh (HH:MM:SS).
    pub clock: String,
    /// The run's flows, by flow id.
    flows: FastMap<FlowKey, FlowRow>,
    /// The last interval's flows the run had no room for: shown for that interval only.
    transient: Vec<FlowRow>,
    services: FastMap<(IpAddr, u16, Option<ServiceTunnel>), ServiceRow>,
    /// RSTs that overflowed the flow table, per sender: (last interval, run).
    overflow: FastMap<IpAddr, (u64, u64)>,
    /// Interface names by ifindex, each allocated once.
    names: FastMap<u32, Arc<str>>,
    /// Workloads in words by cgroup id, each allocated once.
    workloads: FastMap<u64, Arc<str>>,
    /// The run's verdicts, most resets first.
    pub verdicts: Vec<Verdict>,
}

impl Snapshot {
    /// Takes in the aggregator's last interval (`interval` is its record).
    pub fn follow(&mut self, interval: &Interval, aggregator: &Aggregator) {
        let services = aggregator.interval_services();
        let refresh = Refresh {
            interval,
            run: aggregator.elapsed(),
            totals: aggregator.totals(),
            services: &services,
            overflow: aggregator.interval_overflow(),
        };
        for flow in aggregator.interval_flows() {
            let cgroup = flow.run.unwrap_or(flow.interval).owners.cgroup();
            if let Some(cgroup) = cgroup.filter(|cgroup| !self.workloads.contains_key(cgroup)) {
                if let Some(workload) = aggregator.workload_name(cgroup) {
                    self.workloads.insert(cgroup, workload.describe().into());
                }
            }
        }
        let flows = aggregator.interval_flows().map(|flow| FlowChange {
            key: *flow.key,
            last: flow.interval.resets,
            run: flow.run.map(|run| (run.resets, run.kinds.dominant())),
            workload: flow.run.unwrap_or(flow.interval).owners.cgroup(),
        });
        // A tunnel's flows name it after the underlay ("eth0 vxlan 42"): two tenants' flows with
        // one inner tuple are two rows that read apart.
        self.advance(&refresh, flows, |ifindex| aggregator.iface_label(ifindex));
        self.verdicts = aggregator.verdicts();
    }

    /// Takes in one refresh: costs the flows and services it brings.
    pub fn advance(
        &mut self,
        refresh: &Refresh,
        flows: impl Iterator<Item = FlowChange>,
        iface_name: impl Fn(u32) -> String,
    ) {
        let Refresh { interval, run, totals, services, overflow } = refresh;
        self.intervals = interval.seq;
        self.elapsed = interval.elapsed;
        self.run = *run;
        self.last = interval.totals;
        self.totals = *totals;
        self.clock = output::clock(interval.ended);
        self.transient.clear();
        for change in flows {
            let key = change.key;
            let Some((total, kind)) = change.run else {
                // Beyond the run's flow limit: its RSTs still belong to the sender.
                let iface = self.name(key.ifindex, &iface_name);
                let row = new_row(&key, iface, None, Stamped::new(change.last, interval.seq), change.last);
                self.transient.push(row);
                self.overflow.entry(key.src_ip()).or_default().1 += change.last;
                continue;
            };
            match self.flows.get_mut(&key) {
                Some(row) => {
                    row.last = Stamped::new(change.last, interval.seq);
                    row.total = total;
                    row.kind = kind;
                    row.workload = change.workload.or(row.workload);
                }
                None => {
                    let iface = self.name(key.ifindex, &iface_name);
                    let mut row = new_row(&key, iface, kind, Stamped::new(change.last, interval.seq), total);
                    row.workload = change.workload;
                    self.flows.insert(key, row);
                }
            }
        }
        for service in services.iter() {
            let at = (service.addr, service.port, service.tunnel);
            let row = self.services.entry(at).or_insert_with(|| ServiceRow {
                addr: service.addr,
                port: service.port,
                tunnel: service.tunnel,
                attempts: 0,
                refused: 0,
                last: Stamped::default(),
                total: 0,
                pauses: Pauses::default(),
            });
            row.pauses.merge(&service.pauses);
            row.attempts += service.attempts;
            row.refused += service.refused;
            row.last.add(service.resets, interval.seq);
            row.total += service.resets;
        }
        for counts in self.overflow.values_mut() {
            counts.0 = 0;
        }
        for (src, resets) in overflow.iter() {
            let counts = self.overflow.entry(*src).or_default();
            counts.0 += resets;
            counts.1 += resets;
        }
    }

    fn name(&mut self, ifindex: u32, iface_name: impl Fn(u32) -> String) -> Arc<str> {
        Arc::clone(self.names.entry(ifindex).or_insert_with(|| iface_name(ifindex).into()))
    }

    fn flow_rows<'a>(&'a self, filter: Option<&'a Filter>) -> impl Iterator<Item = &'a FlowRow> + 'a {
        self.flows.values().chain(&self.transient).filter(move |f| filter.is_none_or(|filter| filter.matches_flow(f)))
    }

    /// The rows of `view` (unsorted), after `filter`.
    pub fn rows(&self, view: View, filter: Option<&Filter>) -> Vec<Vec<Cell>> {
        let seconds = self.elapsed.as_secs_f64();
        let interval = self.intervals;
        match view {
            View::Flow => {
                let context = Context { seconds, all_last: 0, interval };
                columns::cells(self.flow_rows(filter), &columns::FLOW_COLUMNS, &context)
            }
            View::Service => {
                let services: Vec<&ServiceRow> =
                    self.services.values().filter(|s| filter.is_none_or(|filter| filter.matches_service(s))).collect();
                let all_last = services.iter().map(|s| s.last.at(interval)).sum();
                let context = Context { seconds, all_last, interval };
                columns::cells(services.into_iter(), &columns::SERVICE_COLUMNS, &context)
            }
            View::Workload => {
                let mut groups: FastMap<u64, WorkloadRow> = FastMap::default();
                for f in self.flow_rows(filter) {
                    let Some(name) = f.workload.and_then(|cgroup| Some((cgroup, self.workloads.get(&cgroup)?))) else {
                        continue;
                    };
                    let row = groups.entry(name.0).or_insert_with(|| WorkloadRow {
                        name: Arc::clone(name.1),
                        sent: 0,
                        received: 0,
                        last: 0,
                        total: 0,
                    });
                    match f.direction {
                        Direction::Tx => row.sent += f.total,
                        Direction::Rx => row.received += f.total,
                    }
                    row.last += f.last.at(interval);
                    row.total += f.total;
                }
                let all_last = groups.values().map(|g| g.last).sum();
                columns::cells(groups.values(), &columns::WORKLOAD_COLUMNS, &Context { seconds, all_last, interval })
            }
            View::Src | View::Dst => {
                let mut groups: FastMap<IpAddr, GroupRow> = FastMap::default();
                let mut add = |ip: IpAddr, last: u64, total: u64| {
                    let group = groups.entry(ip).or_insert(GroupRow { ip, last: 0, total: 0 });
                    group.last += last;
                    group.total += total;
                };
                for f in self.flow_rows(filter) {
                    add(if view == View::Src { f.src } else { f.dst }, f.last.at(interval), f.total);
                }
                if view == View::Src {
                    // RSTs that found no room in the flow table still belong to their sender.
                    for (src, (last, total)) in &self.overflow {
                        if filter.is_none_or(|filter| filter.matches_address(src)) {
                            add(*src, *last, *total);
                        }
                    }
                }
                let all_last = groups.values().map(|g| g.last).sum();
                let columns = if view == View::Src { &columns::SRC_COLUMNS } else { &columns::DST_COLUMNS };
                columns::cells(groups.values(), columns, &Context { seconds, all_last, interval })
            }
        }
    }
}

fn new_row(key: &FlowKey, iface: Arc<str>, kind: Option<ResetKind>, last: Stamped, total: u64) -> FlowRow {
    FlowRow {
        iface,
        direction: Direction::of(key),
        src: key.src_ip(),
        sport: key.sport,
        dst: key.dst_ip(),
        dport: key.dport,
        kind,
        last,
        total,
        workload: None,
    }
}
