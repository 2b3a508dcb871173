//! The five scenarios of the diagnosis lab: what each makes, and the two ends of one connection.

use std::{
    fmt,
    io::{self, Read as _, Write as _},
    net::{IpAddr, SocketAddr},
    sync::mpsc,
};

use anyhow::{bail, ensure, Context as _, Result};
use socket2::Socket;

use super::{
    abort, bound_client, expect_reset, queued, read_request, recv_signal, send_request, send_signal, unacked,
    wait_until, End, Family, Resetter, Side, BANNER, DEFAULT_TTL, IO_TIMEOUT, MIDDLEBOX_PORT, REQUEST_LEN,
};

/// The five ways a connection ends in a reset here. Each makes exactly one RST.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scenario {
    /// Connect to a port nobody listens on: the server's kernel answers the SYN with RST+ACK.
    Refused,
    /// The server reads the client's whole request, then closes with SO_LINGER {on, 0}.
    ServerAbort,
    /// The client's request has arrived; the server closes (no linger) without reading it.
    UnreadData,
    /// After the server's banner, the client's data (PSH) meets the router's nftables rule,
    /// which drops it and answers with a RST in the server's name.
    Middlebox,
    /// The server has read the client's request; the client closes with SO_LINGER {on, 0}.
    ClientAbort,
}

impl Scenario {
    pub const ALL: [Scenario; 5] =
        [Scenario::Refused, Scenario::ServerAbort, Scenario::UnreadData, Scenario::Middlebox, Scenario::ClientAbort];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Refused => "refused",
            Scenario::ServerAbort => "server_abort",
            Scenario::UnreadData => "unread_data",
            Scenario::Middlebox => "middlebox",
            Scenario::ClientAbort => "client_abort",
        }
    }

    /// The server port of the scenario (the same for both families: the addresses differ).
    pub fn port(self) -> u16 {
        match self {
            Scenario::Refused => 7001,
            Scenario::ServerAbort => 7002,
            Scenario::UnreadData => 7003,
            Scenario::Middlebox => MIDDLEBOX_PORT,
            Scenario::ClientAbort => 7005,
        }
    }

    pub fn resetter(self) -> Resetter {
        match self {
            Scenario::Refused | Scenario::ServerAbort | Scenario::UnreadData => Resetter::Server,
            Scenario::Middlebox => Resetter::Router,
            Scenario::ClientAbort => Resetter::Client,
        }
    }

    /// The role of the RST's source address (the router's RST claims to be the server).
    pub fn claimed_side(self) -> Side {
        match self.resetter() {
            Resetter::Client => Side::Client,
            Resetter::Router | Resetter::Server => Side::Server,
        }
    }

    /// Whether the server answers the SYN with a SYN+ACK.
    pub fn handshake_completes(self) -> bool {
        self != Scenario::Refused
    }

    /// Where in its life the RST hits the connection, as rstwatch's `kinds` names it.
    pub fn kind(self) -> &'static str {
        match self {
            Scenario::Refused => "refused",
            _ => "established",
        }
    }

    /// Whether the RST carries ACK: the kernel's answer to a SYN and its active resets do; the
    /// nftables reject of a segment that had ACK set does not (it takes that segment's ack number
    /// as its sequence number instead, RFC 9293 3.10.7.1).
    pub fn rst_has_ack(self) -> bool {
        self != Scenario::Middlebox
    }

    /// The reason the sender's kernel gives in `tcp:tcp_send_reset`; `None` when no TCP stack
    /// made the RST (netfilter did). Checked against the tracepoint by
    /// `rst-e2e/tests/diagnosis.rs`; on Linux 6.18 (and `nstat` in the namespaces agrees):
    /// - `tcp_close()` with unread data: reason `TCP_ABORT_ON_CLOSE`, MIB `TCPAbortOnClose`;
    /// - SO_LINGER {on, 0} goes through `tcp_disconnect()`: reason `TCP_STATE`, and the MIB it
    ///   bumps is `TCPAbortOnData` — no reset here carries the reason `TCP_ABORT_ON_DATA`.
    pub fn kernel_reason(self) -> Option<&'static str> {
        match self {
            Scenario::Refused => Some("NO_SOCKET"),
            Scenario::ServerAbort | Scenario::ClientAbort => Some("TCP_STATE"),
            Scenario::UnreadData => Some("TCP_ABORT_ON_CLOSE"),
            Scenario::Middlebox => None,
        }
    }
}

/// One connection a scenario made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Conn {
    pub scenario: Scenario,
    pub family: Family,
    pub client: SocketAddr,
    pub server: SocketAddr,
}

impl Conn {
    /// The RST's (source, destination): the server's address for server and router resets.
    pub fn rst_src_dst(&self) -> (SocketAddr, SocketAddr) {
        match self.scenario.claimed_side() {
            Side::Server => (self.server, self.client),
            Side::Client => (self.client, self.server),
        }
    }

    /// Whether `end`'s host sent the RST itself (it leaves through that end's veth).
    pub fn sent_from(&self, end: End) -> bool {
        matches!((end, self.scenario.resetter()), (End::Client, Resetter::Client) | (End::Server, Resetter::Server))
    }

    /// The RSTs of this connection that cross `end`'s veth, with the TTL / hop limit they carry
    /// there: sent by that end's host or by the router next to the client, 64; from across the
    /// router, 63. The router's RST never reaches the server.
    pub fn rsts_at(&self, end: End) -> Vec<Rst> {
        let (src, dst) = self.rst_src_dst();
        let ttl = match (end, self.scenario.resetter()) {
            (End::Server, Resetter::Router) => return Vec::new(),
            (End::Client, Resetter::Router) => DEFAULT_TTL,
            _ if self.sent_from(end) => DEFAULT_TTL,
            _ => DEFAULT_TTL - 1,
        };
        vec![Rst { src, dst, ack: self.scenario.rst_has_ack(), ttl }]
    }
}

