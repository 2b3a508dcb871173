//! Drawing the app: header, view tabs, the table, the key help.

use ratatui::{
    layout::{Constraint, Flex, Layout, Rect},
    style::{Modifier, Style},
    text::{Line, Span},
    widgets::{Cell as TableCell, Paragraph, Row, Table},
    Frame,
};

use super::{
    app::App,
    columns::{self, Cell},
};
use crate::output::view::View;

impl App {
    pub fn draw(&mut self, frame: &mut Frame) {
        let area = frame.area();
        if area.width == 0 || area.height == 0 {
            return;
        }
        let [header, tabs, table, footer] =
            Layout::vertical([Constraint::Length(3), Constraint::Length(1), Constraint::Min(0), Constraint::Length(2)])
                .areas(area);
        frame.render_widget(Paragraph::new(self.header_lines()), header);
        frame.render_widget(Paragraph::new(self.tabs_line()), tabs);
        self.draw_table(frame, table);
        frame.render_widget(Paragraph::new(self.footer_lines()), footer);
    }

    fn header_lines(&self) -> Vec<Line<'static>> {
        let s = self.shown();
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
                format!("  PAUSED (still counting: {} RSTs so far)", self.live().totals.resets),
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
        // The cause that explains most resets leads; the others are in the summary and JSON.
        let verdict = match s.verdicts.split_first() {
            Some((top, [])) => format!("▶ {}", top.text()),
            Some((top, rest)) => format!("▶ {}  (+{} more causes)", top.text(), rest.len()),
            None => "no cause named yet".to_string(),
        };
        vec![Line::from(first), Line::from(second), Line::from(verdict)]
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
        let column = columns::spec(self.view).titles.get(self.sort_column()).copied().unwrap_or("");
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
            "1-5/s d v f w view · ←→/<> sort · r reverse · / filter · p/space pause · ↑↓ scroll · q quit".to_string()
        };
        vec![Line::from(keys), Line::from(columns::spec(self.view).note)]
    }

    fn draw_table(&mut self, frame: &mut Frame, area: Rect) {
        if area.height == 0 {
            return;
        }
        let rows = self.rows();
        let visible = usize::from(area.height.saturating_sub(1)).max(1);
        self.scroll = self.scroll.min(rows.len().saturating_sub(visible));
        if rows.is_empty() {
            let text = if self.shown().intervals == 0 {
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
        let titles: Vec<String> = columns::spec(self.view)
            .titles
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
            columns::spec(self.view).titles.join("  "),
            Style::default().add_modifier(Modifier::BOLD | Modifier::UNDERLINED),
        )
    }
}
