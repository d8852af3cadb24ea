//! The per-connection flow table: 5-tuple → backend.
//!
//! `LB_FLOWS` is an array of [`FlowBucket`]s, each of [`FLOW_WAYS`] ways, shared by every CPU: a
//! set-associative table like the connection tables of hardware load balancers, instead of the
//! kernel's LRU hash (whose insert dominated the cost of a new flow). A flow may live in either of
//! two buckets ([`FlowPlace`]); an insert takes a free way of the less loaded one, which keeps
//! buckets from overflowing far beyond [`FLOWS_PER_BUCKET`] flows per bucket (the table's rated
//! capacity, [`flow_buckets`]). When both buckets are full the way touched longest ago is evicted,
//! as an LRU table would when it is full.

use bytemuck::{Pod, Zeroable};

/// Key of `LB_FLOWS`: the client's view of the connection. Addresses as in [`crate::addr`], ports
/// in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// The flow holds one unit of its backend's active-connection counter (set with
/// [`FLOW_F_ESTABLISHED`], cleared when it closes).
pub const FLOW_F_COUNTED: u32 = 1 << 0;
/// The client's first ACK after its SYN arrived: the handshake completed, as far as the LB can see.
/// A flow without it (and without [`FLOW_F_CLOSED`]) is half-open.
pub const FLOW_F_ESTABLISHED: u32 = 1 << 1;
/// The client sent FIN or RST; the counter unit has been returned. The entry stays (same backend)
/// until the closed timeout.
pub const FLOW_F_CLOSED: u32 = 1 << 2;

/// Value of `LB_FLOWS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowEntry {
    pub backend_id: u32,
    /// `FLOW_F_*`.
    pub flags: u32,
    /// `bpf_ktime_get_coarse_ns` of the last packet, refreshed at most every
    /// [`crate::limits::FLOW_TOUCH_INTERVAL_NS`].
    pub last_seen_ns: u64,
}

/// Ways (flows) of one bucket.
pub const FLOW_WAYS: usize = 8;
/// Flows per bucket the table is rated for: with two choices per flow, buckets of 8 ways
/// practically never overflow below ~70 % of their ways (the test below checks 5 of 8).
pub const FLOWS_PER_BUCKET: u32 = 5;
/// Seed of the flow table's hash. Fixed, unlike the scheduling seed (`--hash-seed`), so a table
/// pinned by one `lb run` is found by the next whatever its seed.
pub const FLOW_TABLE_SEED: u32 = 0x6c62_666c;
/// A tag that marks a way as free (a used way's tag has its low bit set).
pub const FLOW_TAG_FREE: u32 = 0;
/// `FlowBucket::ages` are `now_ns >> FLOW_AGE_SHIFT` (about a millisecond): fine enough that
/// under a flood of new flows the ones inserted a run earlier are not taken for the oldest (with
/// one-second ages a full table evicted among flows of the same second at random, 1-2 % of flows
/// inserted milliseconds before). The u32 wraps after 52 days, so ages are compared by their
/// distance from now ([`flow_staleness`]), not by value.
pub const FLOW_AGE_SHIFT: u32 = 20;

/// One way of a bucket: a flow and its state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowSlot {
    pub key: FlowKey,
    pub entry: FlowEntry,
}

/// Value of `LB_FLOWS`: the ways' tags and ages in the first 64 bytes (one cache line read per
/// probe), then the ways.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowBucket {
    /// [`FlowPlace::tag`] of the way's flow, or [`FLOW_TAG_FREE`]. A way is claimed by an atomic
    /// compare-and-swap of its tag, so two CPUs never take the same way.
    pub tags: [u32; FLOW_WAYS],
    /// When the way's flow was inserted or last touched, in [`FLOW_AGE_SHIFT`] units: the victim
    /// of an eviction is the way with the smallest age.
    pub ages: [u32; FLOW_WAYS],
    pub slots: [FlowSlot; FLOW_WAYS],
}

impl Default for FlowBucket {
    fn default() -> Self {
        Zeroable::zeroed()
    }
}

/// Buckets of a table rated for `flows` flows (`max_entries` of `LB_FLOWS`).
pub const fn flow_buckets(flows: u32) -> u32 {
    let b = flows.div_ceil(FLOWS_PER_BUCKET);
    if b == 0 { 1 } else { b }
}

/// The flows a table of `buckets` buckets is rated for.
pub const fn flow_capacity(buckets: u32) -> u32 {
    buckets.saturating_mul(FLOWS_PER_BUCKET)
}

/// Where a flow may live: its two buckets and the tag its way carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowPlace {
    pub buckets: [u32; 2],
    pub tag: u32,
}

/// The place of `key` in a table of `buckets` buckets: the first bucket from the hash's high
/// half, the second from a remix of the whole hash (multiply-shift, so any bucket count works),
/// the tag from the low half with its low bit set (never [`FLOW_TAG_FREE`]). The tag must not
/// come from the bits that chose the bucket: flows of one bucket share those, and a tag made of
/// them would leave only the few other bits to tell them apart (three flows of a 16 Mi table's
/// bucket sharing a tag were seen to lose one).
#[inline(always)]
pub fn flow_place(key: &FlowKey, buckets: u32) -> FlowPlace {
    flow_place_of_hash(flow_table_hash(key), buckets)
}

