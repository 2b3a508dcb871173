//! `rstwatch top`'s live view (the command is [`crate::cmd::top`]): the run drawn as a table
//! that can be sorted, switched between views, filtered and paused.
//!
//! [`state`] follows the run interval by interval, [`columns`] says what each view shows,
//! [`app`] is what the user asked for, [`render`] draws it, [`terminal`] makes sure the
//! terminal is given back. The display logic is independent of the kernel and of the
//! terminal, so it is unit-tested against ratatui's test backend.

pub mod app;
pub mod columns;
pub mod render;
pub mod state;
pub mod terminal;

pub use self::{
    app::App,
    columns::{sort_rows, Cell},
    state::{Filter, Snapshot},
};

/// The display logic against ratatui's test backend: views, filters, sorting, keys, drawing.
#[cfg(test)]
mod tests {
    use std::{
        net::{IpAddr, Ipv4Addr},
        time::{Duration, SystemTime},
    };

    use ratatui::{
        backend::TestBackend,
        crossterm::event::{KeyCode, KeyEvent, KeyModifiers},
        Terminal,
    };
    use rst_common::{
        wire::{ResetKind, DIRECTION_TX, FAMILY_IPV4},
        FlowKey,
    };

    use super::{
        state::{FlowChange, Refresh},
        *,
    };
    use crate::{
        model::aggregate::model::{Interval, Service, Totals},
        output::view::View,
    };

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn ipv4(text: &str) -> [u8; 16] {
        let mut bytes = [0; 16];
        if let IpAddr::V4(v4) = ip(text) {
            bytes[..4].copy_from_slice(&v4.octets());
        }
        bytes
    }

