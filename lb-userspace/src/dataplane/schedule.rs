//! `LB_SCHEDULE` mapped into our memory: a table of 65,537 ids is one copy, not 65,537 syscalls.

use std::{io, os::fd::BorrowedFd, ptr::NonNull};

use lb_common::maps::SCHEDULE;

use super::DataplaneError;

/// A shared mapping of the whole `BPF_F_MMAPABLE` schedule array, seen as one dense `u32` array of
/// backend ids (the map stores two ids per 8-byte element, so no padding lies between them).
pub(crate) struct ScheduleMmap {
    base: NonNull<u32>,
    entries: usize,
    bytes: usize,
    writable: bool,
}

// SAFETY: the mapping is plain shared memory owned by this value; access goes through &/&mut.
unsafe impl Send for ScheduleMmap {}
// SAFETY: shared access only reads.
unsafe impl Sync for ScheduleMmap {}

impl ScheduleMmap {
    pub(crate) fn new(
        fd: BorrowedFd<'_>,
        entries: u32,
        writable: bool,
    ) -> Result<Self, DataplaneError> {
        let err = |source| DataplaneError::Mmap {
            map: SCHEDULE,
            source,
        };
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = usize::try_from(page)
            .ok()
            .filter(|p| *p > 0)
            .unwrap_or(4096);
        let entries = entries as usize;
        let bytes = (entries * size_of::<u32>()).div_ceil(page) * page;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        use std::os::fd::AsRawFd as _;
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks the size against the map.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(err(io::Error::last_os_error()));
        }
        let base = NonNull::new(ptr.cast::<u32>())
            .ok_or_else(|| err(io::Error::other("mmap returned NULL")))?;
        Ok(ScheduleMmap {
            base,
            entries,
            bytes,
            writable,
        })
    }

    pub(crate) fn entries(&self) -> u32 {
        self.entries as u32
    }

    fn check(&self, offset: u32, len: usize) -> Result<usize, DataplaneError> {
        let start = offset as usize;
        match start.checked_add(len) {
            Some(end) if end <= self.entries => Ok(start),
            _ => Err(DataplaneError::OutOfRange {
                map: SCHEDULE,
                index: u64::from(offset),
                len: len as u64,
                capacity: self.entries as u64,
            }),
        }
    }

    pub(crate) fn write(&mut self, offset: u32, ids: &[u32]) -> Result<(), DataplaneError> {
        if !self.writable {
            return Err(DataplaneError::Mmap {
                map: SCHEDULE,
                source: io::Error::new(io::ErrorKind::PermissionDenied, "opened read-only"),
            });
        }
        let start = self.check(offset, ids.len())?;
        // SAFETY: in bounds (checked); the region is shared with the XDP program, which only reads
        // slots that no service points at yet (see ARCHITECTURE.md, table swap).
        unsafe {
            std::ptr::copy_nonoverlapping(ids.as_ptr(), self.base.as_ptr().add(start), ids.len())
        };
        // The table must be visible before the service entry that points at it is replaced.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    pub(crate) fn read(&self, offset: u32, len: u32) -> Result<Vec<u32>, DataplaneError> {
        let start = self.check(offset, len as usize)?;
        let mut out = vec![0u32; len as usize];
        // SAFETY: in bounds (checked).
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.base.as_ptr().add(start),
                out.as_mut_ptr(),
                len as usize,
            )
        };
        Ok(out)
    }
}

impl Drop for ScheduleMmap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}
