//! Tracepoint format files (tracefs): where the `tcp:*` tracepoints keep the fields the
//! programs read, shared by the kernel-reason and the workload programs.

/// Where tracefs is found: its own mount, or under debugfs on older set-ups.
pub const MOUNTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// No tracefs mount had the format file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoFormat {
    /// A mount refused it (tracefs is root's, mode 0700), rather than not having it.
    pub denied: bool,
}

/// The format file of `tcp:<event>`, from the first mount that has it.
pub fn tcp_format(event: &str) -> Result<String, NoFormat> {
    let mut denied = false;
    for mount in MOUNTS {
        match std::fs::read_to_string(format!("{mount}/events/tcp/{event}/format")) {
            Ok(format) => return Ok(format),
            Err(error) => denied |= error.kind() == std::io::ErrorKind::PermissionDenied,
        }
    }
    Err(NoFormat { denied })
}

/// Why a format file gives no offset for a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldError {
    Missing,
    /// It is there with another size.
    Size,
}

/// The offset of field `name` (of `size` bytes) in a tracepoint format file: its `field:` line
/// names it last before any `[` (`__u8 saddr[28]`, or on older kernels
/// `saddr[sizeof(struct sockaddr_in6)]`).
pub fn field(format: &str, name: &str, size: u32) -> Result<u32, FieldError> {
    for line in format.lines() {
        let mut parts = line.trim().split(';').map(str::trim);
        let Some(declaration) = parts.next().and_then(|d| d.strip_prefix("field:")) else {
            continue;
        };
        let declared = declaration.split('[').next().unwrap_or_default().rsplit(' ').next().unwrap_or_default();
        if declared != name {
            continue;
        }
        let (mut offset, mut actual) = (None, None);
        for part in parts {
            if let Some(value) = part.strip_prefix("offset:") {
                offset = value.parse::<u32>().ok();
            } else if let Some(value) = part.strip_prefix("size:") {
                actual = value.parse::<u32>().ok();
            }
        }
        return match (offset, actual) {
            (Some(offset), Some(actual)) if actual == size => Ok(offset),
            _ => Err(FieldError::Size),
        };
    }
    Err(FieldError::Missing)
}
