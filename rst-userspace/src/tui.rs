//! `rstwatch top`: the live view. The same load / attach / collect / aggregate path as the watch
//! mode, drawn as a table that can be sorted, switched between views, filtered and paused.
//!
//! The terminal is always given back: on a normal exit, on `q` / Esc / Ctrl-C (raw mode turns
//! Ctrl-C into a key), on SIGINT / SIGTERM / SIGHUP, and on a panic (the panic hook restores the
//! terminal before the message is printed). The display logic ([`App`]) is independent of the
//! kernel and of the terminal, so it is unit-tested against ratatui's test backend.

use std::{
    cmp::Ordering,
    collections::HashMap,
    fmt,
    io::{self, IsTerminal as _},
    net::IpAddr,
    sync::atomic::{AtomicBool, AtomicI32, Ordering as AtomicOrdering},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use ratatui::{
    backend::{Backend, CrosstermBackend},
    crossterm::{
        cursor,
        event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
        execute,
        terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
    },
    layout::{Constraint, Flex, Layout, Rect},
    style::{Modifier, Style},
    text::{Line, Span},
    widgets::{Cell as TableCell, Paragraph, Row, Table},
    Frame, Terminal,
};
use rst_common::wire::ResetKind;

use crate::{
    aggregate::{
        model::{Direction, Interval, Run, Totals},
        DEFAULT_SUMMARY_FLOWS,
    },
    cli::TopArgs,
    live::{LiveSession, Settings},
    loader::HookChoice,
    output::{self, Format, Printer},
};

// ───────────────────────────── views, rows, sorting, filtering ─────────────────────────────

/// What the table groups the flows by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// The addresses that sent RSTs.
    Src,
    /// The addresses that received them.
    Dst,
    /// Server address and port: attempts, refusals and RSTs, from the run's service records.
    Service,
    /// Every directional 5-tuple, with its direction and main reset kind.
    Flow,
}

impl View {
    pub const ALL: [View; 4] = [View::Src, View::Dst, View::Service, View::Flow];

    fn index(self) -> usize {
        match self {
            View::Src => 0,
            View::Dst => 1,
            View::Service => 2,
            View::Flow => 3,
        }
    }

    fn name(self) -> &'static str {
        match self {
            View::Src => "src",
            View::Dst => "dst",
            View::Service => "service",
            View::Flow => "flow",
        }
    }

    fn columns(self) -> &'static [&'static str] {
        match self {
            View::Src => &["RESETTER", "RSTS", "RSTS/s", "SHARE", "TOTAL"],
            View::Dst => &["RESET PEER", "RSTS", "RSTS/s", "SHARE", "TOTAL"],
            View::Service => &["SERVICE", "ATTEMPTS", "REFUSED", "RSTS", "RSTS/s", "SHARE", "TOTAL"],
            View::Flow => &["IFACE", "DIR", "FROM (RST SENDER)", "TO", "KIND", "RSTS", "RSTS/s", "TOTAL"],
        }
    }

    /// The column sorted by until the user picks another: the last interval's RSTs.
    fn default_sort(self) -> usize {
        match self {
            View::Flow => 5,
            View::Service => 3,
            _ => 1,
        }
    }
}

/// One table cell, kept typed so that sorting is numeric (and by address, not by text).
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Text(String),
    Endpoint(IpAddr, Option<u16>),
    Count(u64),
    Rate(f64),
    Percent(f64),
}

impl Cell {
    fn cmp(&self, other: &Cell) -> Ordering {
        match (self, other) {
            (Cell::Text(a), Cell::Text(b)) => a.cmp(b),
            (Cell::Endpoint(a, p), Cell::Endpoint(b, q)) => a.cmp(b).then(p.cmp(q)),
            (Cell::Count(a), Cell::Count(b)) => a.cmp(b),
            (Cell::Rate(a), Cell::Rate(b)) | (Cell::Percent(a), Cell::Percent(b)) => a.total_cmp(b),
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
        }
    }

    fn numeric(&self) -> bool {
        matches!(self, Cell::Count(_) | Cell::Rate(_) | Cell::Percent(_))
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
        }
    }
}

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
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct FlowId {
    iface: String,
    direction: Direction,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
}

#[derive(Clone, Debug)]
struct FlowRow {
    iface: String,
    direction: Direction,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    /// The kind most of the run's RSTs of the flow were.
    kind: &'static str,
    last: u64,
    total: u64,
}

/// One service (server address and port on an interface): attempts and refusals over the run,
/// RSTs in the last interval and over the run.
#[derive(Clone, Debug)]
struct ServiceRow {
    addr: IpAddr,
    port: u16,
    attempts: u64,
    refused: u64,
    last: u64,
    total: u64,
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
    flows: Vec<FlowRow>,
    services: Vec<ServiceRow>,
    /// RSTs that overflowed the flow table, per sender: (last interval, run).
    overflow_sources: Vec<(IpAddr, u64, u64)>,
    /// Wall-clock time of the refresh (HH:MM:SS).
    pub clock: String,
}

