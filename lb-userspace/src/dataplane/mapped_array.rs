//! A `BPF_F_MMAPABLE` array of plain values (`LB_BACKENDS`, `LB_BE_CONNS`, `LB_BE_STATS`) mapped
//! read-only, so `lb status`, scrapes, sweeps and adoption copy the slots they need in one
//! `memcpy` instead of having the kernel copy and check them element by element
//! (`BPF_MAP_LOOKUP_BATCH`). Writes still go through map updates.

use std::marker::PhantomData;
use std::os::fd::BorrowedFd;

use super::{DataplaneError, mmap::SharedMapping};

/// The first `len` elements of an mmapable array of `T`, read-only. The kernel lays an array's
/// values out at an 8-byte stride, so `T`'s size must be a multiple of 8 (a compile-time check).
pub(crate) struct MappedArray<T> {
    mapping: SharedMapping,
    len: u32,
    _values: PhantomData<T>,
}

impl<T: bytemuck::Pod> MappedArray<T> {
    const STRIDE_IS_SIZE: () = assert!(
        size_of::<T>().is_multiple_of(8) && align_of::<T>() <= 8,
        "an array value's size must be a multiple of 8 to be read through an mmap"
    );

    pub(crate) fn new(
        fd: BorrowedFd<'_>,
        map: &'static str,
        len: u32,
    ) -> Result<Self, DataplaneError> {
        let () = Self::STRIDE_IS_SIZE;
        let mapping = SharedMapping::new(fd, map, len as usize * size_of::<T>(), false)?;
        Ok(MappedArray {
            mapping,
            len,
            _values: PhantomData,
        })
    }

    /// Copies of elements `0..len` (at most the array's length), as they are now: an element
    /// being rewritten meanwhile may be seen half old, half new, as with a batch lookup.
    pub(crate) fn read(&self, len: u32) -> Vec<T> {
        let len = len.min(self.len) as usize;
        // Not zeroed first: at 100,000 backends that doubled the pages touched.
        let mut out: Vec<T> = Vec::with_capacity(len);
        // SAFETY: the mapping covers `self.len` values of `T` (the kernel checked its size at
        // mmap), `len` ≤ that, `out` has room for `len` values, and `T` is plain data (any bytes
        // are a valid `T`), so after the copy its first `len` values are initialised.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.mapping.base().cast::<T>().cast_const(),
                out.as_mut_ptr(),
                len,
            );
            out.set_len(len);
        }
        out
    }

    /// A copy of element `i` as it is now (`None` past the end): for a pass over the array that
    /// keeps only what it derives from each element.
    #[inline]
    pub(crate) fn get(&self, i: u32) -> Option<T> {
        (i < self.len).then(|| {
            // SAFETY: `i` < `self.len`, which the mapping covers; `T` is plain data. Volatile:
            // the kernel may rewrite the element meanwhile (a torn copy is as a batch lookup's).
            unsafe {
                std::ptr::read_volatile(
                    self.mapping.base().cast::<T>().cast_const().add(i as usize),
                )
            }
        })
    }
}