    /// A flow on veth0 (ifindex 3): its RSTs in the refresh and over the run so far.
    fn flow(src: &str, sport: u16, dst: &str, dport: u16, last: u64, total: u64) -> FlowChange {
        let key = FlowKey {
            src: ipv4(src),
            dst: ipv4(dst),
            ifindex: 3,
            sport,
            dport,
            family: FAMILY_IPV4,
            ..FlowKey::default()
        };
        FlowChange { key, last, run: Some((total, None)), workload: None }
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
            pauses: Default::default(),
            tunnel: None,
        }
    }

    fn interval(seq: u64, resets: u64) -> Interval {
        Interval {
            seq,
            ended: SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_270_896),
            elapsed: Duration::from_secs(2),
            totals: Totals { resets, ..Totals::default() },
            flows_seen: 0,
            flow_resets: resets,
            sources: vec![],
            flows: vec![],
            services: vec![],
            destinations: vec![],
            verdicts: vec![],
            conversations: None,
            workloads: vec![],
        }
    }

    /// Feeds `snapshot` one refresh.
    fn refresh(
        snapshot: &mut Snapshot,
        seq: u64,
        flows: Vec<FlowChange>,
        services: Vec<Service>,
        overflow: Vec<(IpAddr, u64)>,
        run_totals: Totals,
    ) {
        let last: u64 = flows.iter().map(|f| f.last).sum();
        let interval = interval(seq, last);
        let refresh = Refresh {
            interval: &interval,
            run: Duration::from_secs(2 * seq),
            totals: run_totals,
            services: &services,
            overflow: &overflow,
        };
        snapshot.advance(&refresh, flows.into_iter(), |_| "veth0".to_string());
    }

    /// Intervals with no reset at all.
    fn empty() -> Snapshot {
        let mut snapshot = Snapshot::default();
        refresh(&mut snapshot, 3, vec![], vec![], vec![], Totals::default());
        snapshot
    }

    /// Two refreshes: in the last, 10.0.0.1:443 sent 6 RSTs (8 over the run) and 10.0.0.2:81 sent
    /// 2; before it 10.0.1.3 refused 20 attempts to 10.0.0.3:8080 (mostly refused, by the run's
    /// kinds), and 10 RSTs from 10.0.0.9 overflowed the flow table in all (4 in the last).
    fn sample() -> Snapshot {
        let mut refusals = flow("10.0.1.3", 45000, "10.0.0.3", 8080, 20, 20);
        refusals.key.direction = DIRECTION_TX;
        refusals.run = Some((20, Some(ResetKind::Refused)));
        let mut snapshot = Snapshot::default();
        refresh(
            &mut snapshot,
            2,
            vec![flow("10.0.0.1", 443, "10.0.1.1", 40000, 2, 2), refusals],
            vec![
                service("10.0.0.1", 443, 10, 0, 2),
                service("10.0.0.3", 8080, 20, 20, 20),
                service("10.0.0.2", 81, 4, 2, 0),
            ],
            vec![(ip("10.0.0.9"), 6)],
            Totals { resets: 28, overflow: 6, ..Totals::default() },
        );
        refresh(
            &mut snapshot,
            3,
            vec![flow("10.0.0.1", 443, "10.0.1.1", 40000, 6, 8), flow("10.0.0.2", 81, "10.0.1.2", 50000, 2, 2)],
            vec![service("10.0.0.1", 443, 0, 0, 6), service("10.0.0.2", 81, 0, 0, 2)],
            vec![(ip("10.0.0.9"), 4)],
            Totals { resets: 30 + 10, overflow: 10, ..Totals::default() },
        );
        snapshot
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
                Cell::Pause(None),
                Cell::Text(String::new()),
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
                Cell::Pause(None),
                Cell::Text(String::new()),
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
    fn never_panics_on_empty_data_or_tiny_terminals() {
        for (width, height) in [(0, 0), (1, 1), (20, 5), (5, 20), (3, 2), (80, 3), (160, 40)] {
            let mut idle = App::new("veth0 (native)".into(), "xdp", Duration::from_millis(500));
            render(&mut idle, width, height);
            idle.update(empty());
            let mut full = App::new("veth0 (native)".into(), "tc", Duration::from_secs(1));
            full.update(sample());
            for view in ['1', '2', '3', '4', '5'] {
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

    /// Two tenants with the same inner tuple in VXLAN VNIs 42 and 43: two flow rows and two
    /// service rows that say which tunnel each is.
    #[test]
    fn tenants_behind_tunnels_are_rows_of_their_own() {
        use rst_common::wire::{ResetClass, ServiceKey, ServiceValue, TunnelKey, TunnelKind, TUNNEL_INTERFACE};

        use crate::{collect::Sample, model::aggregate::Aggregator};

        let vxlan =
            |vni| TunnelKey { ifindex: 3, kind: TunnelKind::Vxlan as u8, keyed: 1, key: vni, ..TunnelKey::default() };
        let base = FlowKey {
            class: ResetClass::new(ResetKind::Refused, true, true, true, false).0,
            ..flow("10.0.1.1", 80, "10.0.0.1", 4000, 0, 0).key
        };
        let in_tunnel = |number| FlowKey { ifindex: TUNNEL_INTERFACE | number, ..base };
        let service = |number| {
            (
                ServiceKey::new(ipv4("10.0.1.1"), 80, &in_tunnel(number)),
                ServiceValue { attempts: 1, ..ServiceValue::default() },
            )
        };
        let sample = Sample {
            flows: vec![(in_tunnel(0), 1), (in_tunnel(1), 2)],
            services: vec![service(0), service(1)],
            tunnels: vec![(0, vxlan(42)), (1, vxlan(43))],
            ..Sample::default()
        };
        let mut aggregator = Aggregator::new(vec![], 10);
        let mut snapshot = Snapshot::default();
        let record = aggregator.fold(&sample, Duration::from_secs(1), SystemTime::now());
        snapshot.follow(&record, &aggregator);
        let mut flows: Vec<String> = snapshot.rows(View::Flow, None).iter().map(|row| row[0].to_string()).collect();
        flows.sort();
        assert_eq!(flows, ["if3 vxlan 42", "if3 vxlan 43"]);
        let mut services: Vec<(String, String)> =
            snapshot.rows(View::Service, None).iter().map(|row| (row[0].to_string(), row[8].to_string())).collect();
        services.sort();
        assert_eq!(
            services,
            [("10.0.1.1:80".to_owned(), "vxlan 42".to_owned()), ("10.0.1.1:80".to_owned(), "vxlan 43".to_owned())]
        );
    }

    /// Following the aggregator interval by interval ends where the run's summary is: every flow's
    /// and every resetter's run total, every service's, and the last interval's counts.
    #[test]
    fn following_the_run_equals_the_summary() {
        use std::collections::BTreeMap;

        use rst_common::wire::{ResetClass, ServiceKey, ServiceValue};

        use crate::{collect::Sample, model::aggregate::Aggregator};

        let key = |src: &str, sport: u16, kind: ResetKind, server: bool| FlowKey {
            class: ResetClass::new(kind, true, server, true, false).0,
            ..flow(src, sport, "10.0.1.1", 80, 0, 0).key
        };
        let intervals = [
            vec![
                (key("10.0.0.1", 1, ResetKind::Refused, true), 3),
                (key("10.0.0.2", 2, ResetKind::Established, false), 1),
            ],
            vec![
                (key("10.0.0.1", 1, ResetKind::Handshake, true), 2),
                (key("10.0.0.3", 3, ResetKind::Closing, true), 5),
            ],
            vec![(key("10.0.0.2", 2, ResetKind::Established, false), 4)],
        ];
        let mut aggregator = Aggregator::new(vec![], 10);
        let mut snapshot = Snapshot::default();
        for flows in intervals {
            let service = ServiceKey::new(ipv4("10.0.1.1"), 80, &flows[0].0);
            let sample = Sample {
                flows,
                services: vec![(service, ServiceValue { attempts: 2, synacks: 1, ..ServiceValue::default() })],
                ..Sample::default()
            };
            let record = aggregator.fold(&sample, Duration::from_secs(1), SystemTime::now());
            snapshot.follow(&record, &aggregator);
        }
        let run = aggregator.summary();
        let column = |view: View, key: usize, value: usize| -> BTreeMap<String, Cell> {
            snapshot.rows(view, None).into_iter().map(|row| (row[key].to_string(), row[value].clone())).collect()
        };
        let flows = column(View::Flow, 2, 7);
        assert_eq!(flows.len(), run.flows.len());
        for f in &run.flows {
            assert_eq!(flows[&format!("{}:{}", f.src, f.sport)], Cell::Count(f.resets), "{f:?}");
        }
        let sources = column(View::Src, 0, 4);
        assert_eq!(sources.len(), run.sources.len());
        for s in &run.sources {
            assert_eq!(sources[&s.src.to_string()], Cell::Count(s.resets));
        }
        let services = column(View::Service, 0, 6);
        assert_eq!(services.len(), run.services.len());
        for s in &run.services {
            assert_eq!(services[&format!("{}:{}", s.addr, s.port)], Cell::Count(s.resets));
        }
        let attempts = column(View::Service, 0, 1);
        assert_eq!(attempts["10.0.1.1:80"], Cell::Count(6));
        // The last interval: only 10.0.0.2's 4; the others' counts went back to zero.
        let last = column(View::Src, 0, 1);
        assert_eq!(last["10.0.0.2"], Cell::Count(4));
        assert_eq!(last["10.0.0.1"], Cell::Count(0));
        assert_eq!(last["10.0.0.3"], Cell::Count(0));
    }
}
