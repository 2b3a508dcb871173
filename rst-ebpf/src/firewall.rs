//! Resets this host's firewall sent: nftables' and iptables' `reject with tcp reset` build
//! their RST in `nf_send_reset` / `nf_send_reset6`. Those RSTs never pass through the TCP stack
//! (no `tcp:tcp_send_reset`), so without this they are tx resets nobody claims. Nothing here is
//! on the per-packet path of normal traffic, and the XDP and TC programs are unchanged.
//!
//! Two ways in, one used at a time (the loader says which):
//! - fentry programs on `nf_send_reset` / `nf_send_reset6` (Linux >= 5.5): they run only when
//!   netfilter rejects with an RST, and netfilter passes the hook. Preferred.
//! - where the kernel refuses fentry (no BPF trampolines, as in some VM kernels), a BTF
//!   tracepoint on `skb:kfree_skb` (Linux >= 5.17 for drop reasons) that keeps only the skbs
//!   netfilter dropped (`SKB_DROP_REASON_NETFILTER_DROP`): a rejected segment is dropped so
//!   right after its RST was sent. It runs on every dropped skb, returns at once for any other
//!   reason, and records a *candidate*: a plain `drop` looks the same, so userspace confirms
//!   one by an RST this host sent on its tuple. The hook is inferred ([`dropped_at`]).
//!
//! The rejected segment's headers are read from the skb (`skb->head + skb->network_header`)
//! with `bpf_probe_read_kernel`, at `sk_buff` offsets the loader takes from the kernel's BTF.
//!
//! Recorded is the RST netfilter is about to send, keyed as it will go on the wire. The kernel
//! still declines a few after this point (a bad checksum on the rejected segment, a broadcast
//! or multicast destination, no route, no memory): those count one too many here.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{btf_tracepoint, fentry, map},
    maps::{HashMap, PerCpuArray},
    programs::{BtfTracePointContext, FEntryContext},
};
use rst_common::wire::{
    FirewallResetKey, FlowValue, DEFAULT_MAX_SERVICES, FAMILY_IPV4, FAMILY_IPV6, NF_INET_FORWARD, NF_INET_HOOK_OTHER,
    NF_INET_LOCAL_IN, NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING, NF_INET_PRE_ROUTING,
};

use crate::{
    maps::current_epoch,
    socket::{SKB_HEAD_OFFSET, SKB_NETWORK_HEADER_OFFSET},
    tables::add_to_table,
};

/// Resets per [`FirewallResetKey`], flipped and drained like `STACK_RESETS_*`; the loader
/// sizes them from `--max-flows`.
#[map]
static FIREWALL_RESETS_0: HashMap<FirewallResetKey, FlowValue> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);
#[map]
static FIREWALL_RESETS_1: HashMap<FirewallResetKey, FlowValue> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);
/// Per epoch, the firewall resets that found no room in their table: counted, never lost.
#[map]
static FIREWALL_OVERFLOW: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

// `struct sk_buff`'s head and network header: the socket reads' globals (the loader sets them
// from BTF for whichever of the two runs).
/// For the `skb:kfree_skb` program only: `enum skb_drop_reason`'s `NETFILTER_DROP` (its number
/// changes between kernels as reasons are added), and where it finds the skb's device
/// (`sk_buff.dev`), route (`sk_buff._skb_refdst`) and the route's flags (`rtable.rt_flags`,
/// `rt6_info.rt6i_flags`) to infer the hook by. Linux 6.18's (x86_64); the loader sets them from
/// BTF.
#[unsafe(no_mangle)]
static NETFILTER_DROP_REASON: u32 = 12;
#[unsafe(no_mangle)]
static SKB_DEV_OFFSET: u32 = 16;
#[unsafe(no_mangle)]
static SKB_REFDST_OFFSET: u32 = 88;
#[unsafe(no_mangle)]
static RTABLE_FLAGS_OFFSET: u32 = 140;
#[unsafe(no_mangle)]
static RT6_INFO_FLAGS_OFFSET: u32 = 216;

const IPPROTO_TCP: u8 = 6;
const TCP_FLAG_RST: u8 = 0x04;
/// `RTCF_LOCAL` (IPv4) and `RTF_LOCAL` (IPv6), the same bit: a route delivering to this host.
const ROUTE_LOCAL: u32 = 0x8000_0000;
/// `SKB_DST_NOREF`, the low bit of `_skb_refdst` (not part of the pointer).
const SKB_DST_NOREF: u64 = 1;
/// IPv4's fragment offset bits (`IP_OFFSET`).
const IP_OFFSET: u16 = 0x1fff;
/// IPv6 extension headers netfilter's `ipv6_skip_exthdr` walks past to the TCP header.
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;
/// How many IPv6 extension headers are walked; a segment with more is still counted, with
/// ports 0 (the verifier needs a bound, and real traffic has one or two at most).
const MAX_EXTENSION_HEADERS: usize = 4;

