//! `membarrier(2)`: the RCU grace period the benchmarks time on its own.

use std::io;

const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;

/// Waits until every CPU has passed through a grace period (`MEMBARRIER_CMD_GLOBAL`).
pub fn global() -> io::Result<()> {
    // SAFETY: membarrier takes no pointers; MEMBARRIER_CMD_GLOBAL only waits.
    let ret = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
