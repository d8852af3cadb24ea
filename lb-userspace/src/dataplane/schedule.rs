//! `LB_SCHEDULE` mapped into our memory: a table of 65,537 ids is one copy, not 65,537 syscalls.

use std::os::fd::BorrowedFd;

use lb_common::maps::SCHEDULE;

use super::{DataplaneError, mmap::SharedMapping};

/// A shared mapping of the whole `BPF_F_MMAPABLE` schedule array, seen as one dense `u32` array of
/// backend ids (the map stores two ids per 8-byte element, so no padding lies between them).
pub(crate) struct ScheduleMmap {
    mapping: SharedMapping,
    entries: usize,
}

impl ScheduleMmap {
    pub(crate) fn new(
        fd: BorrowedFd<'_>,
        entries: u32,
        writable: bool,
    ) -> Result<Self, DataplaneError> {
        let entries = entries as usize;
        let mapping = SharedMapping::new(fd, SCHEDULE, entries * size_of::<u32>(), writable)?;
        Ok(ScheduleMmap { mapping, entries })
    }

    fn base(&self) -> *mut u32 {
        self.mapping.base().cast()
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
        self.mapping.check_writable()?;
        let start = self.check(offset, ids.len())?;
        // SAFETY: in bounds (checked); the region is shared with the XDP program, which only reads
        // slots that no service points at yet (see ARCHITECTURE.md, table swap).
        unsafe { std::ptr::copy_nonoverlapping(ids.as_ptr(), self.base().add(start), ids.len()) };
        // The table must be visible before the service entry that points at it is replaced.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    pub(crate) fn read(&self, offset: u32, len: u32) -> Result<Vec<u32>, DataplaneError> {
        let start = self.check(offset, len as usize)?;
        let mut out = vec![0u32; len as usize];
        // SAFETY: in bounds (checked).
        unsafe {
            std::ptr::copy_nonoverlapping(self.base().add(start), out.as_mut_ptr(), len as usize)
        };
        Ok(out)
    }
}
