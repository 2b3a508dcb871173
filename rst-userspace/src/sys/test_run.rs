//! `bpf(2)` for the benchmarks' flood generator: a program outside rstwatch's object, which aya
//! can neither load (it loads ELF objects) nor test-run (its `TestRun` needs a program it
//! loaded). Everything in rstwatch's own object goes through aya ([`crate::load::testrun`]).

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use crate::load::testrun::{XdpMd, XDP_TX};

/// `union bpf_attr` for BPF_PROG_LOAD, up to `expected_attach_type`, plus zeroed room.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    _rest: [u64; 8],
}

/// `union bpf_attr` for BPF_PROG_TEST_RUN (the `test` member).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const _: () = assert!(size_of::<TestRunAttr>() == 80);

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// Loads `r0 = XDP_TX; exit` as an XDP program.
pub fn load_xdp_tx() -> io::Result<OwnedFd> {
    // struct bpf_insn: code, dst_reg:4 | src_reg:4, off, imm.
    let insns: [u64; 2] = [
        // BPF_ALU64 | BPF_MOV | BPF_K (0xb7), dst r0, imm XDP_TX.
        u64::from_le_bytes([0xb7, 0, 0, 0, 0, 0, 0, 0]) | (u64::from(XDP_TX) << 32),
        // BPF_JMP | BPF_EXIT (0x95).
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = b"GPL\0";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    attr.prog_name[..6].copy_from_slice(b"bm_gen");
    // SAFETY: `attr` is a valid, zero-padded bpf_attr prefix for BPF_PROG_LOAD; the instruction
    // array and license string it points to outlive the call and are only read.
    let ret =
        unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, &attr as *const ProgLoadAttr, size_of::<ProgLoadAttr>()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success BPF_PROG_LOAD returns a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}

/// One live-frames test run (`BPF_F_TEST_XDP_LIVE_FRAMES`): `repeat` copies of `frame`, `batch`
/// at a time, through `prog`, as arriving on `ctx`'s interface; an `XDP_TX` verdict transmits
/// them. Returns the kernel-reported ns per frame.
pub fn live_run(prog: &OwnedFd, frame: &[u8], ctx: &XdpMd, repeat: u32, batch: u32) -> io::Result<u32> {
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ctx_size_in: size_of::<XdpMd>() as u32,
        ctx_in: ctx as *const XdpMd as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size: batch,
        ..Default::default()
    };
    // SAFETY: `attr` is a valid bpf_attr for BPF_PROG_TEST_RUN; `frame` and `ctx` outlive the
    // call and are only read, there are no output buffers.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &mut attr as *mut TestRunAttr, size_of::<TestRunAttr>())
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(attr.duration)
}
