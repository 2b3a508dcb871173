//! Where `tracing` writes: stderr, except while `rstwatch top` owns the terminal, when log lines
//! are held back (they would scribble over the screen) and written out once it is restored.

use std::{
    io::{self, Write},
    sync::{Mutex, PoisonError},
};

/// Lines held while the screen is taken; beyond this, the oldest go and a count says so.
const MAX_HELD: usize = 1000;

struct Held {
    holding: bool,
    lines: Vec<Vec<u8>>,
    dropped: usize,
}

static HELD: Mutex<Held> = Mutex::new(Held { holding: false, lines: Vec::new(), dropped: 0 });

/// The writer to give `tracing_subscriber::fmt().with_writer(...)`.
pub fn writer() -> Sink {
    Sink
}

pub struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut held = HELD.lock().unwrap_or_else(PoisonError::into_inner);
        if !held.holding {
            drop(held);
            return io::stderr().write(buf);
        }
        if held.lines.len() == MAX_HELD {
            held.lines.remove(0);
            held.dropped += 1;
        }
        held.lines.push(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Sink {
    type Writer = Sink;

    fn make_writer(&'a self) -> Self::Writer {
        Sink
    }
}

/// Holds log lines back until the returned guard is dropped, which writes them to stderr.
pub fn hold() -> HoldGuard {
    HELD.lock().unwrap_or_else(PoisonError::into_inner).holding = true;
    HoldGuard
}

pub struct HoldGuard;

impl Drop for HoldGuard {
    fn drop(&mut self) {
        let mut held = HELD.lock().unwrap_or_else(PoisonError::into_inner);
        held.holding = false;
        let lines = std::mem::take(&mut held.lines);
        let dropped = std::mem::take(&mut held.dropped);
        drop(held);
        let mut stderr = io::stderr().lock();
        if dropped > 0 {
            let _ = writeln!(stderr, "rstwatch: {dropped} earlier log lines were dropped while the screen was in use");
        }
        for line in lines {
            let _ = stderr.write_all(&line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_held_while_the_screen_is_taken_and_bounded() {
        let guard = hold();
        for i in 0..MAX_HELD + 5 {
            let mut sink = writer();
            sink.write_all(format!("line {i}\n").as_bytes()).expect("held");
        }
        {
            let held = HELD.lock().unwrap_or_else(PoisonError::into_inner);
            assert_eq!(held.lines.len(), MAX_HELD);
            assert_eq!(held.dropped, 5);
            assert_eq!(held.lines[0], b"line 5\n".to_vec(), "the oldest go first");
        }
        drop(guard);
        let held = HELD.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(!held.holding && held.lines.is_empty() && held.dropped == 0, "released and written out");
    }
}
