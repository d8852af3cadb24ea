//! `lb decap --check`: is this host set up to be a DSR backend? Read-only. [`HostFacts::read`] reads
//! what the checks need (`/proc/sys`, `/sys/class/net`, `ip`); [`check`] is a pure function of those
//! facts, so every verdict is unit-tested without a host.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// What to check.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// The interface the encapsulated packets arrive on (`lb decap --iface`).
    pub iface: String,
    /// The VIPs this backend serves; empty: the non-loopback addresses on `lo`.
    pub vips: Vec<IpAddr>,
    /// The largest packets clients send (1500 on the internet): their segments are at most this
    /// minus the IP and TCP headers, whatever MSS the backend offers.
    pub client_mtu: u32,
    /// `lb decap --pin-dir`: its maps there say `lb decap` runs.
    pub pin_dir: PathBuf,
}

/// What the checks look at, read once.
#[derive(Clone, Debug, Default)]
pub struct HostFacts {
    /// The interface's MTU; `None`: no such interface.
    pub mtu: Option<u32>,
    /// Every address of this host with its interface.
    pub addrs: Vec<(String, IpAddr)>,
    /// `net.ipv4.*` values by sysctl name (`net.ipv4.conf.all.rp_filter`); missing: unreadable.
    pub sysctls: BTreeMap<String, i64>,
    /// The default routes through the interface, per family.
    pub default_v4: Option<DefaultRoute>,
    pub default_v6: Option<DefaultRoute>,
    /// An XDP program is attached to the interface (`ip -d link`: `prog/xdp`).
    pub xdp_attached: bool,
    /// `lb decap`'s maps are pinned in the pin directory.
    pub decap_pinned: bool,
    /// Kernel tunnel devices present (`tunl0`, `ip6tnl0`) and whether each is up.
    pub kernel_tunnels: BTreeMap<String, bool>,
}

/// A default route: its gateway and `advmss` (the MSS offered on connections it carries).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DefaultRoute {
    pub via: Option<String>,
    pub advmss: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

/// One line of the report: what was checked and, unless it is ok, what to change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub verdict: Verdict,
    pub what: String,
    pub fix: String,
}

/// `lb decap --check --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckReport {
    pub iface: String,
    pub ok: bool,
    pub checks: Vec<Finding>,
}

impl Finding {
    fn ok(what: String) -> Self {
        Self {
            verdict: Verdict::Ok,
            what,
            fix: String::new(),
        }
    }
    fn fail(what: String, fix: String) -> Self {
        Self {
            verdict: Verdict::Fail,
            what,
            fix,
        }
    }
    fn warn(what: String, fix: String) -> Self {
        Self {
            verdict: Verdict::Warn,
            what,
            fix,
        }
    }
}

/// The sysctls the checks read, for the interface and `lo`.
const CONF_KEYS: [&str; 3] = ["arp_ignore", "arp_announce", "rp_filter"];
const IPV4_OVERHEAD: u32 = 20;
const IPV6_OVERHEAD: u32 = 40;

impl HostFacts {
    /// Reads the facts of this host, of the current network namespace (links through `ip`, not
    /// `/sys/class/net`, which shows the namespace `/sys` was mounted in).
    pub fn read(iface: &str, pin_dir: &Path) -> anyhow::Result<HostFacts> {
        let link = ip_link(iface);
        let kernel_tunnels: BTreeMap<String, bool> = ["tunl0", "ip6tnl0"]
            .into_iter()
            .filter_map(|t| Some((t.to_owned(), link_is_up(&ip_link(t)?))))
            .collect();
        let mut sysctls = BTreeMap::new();
        let mut devs = vec!["all", iface, "lo"];
        devs.extend(kernel_tunnels.keys().map(String::as_str));
        for dev in devs {
            for key in CONF_KEYS {
                let path = format!("/proc/sys/net/ipv4/conf/{dev}/{key}");
                if let Some(v) = read_number(&path) {
                    sysctls.insert(format!("net.ipv4.conf.{dev}.{key}"), v);
                }
            }
        }
        if let Some(v) = read_number("/proc/sys/net/ipv4/ip_forward") {
            sysctls.insert("net.ipv4.ip_forward".into(), v);
        }
        Ok(HostFacts {
            mtu: link.as_deref().and_then(link_mtu),
            addrs: crate::netif::addresses()?,
            sysctls,
            default_v4: parse_default_route(&ip(&["-4", "route", "show", "dev", iface])?),
            default_v6: parse_default_route(&ip(&["-6", "route", "show", "dev", iface])?),
            xdp_attached: link.is_some_and(|l| l.contains("prog/xdp")),
            decap_pinned: pin_dir.join(lb_common::maps::DECAP_ADDRS).exists(),
            kernel_tunnels,
        })
    }
}

