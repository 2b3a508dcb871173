//! What the reset tracepoints read from the socket behind a reset (`rst-ebpf/src/socket.rs`):
//! a listener's resets keyed by the connection they refused, with its accept queue
//! ([`rst_common::wire::ListenKey`]), and the idle gap before a connection's reset
//! ([`rst_common::wire::IdleKey`]). Each part needs its offsets from the tracepoints' format
//! files and the kernel's BTF; without one it is unavailable, said once, and the rest runs.
//!
//! Minimum kernel: that of the reset tracepoints' fields (6.10 for `tcp:tcp_send_reset`'s
//! `reason`, which the program needs to run at all), `bpf_jiffies64` (5.5). Needs tracefs,
//! a readable `/sys/kernel/btf/vmlinux` and CAP_PERFMON, as the workloads do.

use aya::{programs::TracePoint, Ebpf, EbpfLoader};
use rst_common::wire::{
    GLOBAL_ICSK_LRCVTIME_OFFSET, GLOBAL_IDLE_GAPS_ON, GLOBAL_LISTEN_RESETS_ON, GLOBAL_SEND_RESET_SKADDR_OFFSET,
    GLOBAL_SEND_RESET_SKBADDR_OFFSET, GLOBAL_SEND_RESET_STATE_OFFSET, GLOBAL_SKB_HEAD_OFFSET,
    GLOBAL_SKB_NETWORK_HEADER_OFFSET, GLOBAL_SKB_TRANSPORT_HEADER_OFFSET, GLOBAL_SOCK_ACK_BACKLOG_OFFSET,
    GLOBAL_SOCK_MAX_ACK_BACKLOG_OFFSET, GLOBAL_TCP_LSNDTIME_OFFSET, PROG_RECEIVE_RESET,
};

use super::btf::{self, Types};
use crate::{
    availability::Availability,
    model::workload::{field, ReceiveFormat},
};

/// The fields of `tcp:tcp_send_reset` both parts read: its socket and the socket's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendSocket {
    pub skaddr: u32,
    pub state: u32,
}

/// Where the listener part reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenOffsets {
    pub send: SendSocket,
    /// `tcp:tcp_send_reset`'s `skbaddr`: the segment answered.
    pub skbaddr: u32,
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_transport_header: u32,
    pub ack_backlog: u32,
    pub max_ack_backlog: u32,
}

/// Where the idle-gap part reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleOffsets {
    pub send: SendSocket,
    pub receive: ReceiveFormat,
    /// `inet_connection_sock.icsk_ack.lrcvtime` and `tcp_sock.lsndtime`, from the socket.
    pub lrcvtime: u32,
    pub lsndtime: u32,
}

/// Both parts' offsets, or why each is unavailable (one line the operator can act on).
#[derive(Debug, Clone)]
pub struct SocketReads {
    pub listen: Result<ListenOffsets, String>,
    pub idle: Result<IdleOffsets, String>,
}

impl SocketReads {
    /// Reads this kernel's format files; `btf` is its BTF ([`Types::of_kernel`], read once per load).
    pub fn read(btf: Result<&Types, &btf::Error>) -> SocketReads {
        let send = crate::load::tracefs::tcp_format("tcp_send_reset")
            .map_err(|_| "tcp:tcp_send_reset has no readable format file (tracefs mounted and readable?)".to_owned());
        let receive = crate::load::tracefs::tcp_format("tcp_receive_reset").map_err(|_| {
            "tcp:tcp_receive_reset has no readable format file (tracefs mounted and readable?)".to_owned()
        });
        let types = btf.map_err(|error| format!("{error:#}"));
        SocketReads::parse(send.as_deref(), receive.as_deref(), types.as_ref().copied())
    }

    /// The offsets from the format files' text and the BTF types, each part on its own.
    pub fn parse(
        send: Result<&str, &String>,
        receive: Result<&str, &String>,
        types: Result<&Types, &String>,
    ) -> SocketReads {
        let send_socket = |format: &str| -> Result<SendSocket, String> {
            let field = |name, size| field("tcp_send_reset", format, name, size).map_err(|e| e.to_string());
            Ok(SendSocket { skaddr: field("skaddr", 8)?, state: field("state", 4)? })
        };
        let listen = (|| -> Result<ListenOffsets, String> {
            let (format, types) = (send.map_err(String::clone)?, types.map_err(String::clone)?);
            let offset = |path| types.offset(path).map_err(|e| e.to_string());
            Ok(ListenOffsets {
                send: send_socket(format)?,
                skbaddr: field("tcp_send_reset", format, "skbaddr", 8).map_err(|e| e.to_string())?,
                skb_head: offset("sk_buff.head")?,
                skb_network_header: offset("sk_buff.network_header")?,
                skb_transport_header: offset("sk_buff.transport_header")?,
                ack_backlog: offset("sock.sk_ack_backlog")?,
                max_ack_backlog: offset("sock.sk_max_ack_backlog")?,
            })
        })();
        let idle = (|| -> Result<IdleOffsets, String> {
            let (format, received, types) =
                (send.map_err(String::clone)?, receive.map_err(String::clone)?, types.map_err(String::clone)?);
            let offset = |path| types.offset(path).map_err(|e| e.to_string());
            Ok(IdleOffsets {
                send: send_socket(format)?,
                receive: ReceiveFormat::parse(received).map_err(|e| e.to_string())?,
                lrcvtime: offset("inet_connection_sock.icsk_ack.lrcvtime")?,
                lsndtime: offset("tcp_sock.lsndtime")?,
            })
        })();
        SocketReads { listen, idle }
    }

