//! The terminal is always given back: on a normal exit, on `q` / Esc / Ctrl-C (raw mode turns
//! Ctrl-C into a key), on SIGINT / SIGTERM / SIGHUP, and on a panic (the panic hook restores the
//! terminal before the message is printed).

use std::{
    io,
    sync::atomic::{AtomicBool, AtomicI32, Ordering as AtomicOrdering},
};

use anyhow::Context as _;
use ratatui::crossterm::{
    cursor, execute,
    terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
};

/// Whether the terminal is in raw mode / the alternate screen (so restoring is idempotent and
/// the panic hook knows whether to act).
pub static TERMINAL_TAKEN: AtomicBool = AtomicBool::new(false);

/// Gives the terminal back: main screen, cooked mode, visible cursor. Safe to call any number
/// of times, from the panic hook too.
pub fn restore_terminal() {
    if TERMINAL_TAKEN.swap(false, AtomicOrdering::SeqCst) {
        let _ = terminal::disable_raw_mode();
        let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
    }
}

/// Owns the terminal while it lives; dropping it (also while unwinding) restores it.
pub struct TerminalGuard;

impl TerminalGuard {
    pub fn take() -> anyhow::Result<TerminalGuard> {
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

pub fn install_panic_hook() {
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

pub fn install_signal_handlers() -> anyhow::Result<()> {
    crate::sys::terminal::on_signals(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP], on_stop_signal)
        .context("installing the signal handlers")
}

/// Whether SIGINT, SIGTERM or SIGHUP arrived.
pub fn stop_requested() -> bool {
    STOP_SIGNAL.load(AtomicOrdering::SeqCst) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_panic_hook_gives_the_terminal_back_first() {
        install_panic_hook();
        TERMINAL_TAKEN.store(true, AtomicOrdering::SeqCst);
        let outcome = std::panic::catch_unwind(|| panic!("a bug while the terminal is raw"));
        assert!(outcome.is_err());
        assert!(!TERMINAL_TAKEN.load(AtomicOrdering::SeqCst), "the hook restored the terminal");
        restore_terminal(); // idempotent
    }
}
