//! What the reset tracepoints (`tcp:tcp_send_reset`, `tcp:tcp_receive_reset`) read from the
//! socket behind a reset, beyond its tuple: a listener's accept queue when it answered a
//! connection with an RST (`listen_overflow`), and how long a connection had been quiet before
//! its reset (`idle_timeout`). Both are per-epoch tables, flipped and drained like
//! `STACK_RESETS_*`, sized like them (a quarter of `--max-flows`, see the loader).

use super::keys::{native_words, tuple_words, word};

/// A listener that sent resets while in `TCP_LISTEN`: the local address and port the clients
/// connected to (for a wildcard listener, one key per local address it was reached at),
/// as in [`super::FlowKey`] (native-endian words, host-order port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
}

impl ListenKey {
    /// Built word-wise (see [`word`]), as [`super::StackResetKey::new`].
    #[inline(always)]
    pub fn new(addr: [u32; 4], port: u16, family: u8) -> Self {
        let words = [addr[0], addr[1], addr[2], addr[3], 0];
        // SAFETY: ListenKey is repr(C), 20 bytes without implicit padding (asserted below).
        let mut key = unsafe { core::mem::transmute::<[u32; 5], ListenKey>(words) };
        // Stored whole afterwards: the same bytes whatever the byte order.
        key.port = port;
        key.family = family;
        key
    }
}

/// What one listener's resets in `TCP_LISTEN` saw during an epoch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenValue {
    /// Resets the listener sent (every reason: the reason is in the stack-reset table, keyed by
    /// the connection's own tuple).
    pub resets: u64,
    /// The largest `sk->sk_ack_backlog` (connections waiting in the accept queue) seen at one of
    /// them: two CPUs updating it at once may keep the smaller.
    pub backlog: u32,
    /// `sk->sk_max_ack_backlog` (the queue's limit: `listen()`'s backlog, capped by
    /// `net.core.somaxconn`) at the last of them.
    pub max_backlog: u32,
}

/// The connection behind a reset a local socket sent or received: the RST's 4-tuple as in
/// [`super::FlowKey`] (`src` sent it; host-order ports) and direction
/// ([`super::DIRECTION_TX`]: this host sent it, [`super::DIRECTION_RX`]: received it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdleKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    pub direction: u8,
    pub _pad: [u8; 2],
}

impl IdleKey {
    /// Built word-wise (see [`word`]), as [`super::StackResetKey::new`].
    #[inline(always)]
    pub fn new(src: [u32; 4], dst: [u32; 4], (sport, dport): (u16, u16), family: u8, direction: u8) -> Self {
        let [s0, s1, s2, s3, d0, d1, d2, d3, ports] = tuple_words(src, dst, sport, dport);
        let words = [s0, s1, s2, s3, d0, d1, d2, d3, ports, word([family, direction, 0, 0])];
        // SAFETY: IdleKey is repr(C), 40 bytes without implicit padding (asserted below).
        unsafe { core::mem::transmute::<[u32; 10], IdleKey>(words) }
    }

    /// The key of the RST `key` names (its sender, receiver, ports and direction).
    #[inline(always)]
    pub fn of_reset(key: &super::FlowKey) -> Self {
        IdleKey::new(native_words(&key.src), native_words(&key.dst), (key.sport, key.dport), key.family, key.direction)
    }
}

/// How long the local socket had been quiet when a reset was sent or received, in jiffies
/// (the kernel's tick, `HZ` per second; userspace converts), of the last reset recorded for
/// the key in the epoch.
///
/// The programs that time every connection (`--idle-gaps`) record a connection that has no
/// socket here (a router's, a tap's) in the same table, its pause before the interval's first
/// reset of the key ([`crate::Activity::pause_before`]) in both fields: a socket's entry, where
/// there is one, is the last writer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdleValue {
    /// Resets recorded for the key (usually 1).
    pub resets: u64,
    /// `jiffies − icsk_ack.lrcvtime`: since the socket last received data (or, without any,
    /// since it was set up: connect's completion, the handshake's for an accepted socket).
    pub since_received: u32,
    /// `jiffies − tcp_sock.lsndtime`: since it last sent data (or since it was set up).
    pub since_sent: u32,
}

impl IdleValue {
    /// The idle gap before the reset: since the socket last received or sent data, whichever
    /// was later (`jiffies − max(lrcvtime, lsndtime)`), in jiffies.
    pub fn idle(&self) -> u32 {
        self.since_received.min(self.since_sent)
    }
}

wire_sizes!(ListenKey: 20, ListenValue: 16, IdleKey: 40, IdleValue: 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keys_hold_what_they_were_built_from() {
        let listen = ListenKey::new([word([10, 0, 0, 1]), 0, 0, 0], 8080, 4);
        assert_eq!((&listen.addr[..4], listen.port, listen.family), (&[10, 0, 0, 1][..], 8080, 4));
        let idle = IdleKey::new([word([10, 0, 0, 1]), 0, 0, 0], [word([10, 0, 0, 2]), 0, 0, 0], (80, 40000), 4, 1);
        assert_eq!(&idle.src[..4], &[10, 0, 0, 1]);
        assert_eq!(&idle.dst[..4], &[10, 0, 0, 2]);
        assert_eq!((idle.sport, idle.dport, idle.family, idle.direction), (80, 40000, 4, 1));
        assert_eq!(IdleValue { resets: 1, since_received: 400, since_sent: 375 }.idle(), 375);
    }
}
