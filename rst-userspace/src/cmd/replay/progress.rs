//! The progress line of a long replay: on stderr, and only when stderr is a terminal, so it
//! never mixes into the report (stdout) or into a log that stderr was sent to.

use std::{
    io::{self, IsTerminal as _},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Frames between two looks at the byte count: the bar is redrawn at most a few times a
/// second anyway, and a look per frame would cost more than the frame.
const FRAMES_PER_UPDATE: u64 = 1 << 16;

/// The line for the whole run, one file after another.
pub struct Progress {
    bar: Option<ProgressBar>,
    /// The current file's stored bytes read so far.
    consumed: Arc<AtomicU64>,
    /// Frames of the whole run.
    frames: u64,
}

impl Progress {
    /// Shows a line only when stderr is a terminal and `quiet` is off.
    pub fn new(quiet: bool) -> Progress {
        let shown = !quiet && io::stderr().is_terminal();
        Progress::to(shown.then(ProgressDrawTarget::stderr))
    }

    fn to(target: Option<ProgressDrawTarget>) -> Progress {
        let bar = target.map(|target| {
            let bar = ProgressBar::with_draw_target(None, target);
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Progress { bar, consumed: Arc::new(AtomicU64::new(0)), frames: 0 }
    }

    /// A new file begins: `size` is its stored size when known, `consumed` its running count of
    /// stored bytes read.
    pub fn file(&mut self, name: &str, size: Option<u64>, consumed: Arc<AtomicU64>) {
        self.consumed = consumed;
        let Some(bar) = &self.bar else { return };
        bar.set_message(name.to_owned());
        match size {
            Some(size) => {
                bar.set_length(size);
                bar.set_style(style("{msg} {bytes}/{total_bytes} ({bytes_per_sec}, ETA {eta}) {prefix}"));
            }
            None => {
                bar.unset_length();
                bar.set_style(style("{msg} {bytes} ({bytes_per_sec}) {prefix}"));
            }
        }
        bar.set_position(0);
        bar.reset_eta();
    }

    /// One more frame read.
    #[inline]
    pub fn frame(&mut self) {
        self.frames += 1;
        if self.frames % FRAMES_PER_UPDATE == 0 {
            self.update();
        }
    }

    fn update(&self) {
        let Some(bar) = &self.bar else { return };
        bar.set_position(self.consumed.load(Ordering::Relaxed));
        let elapsed = bar.elapsed().as_secs_f64().max(1e-3);
        bar.set_prefix(format!("{} frames, {:.1} M frames/s", self.frames, self.frames as f64 / elapsed / 1e6));
    }

    /// Takes the line off the terminal: the report that follows owns the screen.
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

fn style(template: &str) -> ProgressStyle {
    // The templates are constants: an error here is a typo caught by the first test run.
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
}
