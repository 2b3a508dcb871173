//! The `tcp:tcp_send_reset` tracepoint program: where the kernel keeps the fields it reads (from
//! the tracepoint's format file, before loading), the names of the kernel's reset reasons, and
//! attaching it. Minimum kernel: 6.10 for the `reason` field; without it, or without tracefs,
//! rstwatch reports no kernel reasons and says so once.

use aya::{programs::TracePoint, Ebpf};
use rst_common::wire::PROG_SEND_RESET;

use crate::{
    availability::Availability,
    load::{tracefs, Error},
    model::kernel_reason::ReasonNames,
};

/// Where `tcp:tcp_send_reset` keeps the fields rstwatch reads, from its format file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendResetFormat {
    pub reason: u32,
    pub saddr: u32,
    pub daddr: u32,
}

impl SendResetFormat {
    /// # Errors
    /// A one-line reason when tracefs is not mounted or the tracepoint (or its `reason`
    /// field, before Linux 6.10) does not exist.
    pub fn read() -> Result<SendResetFormat, String> {
        let Ok(format) = tracefs::tcp_format("tcp_send_reset") else {
            let mounted = tracefs::MOUNTS.iter().any(|mount| std::path::Path::new(mount).join("events").exists());
            return Err(if mounted {
                "this kernel has no tcp:tcp_send_reset tracepoint".to_owned()
            } else {
                "tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)".to_owned()
            });
        };
        SendResetFormat::parse(&format)
    }

    /// Parses a tracepoint format file: `field:<type> <name>[<n>];\toffset:<o>;\tsize:<s>;…`.
    pub fn parse(format: &str) -> Result<SendResetFormat, String> {
        let field = |wanted: &str, size: u32| {
            tracefs::field(format, wanted, size).map_err(|error| match error {
                tracefs::FieldError::Size => {
                    format!("tcp:tcp_send_reset field {wanted} is not {size} bytes on this kernel")
                }
                tracefs::FieldError::Missing => {
                    format!("tcp:tcp_send_reset has no {wanted} field on this kernel (Linux 6.10 added the reason)")
                }
            })
        };
        Ok(SendResetFormat { reason: field("reason", 4)?, saddr: field("saddr", 28)?, daddr: field("daddr", 28)? })
    }
}

/// Attaches the kernel-event program (see [`attach_kernel_events`]); when that is not possible,
/// says why, for the caller to say once (after the interfaces are attached, so a failed start
/// stays one line) and to report. Also returns this kernel's names of the reset reasons.
pub fn start_kernel_events(ebpf: &mut Ebpf) -> (Availability, ReasonNames) {
    (Availability::of(attach_kernel_events(ebpf)), ReasonNames::new(reset_reason_names()))
}

/// The warning for [`start_kernel_events`]'s failure.
pub fn warn_kernel_events(status: &Availability) {
    if let Some(why) = status.why_not() {
        tracing::warn!("kernel reasons for this host's resets are unavailable: {why}");
    }
}

/// `enum sk_rst_reason` names from the tracepoint's print format (they change between kernel
/// versions), or Linux 6.18's list when the format cannot be read.
pub fn reset_reason_names() -> Vec<String> {
    tracefs::tcp_format("tcp_send_reset")
        .ok()
        .and_then(|format| parse_reason_names(&format))
        .unwrap_or_else(|| LINUX_6_18_RESET_REASONS.iter().map(|name| (*name).to_owned()).collect())
}

