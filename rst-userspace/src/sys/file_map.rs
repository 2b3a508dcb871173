//! mmap(2) of a regular file, read in place: replay parses a capture where it lies in the page
//! cache instead of copying it out (the copy was a quarter of a replay's CPU time).
//!
//! A mapped file that shrinks while it is read makes the next touch of a vanished page raise
//! SIGBUS, which would kill the process with no word of why. Callers check the file's size
//! before each window they read ([`FileMap::len_now`]), which turns the usual case into an
//! error of their own; for a file that shrinks in between, [`FileMap::new`] installs a handler
//! that names the file and exits with status 1 when the fault is inside the live mapping (any
//! other SIGBUS gets the default action, as before).

use std::{
    fs::File,
    io,
    os::fd::AsRawFd as _,
    ptr::NonNull,
    sync::{
        atomic::{AtomicPtr, AtomicUsize, Ordering},
        Once,
    },
};

use super::{Error, Result};

/// A read-only, private mapping of a whole file, up to its size when mapped.
pub struct FileMap {
    start: NonNull<u8>,
    len: usize,
    page: usize,
    /// The file, for its size now ([`FileMap::len_now`]).
    file: File,
    /// Bytes before this were released ([`FileMap::release_before`]).
    released: AtomicUsize,
    /// What the SIGBUS handler knows of this mapping (leaked: the handler may read it at any
    /// time, on any thread).
    fault: &'static Fault,
}

/// Bytes released at a time (see [`FileMap::release_before`]).
pub const RELEASE_STRIDE: usize = 8 << 20;

// SAFETY: the mapping is read-only memory owned by this value alone; reading it from several
// threads is reading shared immutable bytes, and unmapping happens once, in `drop`.
unsafe impl Send for FileMap {}
// SAFETY: as above: `&FileMap` only reads, and `release_before` only drops page-table entries,
// which the next read faults back in from the page cache with the same bytes.
unsafe impl Sync for FileMap {}

/// A live mapping's place and the message that names its file.
struct Fault {
    start: usize,
    len: usize,
    message: Vec<u8>,
}

/// The mapping whose faults the SIGBUS handler explains: the one mapped last, until dropped.
static LIVE: AtomicPtr<Fault> = AtomicPtr::new(std::ptr::null_mut());

impl FileMap {
    /// Maps the first `len` bytes of `file` (its size when opened; `name` is what the SIGBUS
    /// message calls it). Linux 2.6 (`MADV_SEQUENTIAL`, `MADV_DONTNEED`).
    ///
    /// # Safety
    /// No one may write the file's first `len` bytes while it is mapped: its bytes are handed
    /// out as `&[u8]`, which must not change while borrowed. (Shrinking it is handled: see the
    /// module.)
    ///
    /// # Errors
    /// [`Error::Os`] with mmap's errno: `EINVAL` for `len` 0, `ENODEV` for a file that cannot be
    /// mapped (a pipe, a device, some FUSE files), `ENOMEM` when the address space is full;
    /// [`Error::Malformed`] for a `len` beyond the address space; [`Error::Os`] from `dup` when
    /// the process is out of descriptors.
    pub unsafe fn new(file: &File, len: u64, name: &str) -> Result<FileMap> {
        let len = usize::try_from(len)
            .map_err(|_| Error::Malformed { call: "mmap", what: "a file larger than the address space" })?;
        let file = file.try_clone().map_err(|source| Error::Os { call: "dup", source })?;
        // SAFETY: a new read-only private mapping of an open descriptor, placed where the kernel
        // chooses: it aliases no Rust object, and the result is checked before any use.
        let address =
            unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_PRIVATE, file.as_raw_fd(), 0) };
        if address == libc::MAP_FAILED {
            return Err(Error::last("mmap"));
        }
        let start =
            NonNull::new(address.cast::<u8>()).ok_or(Error::Malformed { call: "mmap", what: "returned NULL" })?;
        // Read front to back, once: the kernel reads ahead further and keeps less behind. Advice
        // only: a refusal changes nothing that matters.
        // SAFETY: advice on the mapping just made, `len` bytes; it changes no contents.
        unsafe { libc::madvise(address, len, libc::MADV_SEQUENTIAL) };
        // SAFETY: sysconf takes no pointers.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(1);
        let message = format!(
            "rstwatch: error: {name}: the file shrank or could not be read while replay read it through a \
             memory mapping (pipe a file that may change: cat FILE | rstwatch replay -)\n"
        );
        let fault: &'static Fault =
            Box::leak(Box::new(Fault { start: address as usize, len, message: message.into_bytes() }));
        LIVE.store((fault as *const Fault).cast_mut(), Ordering::Release);
        install_sigbus_handler();
        Ok(FileMap { start, len, page, file, released: AtomicUsize::new(0), fault })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `start` is a live read-only mapping of `len` bytes until `self` is dropped, and
        // the slice cannot outlive `self`. Nothing in this process writes it, and `new`'s caller
        // promised no one else does; a file shrunk meanwhile is the SIGBUS this module handles.
        unsafe { std::slice::from_raw_parts(self.start.as_ptr(), self.len) }
    }

    /// The file's size now, which may be less than what was mapped: reading mapped bytes past
    /// it raises SIGBUS.
    ///
    /// # Errors
    /// fstat's: `EIO`, or `EOVERFLOW` on a 32-bit build for a file over 2 GiB.
    pub fn len_now(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Tells the kernel the pages before `end` are read (`MADV_DONTNEED`), once they add up to
    /// [`RELEASE_STRIDE`]: they leave this process's resident memory, not the page cache, so a
    /// replay's memory stays bounded by what it keeps rather than by the file's size. Each call
    /// makes the kernel interrupt the other CPUs running this process to drop their TLB entries,
    /// hence the stride. Reading a released page again faults it back in.
    pub fn release_before(&self, end: usize) {
        let end = end.min(self.len) / self.page * self.page;
        let first = self.released.load(Ordering::Relaxed);
        // Two threads drop windows: only the one that moves the mark on releases.
        if end < first.saturating_add(RELEASE_STRIDE)
            || self.released.compare_exchange(first, end, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        // SAFETY: `first..end` lies inside the mapping (`first` is an earlier `end`); dropping the
        // page-table entries of a read-only private file mapping never loses data (it has no
        // private copies).
        unsafe { libc::madvise(self.start.as_ptr().add(first).cast(), end - first, libc::MADV_DONTNEED) };
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        // Its faults are no longer this file's (a later file's mapping may be the live one).
        let _ = LIVE.compare_exchange(
            (self.fault as *const Fault).cast_mut(),
            std::ptr::null_mut(),
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
        // SAFETY: unmaps exactly the mapping made in `new`; no slice of it outlives `self`.
        unsafe { libc::munmap(self.start.as_ptr().cast(), self.len) };
    }
}

fn install_sigbus_handler() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        // SAFETY: an all-zero sigaction is valid (no flags, empty mask) before its fields are set.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction =
            on_sigbus as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO;
        // SAFETY: `action` is initialised; the handler only calls async-signal-safe functions.
        unsafe {
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
        }
    });
}

extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
    let live = LIVE.load(Ordering::Acquire);
    // SAFETY: `info` is the kernel's siginfo for this SIGBUS (SA_SIGINFO); `live` is null or a
    // leaked, never freed `Fault`. write(2), sigaction(2) and _exit(2) are async-signal-safe, and
    // nothing here allocates or locks.
    unsafe {
        let address = if info.is_null() { 0 } else { (*info).si_addr() as usize };
        if let Some(fault) = live.as_ref().filter(|f| (f.start..f.start + f.len).contains(&address)) {
            libc::write(libc::STDERR_FILENO, fault.message.as_ptr().cast(), fault.message.len());
            libc::_exit(1);
        }
        // Not a fault of the mapping: the default action, as if no handler had been installed.
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(signal, &default, std::ptr::null_mut());
        libc::raise(signal);
    }
}

#[cfg(test)]
mod tests {
    use std::{fs::File, io::Write as _, process::Command};

    use super::FileMap;

    const CHILD: &str = "RSTWATCH_TEST_SIGBUS_FILE";
    const TEST: &str = "sys::file_map::tests::a_file_shrunk_under_its_mapping_is_named_and_exits_1";

    /// Runs itself again as the child that maps a file, shrinks it and touches a page that is
    /// gone: the process must end with the file named and status 1, not die of SIGBUS.
    #[test]
    fn a_file_shrunk_under_its_mapping_is_named_and_exits_1() {
        let page = 4096;
        if let Some(path) = std::env::var_os(CHILD) {
            let file = File::options().read(true).write(true).open(&path).expect("open");
            // SAFETY: no one else writes the file; shrinking it is what is tested.
            let map = unsafe { FileMap::new(&file, 3 * page as u64, "shrinking.pcap") }.expect("map");
            assert_eq!(map.bytes()[2 * page], 7, "the mapping reads the file");
            file.set_len(0).expect("truncate");
            let byte = std::hint::black_box(map.bytes()[2 * page]);
            panic!("read {byte} from a page the file no longer has");
        }
        let path = std::env::temp_dir().join(format!("rstwatch-sigbus-{}", std::process::id()));
        File::create(&path).and_then(|mut f| f.write_all(&vec![7u8; 3 * page])).expect("write");
        let child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD, &path)
            .output()
            .expect("run the child");
        let _ = std::fs::remove_file(&path);
        let stderr = String::from_utf8_lossy(&child.stderr);
        assert_eq!(child.status.code(), Some(1), "{stderr}");
        let named = "rstwatch: error: shrinking.pcap: the file shrank or could not be read while replay read it";
        assert!(stderr.contains(named), "{stderr}");
    }
}