impl fmt::Display for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.scenario.name(), self.client, self.server)
    }
}

/// A RST as seen on a wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rst {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub ack: bool,
    pub ttl: u8,
}

impl fmt::Display for Rst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flags = if self.ack { "R." } else { "R" };
        write!(f, "{} > {} [{flags}] ttl {}", self.src, self.dst, self.ttl)
    }
}

pub fn refused_client(client_ip: IpAddr, server: SocketAddr) -> Result<SocketAddr> {
    let (sock, local) = bound_client(client_ip)?;
    match sock.connect_timeout(&server.into(), IO_TIMEOUT) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(local),
        Err(e) => bail!("{local}: expected a refusal from {server}, got {e}"),
        Ok(()) => bail!("{local}: connected to {server}, which should be closed"),
    }
}

pub(super) fn client_side(
    scenario: Scenario,
    client_ip: IpAddr,
    server: SocketAddr,
    from_server: &mpsc::Receiver<()>,
    to_server: &mpsc::Sender<()>,
) -> Result<SocketAddr> {
    let (sock, local) = bound_client(client_ip)?;
    sock.connect_timeout(&server.into(), IO_TIMEOUT).with_context(|| format!("{local}: connecting to {server}"))?;
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    match scenario {
        Scenario::Refused => bail!("the refused scenario has no server side"),
        Scenario::ServerAbort | Scenario::UnreadData => {
            send_request(&sock)?;
            expect_reset(&sock)?;
        }
        Scenario::Middlebox => {
            let mut banner = vec![0u8; BANNER.len()];
            (&sock).read_exact(&mut banner).context("reading the banner")?;
            ensure!(banner == BANNER, "unexpected banner {:?}", String::from_utf8_lossy(&banner));
            // Only once the server knows its banner was acknowledged: an ACK riding on our data
            // would be rejected with it, and the server's retransmission would then meet our
            // closed socket and draw a second RST.
            recv_signal(from_server, "banner acknowledged")?;
            send_request(&sock)?;
            expect_reset(&sock)?;
            // In CLOSE now: dropping it sends nothing.
            drop(sock);
            send_signal(to_server, "client was reset")?;
        }
        Scenario::ClientAbort => {
            send_request(&sock)?;
            recv_signal(from_server, "request read")?;
            // The server's ACK must be in before we vanish, or it would arrive at a closed socket
            // and draw a second RST (NO_SOCKET) from our stack.
            wait_until("the server acknowledged the request", || Ok(unacked(&sock)? == 0))?;
            abort(sock)?;
        }
    }
    Ok(local)
}

pub(super) fn server_side(
    scenario: Scenario,
    conn: Socket,
    to_client: &mpsc::Sender<()>,
    from_client: &mpsc::Receiver<()>,
) -> Result<Option<Socket>> {
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    match scenario {
        Scenario::Refused => bail!("the refused scenario has no server"),
        Scenario::ServerAbort => {
            read_request(&conn)?;
            abort(conn)?;
            Ok(None)
        }
        Scenario::UnreadData => {
            wait_until("the whole request arrived", || Ok(queued(&conn)? >= REQUEST_LEN))?;
            // Closing with unread data: the kernel resets instead of sending a FIN.
            drop(conn);
            Ok(None)
        }
        Scenario::Middlebox => {
            (&conn).write_all(BANNER).context("sending the banner")?;
            wait_until("the client acknowledged the banner", || Ok(unacked(&conn)? == 0))?;
            send_signal(to_client, "banner acknowledged")?;
            recv_signal(from_client, "client was reset")?;
            let arrived = queued(&conn)?;
            ensure!(
                arrived == 0,
                "{arrived} bytes of the client's data reached the server: the router did not reject them"
            );
            Ok(Some(conn))
        }
        Scenario::ClientAbort => {
            read_request(&conn)?;
            send_signal(to_client, "request read")?;
            expect_reset(&conn)?;
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag_lab::SERVER4;

    #[test]
    fn every_scenario_has_its_own_port_and_one_reset() {
        let mut ports: Vec<u16> = Scenario::ALL.iter().map(|s| s.port()).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), Scenario::ALL.len());
        let conn = |scenario| Conn {
            scenario,
            family: Family::V4,
            client: "10.88.1.2:40000".parse().expect("addr"),
            server: SocketAddr::new(SERVER4.into(), Scenario::port(scenario)),
        };
        let mb = conn(Scenario::Middlebox);
        assert!(mb.rsts_at(End::Server).is_empty());
        assert_eq!(mb.rsts_at(End::Client)[0].ttl, DEFAULT_TTL);
        assert!(!mb.rsts_at(End::Client)[0].ack);
        let ca = conn(Scenario::ClientAbort);
        assert_eq!(ca.rsts_at(End::Client)[0].ttl, DEFAULT_TTL);
        assert_eq!(ca.rsts_at(End::Server)[0].ttl, DEFAULT_TTL - 1);
        assert_eq!(ca.rst_src_dst().0, ca.client);
        let rf = conn(Scenario::Refused);
        assert_eq!(rf.rsts_at(End::Client)[0].ttl, DEFAULT_TTL - 1);
        assert_eq!(rf.rsts_at(End::Server)[0].ttl, DEFAULT_TTL);
    }
}
