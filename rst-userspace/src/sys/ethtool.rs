//! `SIOCETHTOOL`: a veth's count of frames its peer's ring refused.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// The veth's count of frames its peer's ring refused (`tx_queue_N_xdp_xmit_errors` in
/// `ethtool -S`, summed over queues), read through `SIOCETHTOOL`.
///
/// A live-frames run hands its frames to the peer's ring inside the syscall, and a full ring
/// (the peer's NAPI starved on a loaded machine) drops the rest there and counts them here. So
/// the change across one run is exactly what that run's flow lost before any XDP hook saw it.
pub struct XmitErrors {
    socket: OwnedFd,
    name: [u8; libc::IFNAMSIZ],
    /// Indices of the `*_xdp_xmit_errors` counters in the statistics array.
    indices: Vec<usize>,
    n_stats: u32,
    stats: Vec<u64>,
}

/// `struct ifreq` with the `ifr_data` member.
#[repr(C)]
struct IfreqData {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSTATS: u32 = 0x1d;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETH_SS_STATS: u32 = 1;
const ETH_GSTRING_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("interface name {0:?} is too long")]
    NameTooLong(String),
    #[error("{0} has no xdp_xmit_errors counter (not a veth?)")]
    NoXmitErrors(String),
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

impl XmitErrors {
    pub fn open(iface: &str) -> Result<XmitErrors, Error> {
        let io = |what| move |source| Error::Io { what, source };
        // SAFETY: socket() has no memory preconditions.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io("socket for SIOCETHTOOL")(io::Error::last_os_error()));
        }
        // SAFETY: a successful socket() returns a descriptor nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut name = [0u8; libc::IFNAMSIZ];
        if iface.len() >= name.len() {
            return Err(Error::NameTooLong(iface.to_owned()));
        }
        name[..iface.len()].copy_from_slice(iface.as_bytes());
        let mut this = XmitErrors { socket, name, indices: Vec::new(), n_stats: 0, stats: Vec::new() };

        // struct ethtool_sset_info: cmd, reserved, sset_mask (u64), data[1] (u32).
        let mut info = [0u32; 5];
        info[0] = ETHTOOL_GSSET_INFO;
        info[2] = 1 << ETH_SS_STATS;
        this.ioctl(info.as_mut_ptr().cast()).map_err(io("ETHTOOL_GSSET_INFO"))?;
        let count = info[4];
        // struct ethtool_gstrings: cmd, string_set, len, then len * ETH_GSTRING_LEN bytes.
        let mut strings = vec![0u32; 3 + count as usize * ETH_GSTRING_LEN / 4];
        strings[0] = ETHTOOL_GSTRINGS;
        strings[1] = ETH_SS_STATS;
        strings[2] = count;
        this.ioctl(strings.as_mut_ptr().cast()).map_err(io("ETHTOOL_GSTRINGS"))?;
        let bytes: Vec<u8> = strings[3..].iter().flat_map(|w| w.to_ne_bytes()).collect();
        for (index, raw) in bytes.chunks(ETH_GSTRING_LEN).enumerate() {
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            let stat = String::from_utf8_lossy(&raw[..end]);
            if stat.starts_with("tx_queue_") && stat.ends_with("_xdp_xmit_errors") {
                this.indices.push(index);
            }
        }
        if this.indices.is_empty() {
            return Err(Error::NoXmitErrors(iface.to_owned()));
        }
        this.n_stats = count;
        // struct ethtool_stats: cmd, n_stats, then n_stats u64.
        this.stats = vec![0u64; 1 + count as usize];
        Ok(this)
    }

    fn ioctl(&self, data: *mut libc::c_void) -> io::Result<()> {
        let mut request = IfreqData { name: self.name, data, _pad: [0; 16] };
        // SAFETY: `request` names the interface and points at a buffer laid out as the command
        // in its first word asks, sized from the kernel's own count; both outlive the call.
        let ret = unsafe { libc::ioctl(self.socket.as_raw_fd(), SIOCETHTOOL, &mut request) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The sum of the counters now.
    pub fn read(&mut self) -> io::Result<u64> {
        self.stats.fill(0);
        self.stats[0] = u64::from(ETHTOOL_GSTATS) | u64::from(self.n_stats) << 32;
        let stats = self.stats.as_mut_ptr().cast();
        self.ioctl(stats)?;
        Ok(self.indices.iter().map(|&i| self.stats[1 + i]).sum())
    }
}
