//! The raw syscalls `rstwatch top` needs around the terminal: signal dispositions that let it
//! restore the screen instead of dying with the terminal in raw mode.

use std::io;

/// Installs `handler` for each of `signals` (with `SA_RESTART`, so reads of the terminal are
/// not cut short). The handler must be async-signal-safe.
pub fn on_signals(signals: &[libc::c_int], handler: extern "C" fn(libc::c_int)) -> io::Result<()> {
    for &signal in signals {
        // SAFETY: `action` is zeroed (a valid empty sigaction) and then fully set up before the
        // call; `handler` is an `extern "C" fn(c_int)`, the signature `sa_sigaction` expects
        // without SA_SIGINFO; the old action is not asked for (null).
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