impl Snapshot {
    /// Built from the aggregator's view of the last interval (every flow: the aggregator's `top`
    /// must not cut it) and of the whole run.
    pub fn new(interval: &Interval, run: &Run) -> Snapshot {
        let mut last: HashMap<FlowId, u64> = HashMap::new();
        for f in &interval.flows {
            let id = FlowId {
                iface: f.iface.clone(),
                direction: f.direction,
                src: f.src,
                sport: f.sport,
                dst: f.dst,
                dport: f.dport,
            };
            *last.entry(id).or_default() += f.resets;
        }
        let mut flows: Vec<FlowRow> = run
            .flows
            .iter()
            .map(|f| {
                let id = FlowId {
                    iface: f.iface.clone(),
                    direction: f.direction,
                    src: f.src,
                    sport: f.sport,
                    dst: f.dst,
                    dport: f.dport,
                };
                FlowRow {
                    last: last.remove(&id).unwrap_or(0),
                    total: f.resets,
                    kind: f.kinds.dominant().map_or("", ResetKind::name),
                    iface: id.iface,
                    direction: id.direction,
                    src: id.src,
                    sport: id.sport,
                    dst: id.dst,
                    dport: id.dport,
                }
            })
            .collect();
        // Not in the run's flows (only if a caller passes records that do not belong together).
        flows.extend(last.into_iter().map(|(id, n)| FlowRow {
            iface: id.iface,
            direction: id.direction,
            kind: "",
            src: id.src,
            sport: id.sport,
            dst: id.dst,
            dport: id.dport,
            last: n,
            total: n,
        }));
        // A service is an address and port on one interface; the table shows the address and
        // port, so services of the same address and port on several interfaces add up.
        let mut services: Vec<ServiceRow> = Vec::new();
        fn add_service(services: &mut Vec<ServiceRow>, addr: IpAddr, port: u16) -> usize {
            match services.iter().position(|s| s.addr == addr && s.port == port) {
                Some(at) => at,
                None => {
                    services.push(ServiceRow { addr, port, attempts: 0, refused: 0, last: 0, total: 0 });
                    services.len() - 1
                }
            }
        }
        for s in &run.services {
            let at = add_service(&mut services, s.addr, s.port);
            let row = &mut services[at];
            row.attempts += s.attempts;
            row.refused += s.refused;
            row.total += s.resets;
        }
        for s in &interval.services {
            let at = add_service(&mut services, s.addr, s.port);
            services[at].last += s.resets;
        }
        let last_overflow: HashMap<IpAddr, u64> =
            interval.sources.iter().filter(|s| s.overflow > 0).map(|s| (s.src, s.overflow)).collect();
        let overflow_sources = run
            .sources
            .iter()
            .filter(|s| s.overflow > 0)
            .map(|s| (s.src, last_overflow.get(&s.src).copied().unwrap_or(0), s.overflow))
            .collect();
        Snapshot {
            intervals: interval.seq,
            elapsed: interval.elapsed,
            run: run.elapsed,
            last: interval.totals,
            totals: run.totals,
            flows,
            services,
            overflow_sources,
            clock: output::clock(interval.ended),
        }
    }

