//! `LB_SCHEDULE` mapped into our memory: a table of 65,537 ids is one copy, not 65,537 syscalls.

use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::sync::OnceLock;

use lb_common::maps::SCHEDULE;

use super::{DataplaneError, mmap::SharedMapping};

/// A shared mapping of the whole `BPF_F_MMAPABLE` schedule array, seen as one dense `u32` array of
/// backend ids (the map stores two ids per 8-byte element, so no padding lies between them).
/// A read-only view maps it on first use: mapping 270 MB at fleet size takes tens of
/// milliseconds, and `lb status` and scrapes never read a table.
pub(crate) struct ScheduleMmap {
    fd: OwnedFd,
    entries: usize,
    writable: bool,
    mapping: OnceLock<SharedMapping>,
}

impl ScheduleMmap {
    pub(crate) fn new(
        fd: BorrowedFd<'_>,
        entries: u32,
        writable: bool,
    ) -> Result<Self, DataplaneError> {
        let fd = fd
            .try_clone_to_owned()
            .map_err(|source| DataplaneError::Mmap {
                map: SCHEDULE,
                source,
            })?;
        let schedule = ScheduleMmap {
            fd,
            entries: entries as usize,
            writable,
            mapping: OnceLock::new(),
        };
        // The daemon's view maps it now, while the data plane loads, not at its first apply.
        if writable {
            schedule.mapping()?;
        }
        Ok(schedule)
    }

    fn mapping(&self) -> Result<&SharedMapping, DataplaneError> {
        if let Some(mapping) = self.mapping.get() {
            return Ok(mapping);
        }
        let bytes = self.entries * size_of::<u32>();
        let mapping = SharedMapping::new(self.fd.as_fd(), SCHEDULE, bytes, self.writable)?;
        // Another thread may have mapped it meanwhile: one mapping is kept, the other unmapped.
        Ok(self.mapping.get_or_init(|| mapping))
    }

    fn base(&self) -> Result<*mut u32, DataplaneError> {
        Ok(self.mapping()?.base().cast())
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
        self.mapping()?.check_writable()?;
        let start = self.check(offset, ids.len())?;
        let base = self.base()?;
        // SAFETY: in bounds (checked); the region is shared with the XDP program, which only reads
        // slots that no service points at yet (see ARCHITECTURE.md, table swap).
        unsafe { std::ptr::copy_nonoverlapping(ids.as_ptr(), base.add(start), ids.len()) };
        // The table must be visible before the service entry that points at it is replaced.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    pub(crate) fn read(&self, offset: u32, len: u32) -> Result<Vec<u32>, DataplaneError> {
        let start = self.check(offset, len as usize)?;
        let base = self.base()?;
        let mut out = vec![0u32; len as usize];
        // SAFETY: in bounds (checked).
        unsafe { std::ptr::copy_nonoverlapping(base.add(start), out.as_mut_ptr(), len as usize) };
        Ok(out)
    }
}
