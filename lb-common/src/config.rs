//! Settings of the XDP program that userspace writes once at start (`LB_CONFIG[0]`), and the
//! coarse clock the daemon keeps in it so the per-packet path reads no clock.

use bytemuck::{Pod, Zeroable};

/// Value of `LB_CONFIG[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct LbConfig {
    /// Outer source address of IPv6 encapsulation (ip6ip6), as in [`crate::addr`].
    pub src_v6: [u32; 4],
    /// Outer source address of IPv4 encapsulation (IPIP), network byte order in memory.
    pub src_v4: u32,
    /// Seed of [`crate::hash::flow_hash`]; every LB instance of a fleet must use the same one.
    pub hash_seed: u32,
    /// [`crate::layout::LAYOUT_VERSION`] of the daemon that created the maps (the program ignores it).
    pub layout_version: u32,
    /// New flows per second per CPU above which a SYN is forwarded by consistent hash without
    /// creating state (the new-flow guard); 0 turns the guard off.
    pub max_new_flows_per_cpu: u32,
    /// Buckets of `LB_FLOWS` (its `max_entries`, which the program cannot read): written by
    /// userspace whenever it writes this config. 0: no flow table (every flow by consistent hash).
    pub flow_buckets: u32,
    pub _pad: u32,
    /// `CLOCK_MONOTONIC_COARSE` in ns as `lb run`'s clock thread last stored it (every
    /// [`crate::limits::PROGRAM_CLOCK_TICK_NS`], through a memory mapping of the map). The flow
    /// touch and the next-hop cache of an established flow's packet use it instead of a clock
    /// helper; 0 (no daemon keeps it: before start, after a clean stop) makes the program read the
    /// clock itself.
    pub now_ns: u64,
}