    /// The rows of `view` (unsorted), after `filter`.
    pub fn rows(&self, view: View, filter: Option<&Filter>) -> Vec<Vec<Cell>> {
        let flows = self.flows.iter().filter(|f| filter.is_none_or(|filter| filter.matches_flow(f)));
        let seconds = self.elapsed.as_secs_f64();
        let rate = |n: u64| {
            if seconds > 0.0 {
                n as f64 / seconds
            } else {
                0.0
            }
        };
        if view == View::Flow {
            return flows
                .map(|f| {
                    vec![
                        Cell::Text(f.iface.clone()),
                        Cell::Text(f.direction.name().to_string()),
                        Cell::Endpoint(f.src, Some(f.sport)),
                        Cell::Endpoint(f.dst, Some(f.dport)),
                        Cell::Text(f.kind.to_string()),
                        Cell::Count(f.last),
                        Cell::Rate(rate(f.last)),
                        Cell::Count(f.total),
                    ]
                })
                .collect();
        }
        if view == View::Service {
            let services: Vec<&ServiceRow> =
                self.services.iter().filter(|s| filter.is_none_or(|filter| filter.matches_service(s))).collect();
            let all: u64 = services.iter().map(|s| s.last).sum();
            return services
                .into_iter()
                .map(|s| {
                    let share = if all > 0 { 100.0 * s.last as f64 / all as f64 } else { 0.0 };
                    let refused = if s.attempts > 0 { 100.0 * s.refused as f64 / s.attempts as f64 } else { 0.0 };
                    vec![
                        Cell::Endpoint(s.addr, Some(s.port)),
                        Cell::Count(s.attempts),
                        Cell::Percent(refused),
                        Cell::Count(s.last),
                        Cell::Rate(rate(s.last)),
                        Cell::Percent(share),
                        Cell::Count(s.total),
                    ]
                })
                .collect();
        }
        let mut groups: HashMap<(IpAddr, Option<u16>), (u64, u64)> = HashMap::new();
        for f in flows {
            let key = match view {
                View::Src => (f.src, None),
                // (View::Flow and View::Service returned above.)
                View::Dst | View::Service | View::Flow => (f.dst, None),
            };
            let group = groups.entry(key).or_default();
            group.0 += f.last;
            group.1 += f.total;
        }
        if view == View::Src {
            // RSTs that found no room in the flow table still belong to their sender.
            for (src, last, total) in &self.overflow_sources {
                if filter.is_none_or(|filter| filter.matches_address(src)) {
                    let group = groups.entry((*src, None)).or_default();
                    group.0 += last;
                    group.1 += total;
                }
            }
        }
        let all: u64 = groups.values().map(|g| g.0).sum();
        groups
            .into_iter()
            .map(|((ip, port), (last, total))| {
                let share = if all > 0 { 100.0 * last as f64 / all as f64 } else { 0.0 };
                vec![
                    Cell::Endpoint(ip, port),
                    Cell::Count(last),
                    Cell::Rate(rate(last)),
                    Cell::Percent(share),
                    Cell::Count(total),
                ]
            })
            .collect()
    }
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

// ─────────────────────────────────────── the app state ───────────────────────────────────────

/// What the user asked for, and what is on display.
pub struct App {
    /// `iface (mode)` for each attachment.
    pub interfaces: String,
    pub hook: &'static str,
    pub interval: Duration,
    pub view: View,
    sort: [usize; 4],
    reverse: [bool; 4],
    pub filter: Option<Filter>,
    /// `Some(text)` while the filter is being typed.
    pub editing: Option<String>,
    pub paused: bool,
    /// The latest refresh, whatever the pause says.
    live: Snapshot,
    /// What is on screen: `live` unless paused.
    shown: Snapshot,
    pub quit: bool,
    /// First row shown (↑/↓, PgUp/PgDn).
    scroll: usize,
}

impl App {
    pub fn new(interfaces: String, hook: &'static str, interval: Duration) -> App {
        App {
            interfaces,
            hook,
            interval,
            view: View::Src,
            sort: View::ALL.map(View::default_sort),
            reverse: [false; 4],
            filter: None,
            editing: None,
            paused: false,
            live: Snapshot::default(),
            shown: Snapshot::default(),
            quit: false,
            scroll: 0,
        }
    }

    /// A new refresh: always kept, only shown when not paused.
    pub fn update(&mut self, snapshot: Snapshot) {
        if !self.paused {
            self.shown = snapshot.clone();
        }
        self.live = snapshot;
    }

    pub fn sort_column(&self) -> usize {
        self.sort[self.view.index()]
    }

    pub fn reversed(&self) -> bool {
        self.reverse[self.view.index()]
    }

    /// The rows on display, filtered and sorted.
    pub fn rows(&self) -> Vec<Vec<Cell>> {
        let mut rows = self.shown.rows(self.view, self.filter.as_ref());
        sort_rows(&mut rows, self.sort_column(), self.reversed());
        rows
    }

