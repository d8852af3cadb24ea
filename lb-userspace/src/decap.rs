//! `lb decap`: the backend side. Strips IPIP / ip6ip6 from packets addressed to one of this host's
//! addresses and hands the inner packet (addressed to the VIP on `lo`) to the stack, so backends work on
//! kernels without the ipip / ip6_tunnel modules.

pub mod check;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use lb_common::DecapKey;
use lb_common::limits::Capacity;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use crate::dataplane::{AttachMode, Dataplane, ExistingPins, LoadOptions};
use crate::netif;
use crate::privilege;

/// The decap program shares the object with the balancer; its maps are created at the smallest size.
pub const DECAP_CAPACITY: Capacity = Capacity {
    max_services: 1,
    max_backends: 1,
    table_size: lb_common::limits::MAX_BACKENDS_PER_SERVICE,
    flow_table_size: 1,
    persist_table_size: 1,
};

/// Local addresses are re-read this often (addresses added later are accepted too).
const ADDR_REFRESH: Duration = Duration::from_secs(5);

pub fn run(iface: &str, mode: AttachMode, pin_dir: &Path) -> anyhow::Result<()> {
    privilege::require("lb decap", privilege::LOAD_REQUIRED)?;
    netif::ifindex(iface)?;
    // Signals first: one that arrives while loading waits for the loop below instead of killing the
    // process with its maps pinned.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut int, mut term) = {
        let _guard = runtime.enter();
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        )
    };
    let mut dp = Dataplane::load(&LoadOptions {
        capacity: DECAP_CAPACITY,
        pin_dir: Some(pin_dir.to_path_buf()),
        kernel_log: false,
        // Its program is held by this process alone: pins found at start are stale.
        existing_pins: ExistingPins::Remove,
    })?;
    // From here on the maps are pinned: every way out, error or not, unpins them.
    let result: anyhow::Result<()> = runtime.block_on(async {
        let mut known = BTreeSet::new();
        add_local_addrs(&mut dp, &mut known)?;
        let attached = dp.attach_decap(iface, mode)?;
        info!(iface, mode = ?attached, addrs = known.len(), "decapsulating IPIP / ip6ip6 to local addresses");
        let mut tick = tokio::time::interval(ADDR_REFRESH);
        loop {
            tokio::select! {
                _ = tick.tick() => add_local_addrs(&mut dp, &mut known)?,
                _ = int.recv() => return Ok(()),
                _ = term.recv() => return Ok(()),
            }
        }
    });
    if let Ok(counters) = dp.maps().decap_counters() {
        let summary: Vec<String> = counters
            .iter()
            .map(|(c, n)| format!("{}={n}", c.name()))
            .collect();
        info!(counters = %summary.join(" "), "detaching");
    }
    dp.remove_pins();
    result
}

fn add_local_addrs(dp: &mut Dataplane, known: &mut BTreeSet<IpAddr>) -> anyhow::Result<()> {
    for (_, ip) in netif::addresses()? {
        if ip.is_loopback() || known.contains(&ip) {
            continue;
        }
        if known.len() >= lb_common::limits::MAX_DECAP_ADDRS as usize {
            break;
        }
        let (addr, family) = lb_common::addr::to_words(ip);
        dp.add_decap_addr(&DecapKey {
            addr,
            family,
            _pad: [0; 3],
        })
        .with_context(|| format!("accepting tunnel packets to {ip}"))?;
        known.insert(ip);
    }
    Ok(())
}
