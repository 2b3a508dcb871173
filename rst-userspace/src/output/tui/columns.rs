//! The views' columns as data: each column a title and a cell function, one marked as the
//! default sort; the cells typed so that sorting is numeric (and by address, not by text).

use std::{cmp::Ordering, fmt, net::IpAddr};

use rst_common::wire::ResetKind;

use super::state::{FlowRow, GroupRow, ServiceRow, WorkloadRow};
use crate::output::view::View;

/// One table cell, kept typed so that sorting is numeric (and by address, not by text).
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Text(String),
    Endpoint(IpAddr, Option<u16>),
    Count(u64),
    Rate(f64),
    Percent(f64),
    /// The typical pause before a row's resets: a histogram bucket's upper bound in ms
    /// (`u64::MAX`: past the last bound), or none measured.
    Pause(Option<u64>),
}

impl Cell {
    fn cmp(&self, other: &Cell) -> Ordering {
        match (self, other) {
            (Cell::Text(a), Cell::Text(b)) => a.cmp(b),
            (Cell::Endpoint(a, p), Cell::Endpoint(b, q)) => a.cmp(b).then(p.cmp(q)),
            (Cell::Count(a), Cell::Count(b)) => a.cmp(b),
            (Cell::Rate(a), Cell::Rate(b)) | (Cell::Percent(a), Cell::Percent(b)) => a.total_cmp(b),
            (Cell::Pause(a), Cell::Pause(b)) => a.cmp(b),
            // Columns hold one kind of cell; this keeps the order total anyway.
            _ => self.rank().cmp(&other.rank()),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Cell::Text(_) => 0,
            Cell::Endpoint(..) => 1,
            Cell::Count(_) => 2,
            Cell::Rate(_) => 3,
            Cell::Percent(_) => 4,
            Cell::Pause(_) => 5,
        }
    }

    pub fn numeric(&self) -> bool {
        matches!(self, Cell::Count(_) | Cell::Rate(_) | Cell::Percent(_) | Cell::Pause(_))
    }
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cell::Text(text) => f.write_str(text),
            Cell::Endpoint(IpAddr::V4(ip), Some(port)) => write!(f, "{ip}:{port}"),
            Cell::Endpoint(IpAddr::V6(ip), Some(port)) => write!(f, "[{ip}]:{port}"),
            Cell::Endpoint(ip, None) => write!(f, "{ip}"),
            Cell::Count(n) => write!(f, "{n}"),
            Cell::Rate(r) => write!(f, "{r:.1}"),
            Cell::Percent(p) => write!(f, "{p:.0}%"),
            Cell::Pause(None) => Ok(()),
            Cell::Pause(Some(u64::MAX)) => f.write_str(">1h"),
            Cell::Pause(Some(ms)) if *ms < 1_000 => write!(f, "≤{ms}ms"),
            Cell::Pause(Some(ms)) if *ms < 60_000 => write!(f, "≤{}s", ms / 1_000),
            Cell::Pause(Some(ms)) => write!(f, "≤{}m", ms / 60_000),
        }
    }
}

/// What the rate and share cells are relative to.
pub struct Context {
    /// Length of the last interval, in seconds.
    pub seconds: f64,
    /// RSTs of all the view's rows (after the filter) in the last interval.
    pub all_last: u64,
    /// The last interval's number: a row's `last` counts only if it was seen in it.
    pub interval: u64,
}

impl Context {
    fn rate(&self, n: u64) -> Cell {
        Cell::Rate(if self.seconds > 0.0 { n as f64 / self.seconds } else { 0.0 })
    }

    fn share(&self, n: u64) -> Cell {
        Cell::Percent(if self.all_last > 0 { 100.0 * n as f64 / self.all_last as f64 } else { 0.0 })
    }
}

/// One column of a view over rows of type `R`.
pub struct Column<R> {
    pub title: &'static str,
    pub cell: fn(&R, &Context) -> Cell,
    /// Sorted by this one until the user picks another.
    pub default_sort: bool,
}

const fn column<R>(title: &'static str, cell: fn(&R, &Context) -> Cell) -> Column<R> {
    Column { title, cell, default_sort: false }
}

/// The column sorted by by default: the last interval's RSTs.
const fn sorted<R>(title: &'static str, cell: fn(&R, &Context) -> Cell) -> Column<R> {
    Column { title, cell, default_sort: true }
}

/// Resetters and reset peers: the address, then its counts.
const fn group_columns(address: &'static str) -> [Column<GroupRow>; 5] {
    [
        column(address, |g, _| Cell::Endpoint(g.ip, None)),
        sorted("RSTS", |g, _| Cell::Count(g.last)),
        column("RSTS/s", |g, c| c.rate(g.last)),
        column("SHARE", |g, c| c.share(g.last)),
        column("TOTAL", |g, _| Cell::Count(g.total)),
    ]
}

pub const SRC_COLUMNS: [Column<GroupRow>; 5] = group_columns("RESETTER");
pub const DST_COLUMNS: [Column<GroupRow>; 5] = group_columns("RESET PEER");