    pub fn key(&mut self, key: KeyEvent) {
        if key.kind == KeyEventKind::Release {
            return;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(key.code, KeyCode::Char('c' | 'C' | 'd' | 'D')) {
            self.quit = true;
            return;
        }
        if let Some(text) = &mut self.editing {
            match key.code {
                KeyCode::Enter => {
                    self.filter = Filter::parse(text);
                    self.editing = None;
                    self.scroll = 0;
                }
                KeyCode::Esc => {
                    self.filter = None;
                    self.editing = None;
                    self.scroll = 0;
                }
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char(c) if !ctrl && text.chars().count() < 64 => text.push(c),
                _ => {}
            }
            return;
        }
        let columns = self.view.columns().len();
        let v = self.view.index();
        match key.code {
            KeyCode::Char('q' | 'Q') | KeyCode::Esc => self.quit = true,
            KeyCode::Char('1' | 's') => self.set_view(View::Src),
            KeyCode::Char('2' | 'd') => self.set_view(View::Dst),
            KeyCode::Char('3' | 'v') => self.set_view(View::Service),
            KeyCode::Char('4' | 'f') => self.set_view(View::Flow),
            KeyCode::Left | KeyCode::Char('<' | ',') => self.sort[v] = (self.sort[v] + columns - 1) % columns,
            KeyCode::Right | KeyCode::Char('>' | '.') => self.sort[v] = (self.sort[v] + 1) % columns,
            KeyCode::Char('r') => self.reverse[v] = !self.reverse[v],
            KeyCode::Char('/') => {
                self.editing = Some(self.filter.as_ref().map(filter_text).unwrap_or_default());
            }
            KeyCode::Char('p' | ' ') => {
                self.paused = !self.paused;
                if !self.paused {
                    self.shown = self.live.clone();
                }
            }
            KeyCode::Up => self.scroll = self.scroll.saturating_sub(1),
            KeyCode::Down => self.scroll = self.scroll.saturating_add(1),
            KeyCode::PageUp => self.scroll = self.scroll.saturating_sub(10),
            KeyCode::PageDown => self.scroll = self.scroll.saturating_add(10),
            KeyCode::Home => self.scroll = 0,
            _ => {}
        }
    }

    fn set_view(&mut self, view: View) {
        self.view = view;
        self.scroll = 0;
    }

    // ─────────────────────────────────────── drawing ───────────────────────────────────────

    pub fn draw(&mut self, frame: &mut Frame) {
        let area = frame.area();
        if area.width == 0 || area.height == 0 {
            return;
        }
        let [header, tabs, table, footer] =
            Layout::vertical([Constraint::Length(2), Constraint::Length(1), Constraint::Min(0), Constraint::Length(2)])
                .areas(area);
        frame.render_widget(Paragraph::new(self.header_lines()), header);
        frame.render_widget(Paragraph::new(self.tabs_line()), tabs);
        self.draw_table(frame, table);
        frame.render_widget(Paragraph::new(self.footer_lines()), footer);
    }

    fn header_lines(&self) -> Vec<Line<'static>> {
        let s = &self.shown;
        let t = &s.totals;
        let bold = Style::default().add_modifier(Modifier::BOLD);
        let mut first = vec![
            Span::styled("rstwatch top", bold),
            Span::raw(format!(
                "  {}  hook {}  interval {}",
                self.interfaces,
                self.hook,
                humantime::format_duration(self.interval)
            )),
        ];
        if self.paused {
            first.push(Span::styled(
                format!("  PAUSED (still counting: {} RSTs so far)", self.live.totals.resets),
                Style::default().add_modifier(Modifier::REVERSED | Modifier::BOLD),
            ));
        }
        let mut second = format!(
            "total {:.0}s: frames {}  tcp {}  resets {}  overflow {}",
            s.run.as_secs_f64(),
            t.frames,
            t.tcp,
            t.resets,
            t.overflow
        );
        if t.malformed > 0 || t.fragments > 0 {
            second.push_str(&format!("  malformed {}  fragments {}", t.malformed, t.fragments));
        }
        if s.intervals > 0 {
            let seconds = s.elapsed.as_secs_f64();
            let rate = if seconds > 0.0 { s.last.resets as f64 / seconds } else { 0.0 };
            second.push_str(&format!("  │ {} last {:.2}s: {} RSTs ({rate:.1}/s)", s.clock, seconds, s.last.resets));
        } else {
            second.push_str("  │ waiting for the first interval");
        }
        vec![Line::from(first), Line::from(second)]
    }

    fn tabs_line(&self) -> Line<'static> {
        let mut spans = Vec::new();
        for (n, view) in View::ALL.iter().enumerate() {
            let text = format!(" {} {} ", n + 1, view.name());
            spans.push(if *view == self.view {
                Span::styled(text, Style::default().add_modifier(Modifier::REVERSED | Modifier::BOLD))
            } else {
                Span::raw(text)
            });
        }
        let column = self.view.columns().get(self.sort_column()).copied().unwrap_or("");
        spans.push(Span::raw(format!("  sort {column}{}", if self.reversed() { " (reversed)" } else { "" })));
        match (&self.editing, &self.filter) {
            (Some(text), _) => {
                spans.push(Span::styled(format!("  filter: {text}_"), Style::default().add_modifier(Modifier::BOLD)))
            }
            (None, Some(filter)) => spans.push(Span::raw(format!("  filter: {filter}"))),
            (None, None) => {}
        }
        Line::from(spans)
    }

