//! Building the lab's topology: namespaces, veths, bridges, addresses, routes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::ensure;

use super::Lab;
use super::cmd::{self, ethtool_features, ip, sysctl};
use super::topology::*;

impl Lab {
    pub(super) fn build_topology(&mut self) -> anyhow::Result<()> {
        let client = self.client_netns();
        let router = self.router_netns();
        self.add_netns(&client)?;
        self.add_netns(&router)?;
        sysctl(
            &router,
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
                "net.ipv4.fib_multipath_hash_policy=1",
                "net.ipv6.fib_multipath_hash_policy=1",
            ],
        )?;

        // Client link: no offloads on either end, so every packet the LB sees is a real MTU-sized
        // packet with a full checksum (veth would otherwise pass 64 KB skbs with partial checksums).
        ip(
            &client,
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", "client", "netns", &router,
            ],
        )?;
        configure_link(
            &client,
            "eth0",
            None,
            &[&cidr(CLIENT_V4, 24), &cidr(CLIENT_V6, 64)],
        )?;
        configure_link(
            &router,
            "client",
            None,
            &[&cidr(ROUTER_CLIENT_V4, 24), &cidr(ROUTER_CLIENT_V6, 64)],
        )?;
        for (ns, dev) in [(&client, "eth0"), (&router, "client")] {
            ethtool_features(
                ns,
                dev,
                &["tso", "off", "gso", "off", "gro", "off", "tx", "off"],
            )?;
        }
        default_routes(&client, ROUTER_CLIENT_V4, ROUTER_CLIENT_V6)?;

        for (bridge, v4, v6) in [
            ("br-lb", ROUTER_LBS_V4, ROUTER_LBS_V6),
            ("br-be", ROUTER_BACKENDS_V4, ROUTER_BACKENDS_V6),
        ] {
            ip(
                &router,
                &[
                    "link",
                    "add",
                    bridge,
                    "mtu",
                    TUNNEL_MTU,
                    "type",
                    "bridge",
                    "mcast_snooping",
                    "0",
                ],
            )?;
            configure_link(&router, bridge, None, &[&cidr(v4, 24), &cidr(v6, 64)])?;
        }

        for lb in 0..self.opts.lbs {
            let ns = self.lb_netns(lb);
            let port = format!("lb{lb}");
            self.add_netns(&ns)?;
            self.add_bridge_port(
                &ns,
                &port,
                "br-lb",
                &[&cidr(lb_v4(lb), 24), &cidr(lb_v6(lb), 64)],
            )?;
            // The LB answers with XDP_TX, which a veth delivers only to a peer with NAPI (GRO turns
            // it on) and flushes only to a peer with an XDP program (`start_lb` attaches one).
            ethtool_features(&router, &port, &["gro", "on"])?;
            default_routes(&ns, ROUTER_LBS_V4, ROUTER_LBS_V6)?;
        }

        for i in 0..self.opts.backends {
            let ns = self.backend_netns(i);
            self.add_netns(&ns)?;
            let port = Self::backend_name(i);
            self.add_bridge_port(
                &ns,
                &port,
                "br-be",
                &[&cidr(backend_v4(i), 24), &cidr(backend_v6(i), 64)],
            )?;
            default_routes(&ns, ROUTER_BACKENDS_V4, ROUTER_BACKENDS_V6)?;
            for n in 1..=VIPS_PER_BACKEND {
                ip(&ns, &["addr", "add", &cidr(vip_v4(n), 32), "dev", "lo"])?;
                ip(
                    &ns,
                    &["addr", "add", &cidr(vip_v6(n), 128), "dev", "lo", "nodad"],
                )?;
            }
        }

        if self.opts.bgp {
            // The router learns the VIPs from the load balancers' BIRDs (`start_bgp`).
            return Ok(());
        }
        self.route_vips(&router)
    }

    /// The router sends the VIP prefixes to the load balancers; to several with L4-hashed ECMP.
    fn route_vips(&self, router: &str) -> anyhow::Result<()> {
        let all: Vec<usize> = (0..self.opts.lbs).collect();
        self.replace_vip_routes(router, &all, "add")
    }

    /// Points the router's VIP routes at the load balancers `lbs` only (one: a plain route; several:
    /// ECMP), as a routing change or an LB taken out of service would. Flows move between LBs.
    pub fn route_vips_via(&self, lbs: &[usize]) -> anyhow::Result<()> {
        ensure!(
            !lbs.is_empty() && lbs.iter().all(|&lb| lb < self.opts.lbs),
            "route_vips_via({lbs:?}): the lab has load balancers 0..{}",
            self.opts.lbs
        );
        ensure!(
            !self.opts.bgp,
            "route_vips_via({lbs:?}) in a BGP lab: the router learns its VIP routes from the LBs; \
             stop or drain a load balancer instead"
        );
        self.replace_vip_routes(&self.router_netns(), lbs, "replace")
    }

    /// `ip route <verb>` of both VIP prefixes via the load balancers `lbs`.
    fn replace_vip_routes(&self, router: &str, lbs: &[usize], verb: &str) -> anyhow::Result<()> {
        for (prefix, v6) in [(VIP_PREFIX_V4, false), (VIP_PREFIX_V6, true)] {
            let hops: Vec<String> = lbs
                .iter()
                .map(|&lb| {
                    if v6 {
                        lb_v6(lb).to_string()
                    } else {
                        lb_v4(lb).to_string()
                    }
                })
                .collect();
            let mut args = vec![if v6 { "-6" } else { "-4" }, "route", verb, prefix];
            if let [only] = hops.as_slice() {
                args.extend(["via", only.as_str()]);
            } else {
                for hop in &hops {
                    args.extend(["nexthop", "via", hop.as_str()]);
                }
            }
            ip(router, &args)?;
        }
        Ok(())
    }

    /// Creates the namespace (remembered for deletion at once), with DAD and reverse-path filtering
    /// off and `lo` up.
    fn add_netns(&mut self, name: &str) -> anyhow::Result<()> {
        cmd::run("ip", &["netns", "add", name])?;
        self.namespaces.push(name.to_string());
        sysctl(
            name,
            &[
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ],
        )?;
        ip(name, &["link", "set", "lo", "up"])?;
        Ok(())
    }

    /// `eth0` in `ns`, its peer `port` in the router enslaved to `bridge`; tunnel MTU on both ends.
    fn add_bridge_port(
        &self,
        ns: &str,
        port: &str,
        bridge: &str,
        addrs: &[&str],
    ) -> anyhow::Result<()> {
        let router = self.router_netns();
        ip(
            ns,
            &[
                "link", "add", "eth0", "mtu", TUNNEL_MTU, "type", "veth", "peer", "name", port,
                "netns", &router,
            ],
        )?;
        ip(
            &router,
            &[
                "link", "set", port, "mtu", TUNNEL_MTU, "master", bridge, "up",
            ],
        )?;
        configure_link(ns, "eth0", Some(TUNNEL_MTU), addrs)
    }
}

fn cidr(ip: impl Into<IpAddr>, prefix: u8) -> String {
    format!("{}/{prefix}", ip.into())
}

/// Addresses (IPv6 without DAD), optional MTU, link up, `rp_filter` off.
fn configure_link(ns: &str, dev: &str, mtu: Option<&str>, addrs: &[&str]) -> anyhow::Result<()> {
    for addr in addrs {
        let mut args = vec!["addr", "add", addr, "dev", dev];
        if addr.contains(':') {
            args.push("nodad");
        }
        ip(ns, &args)?;
    }
    let mut args = vec!["link", "set", dev];
    if let Some(mtu) = mtu {
        args.extend(["mtu", mtu]);
    }
    args.push("up");
    ip(ns, &args)?;
    sysctl(ns, &[&format!("net.ipv4.conf.{dev}.rp_filter=0")])
}

fn default_routes(ns: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> anyhow::Result<()> {
    ip(
        ns,
        &["-4", "route", "add", "default", "via", &v4.to_string()],
    )?;
    ip(
        ns,
        &["-6", "route", "add", "default", "via", &v6.to_string()],
    )?;
    Ok(())
}
