//! This network namespace's TCP sockets (`/proc/net/tcp`, `/proc/net/tcp6`), read only when an
//! interval has a reset the stack sent for no socket: is its local port held by a live
//! connection to somewhere else? Then the segment it answered came from an address that
//! connection never talked to — a NAT that lost the translation ([`crate::model::verdict`]'s
//! `nat_lost`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// TCP states of `/proc/net/tcp` (`include/net/tcp_states.h`) a live connection is in: it
/// still expects its peer's segments.
const ESTABLISHED: u8 = 0x01;
const SYN_SENT: u8 = 0x02;
const CLOSE_WAIT: u8 = 0x08;
const LISTEN: u8 = 0x0A;

/// The namespace's connections: (local address and port, remote address and port) of those
/// that are live.
#[derive(Debug, Default)]
pub struct Sockets {
    live: Vec<((IpAddr, u16), (IpAddr, u16))>,
    /// Ports something listens on: a server's port has many connections, none of them lost.
    listening: Vec<u16>,
}

impl Sockets {
    /// Reads both tables; one that cannot be read (no IPv6) counts as empty.
    pub fn read() -> Sockets {
        let mut sockets = Sockets::default();
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            if let Ok(text) = std::fs::read_to_string(table) {
                sockets.add(&text);
            }
        }
        sockets
    }

    fn add(&mut self, table: &str) {
        for (local, remote, state) in parse(table) {
            match state {
                ESTABLISHED | SYN_SENT | CLOSE_WAIT => self.live.push((local, remote)),
                LISTEN => self.listening.push(local.1),
                _ => {}
            }
        }
    }

    /// The remote end of the one live connection a client port `local` (no listener on it)
    /// holds, when that is not `not_to`.
    pub fn peer_elsewhere(&self, local: (IpAddr, u16), not_to: (IpAddr, u16)) -> Option<(IpAddr, u16)> {
        if self.listening.contains(&local.1) {
            return None;
        }
        let mut peers = self.live.iter().filter(|(from, _)| *from == local).map(|(_, to)| *to);
        match (peers.next(), peers.next()) {
            (Some(peer), None) if peer != not_to => Some(peer),
            _ => None,
        }
    }
}

/// Every socket of one table's text: local and remote end, state.
fn parse(text: &str) -> impl Iterator<Item = ((IpAddr, u16), (IpAddr, u16), u8)> + '_ {
    text.lines().skip(1).filter_map(|line| {
        let mut fields = line.split_whitespace().skip(1);
        let local = endpoint(fields.next()?)?;
        let remote = endpoint(fields.next()?)?;
        let state = u8::from_str_radix(fields.next()?, 16).ok()?;
        Some((local, remote, state))
    })
}

/// `0100007F:1F90` (IPv4: one 32-bit word as the host stores it) or 32 hex digits (IPv6: four
/// such words), then the port.
fn endpoint(field: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut octets = [0u8; 16];
            for i in 0..4 {
                octets[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some((ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as a little-endian host writes them.
    const TCP: &str =
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1275 1\n\
   1: 0501000A:9C40 1402000A:0050 01 00000000:00000000 00:00000000 00000000     0        0 1276 1\n\
   2: 0501000A:9C41 1402000A:0050 06 00000000:00000000 00:00000000 00000000     0        0 0 1\n";
    const TCP6: &str = "  sl  local_address                         remote_address                        st\n\
   0: 000080FE000000000000000001000000:9C40 000080FE000000000000000002000000:0050 01 0\n";

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn live_connections_are_read_with_their_endpoints_and_others_left_out() {
        if cfg!(target_endian = "big") {
            return;
        }
        let mut sockets = Sockets::default();
        sockets.add(TCP);
        sockets.add(TCP6);
        assert_eq!(sockets.live[0], ((ip("10.0.1.5"), 40_000), (ip("10.0.2.20"), 80)), "TIME_WAIT is not live");
        assert_eq!(sockets.listening, [2024]);
        assert_eq!(
            sockets.peer_elsewhere((ip("10.0.1.5"), 40_000), (ip("10.0.3.7"), 8080)),
            Some((ip("10.0.2.20"), 80)),
            "the port talks to the VIP, the reply came from the backend"
        );
        assert_eq!(sockets.peer_elsewhere((ip("10.0.1.5"), 40_000), (ip("10.0.2.20"), 80)), None);
        assert_eq!(sockets.peer_elsewhere((ip("10.0.1.5"), 40_001), (ip("10.0.3.7"), 8080)), None);
        assert_eq!(sockets.live[1].0, (ip("fe80::1"), 40_000));
        // A server's port (something listens on it) holds many connections, none of them lost.
        sockets.add("h\n 9: 00000000:9C40 00000000:0000 0A 0\n");
        assert_eq!(sockets.peer_elsewhere((ip("10.0.1.5"), 40_000), (ip("10.0.3.7"), 8080)), None);
    }
}
