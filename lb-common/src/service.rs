//! Services (VIPs) and how they pick backends.

use bytemuck::{Pod, Zeroable};

/// Key of the service map: one VIP. `addr` as in [`crate::addr`], `port_be` in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct VipKey {
    pub addr: [u32; 4],
    pub port_be: u16,
    pub proto: u8,
    pub family: u8,
}

/// Key of `LB_VIP_ADDRS`: an address at least one service (VIP) uses, whatever the port. Packets
/// to it that are not balanced are answered (echo) or dropped, never passed (see `lb-ebpf`'s `icmp`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct VipAddrKey {
    pub addr: [u32; 4],
    pub family: u8,
    pub _pad: [u8; 3],
}

impl VipAddrKey {
    /// The address part of a service key.
    pub const fn of(vip: &VipKey) -> VipAddrKey {
        VipAddrKey {
            addr: vip.addr,
            family: vip.family,
            _pad: [0; 3],
        }
    }
}

/// Bits of `LB_VIP_FILTER`: a bitmap of VIP-address hashes the XDP program reads before any hash
/// lookup, so TCP to an address that is no VIP passes after one array read (with 1,024 VIP
/// addresses, at most 1.6 % of other addresses share a bit and pay the lookups as before).
pub const VIP_FILTER_BITS: u32 = 1 << 16;
/// `max_entries` of `LB_VIP_FILTER` (64 bits per element).
pub const VIP_FILTER_WORDS: u32 = VIP_FILTER_BITS / 64;

/// The filter bit of an address (as in [`VipAddrKey`]): multiply-xor of its words, top 16 bits.
#[inline(always)]
pub fn vip_filter_bit(addr: &[u32; 4], family: u8) -> u32 {
    let lo = u64::from(addr[0]) | (u64::from(addr[1]) << 32);
    let hi = u64::from(addr[2]) | (u64::from(addr[3]) << 32);
    let h = lo.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (hi ^ u64::from(family)).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    let h = h ^ (h >> 29);
    (h.wrapping_mul(0xbf58_476d_1ce4_e5b9) >> 48) as u32
}

/// Slots of `LB_VIP_TABLE` (a power of two): a direct-mapped copy of `LB_SERVICES` the XDP
/// program reads without a helper call or a hash-map lookup. A VIP whose slot another VIP holds is
/// found in `LB_SERVICES` as before.
pub const VIP_TABLE_SLOTS: u32 = 4096;

/// Value of `LB_VIP_TABLE`: a service and its key, guarded by a sequence number (a seqlock).
///
/// Userspace changes a slot in three whole-value writes: the same content with `seq` made odd,
/// the new content with that odd `seq`, the new content with `seq` made even again. Each write
/// changes either `seq` alone or the content alone, so a reader that sees the same even `seq`
/// before and after it copies the content has a consistent copy of one version; any other reader
/// uses `LB_SERVICES`. An empty slot has `key.family == 0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct VipSlot {
    pub seq: u32,
    pub key: VipKey,
    pub entry: ServiceEntry,
}

/// The slot of a VIP in `LB_VIP_TABLE`: multiply-xor of the key's words, top bits.
#[inline(always)]
pub fn vip_slot(key: &VipKey) -> u32 {
    let lo = u64::from(key.addr[0]) | (u64::from(key.addr[1]) << 32);
    let hi = u64::from(key.addr[2]) | (u64::from(key.addr[3]) << 32);
    let tail =
        u64::from(key.port_be) | (u64::from(key.proto) << 16) | (u64::from(key.family) << 24);
    let h =
        (lo ^ tail).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ hi.wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    ((h ^ (h >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9) >> 52) as u32 & (VIP_TABLE_SLOTS - 1)
}

/// How a service picks the backend of a new flow.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheduler {
    /// `rr`: round robin over the backend list.
    RoundRobin = 0,
    /// `wrr`: smooth weighted round robin (a precomputed weighted sequence walked by a cursor).
    WeightedRoundRobin = 1,
    /// `random`: uniform over the backend list.
    Random = 2,
    /// `wrandom`: a random position in the weighted sequence.
    WeightedRandom = 3,
    /// `least-conn`: weighted least active connections over the backend list.
    LeastConn = 4,
    /// `maglev`: weighted Maglev consistent hashing of the flow's 5-tuple.
    Maglev = 5,
}

impl Scheduler {
    pub const ALL: [Scheduler; 6] = [
        Scheduler::RoundRobin,
        Scheduler::WeightedRoundRobin,
        Scheduler::Random,
        Scheduler::WeightedRandom,
        Scheduler::LeastConn,
        Scheduler::Maglev,
    ];

    pub const fn from_u32(v: u32) -> Option<Scheduler> {
        match v {
            0 => Some(Scheduler::RoundRobin),
            1 => Some(Scheduler::WeightedRoundRobin),
            2 => Some(Scheduler::Random),
            3 => Some(Scheduler::WeightedRandom),
            4 => Some(Scheduler::LeastConn),
            5 => Some(Scheduler::Maglev),
            _ => None,
        }
    }

