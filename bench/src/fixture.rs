//! What every XDP bench row is measured on: the frames, the backends and the service (for lb)
//! or VIP (for Katran) at `VIP4`:80 with a Maglev table of 65,537 positions over the backends.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::Scheduler;
use lb_tests::xdp::{
    frames::{ETH_HLEN, Tcp},
    maps,
};
use lb_userspace::dataplane::Dataplane;

/// Positions of a Maglev table (lb's `table_size`, Katran's `RING_SIZE`).
pub const TABLE_SIZE: u32 = 65_537;

/// A frame and where its flow fields are (rewritten per repetition for new flows).
pub struct Frame {
    pub bytes: Vec<u8>,
    /// Offset of the TCP source port.
    pub sport_off: u32,
    /// Offset of the two low bytes of the source address.
    pub src_low_off: u32,
}

impl Frame {
    /// The frame as the bench harness replays it (`vary_flow`: a new flow every repetition).
    pub fn bench_frame(&self, vary_flow: bool) -> crate::harness::BenchFrame<'_> {
        crate::harness::BenchFrame {
            frame: &self.bytes,
            sport_off: self.sport_off,
            src_low_off: self.src_low_off,
            vary_flow,
        }
    }
}

pub fn tcp_v4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, flags: u8) -> Frame {
    Frame {
        bytes: Tcp::v4(src, dst, sport, maps::PORT, flags).frame(),
        sport_off: ETH_HLEN as u32 + 20,
        src_low_off: ETH_HLEN as u32 + 12 + 2,
    }
}

pub fn tcp_v6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, flags: u8) -> Frame {
    Frame {
        bytes: Tcp::v6(src, dst, sport, maps::PORT, flags).frame(),
        sport_off: ETH_HLEN as u32 + 40,
        src_low_off: ETH_HLEN as u32 + 8 + 14,
    }
}

/// Backend `id` (1..): IPv4 in 198.18.8.0/21, IPv6 in 2001:db8:2::/64.
pub fn backend_addr(id: u32, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0x2,
            0,
            0,
            0,
            0,
            0x1000 + id as u16,
        ))
    } else {
        let [a, b] = (id as u16).to_be_bytes();
        IpAddr::V4(Ipv4Addr::new(198, 18, 8 + a, b))
    }
}

/// The Maglev table over `ids`: any spread of positions over backends costs the same to look
/// up as a real Maglev table.
pub fn maglev_table(ids: &[u32]) -> Vec<u32> {
    (0..TABLE_SIZE as usize)
        .map(|i| ids[(i * 7 + i / 5) % ids.len()])
        .collect()
}

/// Backends 1..=n (IPv4 or IPv6), all in service 0 of `dp`.
pub fn put_backends(dp: &mut Dataplane, n: u32, v6: bool) -> anyhow::Result<Vec<u32>> {
    (1..=n)
        .map(|id| {
            dp.put_backend(id, &maps::backend_entry(0, backend_addr(id, v6)))?;
            Ok(id)
        })
        .collect()
}

/// Backends 1..=n (of `vip`'s family) and service 0 at `vip` over them.
pub fn serve(dp: &mut Dataplane, n: u32, vip: IpAddr, scheduler: Scheduler) -> anyhow::Result<()> {
    let ids = put_backends(dp, n, vip.is_ipv6())?;
    put_service(dp, vip, scheduler, &ids)
}

/// Service 0 at `vip`:80 with a plain list (or, for Maglev, a full-size table) of `ids`.
pub fn put_service(
    dp: &mut Dataplane,
    vip: IpAddr,
    scheduler: Scheduler,
    ids: &[u32],
) -> anyhow::Result<()> {
    let table: Vec<u32> = match scheduler {
        Scheduler::Maglev => maglev_table(ids),
        _ => ids.to_vec(),
    };
    maps::put_service(dp, 0, vip, scheduler, 0, &table)?;
    Ok(())
}
