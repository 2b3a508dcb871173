//! Who owned the socket behind each reset the host's stack sent or a local socket received
//! (the `tcp:tcp_send_reset` and `tcp:tcp_receive_reset` tracepoints): the key the kernel
//! counts them under, joined to flows in userspace by 4-tuple and direction.

use super::keys::{tuple_words, word};

/// No socket sent it: the stack answered for nobody (closed port, unknown connection), or only
/// the kernel's remains of a connection (TIME_WAIT, a pending request) were there.
pub const ORIGIN_KERNEL: u8 = 0;
/// A full socket sent it (abort, linger 0, close with unread data, a listener's answer).
pub const ORIGIN_APPLICATION: u8 = 1;
/// A local socket received it (rx): the origin is the peer's business.
pub const ORIGIN_RECEIVED: u8 = 2;

/// One reset's socket: its cgroup v2 id (0: no socket, or none with a cgroup) and origin, with
/// the RST's 4-tuple as in [`super::FlowKey`] (`src` sent it; host-order ports) and direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadKey {
    pub cgroup: u64,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    pub direction: u8,
    pub origin: u8,
    pub _pad: u8,
}

impl WorkloadKey {
    /// Built word-wise (see [`word`]), as [`super::StackResetKey::new`].
    #[inline(always)]
    pub fn new(
        cgroup: u64,
        src: [u32; 4],
        dst: [u32; 4],
        (sport, dport): (u16, u16),
        family: u8,
        direction: u8,
        origin: u8,
    ) -> Self {
        let [s0, s1, s2, s3, d0, d1, d2, d3, ports] = tuple_words(src, dst, sport, dport);
        let words = [0, 0, s0, s1, s2, s3, d0, d1, d2, d3, ports, word([family, direction, origin, 0])];
        // SAFETY: WorkloadKey is repr(C), 48 bytes without implicit padding (asserted below).
        // The cgroup is stored whole afterwards: an aligned u64 store, whatever the byte order.
        let mut key = unsafe { core::mem::transmute::<[u32; 12], WorkloadKey>(words) };
        key.cgroup = cgroup;
        key
    }
}

wire_sizes!(WorkloadKey: 48);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_holds_what_it_was_built_from() {
        let key = WorkloadKey::new(
            0x1234_5678_9abc,
            [word([10, 0, 0, 1]), 0, 0, 0],
            [word([10, 0, 0, 2]), 0, 0, 0],
            (80, 40000),
            4,
            1,
            ORIGIN_APPLICATION,
        );
        assert_eq!(key.cgroup, 0x1234_5678_9abc);
        assert_eq!(&key.src[..4], &[10, 0, 0, 1]);
        assert_eq!(&key.dst[..4], &[10, 0, 0, 2]);
        assert_eq!((key.sport, key.dport, key.family, key.direction, key.origin), (80, 40000, 4, 1, 1));
    }
}
