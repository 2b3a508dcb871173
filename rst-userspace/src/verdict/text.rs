//! A verdict in the words a tired on-call person reads.

use std::net::IpAddr;

use super::{Cause, ServiceAddr, Verdict};

fn endpoint(service: ServiceAddr) -> String {
    match service.addr {
        IpAddr::V4(addr) => format!("{addr}:{}", service.port),
        IpAddr::V6(addr) => format!("[{addr}]:{}", service.port),
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

pub(super) fn sentence(verdict: &Verdict) -> String {
    let service = endpoint(verdict.service);
    let resets = verdict.resets;
    match verdict.cause {
        Cause::NoListener => format!(
            "nothing listens on {service}: {} refused, none accepted in the run",
            plural(verdict.connections.max(1).min(resets), "attempt", "attempts")
        ),
        Cause::WentDown => {
            let since = verdict.since_ms.map_or(String::new(), |ms| format!(" {:.1} s into the run", ms as f64 / 1e3));
            let unanswered = match verdict.unanswered {
                0 => String::new(),
                n => format!(", {} unanswered", plural(n, "attempt", "attempts")),
            };
            format!("{service} went down{since}: it accepted connections, then refused {resets}{unanswered}")
        }
        Cause::ConnectionLimit => format!(
            "{service} turns connections away at ~{} open ({resets} turned away): a connection limit",
            verdict.limit.unwrap_or(0)
        ),
        Cause::StateLost => format!(
            "{service}: {} reset mid-stream by a side that no longer knew {} (RST without ACK): state lost — a restart, a failover without state, broken persistence or a NAT timeout",
            plural(verdict.connections.max(1), "connection", "connections"),
            if verdict.connections == 1 { "it" } else { "them" }
        ),
        Cause::Middlebox => format!(
            "a device in between forged {} claiming to be {service} (TTL {}; the host's own packets arrive with {})",
            plural(resets, "reset", "resets"),
            verdict.rst_ttl.unwrap_or(0),
            verdict.peer_ttl.unwrap_or(0)
        ),
        Cause::AppAbort => format!(
            "{} to {service} aborted after data (RST+ACK: SO_LINGER 0 or close with unread data): an application abort",
            plural(verdict.connections.max(1), "connection", "connections")
        ),
        Cause::HealthCheck => format!(
            "{} health-checks {service} ({}, reset right after the handshake): benign",
            verdict.client.map_or_else(|| "a client".to_owned(), |c| c.to_string()),
            plural(verdict.connections, "check", "checks")
        ),
    }
}
