//! The kernel's reasons for the resets this host's stack sends (`enum sk_rst_reason`, Linux
//! 6.10+). The model keeps their codes; a reason's name is looked up only when it is printed.

use std::{borrow::Cow, cmp::Ordering, fmt, sync::Arc};

/// This kernel's names of `enum sk_rst_reason`, index = code. They change between kernel
/// versions, so `load` reads them from the tracepoint's format once per run.
#[derive(Debug, Clone, Default)]
pub struct ReasonNames(Arc<[String]>);

impl ReasonNames {
    pub fn new(names: Vec<String>) -> ReasonNames {
        ReasonNames(names.into())
    }

    /// The reason with this code.
    pub fn reason(&self, code: u32) -> KernelReason {
        KernelReason { code, names: self.clone() }
    }

    /// The code this kernel gives the reason `name`, if it has one.
    pub fn code_of(&self, name: &str) -> Option<u32> {
        self.0.iter().position(|known| known == name).and_then(|code| u32::try_from(code).ok())
    }

    /// The name of `code`; `REASON_<code>` for a code this kernel's list does not name.
    pub fn name(&self, code: u32) -> Cow<'_, str> {
        match self.0.get(code as usize) {
            Some(name) => Cow::Borrowed(name),
            None => Cow::Owned(format!("REASON_{code}")),
        }
    }
}

/// One reset reason: its code, and the list that names it when it is printed. Reasons order by
/// name, as people read lists of them.
#[derive(Debug, Clone)]
pub struct KernelReason {
    code: u32,
    names: ReasonNames,
}

impl KernelReason {
    pub fn code(&self) -> u32 {
        self.code
    }

    pub fn name(&self) -> Cow<'_, str> {
        self.names.name(self.code)
    }
}

impl fmt::Display for KernelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl PartialEq for KernelReason {
    fn eq(&self, other: &Self) -> bool {
        self.code == other.code
    }
}

impl Eq for KernelReason {}

impl Ord for KernelReason {
    fn cmp(&self, other: &Self) -> Ordering {
        self.name().cmp(&other.name()).then(self.code.cmp(&other.code))
    }
}

impl PartialOrd for KernelReason {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_codes_named_when_printed_and_ordered_by_name() {
        let names = ReasonNames::new(vec!["NOT_SPECIFIED".into(), "NO_SOCKET".into(), "INVALID_SYN".into()]);
        let (socket, syn, unknown) = (names.reason(1), names.reason(2), names.reason(40));
        assert_eq!(socket.to_string(), "NO_SOCKET");
        assert_eq!(unknown.to_string(), "REASON_40");
        assert!(syn < socket && socket < unknown, "by name");
        assert_eq!(socket, names.reason(1));
        assert_ne!(socket, syn);
    }
}