/// `nf_send_reset(struct net *, struct sock *, struct sk_buff *oldskb, int hook)`: an IPv4
/// segment is being rejected with an RST. Always returns 0 (fentry cannot change the call).
#[fentry(function = "nf_send_reset")]
pub fn rstwatch_nf_send_reset(ctx: FEntryContext) -> i32 {
    let _ = network_header(ctx.arg(2)).and_then(|ip| record(ip, FAMILY_IPV4, netfilter_hook(ctx.arg(3))));
    0
}

/// `nf_send_reset6(struct net *, struct sock *, struct sk_buff *oldskb, int hook)`: the same
/// for IPv6.
#[fentry(function = "nf_send_reset6")]
pub fn rstwatch_nf_send_reset6(ctx: FEntryContext) -> i32 {
    let _ = network_header(ctx.arg(2)).and_then(|ip| record(ip, FAMILY_IPV6, netfilter_hook(ctx.arg(3))));
    0
}

/// `skb:kfree_skb(struct sk_buff *skb, void *location, enum skb_drop_reason reason, struct sock
/// *rx_sk)`, as a BTF tracepoint: used where fentry is refused. Only netfilter's drops are
/// looked at; a TCP segment that is not itself an RST is recorded as the RST that would answer
/// it, a candidate (see the module's doc). Always returns 0 (a tracepoint cannot change the free).
#[btf_tracepoint(function = "kfree_skb")]
pub fn rstwatch_nf_drop(ctx: BtfTracePointContext) -> i32 {
    let reason: u32 = ctx.arg(2);
    // The one comparison every other drop pays.
    if u64::from(reason) != global(&NETFILTER_DROP_REASON) {
        return 0;
    }
    let _ = record_dropped(ctx.arg(0));
    0
}

/// The hook number netfilter passed, or [`NF_INET_HOOK_OTHER`] for one outside the five.
#[inline(always)]
fn netfilter_hook(hook: i32) -> u8 {
    if (0..=i32::from(NF_INET_POST_ROUTING)).contains(&hook) {
        hook as u8
    } else {
        NF_INET_HOOK_OTHER
    }
}

#[inline(always)]
fn record_dropped(skb: u64) -> Result<(), i32> {
    // The IP version, not `skb->protocol`: one read fewer, and the same packet bytes the tuple
    // comes from. Anything but IPv4 or IPv6 (ARP, a bridge's frames) is not TCP to answer.
    let ip = network_header(skb)?;
    let first: u8 = read(ip)?;
    let family = match first >> 4 {
        4 => FAMILY_IPV4,
        6 => FAMILY_IPV6,
        _ => return Ok(()),
    };
    record(ip, family, dropped_at(skb, family)?)
}

/// The netfilter hook a dropped skb was at, inferred from the skb alone (kfree_skb is not told):
/// - no `skb->dev`: `output`. A locally generated packet gets its device only in
///   `ip_output` / `ip6_output`, after the output hook; a received one has it from the driver.
/// - a device but no route (`_skb_refdst` 0): `prerouting` (received, routing not done yet).
/// - a route that delivers locally (`RTCF_LOCAL` / `RTF_LOCAL`): `input`.
/// - any other route: `forward`.
///
/// `postrouting` is never inferred: no reject runs there (nftables and iptables refuse it), so a
/// drop there is a plain drop; it reads as `forward`, or as `input` for a packet to this host's
/// own address (loopback). An `ingress` (netdev) drop reads as `prerouting`.
#[inline(always)]
fn dropped_at(skb: u64, family: u8) -> Result<u8, i32> {
    let dev: u64 = read(skb + global(&SKB_DEV_OFFSET))?;
    if dev == 0 {
        return Ok(NF_INET_LOCAL_OUT);
    }
    let dst = read::<u64>(skb + global(&SKB_REFDST_OFFSET))? & !SKB_DST_NOREF;
    if dst == 0 {
        return Ok(NF_INET_PRE_ROUTING);
    }
    // Both route structs start with their `struct dst_entry`, which `_skb_refdst` points to.
    let flags_at = if family == FAMILY_IPV4 { global(&RTABLE_FLAGS_OFFSET) } else { global(&RT6_INFO_FLAGS_OFFSET) };
    let flags: u32 = read(dst + flags_at)?;
    Ok(if flags & ROUTE_LOCAL != 0 { NF_INET_LOCAL_IN } else { NF_INET_FORWARD })
}

