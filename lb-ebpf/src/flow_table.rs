//! The set-associative flow table (`LB_FLOWS`, see `lb_common::flow`): find a flow's way, claim a
//! way for a new one. A probe is an inlined array lookup and eight tag compares, no helper call;
//! keys are compared only where a tag matches.
//!
//! Concurrency: ways are claimed by an atomic compare-and-swap of their tag, so two CPUs never write
//! one way. A claimed way's entry is written before its key, so a reader that matches the new key
//! reads the new entry (x86's stores are ordered; the writes are volatile so LLVM keeps them in
//! order). A reader of the flow being replaced misses from the moment of the claim and follows the
//! consistent hash, as it would once evicted. Two CPUs inserting the same flow at the same instant
//! (one SYN on two CPUs) may both claim a way; lookups then find the first in probe order.
//!
//! Verification: the scans over a bucket's ways ([`scan_match`], [`scan_victim`]) belong in global
//! BPF functions with scalar arguments and results, which each object that has a table defines
//! ([`Buckets`]): the verifier checks each once on its own, not once per path that reaches it,
//! and their temporaries stay out of the caller's stack frame (a call chain has 512 bytes).
//!
//! Library code: the production object (`LB_FLOWS`) and the bench's flow-table programs use it on
//! tables of their own.

use core::ptr::NonNull;

use lb_common::{
    FLOW_F_COUNTED, FlowBucket, FlowEntry, FlowKey, FlowPlace,
    flow::{FLOW_TAG_FREE, FLOW_WAYS, flow_age, flow_place, flow_staleness},
};

use aya_ebpf::maps::Array;

use crate::parse::opaque;

/// A flow table: its buckets and the object's global scan functions.
pub trait Buckets {
    /// The table's array map.
    fn map() -> &'static Array<FlowBucket>;
    /// A global function that returns [`scan_match`] of bucket `index`.
    fn matching(index: u32, tag: u32, from: u32) -> u64;
    /// A global function that returns [`scan_victim`] of buckets `i0` and `i1` at `now_age`.
    fn victim(i0: u32, i1: u32, now_age: u32) -> u64;
}

/// A way of the table.
#[derive(Clone, Copy)]
pub struct Way {
    bucket: NonNull<FlowBucket>,
    way: usize,
}

impl Way {
    #[inline(always)]
    pub fn entry(&self) -> *mut FlowEntry {
        // SAFETY: `bucket` is a map value pointer and `way` < FLOW_WAYS (both from `probe`).
        unsafe { core::ptr::addr_of_mut!((*self.bucket.as_ptr()).slots[self.way].entry) }
    }

    /// Marks the way as used at `now_ns` (its eviction age).
    #[inline(always)]
    pub fn touch(&self, now_ns: u64) {
        // SAFETY: as in `entry`; a plain u32 store of the way's own age.
        unsafe { (*self.bucket.as_ptr()).ages[self.way] = flow_age(now_ns) };
    }
}

/// `Insert::Evicted` of a flow that held no connection unit.
pub const NO_UNIT: u32 = u32::MAX;

/// What an insert found or did.
pub enum Insert {
    /// A free way now holds the flow.
    Inserted,
    /// The flow touched longest ago in both buckets gave up its way: the backend whose
    /// connection unit it held, or `NO_UNIT`.
    Evicted(u32),
    /// The flow was there already (a retransmitted SYN).
    Exists(Way),
    /// Another CPU claimed the chosen way first: no state written.
    Failed,
}

/// Where `key` may live in a table of `buckets` buckets.
#[inline(always)]
pub fn place(key: &FlowKey, buckets: u32) -> FlowPlace {
    flow_place(key, buckets)
}

/// Starts loading both buckets' first cache line (tags and ages), so that their cache misses
/// overlap each other and whatever the caller does before it probes the table (the clock, the
/// scheduler's own lookups) instead of stalling one after the other.
#[inline(always)]
pub fn warm<T: Buckets>(place: &FlowPlace) {
    for index in place.buckets {
        if let Some(b) = bucket::<T>(index) {
            // SAFETY: map value pointer; the value is discarded: the load itself is the point.
            let _ = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*b).tags[0])) };
        }
    }
}

#[inline(always)]
fn bucket<T: Buckets>(index: u32) -> Option<*mut FlowBucket> {
    T::map().get_ptr_mut(index)
}

