//! The `floor` path: the bench object's `lb_floor` (parse, IPIP toward one backend, `XDP_TX`) on
//! the LB's `eth0`, attached with `ip link … xdpdrv pinned` inside the LB namespace. `lb_floor`
//! writes fixed MACs, so the LB's `eth0` and the router's `br-lb` get those addresses
//! ([`set_floor_macs`]) before anything runs. [`FloorProgram`] detaches and unpins when dropped.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};
use aya::{Ebpf, programs::Xdp};
use lb_common::bench::PROG_FLOOR;
use lb_tests::lab::cmd;

use crate::harness::BENCH_OBJECT;

/// Source and destination MACs `lb_floor` writes (`FLOOR_HOP` in `bench/ebpf/src/floor.rs`).
pub const FLOOR_LB_MAC: &str = "02:00:00:00:00:01";
pub const FLOOR_ROUTER_MAC: &str = "02:00:00:00:00:02";

/// Gives the LB's `eth0` and the router's `br-lb` the MACs `lb_floor` writes.
pub fn set_floor_macs(lb_netns: &str, router_netns: &str) -> anyhow::Result<()> {
    cmd::ip(
        lb_netns,
        &["link", "set", "dev", "eth0", "address", FLOOR_LB_MAC],
    )?;
    cmd::ip(
        router_netns,
        &["link", "set", "dev", "br-lb", "address", FLOOR_ROUTER_MAC],
    )?;
    Ok(())
}

/// `lb_floor` attached to `eth0` of one namespace.
pub struct FloorProgram {
    netns: String,
    pin: PathBuf,
}

impl FloorProgram {
    /// Loads `lb_floor`, pins it at `pin` (on bpffs) and attaches it to `eth0` of `netns`.
    pub fn attach(netns: &str, pin: &Path) -> anyhow::Result<FloorProgram> {
        let mut object = Ebpf::load(BENCH_OBJECT).context("loading the bench object")?;
        let program: &mut Xdp = object
            .program_mut(PROG_FLOOR)
            .and_then(|p| p.try_into().ok())
            .with_context(|| format!("the bench object has no XDP program {PROG_FLOOR}"))?;
        program
            .load()
            .with_context(|| format!("loading {PROG_FLOOR}"))?;
        program
            .pin(pin)
            .with_context(|| format!("pinning {PROG_FLOOR} at {}", pin.display()))?;
        let floor = FloorProgram {
            netns: netns.to_owned(),
            pin: pin.to_owned(),
        };
        let pin_str = pin
            .to_str()
            .with_context(|| format!("path {} is not UTF-8", pin.display()))?;
        // nsenter, not `ip -n`: the latter remounts /sys and would not see the pin.
        cmd::in_netns(
            netns,
            "ip",
            &["link", "set", "dev", "eth0", "xdpdrv", "pinned", pin_str],
        )
        .with_context(|| format!("attaching {PROG_FLOOR} to eth0 of {netns}"))?;
        let link = cmd::ip(netns, &["link", "show", "dev", "eth0"])?;
        ensure!(
            link.contains("prog/xdp"),
            "no XDP program on eth0 of {netns} after attaching {PROG_FLOOR}"
        );
        Ok(floor)
    }
}

impl Drop for FloorProgram {
    fn drop(&mut self) {
        if let Err(e) = cmd::ip(&self.netns, &["link", "set", "dev", "eth0", "xdp", "off"]) {
            eprintln!("e2e: cannot detach {PROG_FLOOR} from {}: {e:#}", self.netns);
        }
        if let Err(e) = std::fs::remove_file(&self.pin) {
            eprintln!("e2e: cannot remove {}: {e}", self.pin.display());
        }
    }
}
