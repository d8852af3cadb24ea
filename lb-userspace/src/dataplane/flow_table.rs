//! `LB_FLOWS` mapped into our memory: the set-associative flow table (`lb_common::flow`) read and
//! swept in place, with the same atomic tag protocol as the XDP program, so a sweep never
//! overwrites a way a CPU has just claimed (a whole-value map update would).

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use lb_common::{
    FlowBucket, FlowEntry, FlowKey,
    flow::{FLOW_TAG_FREE, FLOW_WAYS, flow_place},
    maps::FLOWS,
};

use super::{DataplaneError, mmap::SharedMapping};

/// A shared mapping of every bucket of `LB_FLOWS`.
pub(crate) struct FlowTableMmap {
    mapping: SharedMapping,
    buckets: u32,
}

impl FlowTableMmap {
    pub(crate) fn new(
        fd: BorrowedFd<'_>,
        buckets: u32,
        writable: bool,
    ) -> Result<Self, DataplaneError> {
        let len = buckets as usize * size_of::<FlowBucket>();
        let mapping = SharedMapping::new(fd, FLOWS, len, writable)?;
        Ok(FlowTableMmap { mapping, buckets })
    }

    pub(crate) fn buckets(&self) -> u32 {
        self.buckets
    }

    fn bucket_ptr(&self, index: u32) -> *mut FlowBucket {
        debug_assert!(index < self.buckets);
        // SAFETY: index < buckets, which the mapping covers (checked by the kernel at mmap).
        unsafe { self.mapping.base().cast::<FlowBucket>().add(index as usize) }
    }

    /// A copy of bucket `index` as it is now (ways may change while it is copied: a way whose tag
    /// is free is ignored, and a way being rewritten is seen old or new).
    fn bucket(&self, index: u32) -> FlowBucket {
        // SAFETY: in bounds; a volatile read, since the XDP program writes the memory meanwhile.
        unsafe { std::ptr::read_volatile(self.bucket_ptr(index)) }
    }

    /// The aligned pair of tags `way`'s is half of (the XDP program claims ways by a 64-bit
    /// compare-and-swap of the pair: BPF has no 32-bit atomics without alu32).
    fn tag_pair(&self, index: u32, way: usize) -> &AtomicU64 {
        // SAFETY: in bounds; `tags` is 8-byte aligned (offset 0 of a bucket, buckets at 512-byte
        // strides from a page-aligned base) and the pair index is even.
        unsafe {
            AtomicU64::from_ptr(
                std::ptr::addr_of_mut!((*self.bucket_ptr(index)).tags[way & !1]).cast::<u64>(),
            )
        }
    }

    fn tag(&self, index: u32, way: usize) -> u32 {
        let pair = self.tag_pair(index, way).load(Ordering::Relaxed);
        (pair >> ((way & 1) * 32)) as u32
    }

    /// Frees `way` if it still holds `tag`.
    fn free(&self, index: u32, way: usize, tag: u32) -> bool {
        let shift = (way & 1) * 32;
        let mask = 0xffff_ffffu64 << shift;
        self.tag_pair(index, way)
            .fetch_update(Ordering::SeqCst, Ordering::Relaxed, |pair| {
                ((pair & mask) >> shift == u64::from(tag))
                    .then_some((pair & !mask) | (u64::from(FLOW_TAG_FREE) << shift))
            })
            .is_ok()
    }

    /// Every flow the table holds.
    pub(crate) fn flows(&self) -> Vec<(FlowKey, FlowEntry)> {
        let mut out = Vec::new();
        for i in 0..self.buckets {
            let b = self.bucket(i);
            for way in 0..FLOW_WAYS {
                if b.tags[way] != FLOW_TAG_FREE {
                    out.push((b.slots[way].key, b.slots[way].entry));
                }
            }
        }
        out
    }

    /// How many ways hold a flow.
    pub(crate) fn count(&self) -> usize {
        (0..self.buckets)
            .map(|i| {
                (0..FLOW_WAYS)
                    .filter(|w| self.tag(i, *w) != FLOW_TAG_FREE)
                    .count()
            })
            .sum()
    }

    /// Frees the way of `key` unless a packet touched the flow after `seen` was read; false when
    /// the flow is gone or was touched.
    pub(crate) fn release(&self, key: &FlowKey, seen: &FlowEntry) -> Result<bool, DataplaneError> {
        self.mapping.check_writable()?;
        let place = flow_place(key, self.buckets);
        for index in place.buckets {
            let b = self.bucket(index);
            for way in 0..FLOW_WAYS {
                if b.tags[way] == place.tag
                    && b.slots[way].key == *key
                    && b.slots[way].entry.last_seen_ns == seen.last_seen_ns
                {
                    return Ok(self.free(index, way, place.tag));
                }
            }
        }
        Ok(false)
    }
}