/// A way index the verifier sees below `FLOW_WAYS`: the mask is kept (`opaque`) even where LLVM
/// knows the bound from the global function's body, which the verifier does not look into.
#[inline(always)]
fn bounded(way: u64) -> usize {
    opaque(way as usize) & (FLOW_WAYS - 1)
}

/// Whether the way's key is `key`, word by word (LLVM would otherwise call a `bcmp` BPF has not).
#[inline(always)]
fn same_key(slot_key: *const FlowKey, key: &FlowKey) -> bool {
    let a = slot_key.cast::<u32>();
    let b = (key as *const FlowKey).cast::<u32>();
    let mut diff = 0;
    for i in 0..10 {
        // SAFETY: FlowKey is ten u32 words (repr(C), 4-byte aligned, no padding holes).
        diff |= unsafe { *a.add(i) ^ *b.add(i) };
    }
    diff == 0
}

/// [`scan_match`]'s result when no way from `from` on carries the tag.
const NO_MATCH: u64 = FLOW_WAYS as u64;

/// The first way, from `from` on, of bucket `b` whose tag is `tag`; `NO_MATCH` if none (or no
/// such bucket). Keys are compared by the caller.
#[inline(always)]
pub fn scan_match(b: Option<*mut FlowBucket>, tag: u32, from: u32) -> u64 {
    let Some(b) = b else {
        return NO_MATCH;
    };
    let mut found = NO_MATCH;
    for w in (0..FLOW_WAYS).rev() {
        // SAFETY: map value pointer; `w` < FLOW_WAYS.
        if w as u32 >= from && unsafe { (*b).tags[w] } == tag {
            found = w as u64;
        }
    }
    found
}

/// The way of `key` in bucket `index`: the first way with its tag whose key is `key` (a second
/// way is tried when two flows of the bucket share a 32-bit tag).
#[inline(always)]
fn probe<T: Buckets>(index: u32, tag: u32, key: &FlowKey) -> Option<Way> {
    let mut way = T::matching(index, tag, 0);
    if way == NO_MATCH {
        return None;
    }
    let b = bucket::<T>(index)?;
    // SAFETY: map value pointer; the way is masked below FLOW_WAYS.
    if same_key(
        unsafe { core::ptr::addr_of!((*b).slots[bounded(way)].key) },
        key,
    ) {
        return NonNull::new(b).map(|bucket| Way {
            bucket,
            way: bounded(way),
        });
    }
    way = T::matching(index, tag, way as u32 + 1);
    if way == NO_MATCH {
        return None;
    }
    // SAFETY: as above.
    if same_key(
        unsafe { core::ptr::addr_of!((*b).slots[bounded(way)].key) },
        key,
    ) {
        return NonNull::new(b).map(|bucket| Way {
            bucket,
            way: bounded(way),
        });
    }
    None
}

/// The way holding `key`, if any.
#[inline(always)]
pub fn find<T: Buckets>(place: &FlowPlace, key: &FlowKey) -> Option<Way> {
    probe::<T>(place.buckets[0], place.tag, key)
        .or_else(|| probe::<T>(place.buckets[1], place.tag, key))
}

/// [`scan_victim`]: the way is in the second bucket.
const SECOND: u64 = 1 << 8;
/// [`scan_victim`]: the way is free (else its flow is evicted).
const FREE: u64 = 1 << 9;

/// A bucket's free ways and first free way, and its way touched longest ago (the first of
/// equals) and how long ago, at `now_age`.
#[inline(always)]
fn scan(b: *mut FlowBucket, now_age: u32) -> (u64, u64, u64, u64) {
    let mut free = 0u64;
    let mut first_free = 0u64;
    let mut oldest = 0u64;
    let mut staleness = 0u64;
    for w in (0..FLOW_WAYS).rev() {
        // SAFETY: map value pointer; `w` < FLOW_WAYS.
        let (tag, age) = unsafe { ((*b).tags[w], (*b).ages[w]) };
        let stale = u64::from(flow_staleness(now_age, age));
        if tag == FLOW_TAG_FREE {
            free += 1;
            first_free = w as u64;
        } else if stale >= staleness {
            staleness = stale;
            oldest = w as u64;
        }
    }
    (free, first_free, oldest, staleness)
}