/// Where the skb's network (IP) header is.
#[inline(always)]
fn network_header(skb: u64) -> Result<u64, i32> {
    let head: u64 = read(skb + global(&SKB_HEAD_OFFSET))?;
    let network: u16 = read(skb + global(&SKB_NETWORK_HEADER_OFFSET))?;
    Ok(head + u64::from(network))
}

/// A loader-set global, read so the compiler does not fold in the default.
#[inline(always)]
fn global(value: &'static u32) -> u64 {
    // SAFETY: a volatile read of an aligned static the loader may have rewritten before load.
    u64::from(unsafe { core::ptr::read_volatile(value) })
}

#[inline(always)]
fn read<T>(at: u64) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an error, not a fault.
    unsafe { bpf_probe_read_kernel(at as *const T) }
}

/// An IPv4 header without options, aligned so its words load whole.
#[repr(C, align(4))]
#[derive(Clone, Copy)]
struct Ipv4Header([u8; 20]);

#[repr(C, align(4))]
#[derive(Clone, Copy)]
struct Ipv6Header([u8; 40]);

/// The first 14 bytes of a TCP header: ports, sequence numbers and flags.
#[repr(C, align(4))]
#[derive(Clone, Copy)]
struct TcpStart([u8; 16]);

/// Records the RST answering the segment whose IP header is at `ip`, rejected at `hook`.
#[inline(always)]
fn record(ip: u64, family: u8, hook: u8) -> Result<(), i32> {
    let (from, to, tcp) = if family == FAMILY_IPV4 {
        let header: Ipv4Header = read(ip)?;
        let h = &header.0;
        let length = u64::from(h[0] & 0x0f) * 4;
        // netfilter answers neither a later fragment nor anything but TCP.
        if length < 20 || u16::from_be_bytes([h[6], h[7]]) & IP_OFFSET != 0 || h[9] != IPPROTO_TCP {
            return Ok(());
        }
        let word = |at: usize| u32::from_ne_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        ([word(12), 0, 0, 0], [word(16), 0, 0, 0], Some(ip + length))
    } else {
        let header: Ipv6Header = read(ip)?;
        let h = &header.0;
        let word = |at: usize| u32::from_ne_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        let from = [word(8), word(12), word(16), word(20)];
        let to = [word(24), word(28), word(32), word(36)];
        (from, to, ipv6_tcp(ip, h[6])?)
    };
    let ports = match tcp {
        Some(tcp) => {
            let segment: TcpStart = read(tcp)?;
            let s = &segment.0;
            // netfilter never answers an RST with one.
            if s[13] & TCP_FLAG_RST != 0 {
                return Ok(());
            }
            (u16::from_be_bytes([s[0], s[1]]), u16::from_be_bytes([s[2], s[3]]))
        }
        None => (0, 0),
    };
    count(&FirewallResetKey::answering(from, to, ports, family, hook));
    Ok(())
}

/// Where the TCP header of an IPv6 packet starts, walking up to [`MAX_EXTENSION_HEADERS`]
/// extension headers; `Ok(None)` when there are more. An error for a packet netfilter does not
/// answer (not TCP, a later fragment).
#[inline(always)]
fn ipv6_tcp(ip: u64, first: u8) -> Result<Option<u64>, i32> {
    let mut next = first;
    let mut at = ip + 40;
    for _ in 0..MAX_EXTENSION_HEADERS {
        match next {
            IPPROTO_TCP => return Ok(Some(at)),
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH => {
                let [following, length]: [u8; 2] = read(at)?;
                // AH counts 4-byte units less 2, the others 8-byte units less 1.
                at += if next == NEXTHDR_AUTH { (u64::from(length) + 2) * 4 } else { (u64::from(length) + 1) * 8 };
                next = following;
            }
            NEXTHDR_FRAGMENT => {
                let fragment: [u8; 4] = read(at)?;
                if u16::from_be_bytes([fragment[2], fragment[3]]) & 0xfff8 != 0 {
                    return Err(0);
                }
                next = fragment[0];
                at += 8;
            }
            _ => return Err(0),
        }
    }
    if next == IPPROTO_TCP {
        Ok(Some(at))
    } else {
        Ok(None)
    }
}

#[inline(always)]
fn count(key: &FirewallResetKey) {
    let epoch = current_epoch();
    let recorded = match epoch {
        0 => add_to_table(&FIREWALL_RESETS_0, key, 1),
        _ => add_to_table(&FIREWALL_RESETS_1, key, 1),
    };
    if !recorded {
        if let Some(overflow) = FIREWALL_OVERFLOW.get_ptr_mut(epoch) {
            // SAFETY: a live per-CPU slot; atomic because netfilter rejects in process context
            // too (locally generated segments), where a softirq's rejection may interleave.
            unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(overflow, 1) };
        }
    }
}
