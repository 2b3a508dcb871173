//! The context `BPF_PROG_TEST_RUN` takes for XDP programs: where a test frame arrives.

/// `struct xdp_md` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct XdpMd {
    pub data: u32,
    pub data_end: u32,
    pub data_meta: u32,
    pub ingress_ifindex: u32,
    pub rx_queue_index: u32,
    pub egress_ifindex: u32,
}

const _: () = assert!(core::mem::size_of::<XdpMd>() == 24);

impl XdpMd {
    /// A frame of `len` bytes arriving on `ifindex`: the kernel insists that `data_end` covers
    /// the whole input, also when it spills into fragments.
    pub fn arriving(len: usize, ifindex: u32) -> Self {
        XdpMd { data_end: len as u32, ingress_ifindex: ifindex, ..XdpMd::default() }
    }

    /// The bytes to pass as `ctx_in`.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: XdpMd is repr(C) of six u32s without padding (size asserted above); the slice
        // borrows `self`.
        unsafe { std::slice::from_raw_parts((self as *const XdpMd).cast::<u8>(), core::mem::size_of::<XdpMd>()) }
    }
}
