//! SIGINT/SIGTERM only raise a flag: whoever is running decides how to stop, and the lab is always
//! torn down on the way out instead of dying with namespaces left behind.

use std::{
    io,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, Result};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    // Only an atomic store: the one thing that is async-signal-safe and all we need.
    STOP.store(true, Ordering::SeqCst);
}

/// Installs the flag-raising handler for SIGINT and SIGTERM.
pub fn install() -> Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `sigaction` is plain data; zeroed is a valid empty value and we then set the
        // handler, an empty mask and SA_RESTART so blocking calls elsewhere are not cut short.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: `action.sa_mask` is a valid sigset_t owned by this frame.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: the handler only performs an atomic store, which is async-signal-safe, and both
        // pointers are valid for the duration of the call.
        let rc = unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("installing the SIGINT/SIGTERM handler");
        }
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM has arrived since `install`.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// The flag itself, for loops that take an `&AtomicBool` to stop on.
pub fn flag() -> &'static AtomicBool {
    &STOP
}

/// Sends `signal` to one process we started.
pub fn send(pid: u32, signal: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is one of our own children.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("sending signal {signal} to pid {pid}"));
    }
    Ok(())
}
