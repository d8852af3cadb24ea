//! Whole-array reads in a few syscalls (`BPF_MAP_LOOKUP_BATCH`) instead of one lookup per index:
//! `lb status` and adoption read every backend slot (131,072 by default), which one syscall per
//! element (three maps per backend) made take a second.

use std::os::fd::{AsRawFd as _, BorrowedFd};

use aya::maps::MapError;
use aya::sys::SyscallError;

/// `BPF_MAP_LOOKUP_BATCH` (`enum bpf_cmd` in linux/bpf.h; kernel 5.6 and later).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Elements per syscall: large enough that a full array costs a few dozen calls, small enough
/// for the kernel's temporary copy to stay small.
const ELEMENTS_PER_CALL: u32 = 8192;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every element of an array map of `len` elements of `elem_size` bytes each (a per-CPU array's
/// element is the value rounded up to 8 bytes, once per possible CPU), in index order.
pub(crate) fn read_array(
    fd: BorrowedFd<'_>,
    len: u32,
    elem_size: usize,
) -> Result<Vec<u8>, MapError> {
    let mut values = Vec::with_capacity(len as usize * elem_size);
    for_each_batch(fd, len, std::mem::size_of::<u32>(), elem_size, |_, v| {
        values.extend_from_slice(v);
    })?;
    Ok(values)
}

/// The keys and values of a hash map of at most `max_entries` entries (`key_size` and
/// `value_size` bytes each), in the map's order: one syscall per 8,192 entries instead of two
/// per entry.
pub(crate) fn read_hash(
    fd: BorrowedFd<'_>,
    max_entries: u32,
    key_size: usize,
    value_size: usize,
) -> Result<(Vec<u8>, Vec<u8>), MapError> {
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    for_each_batch(fd, max_entries, key_size, value_size, |k, v| {
        keys.extend_from_slice(k);
        values.extend_from_slice(v);
    })?;
    Ok((keys, values))
}

/// `BPF_MAP_LOOKUP_BATCH` until the map ends or `len` elements are read, handing each call's keys
/// and values to `f`. The kernel's batch token is a `u32` for arrays (the next index) and for hash
/// maps (the next bucket).
fn for_each_batch(
    fd: BorrowedFd<'_>,
    len: u32,
    key_size: usize,
    elem_size: usize,
    mut f: impl FnMut(&[u8], &[u8]),
) -> Result<(), MapError> {
    let per_call = ELEMENTS_PER_CALL.min(len.max(1));
    let mut keys = vec![0u8; per_call as usize * key_size];
    let mut values = vec![0u8; per_call as usize * elem_size];
    let mut next: u32 = 0;
    let mut done: u32 = 0;
    while done < len {
        // Always a full buffer's worth: a hash map's call returns whole buckets (ENOSPC when one
        // does not fit), and what is beyond `len` is not handed on.
        let want = per_call;
        let mut attr = BatchAttr {
            // The first call starts at the beginning: no token yet.
            in_batch: if done == 0 {
                0
            } else {
                std::ptr::from_ref(&next) as u64
            },
            out_batch: std::ptr::from_mut(&mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: want,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at buffers that hold `want` keys of `key_size` bytes and `want`
        // elements of `elem_size` bytes, and outlives the call; the kernel writes no more.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                std::ptr::from_mut(&mut attr),
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let copied = attr.count.min(want).min(len - done);
        let end = if rc < 0 {
            let err = std::io::Error::last_os_error();
            // ENOENT: the end of the map, with `count` elements copied in this call.
            if err.raw_os_error() != Some(libc::ENOENT) {
                return Err(SyscallError {
                    call: "bpf_map_lookup_batch",
                    io_error: err,
                }
                .into());
            }
            true
        } else {
            copied == 0
        };
        f(
            &keys[..copied as usize * key_size],
            &values[..copied as usize * elem_size],
        );
        done += copied;
        if end {
            break;
        }
    }
    Ok(())
}

/// The size of one element of a per-CPU array of `T` as the kernel copies it out.
pub(crate) fn per_cpu_elem_size<T>(cpus: usize) -> usize {
    std::mem::size_of::<T>().next_multiple_of(8) * cpus
}

/// `BPF_MAP_UPDATE_BATCH` (kernel 5.6 and later).
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Writes `values` (`value_size` bytes each) at the indices `keys` of an array map in one syscall
/// per 8,192 elements. On an error some elements may be written already.
pub(crate) fn update_array(
    fd: BorrowedFd<'_>,
    keys: &[u32],
    values: &[u8],
    value_size: usize,
) -> Result<(), MapError> {
    debug_assert_eq!(keys.len() * value_size, values.len());
    for (keys, values) in keys
        .chunks(ELEMENTS_PER_CALL as usize)
        .zip(values.chunks(ELEMENTS_PER_CALL as usize * value_size))
    {
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at `count` keys and `count` values of `value_size` bytes, which
        // outlive the call; the kernel only reads them.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                std::ptr::from_mut(&mut attr),
                std::mem::size_of::<BatchAttr>(),
            )
        };
        if rc < 0 {
            return Err(SyscallError {
                call: "bpf_map_update_batch",
                io_error: std::io::Error::last_os_error(),
            }
            .into());
        }
    }
    Ok(())
}