    /// Sets the programs' globals of each part found, turning it on. Overrides the tracepoint
    /// fields the workloads set too with the same values, so either works without the other.
    pub fn apply<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        if let Ok(listen) = &self.listen {
            let ListenOffsets {
                send,
                skbaddr,
                skb_head,
                skb_network_header,
                skb_transport_header,
                ack_backlog,
                max_ack_backlog,
            } = listen;
            loader
                .override_global(GLOBAL_LISTEN_RESETS_ON, &1u32, true)
                .override_global(GLOBAL_SEND_RESET_SKADDR_OFFSET, &send.skaddr, true)
                .override_global(GLOBAL_SEND_RESET_STATE_OFFSET, &send.state, true)
                .override_global(GLOBAL_SEND_RESET_SKBADDR_OFFSET, skbaddr, true)
                .override_global(GLOBAL_SKB_HEAD_OFFSET, skb_head, true)
                .override_global(GLOBAL_SKB_NETWORK_HEADER_OFFSET, skb_network_header, true)
                .override_global(GLOBAL_SKB_TRANSPORT_HEADER_OFFSET, skb_transport_header, true)
                .override_global(GLOBAL_SOCK_ACK_BACKLOG_OFFSET, ack_backlog, true)
                .override_global(GLOBAL_SOCK_MAX_ACK_BACKLOG_OFFSET, max_ack_backlog, true);
        }
        if let Ok(idle) = &self.idle {
            let IdleOffsets { send, receive, lrcvtime, lsndtime } = idle;
            receive.apply(loader);
            loader
                .override_global(GLOBAL_IDLE_GAPS_ON, &1u32, true)
                .override_global(GLOBAL_SEND_RESET_SKADDR_OFFSET, &send.skaddr, true)
                .override_global(GLOBAL_SEND_RESET_STATE_OFFSET, &send.state, true)
                .override_global(GLOBAL_ICSK_LRCVTIME_OFFSET, lrcvtime, true)
                .override_global(GLOBAL_TCP_LSNDTIME_OFFSET, lsndtime, true);
        }
    }
}

/// Attaches `tcp:tcp_receive_reset` for the idle gaps of received resets, unless the
/// workloads already did (`workloads_attached`). The sent side rides on `tcp:tcp_send_reset`
/// ([`super::attach_kernel_events`]).
///
/// # Errors
/// Why it could not be loaded or attached (no tracefs, missing CAP_PERFMON), for the caller to
/// say once: received resets then carry no idle gap.
pub fn attach_receive_reset(ebpf: &mut Ebpf, workloads_attached: bool) -> Result<(), super::Error> {
    if workloads_attached {
        return Ok(());
    }
    let program: &mut TracePoint = ebpf
        .program_mut(PROG_RECEIVE_RESET)
        .ok_or_else(|| super::Error::MissingProgram(PROG_RECEIVE_RESET.to_owned()))?
        .try_into()?;
    let failed = |what| move |source| super::Error::TracepointProgram { what, source };
    // Loaded already when the workloads got that far before failing.
    if program.fd().is_err() {
        program.load().map_err(failed("loading the tcp:tcp_receive_reset program"))?;
    }
    program.attach("tcp", "tcp_receive_reset").map_err(failed("attaching to tcp:tcp_receive_reset"))?;
    Ok(())
}

/// The warnings, once each, for the parts that are unavailable.
pub fn warn_socket_reads(listen: &Availability, idle: &Availability) {
    if let Some(why) = listen.why_not() {
        tracing::warn!("listener resets (the connection refused, the accept queue) are unavailable: {why}");
    }
    if let Some(why) = idle.why_not() {
        tracing::warn!("idle gaps before resets are unavailable: {why}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernels_offsets_are_found() {
        if crate::load::tracefs::tcp_format("tcp_send_reset").is_err() {
            // Tracefs is root's (or a container's that mounts it).
            let skip = rst_lab::skip::skip("this_kernels_offsets_are_found", "no readable tracefs (root)");
            skip.expect("CI=true: this test must run");
            return;
        }
        let reads = SocketReads::read(Types::of_kernel().as_ref());
        let listen = reads.listen.expect("listener offsets");
        assert!(listen.skb_head > 0 && listen.max_ack_backlog == listen.ack_backlog + 4, "{listen:?}");
        let idle = reads.idle.expect("idle offsets");
        assert!(idle.lsndtime > idle.lrcvtime, "{idle:?}");
    }

    #[test]
    fn a_missing_part_says_why_and_leaves_the_other() {
        let send = "\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
            \tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;\n";
        let no_btf = "reading /sys/kernel/btf/vmlinux".to_owned();
        let reads = SocketReads::parse(Ok(send), Ok(""), Err(&no_btf));
        assert_eq!(reads.listen.as_ref().expect_err("no btf"), &no_btf);
        let types = Types::parse(&btf::tests::nested_blob()).expect("blob");
        let no_receive = "no tcp_receive_reset".to_owned();
        let reads = SocketReads::parse(Ok(send), Err(&no_receive), Ok(&types));
        assert_eq!(reads.idle.as_ref().expect_err("no format"), &no_receive);
        let listen = reads.listen.expect_err("the blob has no sk_buff");
        assert!(listen.contains("sk_buff.head"), "{listen}");
    }
}
