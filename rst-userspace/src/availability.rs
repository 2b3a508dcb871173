//! Whether an optional part of rstwatch works on this host.

use std::fmt;

/// Whether an optional part (the kernel's reset reasons, the workloads behind resets) works on
/// this host. The run goes on without it either way; the reason is said once in the log and
/// carried in the report, so a missing part is never silent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    Available,
    /// Why not, in one line the operator can act on.
    Unavailable(String),
}

impl Availability {
    /// `Available` for `Ok`; the error's whole chain (`{:#}`) as the reason otherwise.
    pub fn of<E: fmt::Display>(result: Result<(), E>) -> Availability {
        match result {
            Ok(()) => Availability::Available,
            Err(error) => Availability::Unavailable(format!("{error:#}")),
        }
    }

    pub fn is_available(&self) -> bool {
        matches!(self, Availability::Available)
    }

    /// The reason, when unavailable.
    pub fn why_not(&self) -> Option<&str> {
        match self {
            Availability::Available => None,
            Availability::Unavailable(why) => Some(why),
        }
    }
}
