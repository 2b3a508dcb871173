//! What the user asked for (view, sort, filter, pause, scroll) and what is on display; keys
//! change it. Independent of the kernel and of the terminal.

use std::{collections::HashMap, time::Duration};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::{
    columns::{self, sort_rows, Cell},
    state::{Filter, Snapshot},
};
use crate::output::view::View;

/// One view's sort: the column, and whether the order is flipped.
#[derive(Clone, Copy, Debug, Default)]
struct Sorting {
    column: usize,
    reverse: bool,
}

/// What the user asked for, and what is on display.
pub struct App {
    /// `iface (mode)` for each attachment.
    pub interfaces: String,
    pub hook: &'static str,
    pub interval: Duration,
    pub view: View,
    /// Each view's sort, kept while the others are shown.
    sorting: HashMap<View, Sorting>,
    pub filter: Option<Filter>,
    /// `Some(text)` while the filter is being typed.
    pub editing: Option<String>,
    pub paused: bool,
    /// The latest refresh, whatever the pause says.
    live: Snapshot,
    /// What is on screen while paused.
    frozen: Option<Snapshot>,
    pub quit: bool,
    /// First row shown (↑/↓, PgUp/PgDn).
    pub(super) scroll: usize,
}

impl App {
    pub fn new(interfaces: String, hook: &'static str, interval: Duration) -> App {
        App {
            interfaces,
            hook,
            interval,
            view: View::Src,
            sorting: View::ALL
                .into_iter()
                .map(|view| (view, Sorting { column: columns::spec(view).default_sort, reverse: false }))
                .collect(),
            filter: None,
            editing: None,
            paused: false,
            live: Snapshot::default(),
            frozen: None,
            quit: false,
            scroll: 0,
        }
    }

    /// Replaces what is followed (shown unless paused).
    pub fn update(&mut self, snapshot: Snapshot) {
        self.live = snapshot;
    }

    /// What is followed, to take in a refresh: always kept, only shown when not paused.
    pub fn live_mut(&mut self) -> &mut Snapshot {
        &mut self.live
    }

    /// What is on screen: the live snapshot unless paused.
    pub fn shown(&self) -> &Snapshot {
        self.frozen.as_ref().unwrap_or(&self.live)
    }

    pub fn live(&self) -> &Snapshot {
        &self.live
    }

    fn sorting(&self) -> Sorting {
        self.sorting.get(&self.view).copied().unwrap_or_default()
    }

    fn sorting_mut(&mut self) -> &mut Sorting {
        self.sorting.entry(self.view).or_default()
    }

    pub fn sort_column(&self) -> usize {
        self.sorting().column
    }

    pub fn reversed(&self) -> bool {
        self.sorting().reverse
    }

    /// The rows on display, filtered and sorted.
    pub fn rows(&self) -> Vec<Vec<Cell>> {
        let mut rows = self.shown().rows(self.view, self.filter.as_ref());
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
        let columns = columns::spec(self.view).titles.len();
        match key.code {
            KeyCode::Char('q' | 'Q') | KeyCode::Esc => self.quit = true,
            KeyCode::Char('1' | 's') => self.set_view(View::Src),
            KeyCode::Char('2' | 'd') => self.set_view(View::Dst),
            KeyCode::Char('3' | 'v') => self.set_view(View::Service),
            KeyCode::Char('4' | 'f') => self.set_view(View::Flow),
            KeyCode::Char('5' | 'w') => self.set_view(View::Workload),
            KeyCode::Left | KeyCode::Char('<' | ',') => {
                let sorting = self.sorting_mut();
                sorting.column = (sorting.column + columns - 1) % columns;
            }
            KeyCode::Right | KeyCode::Char('>' | '.') => {
                let sorting = self.sorting_mut();
                sorting.column = (sorting.column + 1) % columns;
            }
            KeyCode::Char('r') => {
                let sorting = self.sorting_mut();
                sorting.reverse = !sorting.reverse;
            }
            KeyCode::Char('/') => {
                self.editing = Some(self.filter.as_ref().map(filter_text).unwrap_or_default());
            }
            KeyCode::Char('p' | ' ') => {
                self.paused = !self.paused;
                self.frozen = self.paused.then(|| self.live.clone());
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
}

pub fn filter_text(filter: &Filter) -> String {
    match filter {
        Filter::Port(port) => port.to_string(),
        Filter::Address(text) => text.clone(),
    }
}