    fn footer_lines(&self) -> Vec<Line<'static>> {
        let keys = if self.editing.is_some() {
            "type an address substring or a port number · Enter apply · Esc clear".to_string()
        } else {
            "1-4/s d v f view · ←→/<> sort · r reverse · / filter · p/space pause · ↑↓ scroll · q quit".to_string()
        };
        let note: String = match self.view {
            View::Service => "service: server address:port (from SYN / SYN+ACK, else the lower port) · ATTEMPTS, REFUSED: whole run · RSTS/RATE/SHARE: last interval · TOTAL: whole run".into(),
            View::Src => "src: addresses that sent RSTs · RSTS/RATE/SHARE: last interval · TOTAL: whole run".into(),
            View::Dst => "dst: addresses that received RSTs · RSTS/RATE/SHARE: last interval · TOTAL: whole run".into(),
            View::Flow => "flow: interface, rx/tx, directional 5-tuple (FROM is the RST sender), the run's main reset kind".into(),
        };
        vec![Line::from(keys), Line::from(note)]
    }

    fn draw_table(&mut self, frame: &mut Frame, area: Rect) {
        if area.height == 0 {
            return;
        }
        let rows = self.rows();
        let visible = usize::from(area.height.saturating_sub(1)).max(1);
        self.scroll = self.scroll.min(rows.len().saturating_sub(visible));
        if rows.is_empty() {
            let text = if self.shown.intervals == 0 {
                "no data yet".to_string()
            } else if self.filter.is_some() {
                "no RSTs match the filter".to_string()
            } else {
                "no resets seen".to_string()
            };
            frame.render_widget(Paragraph::new(vec![self.header_row_line(), Line::from(format!("  {text}"))]), area);
            return;
        }
        let sort = self.sort_column();
        let shown: Vec<Vec<(String, bool)>> = rows
            .iter()
            .skip(self.scroll)
            .take(visible)
            .map(|cells| cells.iter().map(|c| (c.to_string(), c.numeric())).collect())
            .collect();
        let titles: Vec<String> = self
            .view
            .columns()
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let marker = if i == sort {
                    if self.reversed() {
                        " ▲"
                    } else {
                        " ▼"
                    }
                } else {
                    ""
                };
                format!("{name}{marker}")
            })
            .collect();
        // Each column as wide as its widest cell on screen (numbers at least 9), numbers right.
        let widths: Vec<Constraint> = titles
            .iter()
            .enumerate()
            .map(|(i, title)| {
                let numeric = shown.first().and_then(|r| r.get(i)).is_some_and(|c| c.1);
                // Addresses get room to grow between refreshes; short words (rx, refused) not.
                let endpoint = rows.first().and_then(|r| r.get(i)).is_some_and(|c| matches!(c, Cell::Endpoint(..)));
                let cells = shown.iter().filter_map(|r| r.get(i)).map(|c| c.0.chars().count());
                let least = if numeric {
                    9
                } else if endpoint {
                    15
                } else {
                    0
                };
                let width = cells.chain([title.chars().count(), least]).max().unwrap_or(9);
                Constraint::Length(u16::try_from(width).unwrap_or(u16::MAX))
            })
            .collect();
        let numeric: Vec<bool> =
            (0..titles.len()).map(|i| shown.first().and_then(|r| r.get(i)).is_some_and(|c| c.1)).collect();
        let align = |text: String, right: bool| {
            let line = Line::from(text);
            TableCell::from(if right { line.right_aligned() } else { line })
        };
        let header = Row::new(titles.into_iter().zip(&numeric).map(|(title, right)| align(title, *right)))
            .style(Style::default().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
        let body: Vec<Row> = shown
            .into_iter()
            .map(|cells| Row::new(cells.into_iter().map(|(text, right)| align(text, right))))
            .collect();
        let table = Table::new(body, widths).header(header).column_spacing(2).flex(Flex::Start);
        frame.render_widget(table, area);
    }

    fn header_row_line(&self) -> Line<'static> {
        Line::styled(
            self.view.columns().join("  "),
            Style::default().add_modifier(Modifier::BOLD | Modifier::UNDERLINED),
        )
    }
}

fn filter_text(filter: &Filter) -> String {
    match filter {
        Filter::Port(port) => port.to_string(),
        Filter::Address(text) => text.clone(),
    }
}

// ───────────────────────────────────── the terminal ─────────────────────────────────────

/// Whether the terminal is in raw mode / the alternate screen (so restoring is idempotent and
/// the panic hook knows whether to act).
static TERMINAL_TAKEN: AtomicBool = AtomicBool::new(false);

/// Gives the terminal back: main screen, cooked mode, visible cursor. Safe to call any number
/// of times, from the panic hook too.
pub fn restore_terminal() {
    if TERMINAL_TAKEN.swap(false, AtomicOrdering::SeqCst) {
        let _ = terminal::disable_raw_mode();
        let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
    }
}

/// Owns the terminal while it lives; dropping it (also while unwinding) restores it.
struct TerminalGuard;

impl TerminalGuard {
    fn take() -> anyhow::Result<TerminalGuard> {
        install_panic_hook();
        TERMINAL_TAKEN.store(true, AtomicOrdering::SeqCst);
        let guard = TerminalGuard;
        terminal::enable_raw_mode().context("putting the terminal in raw mode")?;
        execute!(io::stdout(), EnterAlternateScreen, cursor::Hide).context("entering the alternate screen")?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn install_panic_hook() {
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    if INSTALLED.swap(true, AtomicOrdering::SeqCst) {
        return;
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // First the terminal, so the message lands on a usable screen.
        restore_terminal();
        previous(info);
    }));
}

/// The signal that asked us to stop (0: none). Set by an async-signal-safe handler.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(signal: libc::c_int) {
    STOP_SIGNAL.store(signal, AtomicOrdering::SeqCst);
}

fn install_signal_handlers() -> anyhow::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe; the
        // sigaction struct is zeroed and then fully set up before the call.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_stop_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("installing the signal handlers");
        }
    }
    Ok(())
}

// ───────────────────────────────────────── running ─────────────────────────────────────────