/// The 64-bit hash [`flow_place`] starts from: multiply-xor over the key's five 64-bit words and
/// MurmurHash3's 64-bit finalizer. Not [`crate::hash::flow_hash`]: the XDP program computes both
/// for a new flow, and LLVM would share their mixing steps and spill them to the stack.
#[inline(always)]
pub fn flow_table_hash(key: &FlowKey) -> u64 {
    let ports = u64::from(key.sport_be) | (u64::from(key.dport_be) << 16);
    let words = [
        u64::from(key.src[0]) | (u64::from(key.src[1]) << 32),
        u64::from(key.src[2]) | (u64::from(key.src[3]) << 32),
        u64::from(key.dst[0]) | (u64::from(key.dst[1]) << 32),
        u64::from(key.dst[2]) | (u64::from(key.dst[3]) << 32),
        ports | (u64::from(key.proto) << 32) | (u64::from(key.family) << 40),
    ];
    let mut h = u64::from(FLOW_TABLE_SEED);
    for w in words {
        h = (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^= h >> 29;
    }
    fmix64(h)
}

/// MurmurHash3's 64-bit finalizer.
#[inline(always)]
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// [`flow_place`] from its hash.
#[inline(always)]
pub fn flow_place_of_hash(h: u64, buckets: u32) -> FlowPlace {
    let reduce = |x: u64| (((x >> 32) * u64::from(buckets)) >> 32) as u32;
    FlowPlace {
        buckets: [reduce(h), reduce(fmix64(h ^ 0x5851_f42d_4c95_7f2d))],
        tag: (h as u32) | 1,
    }
}

/// The age stamp of a way touched at `now_ns`.
#[inline(always)]
pub const fn flow_age(now_ns: u64) -> u32 {
    (now_ns >> FLOW_AGE_SHIFT) as u32
}

/// How long ago (in age units) a way stamped `age` was touched, seen at `now_age`: the wrapping
/// distance, 0 for a stamp from the future (the daemon's clock may be a tick ahead of the
/// kernel's). Right for stamps up to 26 days old; the sweeper frees idle flows long before.
#[inline(always)]
pub const fn flow_staleness(now_age: u32, age: u32) -> u32 {
    let d = now_age.wrapping_sub(age) as i32;
    // Without a branch (the victim scan runs it for 16 ways): the sign spread over all bits
    // clears a negative distance.
    (d & !(d >> 31)) as u32
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    fn key(i: u32) -> FlowKey {
        FlowKey {
            src: [0x0a00_0000 | (i >> 16), 0, 0, 0],
            dst: [0xc612_0001, 0, 0, 0],
            sport_be: (i as u16).to_be(),
            dport_be: 80u16.to_be(),
            proto: 6,
            family: 2,
            _pad: [0; 2],
        }
    }

    #[test]
    fn staleness_is_the_distance_from_now_across_the_wrap() {
        assert_eq!(flow_staleness(1000, 400), 600);
        assert_eq!(
            flow_staleness(5, u32::MAX - 4),
            10,
            "stamped before the wrap"
        );
        assert_eq!(flow_staleness(400, 401), 0, "a stamp a tick ahead of now");
        assert_eq!(flow_age(3 << FLOW_AGE_SHIFT), 3);
    }

    #[test]
    fn bucket_layout_puts_tags_and_ages_in_one_cache_line() {
        assert_eq!(core::mem::size_of::<FlowSlot>(), 56);
        assert_eq!(core::mem::size_of::<FlowBucket>(), 512);
        assert_eq!(core::mem::offset_of!(FlowBucket, slots), 64);
    }

    #[test]
    fn places_are_in_range_tagged_and_spread() {
        for buckets in [1, 7, 200, 209_716] {
            for i in 0..2000 {
                let p = flow_place(&key(i), buckets);
                assert!(p.buckets[0] < buckets && p.buckets[1] < buckets);
                assert_ne!(p.tag, FLOW_TAG_FREE);
            }
        }
        let p = flow_place(&key(1), 1 << 20);
        assert_ne!(p.buckets[0], p.buckets[1]);
    }

    /// What the XDP program does on insert, on plain counts: the rated capacity fits without one
    /// overflow (so no flow is evicted while the table holds no more than it is rated for).
    #[test]
    fn the_rated_capacity_fits_without_overflow() {
        for flows in [1_000u32, 100_000, 1 << 20] {
            let buckets = flow_buckets(flows);
            assert!(flow_capacity(buckets) >= flows);
            let mut load = std::vec![0u8; buckets as usize];
            let mut tags = std::collections::HashSet::new();
            let mut overflow = 0;
            let mut shared_tags = 0;
            for i in 0..flows {
                let p = flow_place(&key(i.wrapping_mul(2_654_435_761)), buckets);
                let [a, b] = p.buckets.map(|b| b as usize);
                let t = if load[a] <= load[b] { a } else { b };
                if (load[t] as usize) < FLOW_WAYS {
                    load[t] += 1;
                    shared_tags += usize::from(!tags.insert((t, p.tag)));
                } else {
                    overflow += 1;
                }
            }
            assert_eq!(overflow, 0, "{flows} flows in {buckets} buckets");
            // Tags independent of the bucket: two flows of one bucket share one about once in
            // 2^31 pairs (the lookup tries two ways with the flow's tag).
            assert_eq!(shared_tags, 0, "flows of one bucket with the same tag");
        }
    }
}
