//! Every raw system call rstwatch makes itself, where aya has no wrapper: one file per topic,
//! each `unsafe` block with its SAFETY note, each function with its minimum kernel and errors.
//! The rest of the crate calls these safe functions and never `libc` directly.

use std::io;

pub mod affinity;
pub mod bpf_link;
pub mod clock;
pub mod ethtool;
pub mod file_map;
pub mod map_batch;
pub mod membarrier;
pub mod mmap;
pub mod netdev;
pub mod netlink;
pub mod packet;
pub mod terminal;
pub mod test_run;

/// What a system call here failed with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{call} failed")]
    Os {
        call: &'static str,
        #[source]
        source: io::Error,
    },
    /// A batch command that moved fewer entries than asked, without an errno to say why.
    #[error("{call} did {done} of {asked} entries")]
    Partial { call: &'static str, done: u32, asked: u32 },
    /// What the kernel answered does not have the layout it must have.
    #[error("{call}: {what}")]
    Malformed { call: &'static str, what: &'static str },
}

impl Error {
    /// The errno, for callers that turn some into their own errors (EPERM, EBUSY, …).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Os { source, .. } => source.raw_os_error(),
            Error::Partial { .. } | Error::Malformed { .. } => None,
        }
    }

    /// The errno the last call in this thread set.
    fn last(call: &'static str) -> Error {
        Error::Os { call, source: io::Error::last_os_error() }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