/// `rstwatch top`: checks, loads and attaches like the watch mode, then runs the live view until
/// `q`, Ctrl-C or a signal; detaches and prints the run's summary on the normal screen.
pub fn run(args: &TopArgs) -> anyhow::Result<()> {
    // Everything that can be checked without touching the kernel is checked first.
    if !io::stdout().is_terminal() || !io::stdin().is_terminal() {
        anyhow::bail!("rstwatch top needs a terminal (for a pipe or a file, use plain `rstwatch -i IFACE`)");
    }
    let options = args.live();
    let targets = LiveSession::preflight(&options)?;
    install_signal_handlers()?;
    // Every flow of every interval: the table, not the aggregator, decides what fits.
    let settings = Settings { max_flows: args.max_flows, top: usize::MAX, summary_flows: DEFAULT_SUMMARY_FLOWS };
    let mut session = LiveSession::start(&options, &targets, settings, None)?;
    let hook = match session.hook() {
        HookChoice::Xdp => "xdp",
        HookChoice::Tc => "tc",
    };
    let mut app = App::new(session.described_interfaces(), hook, args.interval);

    let outcome = {
        // Declared first, dropped last: held log lines appear once the terminal is restored.
        let _held_logs = crate::logsink::hold();
        let guard = TerminalGuard::take()?;
        let outcome = Terminal::new(CrosstermBackend::new(io::stdout()))
            .context("setting up the terminal")
            .and_then(|mut terminal| live(&mut terminal, &mut app, &mut session, args.interval));
        drop(guard);
        outcome
    };

    session.detach();
    outcome?;
    let finished = session.finish()?;
    let mut printer = Printer::new(io::stdout().lock(), Format::Table, SUMMARY_TOP, crate::view::View::Src);
    match printer.summary(&finished.run) {
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing the summary"),
    }
}

/// How many resetters and flows the summary printed at exit lists (`rstwatch`'s default `--top`).
const SUMMARY_TOP: usize = 10;

