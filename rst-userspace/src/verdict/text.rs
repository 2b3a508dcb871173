//! A verdict in the words a tired on-call person reads.

use super::{Cause, Detail, Verdict};
use crate::aggregate::model::endpoint;

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

pub(super) fn sentence(verdict: &Verdict) -> String {
    let mut text = cause_sentence(verdict);
    if let Some(reason) = &verdict.kernel_reason {
        text.push_str(&format!(" (this host's kernel: {reason})"));
    }
    text
}

fn cause_sentence(verdict: &Verdict) -> String {
    let service = endpoint(verdict.service.addr, verdict.service.port);
    let resets = verdict.resets;
    match (verdict.cause, verdict.detail) {
        (Cause::NoListener, _) => format!(
            "nothing listens on {service}: {} refused, none accepted in the run",
            plural(verdict.connections.max(1).min(resets), "attempt", "attempts")
        ),
        (Cause::WentDown, detail) => {
            let (since, unanswered) = match detail {
                Detail::Down { since_ms, unanswered } => (format!(" {:.1} s into the run", since_ms as f64 / 1e3), unanswered),
                _ => (String::new(), 0),
            };
            let unanswered = match unanswered {
                0 => String::new(),
                n => format!(", {} unanswered", plural(n, "attempt", "attempts")),
            };
            format!("{service} went down{since}: it accepted connections, then refused {resets}{unanswered}")
        }
        (Cause::ConnectionLimit, Detail::Limit { open }) => {
            format!("{service} turns connections away at ~{open} open ({resets} turned away): a connection limit")
        }
        (Cause::ConnectionLimit, _) => format!("{service} turns connections away ({resets}): a connection limit"),
        (Cause::StateLost, _) => format!(
            "{service}: {} reset mid-stream by a side that no longer knew {} (RST without ACK): state lost — a restart, a failover without state, broken persistence or a NAT timeout",
            plural(verdict.connections.max(1), "connection", "connections"),
            if verdict.connections == 1 { "it" } else { "them" }
        ),
        (Cause::Middlebox, Detail::Forged { rst_ttl, peer_ttl }) => format!(
            "a device in between forged {} claiming to be {service} (TTL {rst_ttl}; the host's own packets arrive with {peer_ttl})",
            plural(resets, "reset", "resets"),
        ),
        (Cause::Middlebox, _) => {
            format!("a device in between forged {} claiming to be {service}", plural(resets, "reset", "resets"))
        }
        (Cause::AppAbort, _) => format!(
            "{} to {service} aborted after data (RST+ACK: SO_LINGER 0 or close with unread data): an application abort",
            plural(verdict.connections.max(1), "connection", "connections")
        ),
        (Cause::HealthCheck, detail) => format!(
            "{} health-checks {service} ({}, reset right after the handshake): benign",
            match detail {
                Detail::Checker { client } => client.to_string(),
                _ => "a client".to_owned(),
            },
            plural(verdict.connections, "check", "checks")
        ),
    }
}