const LINUX_6_18_RESET_REASONS: [&str; 26] = [
    "NOT_SPECIFIED",
    "NO_SOCKET",
    "TCP_INVALID_ACK_SEQUENCE",
    "TCP_RFC7323_PAWS",
    "TCP_TOO_OLD_ACK",
    "TCP_ACK_UNSENT_DATA",
    "TCP_FLAGS",
    "TCP_OLD_ACK",
    "TCP_ABORT_ON_DATA",
    "TCP_TIMEWAIT_SOCKET",
    "INVALID_SYN",
    "TCP_ABORT_ON_CLOSE",
    "TCP_ABORT_ON_LINGER",
    "TCP_ABORT_ON_MEMORY",
    "TCP_STATE",
    "TCP_KEEPALIVE_TIMEOUT",
    "TCP_DISCONNECT_WITH_DATA",
    "MPTCP_RST_EUNSPEC",
    "MPTCP_RST_EMPTCP",
    "MPTCP_RST_ERESOURCE",
    "MPTCP_RST_EPROHIBIT",
    "MPTCP_RST_EWQ2BIG",
    "MPTCP_RST_EBADPERF",
    "MPTCP_RST_EMIDDLEBOX",
    "ERROR",
    "MAX",
];

/// The `{ code, "NAME" }` pairs of `__print_symbolic(REC->reason, …)`.
pub fn parse_reason_names(format: &str) -> Option<Vec<String>> {
    let start = format.find("__print_symbolic(REC->reason,")?;
    let list = &format[start..];
    let list = &list[..list.find(')')?];
    let mut names = Vec::new();
    for pair in list.split('{').skip(1) {
        let (code, rest) = pair.split_once(',')?;
        let code: usize = code.trim().parse().ok()?;
        let name = rest.split('"').nth(1)?;
        if names.len() <= code {
            names.resize(code + 1, String::new());
        }
        names[code] = name.to_owned();
    }
    for (code, name) in names.iter_mut().enumerate() {
        if name.is_empty() {
            *name = format!("REASON_{code}");
        }
    }
    (!names.is_empty()).then_some(names)
}

/// Loads and attaches the `tcp:tcp_send_reset` program, so resets this host's stack sends carry
/// the kernel's reason.
///
/// # Errors
/// Why the reasons are unavailable (no tracefs, an older kernel, missing CAP_PERFMON): the
/// caller reports it once and carries on without them.
pub fn attach_kernel_events(ebpf: &mut Ebpf) -> Result<(), Error> {
    SendResetFormat::read().map_err(Error::Tracepoint)?;
    let program: &mut TracePoint = ebpf
        .program_mut(PROG_SEND_RESET)
        .ok_or_else(|| Error::MissingProgram(PROG_SEND_RESET.to_owned()))?
        .try_into()?;
    let failed = |what| move |source| Error::TracepointProgram { what, source };
    program.load().map_err(failed("loading the tcp:tcp_send_reset program"))?;
    program.attach("tcp", "tcp_send_reset").map_err(failed("attaching to tcp:tcp_send_reset"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINUX_6_18: &str = "name: tcp_send_reset\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;\n\
        \tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;\n\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;\n\
        \tfield:__u8 daddr[28];\toffset:60;\tsize:28;\tsigned:0;\n\nprint fmt: \"x\", __print_symbolic(REC->reason, { 0, \"NOT_SPECIFIED\" }, { 1, \"NO_SOCKET\" }, { 3, \"TCP_RFC7323_PAWS\" })\n";

    #[test]
    fn send_reset_format_gives_offsets_and_reason_names() {
        assert_eq!(SendResetFormat::parse(LINUX_6_18), Ok(SendResetFormat { reason: 28, saddr: 32, daddr: 60 }));
        // Older kernels spell the array size out.
        let older = LINUX_6_18.replace("saddr[28]", "saddr[sizeof(struct sockaddr_in6)]");
        assert_eq!(SendResetFormat::parse(&older).map(|f| f.saddr), Ok(32));
        let names = parse_reason_names(LINUX_6_18).expect("names");
        assert_eq!(names, ["NOT_SPECIFIED", "NO_SOCKET", "REASON_2", "TCP_RFC7323_PAWS"]);
    }

    #[test]
    fn a_kernel_without_the_reason_field_is_named() {
        let without = LINUX_6_18.replace("enum sk_rst_reason reason;", "int other;");
        let error = SendResetFormat::parse(&without).expect_err("no reason field");
        assert!(error.contains("no reason field"), "{error}");
    }
}
