//! membarrier(2): waiting until every BPF program run that started before now has finished.

use super::{Error, Result};

const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;

/// Returns once every CPU has passed an RCU grace period (`MEMBARRIER_CMD_GLOBAL`, Linux 4.16;
/// `synchronize_rcu` in the kernel). BPF programs run inside RCU read sections, so after this
/// no program run that read a value before the call is still in flight.
///
/// # Errors
/// [`Error::Os`]: `EINVAL` on `nohz_full` kernels, which refuse the command, `ENOSYS` without
/// `CONFIG_MEMBARRIER`.
pub fn global() -> Result<()> {
    // SAFETY: membarrier takes no pointers; the command only waits.
    let ret = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if ret < 0 {
        return Err(Error::last("membarrier(MEMBARRIER_CMD_GLOBAL)"));
    }
    Ok(())
}
