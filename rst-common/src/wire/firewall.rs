//! Resets this host's own firewall sent: nftables' / iptables' `reject with tcp reset`, which
//! builds the RST in netfilter (`nf_send_reset`, `nf_send_reset6`) and never passes it through
//! the TCP stack, so `tcp:tcp_send_reset` does not see it. The key the kernel counts them
//! under; userspace joins them to tx resets by 4-tuple.

use super::keys::{tuple_words, word};

/// The netfilter hook the rejecting rule ran at (`enum nf_inet_hooks`, the same numbers for
/// IPv4 and IPv6): nftables' `prerouting`, `input`, `forward`, `output`, `postrouting`.
pub const NF_INET_PRE_ROUTING: u8 = 0;
pub const NF_INET_LOCAL_IN: u8 = 1;
pub const NF_INET_FORWARD: u8 = 2;
pub const NF_INET_LOCAL_OUT: u8 = 3;
pub const NF_INET_POST_ROUTING: u8 = 4;
/// What [`FirewallResetKey::hook`] holds when the kernel passed a hook number outside
/// `0..=4` (none does in Linux 6.18): kept rather than dropped, so every reset is counted.
pub const NF_INET_HOOK_OTHER: u8 = 0xff;

/// nftables' name of a [`FirewallResetKey::hook`].
pub const fn hook_name(hook: u8) -> &'static str {
    match hook {
        NF_INET_PRE_ROUTING => "prerouting",
        NF_INET_LOCAL_IN => "input",
        NF_INET_FORWARD => "forward",
        NF_INET_LOCAL_OUT => "output",
        NF_INET_POST_ROUTING => "postrouting",
        _ => "other",
    }
}

/// One RST netfilter sent for a `reject with tcp reset` rule, as it goes on the wire: `src` is
/// the rejected segment's destination (this host, or the host a forwarded segment was for),
/// `dst` its source, ports swapped to match (host order). Addresses as in [`super::FlowKey`];
/// `family` is [`super::FAMILY_IPV4`] or [`super::FAMILY_IPV6`]; `hook` is where the rule ran
/// (`NF_INET_*`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FirewallResetKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    pub hook: u8,
    pub _pad: [u8; 2],
}

impl FirewallResetKey {
    /// Built word-wise (see [`word`]), as [`super::StackResetKey::new`]: the RST's own tuple.
    #[inline(always)]
    pub fn new(src: [u32; 4], dst: [u32; 4], (sport, dport): (u16, u16), family: u8, hook: u8) -> Self {
        let [s0, s1, s2, s3, d0, d1, d2, d3, ports] = tuple_words(src, dst, sport, dport);
        let words = [s0, s1, s2, s3, d0, d1, d2, d3, ports, word([family, hook, 0, 0])];
        // SAFETY: FirewallResetKey is repr(C), 40 bytes without implicit padding (asserted
        // below), so any 40 bytes form a valid one.
        unsafe { core::mem::transmute::<[u32; 10], FirewallResetKey>(words) }
    }

    /// The RST answering a segment `from` → `to` (`ports` the segment's, source first).
    #[inline(always)]
    pub fn answering(from: [u32; 4], to: [u32; 4], (from_port, to_port): (u16, u16), family: u8, hook: u8) -> Self {
        FirewallResetKey::new(to, from, (to_port, from_port), family, hook)
    }
}

wire_sizes!(FirewallResetKey: 40);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_the_reset_so_the_rejected_segments_ends_swap() {
        let key = FirewallResetKey::answering(
            [word([10, 0, 0, 1]), 0, 0, 0],
            [word([10, 0, 0, 2]), 0, 0, 0],
            (40000, 7777),
            4,
            NF_INET_LOCAL_IN,
        );
        assert_eq!(&key.src[..4], &[10, 0, 0, 2]);
        assert_eq!(&key.dst[..4], &[10, 0, 0, 1]);
        assert_eq!((key.sport, key.dport, key.family, key.hook, key._pad), (7777, 40000, 4, 1, [0, 0]));
        assert_eq!(hook_name(key.hook), "input");
        assert_eq!(hook_name(NF_INET_HOOK_OTHER), "other");
    }
}
