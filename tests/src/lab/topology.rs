//! The lab's address plan (198.18.0.0/15 and 2001:db8::/32 only).
//!
//! ```text
//! client 198.18.1.2 ── router ─ br-lb 198.18.3.1 ── lbN 198.18.3.(2+N)
//!                            ├─ br-be 198.18.2.1 ── bI  198.18.2.(11+I), VIPs 198.18.100.1-4 on lo
//!                            └─ br-zk 198.18.4.1 ── zkM 198.18.4.(11+M) (a ZooKeeper ensemble's
//!                                                   members, when a test starts one: `zk_ensemble`)
//! ```

use std::net::{Ipv4Addr, Ipv6Addr};

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
pub const ROUTER_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const ROUTER_CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
pub const ROUTER_BACKENDS_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
pub const ROUTER_BACKENDS_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
pub const ROUTER_LBS_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 1);
pub const ROUTER_LBS_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 1);
/// The load balancers' subnet: the outer sources of their tunnel packets (`lb decap --allow-src`).
pub const LB_PREFIX_V4: &str = "198.18.3.0/24";
pub const LB_PREFIX_V6: &str = "2001:db8:3::/64";
pub const ROUTER_ZK_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 4, 1);
/// The ZooKeeper ensemble's subnet (its members' client, peer and election ports).
pub const ZK_PREFIX_V4: &str = "198.18.4.0/24";
/// Routed by the router to the load balancers.
pub const VIP_PREFIX_V4: &str = "198.18.100.0/24";
pub const VIP_PREFIX_V6: &str = "2001:db8:100::/64";
/// VIPs `1..=VIPS_PER_BACKEND` are configured on every backend's `lo`.
pub const VIPS_PER_BACKEND: u8 = 4;

/// MTU of the links that carry encapsulated packets: the common 1500, like the client's, so a
/// full-sized client packet does not fit a tunnel and path MTU discovery (the LB's ICMP) is tested.
pub const TUNNEL_MTU: &str = "1500";

/// Most backends and load balancers the address plan has room for.
pub const MAX_BACKENDS: usize = 200;
pub const MAX_LBS: usize = 8;

pub fn lb_v4(lb: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 3, host_octet(2, lb))
}

pub fn lb_v6(lb: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, u16::from(host_octet(2, lb)))
}

pub fn backend_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 2, host_octet(11, i))
}

/// The last group reads like the IPv4 host number for the first backends: b0 is `2001:db8:2::11`.
pub fn backend_v6(i: usize) -> Ipv6Addr {
    let host = u16::try_from(i).map_or(u16::MAX, |i| 0x11_u16.saturating_add(i));
    Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, host)
}

/// ZooKeeper ensemble member `m` (server id `m + 1`).
pub fn zk_member_v4(m: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 4, host_octet(11, m))
}

pub fn vip_v4(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 100, n)
}

pub fn vip_v6(n: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, u16::from(n))
}

/// `base + index`, saturating at 255 (indexes are bounded by `MAX_*` when a lab starts).
fn host_octet(base: u8, index: usize) -> u8 {
    u8::try_from(index)
        .ok()
        .and_then(|i| base.checked_add(i))
        .unwrap_or(u8::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_matches_the_documented_addresses() {
        assert_eq!(backend_v4(0).to_string(), "198.18.2.11");
        assert_eq!(backend_v6(0).to_string(), "2001:db8:2::11");
        assert_eq!(backend_v6(2).to_string(), "2001:db8:2::13");
        assert_eq!(lb_v4(1).to_string(), "198.18.3.3");
        assert_eq!(vip_v6(1).to_string(), "2001:db8:100::1");
        assert_eq!(host_octet(11, MAX_BACKENDS - 1), 210);
        assert_eq!(zk_member_v4(2).to_string(), "198.18.4.13");
    }
}