/// The event loop: a refresh every interval, keys in between.
fn live<B: Backend>(
    terminal: &mut Terminal<B>,
    app: &mut App,
    session: &mut LiveSession,
    interval: Duration,
) -> anyhow::Result<()> {
    session.restart_clock();
    let mut next_tick = Instant::now() + interval;
    let mut dirty = true;
    loop {
        if STOP_SIGNAL.load(AtomicOrdering::SeqCst) != 0 || app.quit {
            return Ok(());
        }
        let now = Instant::now();
        if now >= next_tick {
            let record = session.tick()?;
            app.update(Snapshot::new(&record, &session.aggregator().summary()));
            // Fixed cadence; after a stall (a suspended terminal, say) start again from now.
            let now = Instant::now();
            next_tick += interval;
            if next_tick <= now {
                next_tick = now + interval;
            }
            dirty = true;
        }
        if dirty {
            terminal.draw(|frame| app.draw(frame)).context("drawing")?;
            dirty = false;
        }
        // Short polls so a signal is seen promptly even without a key.
        let wait = next_tick.saturating_duration_since(Instant::now()).min(Duration::from_millis(100));
        if event::poll(wait).context("reading the terminal")? {
            match event::read().context("reading the terminal")? {
                Event::Key(key) => {
                    app.key(key);
                    dirty = true;
                }
                Event::Resize(..) => {
                    terminal.autoresize().context("resizing")?;
                    dirty = true;
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, time::SystemTime};

    use ratatui::backend::TestBackend;

    use super::*;
    use crate::aggregate::model::{CountingMode, Family, Flow, KindCounts, Service, Side, Source};

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn flow(src: &str, sport: u16, dst: &str, dport: u16, resets: u64) -> Flow {
        Flow {
            iface: "veth0".into(),
            ifindex: 3,
            family: Family::Ipv4,
            src: ip(src),
            sport,
            dst: ip(dst),
            dport,
            resets,
            direction: Direction::Rx,
            kinds: KindCounts::default(),
            with_ack: 0,
            side: Side::Server,
            side_observed: false,
            first: false,
            middlebox: None,
            reasons: Default::default(),
            no_kernel_event: None,
        }
    }

    fn source(src: &str, resets: u64, overflow: u64) -> Source {
        Source {
            src: ip(src),
            resets,
            rate: 0.0,
            share: 0.0,
            flows: 0,
            overflow,
            ports: vec![],
            destinations: vec![],
            middlebox: 0,
            kinds: Default::default(),
        }
    }

    fn service(addr: &str, port: u16, attempts: u64, refused: u64, resets: u64) -> Service {
        Service {
            iface: "veth0".into(),
            ifindex: 3,
            addr: ip(addr),
            port,
            attempts,
            synacks: attempts - refused,
            resets,
            refused,
            refused_share: 0.0,
            kinds: Default::default(),
        }
    }

    fn snapshot(last: Vec<Flow>, run: Vec<Flow>) -> Snapshot {
        snapshot_with(last, run, vec![], vec![])
    }

    fn snapshot_with(
        last: Vec<Flow>,
        run: Vec<Flow>,
        last_services: Vec<Service>,
        run_services: Vec<Service>,
    ) -> Snapshot {
        let sum = |f: &[Flow]| f.iter().map(|f| f.resets).sum::<u64>();
        let interval = Interval {
            seq: 3,
            ended: SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_270_896),
            elapsed: Duration::from_secs(2),
            totals: Totals { resets: sum(&last), ..Totals::default() },
            flows_seen: last.len(),
            flow_resets: sum(&last),
            sources: vec![source("10.0.0.9", 4, 4)],
            flows: last,
            services: last_services,
            destinations: vec![],
        };
        let summary = Run {
            elapsed: Duration::from_secs(6),
            intervals: 3,
            interfaces: vec![],
            counting: Some(CountingMode::PerCpu),
            totals: Totals { resets: sum(&run) + 10, overflow: 10, ..Totals::default() },
            unlisted: Default::default(),
            sources: vec![source("10.0.0.9", 10, 10)],
            flows: run,
            destinations: vec![],
            services: run_services,
            kernel_events: Default::default(),
        };
        Snapshot::new(&interval, &summary)
    }

    /// Intervals with no reset at all.
    fn empty() -> Snapshot {
        let mut interval_and_run = snapshot(vec![], vec![]);
        interval_and_run.overflow_sources.clear();
        interval_and_run.totals = Totals::default();
        interval_and_run
    }

    fn sample() -> Snapshot {
        let mut refusals = flow("10.0.1.3", 45000, "10.0.0.3", 8080, 20);
        refusals.direction = Direction::Tx;
        refusals.kinds.add(ResetKind::Refused, 19);
        refusals.kinds.add(ResetKind::Handshake, 1);
        snapshot_with(
            vec![flow("10.0.0.1", 443, "10.0.1.1", 40000, 6), flow("10.0.0.2", 81, "10.0.1.2", 50000, 2)],
            vec![flow("10.0.0.1", 443, "10.0.1.1", 40000, 8), flow("10.0.0.2", 81, "10.0.1.2", 50000, 2), refusals],
            vec![service("10.0.0.1", 443, 0, 0, 6), service("10.0.0.2", 81, 0, 0, 2)],
            vec![
                service("10.0.0.1", 443, 10, 0, 8),
                service("10.0.0.2", 81, 4, 2, 2),
                service("10.0.0.3", 8080, 20, 20, 20),
            ],
        )
    }

    fn render(app: &mut App, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|frame| app.draw(frame)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        let mut text = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                text.push_str(buffer[(x, y)].symbol());
            }
            text.push('\n');
        }
        text
    }

    fn press(app: &mut App, code: KeyCode) {
        app.key(KeyEvent::new(code, KeyModifiers::NONE));
    }

    #[test]
    fn views_group_flows() {
        let s = sample();
        let mut src = s.rows(View::Src, None);
        sort_rows(&mut src, 1, false);
        // 10.0.0.1: 6 of the interval's 8 + 4 overflowed for 10.0.0.9 → 12 in all.
        assert_eq!(src[0][0], Cell::Endpoint(ip("10.0.0.1"), None));
        assert_eq!(src[0][1], Cell::Count(6));
        assert_eq!(src[0][2], Cell::Rate(3.0));
        assert_eq!(src[0][3], Cell::Percent(50.0));
        assert_eq!(src[0][4], Cell::Count(8));
        assert_eq!(src[1][0], Cell::Endpoint(ip("10.0.0.9"), None), "overflowed RSTs stay with their sender");
        assert_eq!(src.len(), 4);

        // Services come from the run's service records: attempts and refusals over the run,
        // RSTs in the interval (rate, share) and over the run.
        let mut services = s.rows(View::Service, None);
        sort_rows(&mut services, 6, false);
        assert_eq!(services.len(), 3);
        assert_eq!(
            services[0],
            [
                Cell::Endpoint(ip("10.0.0.3"), Some(8080)),
                Cell::Count(20),
                Cell::Percent(100.0),
                Cell::Count(0),
                Cell::Rate(0.0),
                Cell::Percent(0.0),
                Cell::Count(20),
            ]
        );
        assert_eq!(
            services[2],
            [
                Cell::Endpoint(ip("10.0.0.2"), Some(81)),
                Cell::Count(4),
                Cell::Percent(50.0),
                Cell::Count(2),
                Cell::Rate(1.0),
                Cell::Percent(25.0),
                Cell::Count(2),
            ]
        );

        let dst = s.rows(View::Dst, None);
        assert_eq!(dst.len(), 3);
        let mut flows = s.rows(View::Flow, None);
        sort_rows(&mut flows, 7, false);
        assert_eq!(flows.len(), 3);
        // Interface, direction, sender, receiver, the run's main kind.
        assert_eq!(flows[0][1], Cell::Text("tx".into()));
        assert_eq!(flows[0][4], Cell::Text("refused".into()), "19 refused beat 1 handshake");
        assert_eq!(flows[1][1], Cell::Text("rx".into()));
        assert_eq!(flows[1][4], Cell::Text(String::new()), "no kind known");
    }

    #[test]
    fn filters_by_port_and_address() {
        let s = sample();
        assert_eq!(Filter::parse(" "), None);
        assert_eq!(Filter::parse("443"), Some(Filter::Port(443)));
        assert_eq!(Filter::parse(":81"), Some(Filter::Port(81)));
        assert_eq!(Filter::parse("99999"), Some(Filter::Address("99999".into())));
        let port = Filter::Port(8080);
        let rows = s.rows(View::Flow, Some(&port));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0][3], Cell::Endpoint(ip("10.0.0.3"), Some(8080)));
        let rows = s.rows(View::Service, Some(&Filter::Port(81)));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0][0], Cell::Endpoint(ip("10.0.0.2"), Some(81)));
        assert_eq!(s.rows(View::Service, Some(&Filter::parse("10.0.0.3").unwrap())).len(), 1);
        let address = Filter::parse("10.0.0.").unwrap();
        // Flows to or from a matching address: 10.0.0.1, .2, the overflowed .9, and 10.0.1.3
        // (which reset 10.0.0.3).
        assert_eq!(s.rows(View::Src, Some(&address)).len(), 4);
        assert!(s.rows(View::Src, Some(&Filter::Port(1))).is_empty());
    }

    #[test]
    fn sorting_is_numeric_and_reversible() {
        let s = sample();
        let mut rows = s.rows(View::Flow, None);
        sort_rows(&mut rows, 7, false);
        let totals: Vec<&Cell> = rows.iter().map(|r| &r[7]).collect();
        assert_eq!(totals, [&Cell::Count(20), &Cell::Count(8), &Cell::Count(2)]);
        sort_rows(&mut rows, 7, true);
        assert_eq!(rows[0][7], Cell::Count(2));
        // Addresses sort as addresses: 10.0.0.2 < 10.0.0.10.
        let mut by_addr = vec![
            vec![Cell::Endpoint(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10)), None)],
            vec![Cell::Endpoint(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), None)],
        ];
        sort_rows(&mut by_addr, 0, false);
        assert_eq!(by_addr[0][0].to_string(), "10.0.0.2");
        // Out-of-range columns and empty rows do not panic.
        sort_rows(&mut by_addr, 99, true);
        sort_rows(&mut [vec![], vec![]], 0, false);
    }

    #[test]
    fn keys_switch_views_sort_filter_and_pause() {
        let mut app = App::new("veth0 (skb)".into(), "xdp", Duration::from_secs(1));
        app.update(sample());
        press(&mut app, KeyCode::Char('f'));
        assert_eq!(app.view, View::Flow);
        press(&mut app, KeyCode::Char('2'));
        assert_eq!(app.view, View::Dst);
        press(&mut app, KeyCode::Left);
        assert_eq!(app.sort_column(), 0);
        press(&mut app, KeyCode::Char('<'));
        assert_eq!(app.sort_column(), 4, "wraps around");
        press(&mut app, KeyCode::Char('r'));
        assert!(app.reversed());
        press(&mut app, KeyCode::Char('/'));
        for c in "8080".chars() {
            press(&mut app, KeyCode::Char(c));
        }
        assert!(app.filter.is_none(), "applies on Enter only");
        press(&mut app, KeyCode::Char('q'));
        assert!(!app.quit, "q is text while typing a filter");
        press(&mut app, KeyCode::Backspace);
        press(&mut app, KeyCode::Enter);
        assert_eq!(app.filter, Some(Filter::Port(8080)));
        press(&mut app, KeyCode::Char('/'));
        press(&mut app, KeyCode::Esc);
        assert_eq!(app.filter, None);
        assert!(!app.quit);

        // Paused: refreshes are kept but not shown; unpausing shows the latest.
        press(&mut app, KeyCode::Char(' '));
        assert!(app.paused);
        app.update(empty());
        assert_eq!(app.rows().len(), 3);
        assert!(render(&mut app, 120, 20).contains("PAUSED"));
        press(&mut app, KeyCode::Char('p'));
        assert!(app.rows().is_empty());

        app.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
        assert!(app.quit);
        let mut app = App::new(String::new(), "xdp", Duration::from_secs(1));
        press(&mut app, KeyCode::Esc);
        assert!(app.quit);
    }

    #[test]
    fn the_panic_hook_gives_the_terminal_back_first() {
        install_panic_hook();
        TERMINAL_TAKEN.store(true, AtomicOrdering::SeqCst);
        let outcome = std::panic::catch_unwind(|| panic!("a bug while the terminal is raw"));
        assert!(outcome.is_err());
        assert!(!TERMINAL_TAKEN.load(AtomicOrdering::SeqCst), "the hook restored the terminal");
        restore_terminal(); // idempotent
    }

    #[test]
    fn never_panics_on_empty_data_or_tiny_terminals() {
        for (width, height) in [(0, 0), (1, 1), (20, 5), (5, 20), (3, 2), (80, 3), (160, 40)] {
            let mut idle = App::new("veth0 (native)".into(), "xdp", Duration::from_millis(500));
            render(&mut idle, width, height);
            idle.update(empty());
            let mut full = App::new("veth0 (native)".into(), "tc", Duration::from_secs(1));
            full.update(sample());
            for view in ['1', '2', '3', '4'] {
                for app in [&mut idle, &mut full] {
                    press(app, KeyCode::Char(view));
                    for _ in 0..7 {
                        press(app, KeyCode::Right);
                        press(app, KeyCode::PageDown);
                        render(app, width, height);
                    }
                    press(app, KeyCode::Up);
                    render(app, width, height);
                }
            }
        }
        let mut app = App::new("veth0 (native)".into(), "xdp", Duration::from_secs(1));
        assert!(render(&mut app, 100, 10).contains("no data yet"));
        app.update(empty());
        assert!(render(&mut app, 100, 10).contains("no resets seen"));
        app.update(sample());
        let screen = render(&mut app, 120, 12);
        assert!(screen.contains("10.0.0.1"), "{screen}");
        assert!(screen.contains("RSTS ▼"), "{screen}");
        assert!(screen.contains("overflow 10"), "{screen}");
    }
}
