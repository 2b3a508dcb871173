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
    time::{Duration, Instant},
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
    /// The run's files, when there are several.
    run: Mutex<Run>,
}

/// Where a run of several files is.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    /// Files given, and the number of the current one (from 1).
    files: usize,
    current: usize,
    /// Stored bytes read from the files before the current one.
    done: u64,
    /// The stored size of all of them, when every one has a size.
    total: Option<u64>,
}

/// The line for the whole run, one file after another.
pub struct Progress {
    bar: Option<ProgressBar>,
    shown: Arc<Shown>,
    frames: u64,
}

impl Progress {
    /// Shows a line only when stderr is a terminal and `quiet` is off. `files`: how many files
    /// the run reads, `total`: their stored size, when every one has a size.
    pub fn new(quiet: bool, files: usize, total: Option<u64>) -> Progress {
        let run = Run { files, current: 0, done: 0, total };
        let shown = Arc::new(Shown { run: Mutex::new(run), ..Shown::default() });
        let started = Instant::now();
        let bar = (!quiet && io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            let line = Arc::clone(&shown);
            let style = ProgressStyle::with_template("{line}")
                .map(|style| {
                    style.with_key("line", move |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                        let _ = out.write_str(&line.line(state.elapsed(), started.elapsed()));
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
        let before = match self.shown.consumed.lock() {
            Ok(mut current) => std::mem::replace(&mut *current, consumed).load(Ordering::Relaxed),
            Err(_) => 0,
        };
        if let Ok(mut run) = self.shown.run.lock() {
            run.current += 1;
            run.done += before;
        }
        if let Some(bar) = &self.bar {
            // The rate and ETA are the current file's.
            bar.reset_elapsed();
        }
    }

    /// `read` more frames read.
    #[inline]
    pub fn frames(&mut self, read: u64) {
        self.frames += read;
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
    /// `FILE: 120.0 MiB / 383.0 MiB, 1500000 frames, 700.0 MiB/s, ETA 0:00:02`, and with several
    /// files `FILE (2/3): 120.0 MiB / 383.0 MiB, all: 503.0 MiB / 1.1 GiB, …`, the rate and ETA
    /// then the run's, over all the files when their sizes are known. `file_time`: since the
    /// current file began, `run_time`: since the run began.
    fn line(&self, file_time: Duration, run_time: Duration) -> String {
        let (name, size) = self.file.lock().map(|f| f.clone()).unwrap_or_default();
        let read = self.consumed.lock().map(|c| c.load(Ordering::Relaxed)).unwrap_or(0);
        let frames = self.frames.load(Ordering::Relaxed);
        let run = self.run.lock().map(|run| *run).unwrap_or_default();
        let mut line = name;
        if run.files > 1 {
            let _ = write!(line, " ({}/{})", run.current, run.files);
        }
        let _ = write!(line, ": {}", HumanBytes(read));
        if let Some(size) = size {
            let _ = write!(line, " / {}", HumanBytes(size));
        }
        // The run's figures once there is more than one file and every size is known; else the
        // file's.
        let (read, size, seconds) = match run.total {
            Some(total) if run.files > 1 => {
                let all = run.done + read;
                let _ = write!(line, ", all: {} / {}", HumanBytes(all), HumanBytes(total));
                (all, Some(total), run_time.as_secs_f64())
            }
            _ => (read, size, file_time.as_secs_f64()),
        };
        let _ = write!(line, ", {frames} frames");
        let seconds = seconds.max(1e-3);
        let rate = read as f64 / seconds;
        // A rate over the first moments (the header read, the first chunk) says nothing yet.
        if seconds < 0.5 || rate <= 0.0 {
            return line;
        }
        let _ = write!(line, ", {}/s", HumanBytes(rate as u64));
        if let Some(size) = size {
            let eta = (size.saturating_sub(read) as f64 / rate) as u64;
            let _ = write!(line, ", ETA {}:{:02}:{:02}", eta / 3600, eta / 60 % 60, eta % 60);
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(name: &str, size: Option<u64>, read: u64, run: Run) -> Shown {
        Shown {
            file: Mutex::new((name.to_owned(), size)),
            consumed: Mutex::new(Arc::new(AtomicU64::new(read))),
            frames: AtomicU64::new(1_000),
            run: Mutex::new(run),
        }
    }

    #[test]
    fn one_file_shows_its_own_progress_and_several_their_total() {
        const MIB: u64 = 1 << 20;
        let (file_time, run_time) = (Duration::from_secs(1), Duration::from_secs(4));
        let one = Run { files: 1, current: 1, done: 0, total: Some(100 * MIB) };
        assert_eq!(
            shown("a.pcap", Some(100 * MIB), 25 * MIB, one).line(file_time, run_time),
            "a.pcap: 25.00 MiB / 100.00 MiB, 1000 frames, 25.00 MiB/s, ETA 0:00:03"
        );
        // The second of three files: 100 MiB read before it, 20 of its 100 since; 400 in all.
        let several = Run { files: 3, current: 2, done: 100 * MIB, total: Some(400 * MIB) };
        assert_eq!(
            shown("b.pcap", Some(100 * MIB), 20 * MIB, several).line(file_time, run_time),
            "b.pcap (2/3): 20.00 MiB / 100.00 MiB, all: 120.00 MiB / 400.00 MiB, 1000 frames, 30.00 MiB/s, \
             ETA 0:00:09"
        );
        // A size unknown (standard input): the file's own figures, no total and no ETA.
        let unknown = Run { total: None, ..several };
        assert_eq!(
            shown("standard input", None, 20 * MIB, unknown).line(file_time, run_time),
            "standard input (2/3): 20.00 MiB, 1000 frames, 20.00 MiB/s"
        );
        // The first moments show no rate yet.
        assert_eq!(
            shown("a.pcap", Some(100 * MIB), 0, one).line(Duration::ZERO, Duration::ZERO),
            "a.pcap: 0 B / 100.00 MiB, 1000 frames"
        );
    }
}
