//! The progress line of a long replay: on stderr, and only when stderr is a terminal, so it
//! never mixes into the report (stdout) or into a log that stderr was sent to.
//!
//! The replay loop only stores counts; the line is drawn by indicatif's own ticker thread, which
//! reads them a few times a second, so a frame costs one store whether the line is shown or not.

use std::{
    fmt::Write as _,
    io::{self, IsTerminal as _},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// What the line shows, shared with the ticker.
#[derive(Default)]
struct Shown {
    /// The current file: its name and stored size (when it has one).
    file: Mutex<(String, Option<u64>)>,
    /// Stored bytes of the current file read so far; swapped for each file.
    consumed: Mutex<Arc<AtomicU64>>,
    frames: AtomicU64,
}

/// The line for the whole run, one file after another.
pub struct Progress {
    bar: Option<ProgressBar>,
    shown: Arc<Shown>,
    frames: u64,
}

impl Progress {
    /// Shows a line only when stderr is a terminal and `quiet` is off.
    pub fn new(quiet: bool) -> Progress {
        let shown = Arc::new(Shown::default());
        let bar = (!quiet && io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            let line = Arc::clone(&shown);
            let style = ProgressStyle::with_template("{line}")
                .map(|style| {
                    style.with_key("line", move |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                        line.draw(state, out);
                    })
                })
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress { bar, shown, frames: 0 }
    }

    /// A new file begins: `size` is its stored size when known, `consumed` its running count of
    /// stored bytes read.
    pub fn file(&mut self, name: &str, size: Option<u64>, consumed: Arc<AtomicU64>) {
        if let Ok(mut file) = self.shown.file.lock() {
            *file = (name.to_owned(), size);
        }
        if let Ok(mut current) = self.shown.consumed.lock() {
            *current = consumed;
        }
        if let Some(bar) = &self.bar {
            // The rate and ETA are the current file's.
            bar.reset_elapsed();
        }
    }

    /// One more frame read.
    #[inline]
    pub fn frame(&mut self) {
        self.frames += 1;
        self.shown.frames.store(self.frames, Ordering::Relaxed);
    }

    /// Runs `f` (which writes to the terminal: an error, or the report when stdout is the same
    /// terminal) with the line taken off it meanwhile.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    /// Takes the line off the terminal: what follows (the report, an error) owns the screen.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Shown {
    /// `FILE: 120.0 MiB / 383.0 MiB, 1500000 frames, 700.0 MiB/s, ETA 0:00:02`
    fn draw(&self, state: &ProgressState, out: &mut dyn std::fmt::Write) {
        let (name, size) = self.file.lock().map(|f| f.clone()).unwrap_or_default();
        let read = self.consumed.lock().map(|c| c.load(Ordering::Relaxed)).unwrap_or(0);
        let frames = self.frames.load(Ordering::Relaxed);
        let seconds = state.elapsed().as_secs_f64().max(1e-3);
        let rate = read as f64 / seconds;
        let mut line = format!("{name}: {}", HumanBytes(read));
        if let Some(size) = size {
            let _ = write!(line, " / {}", HumanBytes(size));
        }
        let _ = write!(line, ", {frames} frames");
        // A rate over the first moments (the header read, the first chunk) says nothing yet.
        if seconds < 0.5 || rate <= 0.0 {
            let _ = out.write_str(&line);
            return;
        }
        let _ = write!(line, ", {}/s", HumanBytes(rate as u64));
        if let Some(size) = size {
            let eta = (size.saturating_sub(read) as f64 / rate) as u64;
            let _ = write!(line, ", ETA {}:{:02}:{:02}", eta / 3600, eta / 60 % 60, eta % 60);
        }
        let _ = out.write_str(&line);
    }
}
