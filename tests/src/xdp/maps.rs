//! Services and backends written straight into the maps of a loaded `Dataplane`, in the layout
//! `apply` writes (for fixtures and benches that choose ids and tables themselves).

use std::net::IpAddr;

use lb_common::{
    BACKEND_F_VALID, BackendEntry, IPPROTO_TCP, Scheduler, ServiceEntry, VipKey, addr::to_words,
};
use lb_userspace::dataplane::Dataplane;

/// Port of every fixture service and backend.
pub const PORT: u16 = 80;

/// A valid backend of `service_id` at `addr`:80, weight 1.
pub fn backend_entry(service_id: u32, addr: IpAddr) -> BackendEntry {
    let (addr, family) = to_words(addr);
    BackendEntry {
        addr,
        service_id,
        weight: 1,
        flags: BACKEND_F_VALID,
        port_be: PORT.to_be(),
        family,
        _pad: 0,
    }
}

/// Writes `table` at `offset` and points TCP `vip`:80 at it as service `id`; returns the VIP's key.
pub fn put_service(
    dp: &mut Dataplane,
    id: u32,
    vip: IpAddr,
    scheduler: Scheduler,
    offset: u32,
    table: &[u32],
) -> anyhow::Result<VipKey> {
    dp.write_table(offset, table)?;
    let (addr, family) = to_words(vip);
    let key = VipKey {
        addr,
        port_be: PORT.to_be(),
        proto: IPPROTO_TCP,
        family,
    };
    let entry = ServiceEntry {
        id,
        scheduler: scheduler as u32,
        table_offset: offset,
        table_len: u32::try_from(table.len())?,
        // The consistent hash of packets without state runs over the scheduler's table here (the
        // daemon gives non-Maglev services a Maglev table of their own; the lab tests that).
        hash_offset: offset,
        hash_len: u32::try_from(table.len())?,
        ..Default::default()
    };
    dp.put_service(&key, &entry)?;
    Ok(key)
}
