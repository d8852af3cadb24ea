//! A two-instruction XDP program that passes every packet, loaded with the raw `bpf()` syscall and
//! pinned, so `ip link set … xdpdrv pinned` can attach it.
//!
//! Why the lab needs it: a veth delivers the frames its XDP program sends back (`XDP_TX`) into its
//! peer's ring, but only schedules the peer to read that ring when the peer has an XDP program of its
//! own (`veth_xdp_flush` checks the receiving queue's `xdp_prog`; GRO alone gives NAPI but no flush).
//! Without one, the load balancer's encapsulated packets sit in the router port's ring until some
//! unrelated packet wakes it.

use std::ffi::CString;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use anyhow::{Context as _, bail};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_TYPE_XDP: u32 = 6;
const XDP_PASS: i32 = 2;

/// One eBPF instruction: opcode, registers (dst low nibble, src high nibble), offset, immediate.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// The leading fields of `union bpf_attr` for `BPF_PROG_LOAD`; the rest stays zero.
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
    _zero: [u64; 8],
}

/// `union bpf_attr` for `BPF_OBJ_PIN`.
#[repr(C)]
#[derive(Default)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    _zero: [u64; 4],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, zero-padded `union bpf_attr` prefix of the size passed; the kernel
    // reads (and for some commands writes) only within that size.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>()) };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Loads the pass-everything program and pins it at `path` (on bpffs).
pub fn load_and_pin(path: &Path) -> anyhow::Result<()> {
    let insns = [
        // r0 = XDP_PASS (BPF_ALU64 | BPF_MOV | BPF_K)
        Insn {
            code: 0xb7,
            regs: 0,
            off: 0,
            imm: XDP_PASS,
        },
        // return r0 (BPF_JMP | BPF_EXIT)
        Insn {
            code: 0x95,
            regs: 0,
            off: 0,
            imm: 0,
        },
    ];
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..8].copy_from_slice(b"lab_pass");
    let mut load = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    let fd =
        bpf(BPF_PROG_LOAD, &mut load).context("loading the XDP pass program (BPF_PROG_LOAD)")?;
    let fd = i32::try_from(fd).context("bpf() returned an fd out of range")?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let c_path = CString::new(path.as_os_str().as_bytes()).context("pin path contains NUL")?;
    let mut pin = ObjPinAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        ..Default::default()
    };
    if let Err(e) = bpf(BPF_OBJ_PIN, &mut pin) {
        bail!("pinning the XDP pass program at {}: {e}", path.display());
    }
    Ok(())
}
