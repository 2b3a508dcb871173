//! A verdict in the words a tired on-call person reads.

use super::{Finding, ScanCounts, Side, Verdict};
use crate::model::aggregate::model::{endpoint, service_endpoint};

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A gap as people say it: "45 s", "1.2 s", "300 ms".
fn seconds(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..10_000 => format!("{:.1} s", ms as f64 / 1e3),
        _ => format!("{} s", (ms + 500) / 1_000),
    }
}

/// Who did it, in words: `[server, client, unknown]`.
fn by_side(side: Option<Side>, [server, client, unknown]: [&'static str; 3]) -> &'static str {
    match side {
        Some(Side::Server) => server,
        Some(Side::Client) => client,
        None => unknown,
    }
}

pub(super) fn sentence(verdict: &Verdict) -> String {
    let mut text = cause_sentence(verdict);
    if let Some(reason) = &verdict.kernel_reason {
        text.push_str(&format!(" (this host's kernel: {reason})"));
    }
    text
}

fn cause_sentence(verdict: &Verdict) -> String {
    let service = service_endpoint(verdict.service.addr, verdict.service.port, verdict.service.tunnel.as_ref());
    let resets = verdict.resets;
    match verdict.finding {
        Finding::NoListener => format!(
            "nothing listens on {service}: {} refused, none accepted in the run",
            plural(verdict.connections.max(1).min(resets), "attempt", "attempts")
        ),
        Finding::WentDown { since_ms, unanswered } => {
            let since = format!(" {:.1} s into the run", since_ms as f64 / 1e3);
            let unanswered = match unanswered {
                0 => String::new(),
                n => format!(", {} unanswered", plural(n, "attempt", "attempts")),
            };
            format!("{service} went down{since}: it accepted connections, then refused {resets}{unanswered}")
        }
        Finding::ConnectionLimit { open } => {
            format!("{service} turns connections away at ~{open} open ({resets} turned away): a connection limit")
        }
        Finding::StateLost => format!(
            "{service}: {} reset after the handshake by {} that no longer knew {} (RST without ACK): state lost — a restart, a failover without state, broken persistence or a NAT timeout",
            plural(verdict.connections.max(1), "connection", "connections"),
            by_side(verdict.side, ["the server side", "the client side", "a side"]),
            if verdict.connections == 1 { "it" } else { "them" }
        ),
        Finding::Middlebox { rst_ttl, peer_ttl, claimed_client } => format!(
            "a device in between forged {} claiming to be {} (TTL {rst_ttl}; the host's own packets arrive with {peer_ttl})",
            plural(resets, "reset", "resets"),
            match claimed_client {
                Some(client) => format!("{client}, a client of {service}"),
                None => service,
            }
        ),
        Finding::AppAbort => format!(
            "{} to {service} aborted after data by {} (RST+ACK: SO_LINGER 0 or close with unread data): an application abort",
            plural(verdict.connections.max(1), "connection", "connections"),
            by_side(verdict.side, ["the service", "its client", "one side"]),
        ),
        Finding::HealthCheck { client } => format!(
            "{client} health-checks {service} ({}, reset right after the handshake): benign",
            plural(verdict.connections, "check", "checks")
        ),
        Finding::Teardown { after_peer_fin, after_own_fin, gap_ms } => {
            let (resetter, peer, own, whose) = match verdict.side {
                Some(Side::Client) => {
                    (format!("clients of {service}"), "the service's", "they had closed themselves", "their")
                }
                _ => (service, "the client's", "it had closed itself", "its"),
            };
            let mut how = Vec::new();
            if after_peer_fin > 0 {
                how.push(format!("{} after {peer} FIN", plural(after_peer_fin, "connection", "connections")));
            }
            if after_own_fin > 0 {
                let later = match gap_ms {
                    Some(ms) => format!(" up to {} after {whose} close", seconds(ms)),
                    None => String::new(),
                };
                how.push(format!(
                    "{} {own}, answering late segments without data (ACKs, FINs, keep-alive probes){later}",
                    plural(after_own_fin, "connection", "connections")
                ));
            }
            let how = if how.is_empty() { "connections already closing".to_owned() } else { how.join(" and ") };
            format!("{resetter} reset {how}: ordinary teardown ({})", plural(resets, "reset", "resets"))
        }
        Finding::IdleTimeout { idle_ms, forged, hook } => {
            let who = match (hook, forged) {
                (Some(hook), _) => format!("this host's firewall (at the {} hook: its connection tracking had forgotten them)", hook.name()),
                (None, Some((rst_ttl, peer_ttl))) => format!(
                    "a device in between (TTL {rst_ttl}; the host's own packets arrive with {peer_ttl})"
                ),
                (None, None) => by_side(verdict.side, ["the server side", "the client side", "a side"]).to_owned(),
            };
            format!(
                "{} to {service} reset by {who} on their first use after ~{} idle: an idle timeout (a balancer, firewall or NAT forgets idle connections; keep-alives shorter than it, or a pool idle timeout below it, avoid it)",
                plural(verdict.connections.max(1), "connection", "connections"),
                seconds(idle_ms),
            )
        }
        Finding::KeepaliveRace { idle_ms } => {
            let closer = by_side(verdict.side, ["the server", "the client", "one side"]);
            let after = match idle_ms {
                Some(ms) => format!(" after {} idle", seconds(ms)),
                None => String::new(),
            };
            format!(
                "{} to {service} closed by {closer}{after} as the other side reused them: its request met an RST — a keep-alive race (make the client pool's idle timeout shorter than the server's keep-alive timeout)",
                plural(verdict.connections.max(1), "connection", "connections"),
            )
        }
        Finding::NatLost { backend } => format!(
            "replies to clients of {service} arrived untranslated from {} and the clients reset {} ({}): a NAT lost the connections' state (conntrack flushed, expired or INVALID)",
            endpoint(backend.addr, backend.port),
            if verdict.connections == 1 { "it" } else { "them" },
            plural(resets, "reset", "resets"),
        ),
        Finding::ListenOverflow { limit } => format!(
            "{service}'s accept queue was full ({limit}): the kernel reset {} (tcp_abort_on_overflow) — the application accepts too slowly",
            plural(verdict.connections.max(1), "connection", "connections"),
        ),
        Finding::LocalFirewall { hook } => format!(
            "this host's firewall rejected {} to {service} with a reset at the {} hook, not its TCP stack",
            plural(resets, "segment", "segments"),
            hook.name(),
        ),
        Finding::Scan(ScanCounts { client, ports, hosts, refused, open, silent, completed }) => {
            let mut answers = vec![format!("{refused} refused")];
            if open > 0 {
                answers.push(format!("{open} answered and reset by the scanner at once"));
            }
            if silent > 0 {
                answers.push(format!("{silent} silent"));
            }
            format!(
                "{client} scanned {} on {}: {}; {} completed — a scan, not broken services",
                plural(ports, "port", "ports"),
                plural(hosts, "host", "hosts"),
                answers.join(", "),
                plural(completed, "connection", "connections"),
            )
        }
    }
}
