//! CPU affinity, for tests that need two programs running on two CPUs at the same moment.

use std::io;

/// The CPUs this thread may run on (empty if the kernel will not say).
pub fn usable_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data, all-zero a valid empty set; sched_getaffinity(0) fills it
    // for this thread and CPU_ISSET only reads inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&cpu| libc::CPU_ISSET(cpu, &set)).collect()
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; sched_setaffinity(0) only
    // changes this thread.
    let ret = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
