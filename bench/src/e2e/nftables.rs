//! The nftables peer: DNAT of the VIP to the backends in turn (`numgen inc mod N`) and masquerade,
//! in the LB namespace, as kube-proxy's nftables mode does. [`NftBalancer`] removes its table and
//! turns forwarding off again when dropped.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context as _, ensure};
use lb_tests::lab::cmd;

/// The table this bench creates (and only this one is ever deleted).
const TABLE: &str = "lb_e2e";

/// The ruleset: a counter on the DNAT rule tells that the run went through it.
fn ruleset(vip: SocketAddr, backends: &[SocketAddr]) -> anyhow::Result<String> {
    ensure!(!backends.is_empty(), "nftables needs at least one backend");
    let (SocketAddr::V4(vip), true) = (vip, backends.iter().all(SocketAddr::is_ipv4)) else {
        anyhow::bail!("the nftables peer is IPv4 only (VIP {vip})");
    };
    let port = backends[0].port();
    ensure!(
        backends.iter().all(|b| b.port() == port),
        "the nftables peer maps to one backend port, not {backends:?}"
    );
    let map: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{i} : {}", b.ip()))
        .collect();
    Ok(format!(
        "table ip {TABLE} {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {} tcp dport {} counter dnat to numgen inc mod {} map {{ {} }}:{port}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ct status dnat counter masquerade
    }}
}}
",
        vip.ip(),
        vip.port(),
        backends.len(),
        map.join(", ")
    ))
}

/// The nftables balancer, installed in one namespace.
pub struct NftBalancer {
    netns: String,
}

impl NftBalancer {
    /// Loads the ruleset (written to `dir`) in `netns` and turns IPv4 forwarding on there.
    pub fn install(
        netns: &str,
        dir: &Path,
        vip: SocketAddr,
        backends: &[SocketAddr],
    ) -> anyhow::Result<NftBalancer> {
        let file = dir.join("nft-e2e.conf");
        std::fs::write(&file, ruleset(vip, backends)?)
            .with_context(|| format!("cannot write {}", file.display()))?;
        let path = file
            .to_str()
            .with_context(|| format!("path {} is not UTF-8", file.display()))?;
        cmd::in_netns(netns, "nft", &["-f", path])
            .with_context(|| format!("loading the nftables balancer in {netns}"))?;
        let nft = NftBalancer {
            netns: netns.to_owned(),
        };
        // The LB forwards out of the interface it received on: no redirects to the router.
        cmd::sysctl(
            netns,
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.eth0.send_redirects=0",
            ],
        )?;
        Ok(nft)
    }

    /// Packets the DNAT rule has rewritten (the first packet of each connection).
    pub fn dnat_packets(&self) -> anyhow::Result<u64> {
        let out = cmd::in_netns(
            &self.netns,
            "nft",
            &["list", "chain", "ip", TABLE, "prerouting"],
        )?;
        let count = out
            .split("counter packets ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .with_context(|| format!("no counter in the prerouting chain:\n{out}"))?;
        count
            .parse()
            .with_context(|| format!("bad packet count {count:?}"))
    }
}

impl Drop for NftBalancer {
    fn drop(&mut self) {
        if let Err(e) = cmd::sysctl(&self.netns, &["net.ipv4.ip_forward=0"]) {
            eprintln!("e2e: cannot turn forwarding off in {}: {e:#}", self.netns);
        }
        if let Err(e) = cmd::in_netns(&self.netns, "nft", &["delete", "table", "ip", TABLE]) {
            eprintln!("e2e: cannot delete table {TABLE} in {}: {e:#}", self.netns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_the_turn_to_each_backend() {
        let vip: SocketAddr = "198.18.100.1:80".parse().expect("addr");
        let b: Vec<SocketAddr> = ["198.18.2.11:80", "198.18.2.12:80", "198.18.2.13:80"]
            .iter()
            .map(|s| s.parse().expect("addr"))
            .collect();
        let rules = ruleset(vip, &b).expect("renders");
        assert!(rules.contains(
            "dnat to numgen inc mod 3 map { 0 : 198.18.2.11, 1 : 198.18.2.12, 2 : 198.18.2.13 }:80"
        ));
        assert!(rules.contains("masquerade"));
    }

    #[test]
    fn refuses_ipv6() {
        let vip: SocketAddr = "[2001:db8:100::1]:80".parse().expect("addr");
        assert!(ruleset(vip, &[vip]).is_err());
    }
}