/// The way a new flow takes in buckets `b0` / `b1`: a free way of the one with more free ways,
/// else the way touched longest ago in either. Returns `FREE?` | `SECOND?` | way.
#[inline(always)]
pub fn scan_victim(b0: Option<*mut FlowBucket>, b1: Option<*mut FlowBucket>, now_age: u32) -> u64 {
    let (Some(b0), Some(b1)) = (b0, b1) else {
        return 0;
    };
    let (free0, first0, old0, stale0) = scan(b0, now_age);
    let (free1, first1, old1, stale1) = scan(b1, now_age);
    if free0 > 0 && free0 >= free1 {
        FREE | first0
    } else if free1 > 0 {
        FREE | SECOND | first1
    } else if stale1 > stale0 {
        SECOND | old1
    } else {
        old0
    }
}

/// Atomically replaces the tag `old` of `way` by `new`; false if another CPU changed it first.
/// The compare-and-swap is on the aligned pair of tags the way's is half of (the target has no
/// 32-bit atomics without alu32), so a change of the neighbour's tag at the same instant fails it
/// too (the flow is then forwarded without state, as any failed insert).
#[inline(always)]
fn claim(b: *mut FlowBucket, way: usize, old: u32, new: u32) -> bool {
    let pair = way & (FLOW_WAYS - 2);
    // SAFETY: map value pointer; `tags` is 8-byte aligned (offset 0 of an 8-byte aligned value) and
    // `pair` is even and < FLOW_WAYS.
    let word = unsafe { core::ptr::addr_of_mut!((*b).tags[pair]).cast::<u64>() };
    // SAFETY: as above.
    let current = unsafe { core::ptr::read_volatile(word) };
    // Little-endian: the even way's tag is the low half.
    let shift = if way & 1 == 0 { 0 } else { 32 };
    let mask = 0xffff_ffffu64 << shift;
    let expected = (current & !mask) | (u64::from(old) << shift);
    let desired = (current & !mask) | (u64::from(new) << shift);
    let mut seen = expected;
    // SAFETY: `word` is an 8-byte aligned u64 of a map value; BPF_ATOMIC | BPF_CMPXCHG compares
    // it with r0, stores `desired` if equal, and returns what it held in r0.
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({p} + 0, r0, {n})",
            p = in(reg) word,
            n = in(reg) desired,
            inout("r0") seen,
            options(nostack),
        );
    }
    seen == expected
}

/// Inserts `key` → a new entry (`backend_id`, `flags`, seen at `now_ns`) unless the flow is there
/// already: into a free way of the less loaded of its buckets, else in place of the way touched
/// longest ago in either.
#[inline(always)]
pub fn insert<T: Buckets>(
    place: &FlowPlace,
    key: &FlowKey,
    backend_id: u32,
    flags: u32,
    now_ns: u64,
) -> Insert {
    if let Some(w) = find::<T>(place, key) {
        return Insert::Exists(w);
    }
    let victim = T::victim(place.buckets[0], place.buckets[1], flow_age(now_ns));
    let index = if victim & SECOND == 0 {
        place.buckets[0]
    } else {
        place.buckets[1]
    };
    let Some(b) = bucket::<T>(index) else {
        return Insert::Failed;
    };
    let way = bounded(victim);
    let evicting = victim & FREE == 0;
    // SAFETY: map value pointer; `way` < FLOW_WAYS.
    let (old_tag, unit) = unsafe {
        if evicting {
            let evicted = &(*b).slots[way].entry;
            let unit = if evicted.flags & FLOW_F_COUNTED != 0 {
                evicted.backend_id
            } else {
                NO_UNIT
            };
            ((*b).tags[way], unit)
        } else {
            (FLOW_TAG_FREE, NO_UNIT)
        }
    };
    if !claim(b, way, old_tag, place.tag) {
        return Insert::Failed;
    }
    // SAFETY: map value pointer; `way` < FLOW_WAYS; this CPU owns the way since the claim.
    unsafe {
        (*b).ages[way] = flow_age(now_ns);
        let slot = core::ptr::addr_of_mut!((*b).slots[way]);
        core::ptr::write_volatile(
            core::ptr::addr_of_mut!((*slot).entry.backend_id),
            backend_id,
        );
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*slot).entry.flags), flags);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*slot).entry.last_seen_ns), now_ns);
        // Word by word from the caller's key: no 40-byte copy on the stack.
        let from = (key as *const FlowKey).cast::<u32>();
        let to = core::ptr::addr_of_mut!((*slot).key).cast::<u32>();
        for i in 0..10 {
            core::ptr::write_volatile(to.add(i), *from.add(i));
        }
    }
    if evicting {
        Insert::Evicted(unit)
    } else {
        Insert::Inserted
    }
}
