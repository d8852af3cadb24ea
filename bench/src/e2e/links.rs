//! Packet counters of the router's ports: where a run's packets really went (toward the LB, toward
//! each backend), to check that each mode took the path it claims.

use anyhow::Context as _;
use lb_tests::lab::cmd;
use serde_json::Value;

/// Packets the router sent out of each of `ports` (`ip -s -j link`: `stats64.tx.packets`).
pub fn tx_packets(router_netns: &str, ports: &[String]) -> anyhow::Result<Vec<u64>> {
    ports
        .iter()
        .map(|port| {
            let out = cmd::ip(router_netns, &["-s", "-j", "link", "show", "dev", port])?;
            let json: Value = serde_json::from_str(&out)
                .with_context(|| format!("`ip -s -j link show dev {port}`: {out}"))?;
            json.get(0)
                .and_then(|l| l.pointer("/stats64/tx/packets"))
                .and_then(Value::as_u64)
                .with_context(|| format!("no stats64.tx.packets for {port}: {out}"))
        })
        .collect()
}
