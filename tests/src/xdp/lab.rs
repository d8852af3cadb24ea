//! The balancer fixtures' network: a [`PrivateNetns`] (the thread's own, gone with the thread) with
//! a veth pair, permanent neighbours and routes toward the backends, because `bpf_fib_lookup` inside
//! `BPF_PROG_TEST_RUN` routes in the namespace of the calling thread.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::Context as _;

use crate::lab::netns::{PrivateNetns, pin_to_current_cpu, with_private_netns};

/// MAC of the interface the balancer "receives" on (lbt0).
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x03, 0x02];
/// MAC of the next hop toward the backends.
pub const NEXT_HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x03, 0x01];

/// A VIP, a client and the balancer's own (encapsulation source) addresses, per family.
pub const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x1, 0, 0, 0, 0, 0x10);
pub const SRC4: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 2);
pub const SRC6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x3, 0, 0, 0, 0, 2);

/// Interface the balancer "receives" on.
pub const IFACE: &str = "lbt0";

/// What a fixture or bench needs to know about its namespace.
pub struct XdpLab {
    pub ifindex: u32,
    ns: PrivateNetns,
}

impl XdpLab {
    /// Runs `ip` in the lab's namespace; returns its output (panics on failure: for tests).
    pub fn ip(&self, args: &[&str]) -> String {
        self.ns.ip(args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Runs one `ip` command per line in the lab's namespace (e.g. more routes).
    pub fn ip_script(&self, lines: &[&str]) -> anyhow::Result<()> {
        self.ns.ip_script(lines)
    }
}

fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The lab: `lbt0` is the balancer's interface (next hop 198.18.3.1 / 2001:db8:3::1 toward the
/// backends in 198.18.2.0/24 and 2001:db8:2::/64); `lbt2` leads to backends in 198.18.5.0/24
/// (next hop 198.18.4.1), so packets to them are redirected.
const SETUP: &[&str] = &[
    "link add lbt0 address {LB_MAC} type veth peer name lbt1",
    "link set lbt0 up",
    "link set lbt1 up",
    "addr add 198.18.3.2/24 dev lbt0",
    "-6 addr add 2001:db8:3::2/64 dev lbt0 nodad",
    "neigh add 198.18.3.1 lladdr {HOP_MAC} dev lbt0 nud permanent",
    "-6 neigh add 2001:db8:3::1 lladdr {HOP_MAC} dev lbt0 nud permanent",
    "route add 198.18.2.0/24 via 198.18.3.1 dev lbt0",
    "-6 route add 2001:db8:2::/64 via 2001:db8:3::1 dev lbt0",
    "link add lbt2 type veth peer name lbt3",
    "link set lbt2 up",
    "link set lbt3 up",
    "addr add 198.18.4.2/24 dev lbt2",
    "neigh add 198.18.4.1 lladdr {HOP_MAC} dev lbt2 nud permanent",
    "route add 198.18.5.0/24 via 198.18.4.1 dev lbt2",
];

/// Builds the lab in `ns` (the calling thread's namespace) and pins the thread to one CPU
/// (per-CPU round-robin cursors must not change between runs).
fn build(ns: PrivateNetns) -> anyhow::Result<XdpLab> {
    let lines: Vec<String> = SETUP
        .iter()
        .map(|line| {
            line.replace("{LB_MAC}", &mac_string(&LB_MAC))
                .replace("{HOP_MAC}", &mac_string(&NEXT_HOP_MAC))
        })
        .collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    ns.ip_script(&lines)
        .context("building the XDP lab network")?;
    // The LB forwards: bpf_fib_lookup refuses to route for an interface without forwarding.
    ns.set_forwarding(IFACE, true)?;
    pin_to_current_cpu()?;
    let ifindex = lb_userspace::netif::ifindex(IFACE)
        .with_context(|| format!("{IFACE} in the XDP lab namespace"))?;
    Ok(XdpLab { ifindex, ns })
}

/// Runs `f` on a fresh thread inside a fresh namespace with the lab built, which ends with the
/// thread.
pub fn with_xdp_lab<R: Send>(f: impl FnOnce(&XdpLab) -> R + Send) -> anyhow::Result<R> {
    with_private_netns(|ns| {
        let lab = build(ns.try_clone()?)?;
        Ok(f(&lab))
    })?
}
