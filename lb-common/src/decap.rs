//! The backend-side decapsulation program (`lb decap`).

use bytemuck::{Pod, Zeroable};

/// Key of `LB_DECAP_ADDRS`: an outer destination address that belongs to this host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct DecapKey {
    pub addr: [u32; 4],
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Data of an `LB_DECAP_ALLOW` LPM-trie key: an outer source prefix `lb decap` accepts tunnel packets
/// from. The family byte comes first so one trie holds both families: a prefix of `n` address bits has
/// the trie prefix length [`DecapSrcKey::prefix_len`]`(n)` = 8 + n.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct DecapSrcKey {
    pub family: u8,
    /// Network byte order; an IPv4 address in the first 4 bytes, the rest zero.
    pub addr: [u8; 16],
}

impl DecapSrcKey {
    /// The trie prefix length of a prefix of `addr_bits` address bits (the family byte is matched too).
    pub const fn prefix_len(addr_bits: u32) -> u32 {
        8 + addr_bits
    }
}

/// One counter per outcome of the decap program (`LB_DECAP_STATS`, per-CPU).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecapCounter {
    RxPackets = 0,
    DecapIpip = 1,
    DecapIp6ip6 = 2,
    PassNotEncapsulated = 3,
    PassNotLocal = 4,
    PassMalformed = 5,
    DropAdjustFailed = 6,
    /// A tunnel packet to this host whose outer source is in no `--allow-src` prefix.
    DropSrcNotAllowed = 7,
}

impl DecapCounter {
    pub const COUNT: u32 = 8;
    pub const ALL: [DecapCounter; 8] = [
        DecapCounter::RxPackets,
        DecapCounter::DecapIpip,
        DecapCounter::DecapIp6ip6,
        DecapCounter::PassNotEncapsulated,
        DecapCounter::PassNotLocal,
        DecapCounter::PassMalformed,
        DecapCounter::DropAdjustFailed,
        DecapCounter::DropSrcNotAllowed,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            DecapCounter::RxPackets => "rx_packets",
            DecapCounter::DecapIpip => "decap_ipip",
            DecapCounter::DecapIp6ip6 => "decap_ip6ip6",
            DecapCounter::PassNotEncapsulated => "pass_not_encapsulated",
            DecapCounter::PassNotLocal => "pass_not_local",
            DecapCounter::PassMalformed => "pass_malformed",
            DecapCounter::DropAdjustFailed => "drop_adjust_failed",
            DecapCounter::DropSrcNotAllowed => "drop_src_not_allowed",
        }
    }

    /// Whether the program drops the frame it counts this for (every other outcome passes it on).
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            DecapCounter::DropAdjustFailed | DecapCounter::DropSrcNotAllowed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decap_counters_are_dense_and_drops_are_named_so() {
        assert_eq!(DecapCounter::ALL.len() as u32, DecapCounter::COUNT);
        for (i, c) in DecapCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{c:?} is not at its index");
            assert_eq!(c.is_drop(), c.name().starts_with("drop_"), "{c:?}");
        }
    }
}