/// `ip -d link show dev DEV`; `None` when there is no such device.
fn ip_link(dev: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["-d", "link", "show", "dev", dev])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `mtu N` of an `ip link` line.
pub fn link_mtu(link: &str) -> Option<u32> {
    let mut words = link.split_whitespace();
    words.find(|w| *w == "mtu")?;
    words.next()?.parse().ok()
}

/// Whether the flags of an `ip link` line (`<…,UP,…>`) include UP.
pub fn link_is_up(link: &str) -> bool {
    link.split(['<', '>'])
        .nth(1)
        .is_some_and(|flags| flags.split(',').any(|f| f == "UP"))
}

fn read_number(path: &str) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run `ip {}`: {e}", args.join(" ")))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `default …` line of `ip route show dev IF`.
pub fn parse_default_route(routes: &str) -> Option<DefaultRoute> {
    let line = routes.lines().find(|l| l.starts_with("default"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |key: &str| {
        let i = words.iter().position(|w| *w == key)?;
        words.get(i + 1).copied()
    };
    Some(DefaultRoute {
        via: after("via").map(str::to_owned),
        advmss: after("advmss").and_then(|v| v.parse().ok()),
    })
}

/// Every check, in the order they are printed.
pub fn check(opts: &CheckOptions, facts: &HostFacts) -> Vec<Finding> {
    let iface = opts.iface.as_str();
    let Some(mtu) = facts.mtu else {
        return vec![Finding::fail(
            format!("interface {iface} does not exist"),
            "give the interface the balancer's packets arrive on (see `ip link`)".into(),
        )];
    };
    let vips = vips(opts, facts);
    let mut out = check_vips(&vips, facts);
    let v4 = vips.is_empty() || vips.iter().any(IpAddr::is_ipv4);
    let v6 = vips.iter().any(IpAddr::is_ipv6);
    if v4 {
        out.extend(check_arp(iface, facts));
        out.extend(check_rp_filter(iface, facts));
        out.push(check_mss(
            iface,
            mtu,
            opts.client_mtu,
            false,
            facts.default_v4.as_ref(),
        ));
    }
    if v6 {
        out.push(check_mss(
            iface,
            mtu,
            opts.client_mtu,
            true,
            facts.default_v6.as_ref(),
        ));
    }
    out.push(check_decap(opts, facts, v4, v6));
    out.push(check_forwarding(facts));
    out
}

fn vips(opts: &CheckOptions, facts: &HostFacts) -> Vec<IpAddr> {
    if !opts.vips.is_empty() {
        return opts.vips.clone();
    }
    facts
        .addrs
        .iter()
        .filter(|(dev, ip)| dev == "lo" && !ip.is_loopback())
        .map(|(_, ip)| *ip)
        .collect()
}

fn host_prefix(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

fn check_vips(vips: &[IpAddr], facts: &HostFacts) -> Vec<Finding> {
    if vips.is_empty() {
        return vec![Finding::fail(
            "no VIP on lo (and none given with --vip)".into(),
            "ip addr add VIP/32 dev lo (IPv6: VIP/128), for every VIP this backend serves".into(),
        )];
    }
    vips.iter()
        .map(|vip| {
            let p = host_prefix(vip);
            let devs: Vec<&str> = (facts.addrs.iter())
                .filter(|(_, ip)| ip == vip)
                .map(|(dev, _)| dev.as_str())
                .collect();
            if devs.contains(&"lo") {
                Finding::ok(format!("VIP {vip} is on lo"))
            } else if let Some(dev) = devs.first() {
                Finding::fail(
                    format!(
                        "VIP {vip} is on {dev}, not lo: this host would answer ARP/ND for it and \
                         draw the VIP's traffic away from the balancer"
                    ),
                    format!("ip addr del {vip}/{p} dev {dev}; ip addr add {vip}/{p} dev lo"),
                )
            } else {
                Finding::fail(
                    format!("VIP {vip} is not on lo: the kernel drops decapsulated packets to it"),
                    format!("ip addr add {vip}/{p} dev lo"),
                )
            }
        })
        .collect()
}

fn sysctl(facts: &HostFacts, dev: &str, key: &str) -> Option<i64> {
    facts
        .sysctls
        .get(&format!("net.ipv4.conf.{dev}.{key}"))
        .copied()
}

/// `arp_ignore` and `arp_announce` take the larger of `all` and the interface.
fn check_arp(iface: &str, facts: &HostFacts) -> Vec<Finding> {
    let wanted = [
        (
            "arp_ignore",
            1,
            "answers ARP only for addresses on the asking interface, never for the VIPs on lo",
        ),
        (
            "arp_announce",
            2,
            "never sources ARP requests from a VIP on lo",
        ),
    ];
    wanted
        .into_iter()
        .map(|(key, min, why)| {
            let all = sysctl(facts, "all", key).unwrap_or(0);
            let dev = sysctl(facts, iface, key).unwrap_or(0);
            let effective = all.max(dev);
            if effective >= min {
                Finding::ok(format!("{key}={effective} on {iface}: this host {why}"))
            } else {
                Finding::fail(
                    format!(
                        "{key}={effective} on {iface} (all={all}, {iface}={dev}): this host must \
                         have {key} >= {min} so that it {why}"
                    ),
                    format!(
                        "sysctl -w net.ipv4.conf.all.{key}={min} net.ipv4.conf.{iface}.{key}={min} \
                         (and the same lines in /etc/sysctl.d/)"
                    ),
                )
            }
        })
        .collect()
}

/// Strict reverse-path filtering (1) drops a decapsulated packet when the route back to its source,
/// the client, does not leave through the interface it arrived on.
fn check_rp_filter(iface: &str, facts: &HostFacts) -> Vec<Finding> {
    let mut devs = vec!["all", iface, "lo"];
    if facts.kernel_tunnels.contains_key("tunl0") {
        devs.push("tunl0");
    }
    devs.into_iter()
        .filter_map(|dev| {
            let v = sysctl(facts, dev, "rp_filter")?;
            Some(if v == 1 {
                Finding::fail(
                    format!(
                        "rp_filter=1 (strict) on {dev}: decapsulated packets carry the client's \
                         source address, and strict reverse-path filtering drops them unless the \
                         route back to the client leaves through the interface they arrived on"
                    ),
                    format!(
                        "sysctl -w net.ipv4.conf.{dev}.rp_filter=2 (loose; 0 turns it off; the \
                         kernel uses the larger of all and the interface)"
                    ),
                )
            } else {
                Finding::ok(format!("rp_filter={v} on {dev}"))
            })
        })
        .collect()
}

/// A client's full segment, encapsulated, must fit the interface it arrives on: the balancer adds
/// 20 bytes (IPIP) or 40 (ip6ip6); what would exceed its egress MTU is answered with an ICMP too-big
/// (`icmp_too_big_sent`, rate-limited) or dropped (`drop_mtu`).
fn check_mss(
    iface: &str,
    mtu: u32,
    client_mtu: u32,
    v6: bool,
    route: Option<&DefaultRoute>,
) -> Finding {
    let (family, headers, overhead, tunnel) = if v6 {
        ("IPv6", 60, IPV6_OVERHEAD, "ip6ip6")
    } else {
        ("IPv4", 40, IPV4_OVERHEAD, "IPIP")
    };
    let advmss = route.and_then(|r| r.advmss);
    let offered = advmss.unwrap_or(mtu.saturating_sub(headers));
    let segment = offered.min(client_mtu.saturating_sub(headers));
    let encapsulated = segment + headers + overhead;
    let source = if advmss.is_some() {
        "the default route's advmss"
    } else {
        "from the MTU"
    };
    let what = format!(
        "{family}: MTU {mtu} on {iface}, clients get MSS {offered} ({source}); a full segment of a \
         client with MTU {client_mtu} is {encapsulated} bytes in {tunnel} (+{overhead})"
    );
    if encapsulated <= mtu {
        return Finding::ok(what);
    }
    let want = mtu.saturating_sub(headers + overhead);
    let route_fix = match route {
        Some(DefaultRoute { via: Some(gw), .. }) => {
            let v = if v6 { "-6 " } else { "" };
            format!("ip {v}route change default via {gw} dev {iface} advmss {want}")
        }
        _ => format!(
            "set advmss {want} on the route to the clients (ip route change ... advmss {want})"
        ),
    };
    Finding::fail(
        format!(
            "{what}, over the MTU {mtu}: the balancer answers such packets with an ICMP too-big (one round trip lost per connection; rate-limited, then dropped as drop_mtu)"
        ),
        format!(
            "offer a smaller MSS: {route_fix}, or clamp the MSS (nft/iptables TCPMSS); or raise the \
             MTU between the balancer and the backends to {encapsulated}"
        ),
    )
}

fn check_decap(opts: &CheckOptions, facts: &HostFacts, v4: bool, v6: bool) -> Finding {
    let iface = &opts.iface;
    let pins = opts.pin_dir.display();
    match (facts.xdp_attached, facts.decap_pinned) {
        (true, true) => Finding::ok(format!(
            "lb decap runs on {iface} (an XDP program is attached, its maps are pinned in {pins})"
        )),
        (true, false) => Finding::warn(
            format!("an XDP program is attached to {iface}, but {pins} holds no lb decap maps"),
            format!("if it is lb decap, give its --pin-dir; else run `lb decap --iface {iface}`"),
        ),
        _ => {
            let needed: Vec<&str> = [(v4, "tunl0"), (v6, "ip6tnl0")]
                .into_iter()
                .filter_map(|(need, t)| need.then_some(t))
                .collect();
            let down: Vec<&str> = (needed.iter().copied())
                .filter(|t| facts.kernel_tunnels.get(*t) != Some(&true))
                .collect();
            if down.is_empty() {
                return Finding::ok(format!(
                    "the kernel decapsulates ({} up); lb decap is not needed",
                    needed.join(", ")
                ));
            }
            let missing = down.join(", ");
            Finding::fail(
                format!("nothing decapsulates on {iface}: no lb decap, and {missing} is not up"),
                format!(
                    "run `lb decap --iface {iface}` (or the kernel's tunnel: modprobe -a ipip \
                     ip6_tunnel; ip link set {missing} up)"
                ),
            )
        }
    }
}

fn check_forwarding(facts: &HostFacts) -> Finding {
    let v = facts
        .sysctls
        .get("net.ipv4.ip_forward")
        .copied()
        .unwrap_or(0);
    Finding::ok(format!(
        "net.ipv4.ip_forward={v}: a backend answers from its own stack, forwarding is not needed"
    ))
}

/// One line per check: `ok|FAIL|warn  <what>  <fix>`.
pub fn render(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        let verdict = match f.verdict {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        let _ = write!(out, "{verdict:<4}  {}", f.what);
        if !f.fix.is_empty() {
            let _ = write!(out, "  fix: {}", f.fix);
        }
        out.push('\n');
    }
    out
}

/// `lb decap --check`: prints the report; `Ok(true)` when every check is ok.
pub fn run(opts: &CheckOptions, json: bool) -> anyhow::Result<bool> {
    let facts = HostFacts::read(&opts.iface, &opts.pin_dir)?;
    let checks = check(opts, &facts);
    let ok = checks.iter().all(|f| f.verdict == Verdict::Ok);
    if json {
        let report = CheckReport {
            iface: opts.iface.clone(),
            ok,
            checks,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&checks));
    }
    Ok(ok)
}

#[cfg(test)]
mod tests;