pub const SERVICE_COLUMNS: [Column<ServiceRow>; 9] = [
    column("SERVICE", |s, _| Cell::Endpoint(s.addr, Some(s.port))),
    column("ATTEMPTS", |s, _| Cell::Count(s.attempts)),
    column("REFUSED", |s, _| {
        Cell::Percent(if s.attempts > 0 { 100.0 * s.refused as f64 / s.attempts as f64 } else { 0.0 })
    }),
    sorted("RSTS", |s, c| Cell::Count(s.last.at(c.interval))),
    column("RSTS/s", |s, c| c.rate(s.last.at(c.interval))),
    column("SHARE", |s, c| c.share(s.last.at(c.interval))),
    column("TOTAL", |s, _| Cell::Count(s.total)),
    // "They all come after ~350 s": the bucket of the pause before most of its resets.
    column("IDLE", |s, _| Cell::Pause(s.pauses.typical().map(|bound| bound.unwrap_or(u64::MAX)))),
    // Two tenants' services at one inner address are two rows: this tells them apart.
    column("TUNNEL", |s, _| Cell::Text(s.tunnel.map(|tunnel| tunnel.describe()).unwrap_or_default())),
];

pub const FLOW_COLUMNS: [Column<FlowRow>; 8] = [
    column("IFACE", |f, _| Cell::Text(f.iface.to_string())),
    column("DIR", |f, _| Cell::Text(f.direction.name().to_string())),
    column("FROM (RST SENDER)", |f, _| Cell::Endpoint(f.src, Some(f.sport))),
    column("TO", |f, _| Cell::Endpoint(f.dst, Some(f.dport))),
    column("KIND", |f, _| Cell::Text(f.kind.map_or("", ResetKind::name).to_string())),
    sorted("RSTS", |f, c| Cell::Count(f.last.at(c.interval))),
    column("RSTS/s", |f, c| c.rate(f.last.at(c.interval))),
    column("TOTAL", |f, _| Cell::Count(f.total)),
];

pub const WORKLOAD_COLUMNS: [Column<WorkloadRow>; 6] = [
    column("WORKLOAD", |w, _| Cell::Text(w.name.to_string())),
    column("SENT", |w, _| Cell::Count(w.sent)),
    column("RECEIVED", |w, _| Cell::Count(w.received)),
    sorted("RSTS", |w, _| Cell::Count(w.last)),
    column("RSTS/s", |w, c| c.rate(w.last)),
    column("TOTAL", |w, _| Cell::Count(w.total)),
];

/// A view's column titles, and where its default sort is.
pub struct Spec {
    pub titles: Vec<&'static str>,
    pub default_sort: usize,
    /// The footer line that says what the columns mean.
    pub note: &'static str,
}

fn spec_of<R>(columns: &[Column<R>], note: &'static str) -> Spec {
    Spec {
        titles: columns.iter().map(|c| c.title).collect(),
        default_sort: columns.iter().position(|c| c.default_sort).unwrap_or(0),
        note,
    }
}

pub fn spec(view: View) -> Spec {
    match view {
        View::Src => spec_of(&SRC_COLUMNS, "src: addresses that sent RSTs · RSTS/RATE/SHARE: last interval · TOTAL: whole run"),
        View::Dst => spec_of(&DST_COLUMNS, "dst: addresses that received RSTs · RSTS/RATE/SHARE: last interval · TOTAL: whole run"),
        View::Service => spec_of(&SERVICE_COLUMNS, "service: server address:port (from SYN / SYN+ACK, else the lower port) · ATTEMPTS, REFUSED: whole run · RSTS/RATE/SHARE: last interval · TOTAL: whole run"),
        View::Flow => spec_of(&FLOW_COLUMNS, "flow: interface, rx/tx, directional 5-tuple (FROM is the RST sender), the run's main reset kind"),
        View::Workload => spec_of(&WORKLOAD_COLUMNS, "workload: the local service / pod / cgroup whose sockets sent or received the RSTs · SENT, RECEIVED, TOTAL: whole run · RSTS/RATE: last interval"),
    }
}

/// Every row's cells.
pub fn cells<'a, R: 'a>(rows: impl Iterator<Item = &'a R>, columns: &[Column<R>], context: &Context) -> Vec<Vec<Cell>> {
    rows.map(|row| columns.iter().map(|column| (column.cell)(row, context)).collect()).collect()
}

/// Sorts rows by `column` (largest first for numbers, A→Z for addresses), `reverse` flips it;
/// ties go by the run's total, then by the row's first cells, so the order never flickers.
pub fn sort_rows(rows: &mut [Vec<Cell>], column: usize, reverse: bool) {
    rows.sort_by(|a, b| {
        let primary = match (a.get(column), b.get(column)) {
            (Some(x), Some(y)) if x.numeric() => y.cmp(x),
            (Some(x), Some(y)) => x.cmp(y),
            _ => Ordering::Equal,
        };
        let primary = if reverse { primary.reverse() } else { primary };
        let total = |r: &Vec<Cell>| r.last().cloned();
        primary
            .then_with(|| match (total(a), total(b)) {
                (Some(x), Some(y)) => y.cmp(&x),
                _ => Ordering::Equal,
            })
            .then_with(|| a.iter().zip(b.iter()).map(|(x, y)| x.cmp(y)).find(|o| o.is_ne()).unwrap_or(Ordering::Equal))
    });
}
