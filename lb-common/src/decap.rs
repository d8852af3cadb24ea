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
}

impl DecapCounter {
    pub const COUNT: u32 = 7;
    pub const ALL: [DecapCounter; 7] = [
        DecapCounter::RxPackets,
        DecapCounter::DecapIpip,
        DecapCounter::DecapIp6ip6,
        DecapCounter::PassNotEncapsulated,
        DecapCounter::PassNotLocal,
        DecapCounter::PassMalformed,
        DecapCounter::DropAdjustFailed,
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
        }
    }
}
