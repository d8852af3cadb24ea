//! A `BPF_F_MMAPABLE` array map mapped into our memory: shared with the XDP program, so a store
//! here is seen by the next packet without a syscall.

use std::{io, os::fd::AsRawFd as _, os::fd::BorrowedFd, ptr::NonNull};

use super::DataplaneError;

/// A shared mapping of the first `len` bytes (rounded up to pages) of a map's values.
pub(crate) struct SharedMapping {
    map: &'static str,
    base: NonNull<u8>,
    bytes: usize,
    writable: bool,
}

// SAFETY: plain shared memory owned by this value; its users go through & / &mut or atomics.
unsafe impl Send for SharedMapping {}
// SAFETY: as above.
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    pub(crate) fn new(
        fd: BorrowedFd<'_>,
        map: &'static str,
        len: usize,
        writable: bool,
    ) -> Result<Self, DataplaneError> {
        let err = |source| DataplaneError::Mmap { map, source };
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = usize::try_from(page)
            .ok()
            .filter(|p| *p > 0)
            .unwrap_or(4096);
        let bytes = len.max(1).div_ceil(page) * page;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
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
        let base = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| err(io::Error::other("mmap returned NULL")))?;
        Ok(SharedMapping {
            map,
            base,
            bytes,
            writable,
        })
    }

    pub(crate) fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    pub(crate) fn check_writable(&self) -> Result<(), DataplaneError> {
        if self.writable {
            return Ok(());
        }
        Err(DataplaneError::Mmap {
            map: self.map,
            source: io::Error::new(io::ErrorKind::PermissionDenied, "opened read-only"),
        })
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}
