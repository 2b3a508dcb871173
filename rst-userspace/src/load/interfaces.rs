//! Which interfaces `-i` names: names resolved up front the way the kernel would, and
//! shell-style patterns (`'veth*'`, `'cali?'`, `'eth[01]'`) matched against interfaces as they come.

use std::ffi::CString;

use super::Error;

/// Linux's IFNAMSIZ minus the terminating NUL.
const MAX_IFACE_NAME: usize = 15;

/// Resolves every `-i` up front (before anything touches the kernel): one ifindex each, no
/// interface twice.
pub fn resolve_targets(names: &[String]) -> Result<Vec<(String, u32)>, Error> {
    let mut seen = std::collections::HashSet::new();
    let mut targets = Vec::new();
    // Patterns match interfaces as they come (see `live`), none of them need exist at the start.
    for pattern in names.iter().filter(|name| is_pattern(name)) {
        if let Err(error) = glob::Pattern::new(pattern) {
            return Err(Error::InvalidInterfaceName { name: pattern.clone(), why: error.msg });
        }
    }
    if !names.iter().any(|name| name == LOOPBACK) {
        if let Some(pattern) = names.iter().find(|name| is_pattern(name) && glob(name, LOOPBACK)) {
            tracing::info!("-i '{pattern}' leaves out {LOOPBACK}: watch it with -i {LOOPBACK}");
        }
    }
    for name in names.iter().filter(|name| !is_pattern(name)) {
        let ifindex = resolve_interface(name)?;
        if !seen.insert(ifindex) {
            return Err(Error::DuplicateInterface { name: name.clone() });
        }
        targets.push((name.clone(), ifindex));
    }
    Ok(targets)
}

/// Whether `-i` names a pattern (`'veth*'`, `'cali?'`, `'eth[01]'`) rather than one interface.
pub fn is_pattern(name: &str) -> bool {
    name.contains(['*', '?', '['])
}

/// The loopback interface: a pattern never matches it.
const LOOPBACK: &str = "lo";

/// Shell-style matching of an interface name (`*`, `?`, `[…]`, as `glob` reads them); never
/// [`LOOPBACK`], which is watched only when `-i lo` names it (a `'*'` meant "every device",
/// not the host's own local traffic).
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    name != LOOPBACK && glob(pattern, name)
}

/// A pattern [`resolve_targets`] did not refuse always parses; anything else matches nothing.
fn glob(pattern: &str, name: &str) -> bool {
    glob::Pattern::new(pattern).is_ok_and(|pattern| pattern.matches(name))
}

/// Resolves an interface name the way the kernel would, with errors an operator can act on.
pub fn resolve_interface(name: &str) -> Result<u32, Error> {
    let invalid = |why| Error::InvalidInterfaceName { name: name.to_owned(), why };
    if name.is_empty() {
        return Err(invalid("empty"));
    }
    if name.len() > MAX_IFACE_NAME {
        return Err(invalid("longer than 15 bytes"));
    }
    if name.contains(['/', ':']) || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("contains '/', ':', whitespace or control characters"));
    }
    let c_name = CString::new(name).map_err(|_| invalid("contains a NUL byte"))?;
    crate::sys::netdev::index_of(&c_name).ok_or_else(|| Error::UnknownInterface { name: name.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_patterns_match_like_the_shell() {
        assert!(is_pattern("veth*") && is_pattern("cali?") && !is_pattern("eth0"));
        for (pattern, name) in
            [("veth*", "veth1a2b"), ("veth*", "veth"), ("*", "eth0"), ("c?li*", "cali12"), ("*a*b", "xxaab")]
        {
            assert!(pattern_matches(pattern, name), "{pattern} {name}");
        }
        for (pattern, name) in [("veth*", "eth0"), ("cali?", "cali12"), ("*a*b", "xxaba"), ("veth", "veth0")] {
            assert!(!pattern_matches(pattern, name), "{pattern} {name}");
        }
        assert!(is_pattern("eth[01]") && pattern_matches("eth[01]", "eth1") && !pattern_matches("eth[01]", "eth2"));
    }

    #[test]
    fn a_pattern_that_does_not_parse_is_refused_up_front() {
        let error = resolve_targets(&["eth[0".to_owned()]).expect_err("an unclosed class");
        assert!(error.to_string().starts_with("invalid interface name \"eth[0\""), "{error}");
    }

    #[test]
    fn no_pattern_matches_loopback_and_its_name_is_not_a_pattern() {
        for pattern in ["*", "l*", "lo*", "?o", "l?", "*o", "??"] {
            assert!(!pattern_matches(pattern, "lo"), "{pattern}");
        }
        // Only loopback itself is left out.
        for name in ["lo0", "lob", "xlo", "lo1"] {
            assert!(pattern_matches("*", name) && pattern_matches("*lo*", name), "{name}");
        }
        assert!(pattern_matches("??", "ab") && glob("*", LOOPBACK), "the shell would match it");
        // `-i lo` is a name: resolved and attached like any other.
        assert!(!is_pattern(LOOPBACK));
    }
}
