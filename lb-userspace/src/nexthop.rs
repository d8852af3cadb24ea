//! Keeps the next hops toward the backends resolved, so `bpf_fib_lookup` in the XDP program finds their
//! MAC addresses. The operator never types a MAC: for every backend we ask the kernel's routing table for
//! the next hop and install a *managed* neighbour entry for it (Linux ≥ 5.16), which the kernel keeps
//! resolved by itself and which follows MAC changes. Entries we created are removed on exit.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;

use anyhow::{Context as _, bail};
use tracing::{debug, info, warn};

/// A next hop: gateway (or the backend itself when directly connected) and the interface.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NextHop {
    pub addr: IpAddr,
    pub dev: String,
}

/// Asks the kernel where a packet to `dst` goes.
pub fn resolve(dst: IpAddr) -> anyhow::Result<NextHop> {
    let family = if dst.is_ipv4() { "-4" } else { "-6" };
    let out = Command::new("ip")
        .args(["-j", family, "route", "get", &dst.to_string()])
        .output()
        .context("running `ip route get` (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!(
            "no route to backend {dst}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_route_get(dst, &out.stdout)
}

fn parse_route_get(dst: IpAddr, json: &[u8]) -> anyhow::Result<NextHop> {
    let v: serde_json::Value =
        serde_json::from_slice(json).context("parsing `ip -j route get` output")?;
    let first = v.get(0).context("`ip route get` returned no route")?;
    let dev = first
        .get("dev")
        .and_then(|d| d.as_str())
        .context("route without a device")?;
    let addr = match first.get("gateway").and_then(|g| g.as_str()) {
        Some(gw) => gw
            .parse()
            .with_context(|| format!("bad gateway {gw:?} in `ip route get`"))?,
        None => dst,
    };
    Ok(NextHop {
        addr,
        dev: dev.to_string(),
    })
}

/// The managed neighbour entries this daemon installed (or adopted).
#[derive(Default)]
pub struct NextHopKeeper {
    installed: BTreeSet<NextHop>,
    /// Managed entries already there are an earlier daemon's on the same pins: ours now.
    adopt_existing: bool,
}

impl NextHopKeeper {
    /// A keeper that owns only what it installs, or also the managed entries it finds
    /// (`adopt_existing`: the daemon adopted an earlier one's pins, and with them its next hops).
    /// Entries it does not own are never removed by it.
    pub fn new(adopt_existing: bool) -> Self {
        NextHopKeeper {
            installed: BTreeSet::new(),
            adopt_existing,
        }
    }

    /// Makes sure every backend's next hop has a managed neighbour entry. Errors are logged per
    /// backend (a missing route is a counted `drop_no_route` in the data plane, not a daemon failure).
    pub fn refresh(&mut self, backends: impl IntoIterator<Item = IpAddr>) {
        let mut wanted = BTreeSet::new();
        for b in backends {
            match resolve(b) {
                Ok(nh) => {
                    wanted.insert(nh);
                }
                Err(e) => warn!(backend = %b, "cannot resolve the next hop: {e:#}"),
            }
        }
        for nh in wanted.difference(&self.installed.clone()) {
            match install(nh) {
                Ok(Installed::New) => {
                    info!(next_hop = %nh.addr, dev = %nh.dev, "keeping next hop resolved");
                    self.installed.insert(nh.clone());
                }
                Ok(Installed::Managed) if self.adopt_existing => {
                    self.installed.insert(nh.clone());
                }
                Ok(_) => {}
                Err(e) => warn!(next_hop = %nh.addr, "cannot install a managed neighbour: {e:#}"),
            }
        }
        let stale: Vec<NextHop> = self.installed.difference(&wanted).cloned().collect();
        for nh in stale {
            remove(&nh);
            self.installed.remove(&nh);
        }
    }

    /// Removes every entry this keeper installed.
    /// Leaves the entries installed (for a program that keeps forwarding after the daemon).
    pub fn keep(&mut self) {
        self.installed.clear();
    }

    pub fn release(&mut self) {
        for nh in std::mem::take(&mut self.installed) {
            remove(&nh);
        }
    }
}

impl Drop for NextHopKeeper {
    fn drop(&mut self) {
        self.release();
    }
}

/// What [`install`] found or did.
enum Installed {
    New,
    /// A managed entry was there (ours from an earlier daemon, or another's).
    Managed,
    Permanent,
}

fn install(nh: &NextHop) -> anyhow::Result<Installed> {
    // An existing managed (or permanent) entry is left alone: it already gives the XDP program a MAC.
    match neighbour_state(nh)? {
        Some(s) if s.iter().any(|x| x == "PERMANENT") => return Ok(Installed::Permanent),
        Some(s) if s.iter().any(|x| x == "MANAGED") => return Ok(Installed::Managed),
        _ => {}
    }
    let out = Command::new("ip")
        .args([
            "neigh",
            "replace",
            &nh.addr.to_string(),
            "dev",
            &nh.dev,
            "managed",
            "extern_learn",
        ])
        .output()
        .context("running `ip neigh replace`")?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(Installed::New)
}

fn neighbour_state(nh: &NextHop) -> anyhow::Result<Option<Vec<String>>> {
    let out = Command::new("ip")
        .args(["-j", "neigh", "show", &nh.addr.to_string(), "dev", &nh.dev])
        .output()
        .context("running `ip neigh show`")?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    Ok(v.get(0).map(|e| {
        let mut states: Vec<String> = e
            .get("state")
            .and_then(|s| s.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if e.get("managed").is_some() {
            states.push("MANAGED".into());
        }
        states
    }))
}

fn remove(nh: &NextHop) {
    let r = Command::new("ip")
        .args(["neigh", "del", &nh.addr.to_string(), "dev", &nh.dev])
        .output();
    debug!(next_hop = %nh.addr, ok = r.map(|o| o.status.success()).unwrap_or(false), "released next hop");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gateway_and_direct_routes() {
        let gw = br#"[{"dst":"198.18.2.11","gateway":"198.18.3.1","dev":"eth0","prefsrc":"198.18.3.2","flags":[],"uid":0,"cache":[]}]"#;
        let nh = parse_route_get("198.18.2.11".parse().unwrap(), gw).unwrap();
        assert_eq!(
            nh,
            NextHop {
                addr: "198.18.3.1".parse().unwrap(),
                dev: "eth0".into()
            }
        );
        let direct =
            br#"[{"dst":"2001:db8:2::11","dev":"br0","prefsrc":"2001:db8:2::1","flags":[]}]"#;
        let nh = parse_route_get("2001:db8:2::11".parse().unwrap(), direct).unwrap();
        assert_eq!(nh.addr, "2001:db8:2::11".parse::<IpAddr>().unwrap());
        assert!(parse_route_get("198.18.2.11".parse().unwrap(), b"[]").is_err());
    }
}