    /// The name used in configuration, ZooKeeper and the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            Scheduler::RoundRobin => "rr",
            Scheduler::WeightedRoundRobin => "wrr",
            Scheduler::Random => "random",
            Scheduler::WeightedRandom => "wrandom",
            Scheduler::LeastConn => "least-conn",
            Scheduler::Maglev => "maglev",
        }
    }

    pub fn from_name(name: &str) -> Option<Scheduler> {
        Scheduler::ALL.into_iter().find(|s| s.name() == name)
    }

    /// What the service's table holds: the plain backend list (rr, random, least-conn), a weighted
    /// sequence (wrr, wrandom) or a Maglev lookup table.
    pub const fn table_kind(self) -> TableKind {
        match self {
            Scheduler::RoundRobin | Scheduler::Random | Scheduler::LeastConn => {
                TableKind::BackendList
            }
            Scheduler::WeightedRoundRobin | Scheduler::WeightedRandom => {
                TableKind::WeightedSequence
            }
            Scheduler::Maglev => TableKind::Maglev,
        }
    }
}

/// The three shapes of table a service can have in the schedule pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    BackendList,
    WeightedSequence,
    Maglev,
}

/// Value of the service map.
///
/// The table lives at `LB_SCHEDULE[table_offset .. table_offset + table_len]` and holds backend ids;
/// the hash table at `[hash_offset .. hash_offset + hash_len]` of the same slot.
/// Userspace writes a new table into a free slot and then replaces this whole entry (one atomic map
/// update), so the XDP program sees either the old table or the new one, never a mix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ServiceEntry {
    /// Index of the service in the per-service arrays (stats, cursors, metadata).
    pub id: u32,
    /// A [`Scheduler`] as `u32`.
    pub scheduler: u32,
    pub table_offset: u32,
    /// Entries in the table; 0 means no usable backend (a counted drop).
    pub table_len: u32,
    /// Session persistence (IPVS `-p`): 0 disables it.
    pub persist_timeout_s: u32,
    /// Leading bits of the client address that form the persistence key.
    pub persist_prefix_len: u32,
    /// Bumped by userspace on every change; shown by `lb status`.
    pub generation: u32,
    pub flags: u32,
    /// The service's consistent-hash (Maglev) table, which every service has whatever its
    /// scheduler: packets of a flow the table does not hold (a non-SYN miss, a flow the new-flow
    /// guard did not record) go where it says, the same on every LB of a fleet. For a Maglev service
    /// it is the scheduling table itself.
    pub hash_offset: u32,
    /// Entries of the hash table; 0 only when the service has no usable backend.
    pub hash_len: u32,
}

impl ServiceEntry {
    /// Entries of its slot the service uses from `table_offset`: its table and the hash table
    /// after it (a hash table outside the slot only counts as far as it reaches into it).
    pub const fn slot_span(&self) -> u32 {
        let hash_end = self
            .hash_offset
            .saturating_add(self.hash_len)
            .saturating_sub(self.table_offset);
        if hash_end > self.table_len {
            hash_end
        } else {
            self.table_len
        }
    }
}

/// Length of a service name in [`ServiceMeta`].
pub const SERVICE_NAME_LEN: usize = 64;

/// Per-service metadata read only by userspace (`lb status`), indexed by service id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct ServiceMeta {
    /// UTF-8, zero padded.
    pub name: [u8; SERVICE_NAME_LEN],
    pub vip: VipKey,
    /// 1 while the id is in use.
    pub in_use: u32,
}

impl Default for ServiceMeta {
    fn default() -> Self {
        Zeroable::zeroed()
    }
}

#[cfg(test)]
mod slot_tests {
    use super::ServiceEntry;

    #[test]
    fn the_slot_span_covers_the_table_and_the_hash_table_after_it() {
        let e = |table_len, hash_offset, hash_len| ServiceEntry {
            table_offset: 100,
            table_len,
            hash_offset,
            hash_len,
            ..Default::default()
        };
        assert_eq!(e(3, 103, 97).slot_span(), 100, "list, then its hash table");
        assert_eq!(e(101, 100, 101).slot_span(), 101, "maglev: one table");
        assert_eq!(e(0, 100, 0).slot_span(), 0, "no backend");
        assert_eq!(
            e(3, 0, 0).slot_span(),
            3,
            "no hash table written: the table alone"
        );
    }
}

#[cfg(test)]
mod vip_slot_tests {
    extern crate std;

    use super::*;

    #[test]
    fn a_slot_is_64_bytes_without_padding_and_slots_spread() {
        assert_eq!(core::mem::size_of::<VipSlot>(), 64);
        let mut used = std::collections::HashSet::new();
        for i in 0..1024u32 {
            let key = VipKey {
                addr: [(0xc612_0000 | i).to_be(), 0, 0, 0],
                port_be: 80u16.to_be(),
                proto: 6,
                family: 2,
            };
            let slot = vip_slot(&key);
            assert!(slot < VIP_TABLE_SLOTS);
            used.insert(slot);
        }
        // 1,024 VIPs in 4,096 slots: about 12 % collide with a uniform hash.
        assert!(used.len() > 850, "{} distinct slots", used.len());
    }
}
