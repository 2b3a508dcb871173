//! Resets this host's firewall sent: fentry programs on `nf_send_reset` and `nf_send_reset6`,
//! where nftables' and iptables' `reject with tcp reset` build their RST. Those RSTs never pass
//! through the TCP stack (no `tcp:tcp_send_reset`), so without this they are tx resets nobody
//! claims. The programs run only when netfilter rejects a segment: nothing here is on the
//! per-packet path, and the XDP and TC programs are unchanged.
//!
//! The rejected segment's headers are read from `oldskb` (`skb->head + skb->network_header`)
//! with `bpf_probe_read_kernel`, at `sk_buff` offsets the loader takes from the kernel's BTF.
//! Minimum kernel: 5.5 (fentry), and the functions built in or their module loaded.
//!
//! Recorded is the RST netfilter is about to send, keyed as it will go on the wire. The kernel
//! still declines a few after this point (a bad checksum on the rejected segment, a broadcast
//! or multicast destination, no route, no memory): those count one too many here.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{fentry, map},
    maps::{HashMap, PerCpuArray},
    programs::FEntryContext,
};
use rst_common::wire::{
    FirewallResetKey, FlowValue, DEFAULT_MAX_SERVICES, FAMILY_IPV4, FAMILY_IPV6, NF_INET_HOOK_OTHER,
    NF_INET_POST_ROUTING,
};

use crate::{maps::current_epoch, tables::add_to_table};

/// Resets per [`FirewallResetKey`], flipped and drained like `STACK_RESETS_*`; the loader
/// sizes them from `--max-flows`.
#[map]
static FIREWALL_RESETS_0: HashMap<FirewallResetKey, FlowValue> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);
#[map]
static FIREWALL_RESETS_1: HashMap<FirewallResetKey, FlowValue> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);
/// Per epoch, the firewall resets that found no room in their table: counted, never lost.
#[map]
static FIREWALL_OVERFLOW: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

// Linux 6.18's `struct sk_buff` (x86_64); the loader sets them from BTF.
#[unsafe(no_mangle)]
static SKB_HEAD_OFFSET: u32 = 192;
#[unsafe(no_mangle)]
static SKB_NETWORK_HEADER_OFFSET: u32 = 180;

const IPPROTO_TCP: u8 = 6;
const TCP_FLAG_RST: u8 = 0x04;
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
    let _ = record(&ctx, FAMILY_IPV4);
    0
}

/// `nf_send_reset6(struct net *, struct sock *, struct sk_buff *oldskb, int hook)`: the same
/// for IPv6.
#[fentry(function = "nf_send_reset6")]
pub fn rstwatch_nf_send_reset6(ctx: FEntryContext) -> i32 {
    let _ = record(&ctx, FAMILY_IPV6);
    0
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

#[inline(always)]
fn record(ctx: &FEntryContext, family: u8) -> Result<(), i32> {
    let skb: u64 = ctx.arg(2);
    let hook: i32 = ctx.arg(3);
    let hook = if (0..=i32::from(NF_INET_POST_ROUTING)).contains(&hook) { hook as u8 } else { NF_INET_HOOK_OTHER };
    let head: u64 = read(skb + global(&SKB_HEAD_OFFSET))?;
    let network: u16 = read(skb + global(&SKB_NETWORK_HEADER_OFFSET))?;
    let ip = head + u64::from(network);
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
