//! `rstwatch top`: the same [`LiveSession`] as the watch mode, drawn by the live view
//! ([`crate::output::tui`]) until `q`, Ctrl-C or a signal.

use std::{
    io::{self, IsTerminal as _},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use ratatui::{
    backend::{Backend, CrosstermBackend},
    crossterm::event::{self, Event},
    Terminal,
};

use crate::{
    cli::TopArgs,
    cmd::live::{LiveSession, Settings},
    load::HookChoice,
    model::aggregate::DEFAULT_SUMMARY_FLOWS,
    output::tui::{terminal, App},
    output::view::View,
    output::{Format, Printer},
};

/// `rstwatch top`: checks, loads and attaches like the watch mode, then runs the live view until
/// `q`, Ctrl-C or a signal; detaches and prints the run's summary on the normal screen.
pub fn run(args: &TopArgs) -> anyhow::Result<()> {
    // Everything that can be checked without touching the kernel is checked first.
    if !io::stdout().is_terminal() || !io::stdin().is_terminal() {
        anyhow::bail!("rstwatch top needs a terminal (for a pipe or a file, use plain `rstwatch -i IFACE`)");
    }
    let options = args.live();
    let targets = LiveSession::preflight(&options)?;
    terminal::install_signal_handlers()?;
    // The view follows every flow itself (see `Snapshot::follow`); `top` sizes the summary.
    let settings = Settings {
        max_flows: args.max_flows,
        top: SUMMARY_TOP,
        summary_flows: DEFAULT_SUMMARY_FLOWS,
        interval: args.interval,
    };
    let mut session = LiveSession::start(&options, &targets, settings, None)?;
    let hook = match session.hook() {
        HookChoice::Xdp => "xdp",
        HookChoice::Tc => "tc",
    };
    let mut app = App::new(session.described_interfaces(), hook, args.interval);

    let outcome = {
        // Declared first, dropped last: held log lines appear once the terminal is restored.
        let _held_logs = crate::logsink::hold();
        let guard = terminal::TerminalGuard::take()?;
        let outcome = Terminal::new(CrosstermBackend::new(io::stdout()))
            .context("setting up the terminal")
            .and_then(|mut terminal| live(&mut terminal, &mut app, &mut session, args.interval));
        drop(guard);
        outcome
    };

    session.detach();
    outcome?;
    let finished = session.finish()?;
    let mut printer = Printer::new(io::stdout().lock(), Format::Table, SUMMARY_TOP, View::Src);
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
        if terminal::stop_requested() || app.quit {
            return Ok(());
        }
        let now = Instant::now();
        if now >= next_tick {
            let record = session.tick_unranked()?;
            app.live_mut().follow(&record, session.aggregator());
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
