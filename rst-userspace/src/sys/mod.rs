//! Raw system calls, each wrapped once with its SAFETY argument, so the rest of the crate is safe code.

pub mod affinity;
pub mod ethtool;
pub mod membarrier;
pub mod packet;
pub mod test_run;
