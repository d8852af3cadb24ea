//! A three-member ZooKeeper ensemble for the lab: each member a [`ZkServer`] in a network namespace
//! of its own, attached to the lab's router by the bridge `br-zk` (198.18.4.0/24, see
//! [`topology`](crate::lab::topology)), one quorum. Tests kill members (SIGKILL by pid), restart them,
//! and partition them (an nftables drop inside the member's namespace only).
//!
//! [`ZkEnsemble`] owns the namespaces, the bridge, the processes and their data directories, and
//! removes them in `Drop`, also when a test fails.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, ensure};

use crate::eventually::Eventually;
use crate::lab::cmd::{self, NETNS_DIR, ip, sysctl};
use crate::lab::topology::{ROUTER_ZK_V4, zk_member_v4};
use crate::zk_server::{Quorum, ZkServer, ZkServerOptions, cli_in};

/// Members of the ensemble: a quorum is two.
pub const MEMBERS: usize = 3;
/// Every member's client port (each has its own namespace and address).
pub const CLIENT_PORT: u16 = 2181;
/// How long an election may take (members elect in a second or two; the JVMs share two cores).
pub const ELECTION_TIMEOUT: Duration = Duration::from_secs(30);
const BRIDGE: &str = "br-zk";
/// The nftables table a partition adds (and deletes) in a namespace.
const PARTITION_TABLE: &str = "lbt_partition";

/// A running ensemble. Members are numbered `0..MEMBERS` (ZooKeeper's server id is `m + 1`).
pub struct ZkEnsemble {
    router: String,
    /// Namespaces this ensemble created, in creation order.
    namespaces: Vec<String>,
    /// Whether it created the bridge in the router namespace.
    bridge: bool,
    members: Vec<ZkServer>,
    partitions: Vec<Option<Partition>>,
}

impl ZkEnsemble {
    /// Creates the members' namespaces (`<prefix>zk0 …`) attached to the `router` namespace, starts
    /// the three servers and waits until they have elected a leader.
    pub fn start(router: &str, prefix: &str) -> anyhow::Result<ZkEnsemble> {
        let mut ensemble = ZkEnsemble {
            router: router.to_owned(),
            namespaces: Vec::new(),
            bridge: false,
            members: Vec::new(),
            partitions: (0..MEMBERS).map(|_| None).collect(),
        };
        ensemble.build_network(prefix)?;
        let quorum: Vec<IpAddr> = (0..MEMBERS).map(|m| IpAddr::V4(zk_member_v4(m))).collect();
        for m in 0..MEMBERS {
            let server = ZkServer::launch(ZkServerOptions {
                netns: Some(ensemble.namespaces[m].clone()),
                bind: quorum[m],
                port: Some(CLIENT_PORT),
                quorum: Some(Quorum {
                    members: quorum.clone(),
                    myid: m + 1,
                }),
            })
            .with_context(|| format!("starting ensemble member {m}"))?;
            ensemble.members.push(server);
        }
        for (m, server) in ensemble.members.iter_mut().enumerate() {
            server
                .wait_ready()
                .with_context(|| format!("ensemble member {m} joining the quorum"))?;
        }
        ensemble.leader()?;
        Ok(ensemble)
    }

    fn build_network(&mut self, prefix: &str) -> anyhow::Result<()> {
        let router = self.router.clone();
        ip(
            &router,
            &[
                "link",
                "add",
                BRIDGE,
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        )?;
        self.bridge = true;
        ip(
            &router,
            &["addr", "add", &format!("{ROUTER_ZK_V4}/24"), "dev", BRIDGE],
        )?;
        ip(&router, &["link", "set", BRIDGE, "up"])?;
        for m in 0..MEMBERS {
            let ns = format!("{prefix}zk{m}");
            cmd::run("ip", &["netns", "add", &ns])?;
            self.namespaces.push(ns.clone());
            sysctl(
                &ns,
                &[
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0",
                ],
            )?;
            ip(&ns, &["link", "set", "lo", "up"])?;
            let port = format!("zk{m}");
            ip(
                &ns,
                &[
                    "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &router,
                ],
            )?;
            ip(&router, &["link", "set", &port, "master", BRIDGE, "up"])?;
            ip(
                &ns,
                &[
                    "addr",
                    "add",
                    &format!("{}/24", zk_member_v4(m)),
                    "dev",
                    "eth0",
                ],
            )?;
            ip(&ns, &["link", "set", "eth0", "up"])?;
            ip(
                &ns,
                &["route", "add", "default", "via", &ROUTER_ZK_V4.to_string()],
            )?;
        }
        Ok(())
    }

    /// `198.18.4.11:2181,198.18.4.12:2181,198.18.4.13:2181`: every member, as clients are given it.
    pub fn connect_string(&self) -> String {
        (0..MEMBERS)
            .map(|m| format!("{}:{CLIENT_PORT}", zk_member_v4(m)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Member `m`'s address.
    pub fn member_addr(m: usize) -> Ipv4Addr {
        zk_member_v4(m)
    }

    /// Member `m`'s namespace.
    pub fn member_netns(&self, m: usize) -> anyhow::Result<&str> {
        self.namespaces
            .get(m)
            .map(String::as_str)
            .with_context(|| format!("the ensemble has members 0..{MEMBERS}, not {m}"))
    }

    fn member(&self, m: usize) -> anyhow::Result<&ZkServer> {
        self.members
            .get(m)
            .with_context(|| format!("the ensemble has members 0..{MEMBERS}, not {m}"))
    }

    fn member_mut(&mut self, m: usize) -> anyhow::Result<&mut ZkServer> {
        self.members
            .get_mut(m)
            .with_context(|| format!("the ensemble has members 0..{MEMBERS}, not {m}"))
    }

    /// Member `m`'s `srvr` mode (`leader`, `follower`); an error while it does not serve.
    pub fn mode(&self, m: usize) -> anyhow::Result<String> {
        self.member(m)?.mode()
    }

    /// Waits (at most [`ELECTION_TIMEOUT`]) until exactly one running member is the leader and
    /// every other running, unpartitioned member follows it; returns the leader.
    pub fn leader(&self) -> anyhow::Result<usize> {
        Eventually::new("the ensemble to have a leader", ELECTION_TIMEOUT)
            .every(Duration::from_millis(100))
            .poll(|| {
                let mut leaders = Vec::new();
                let mut modes = Vec::new();
                for m in self.serving_members() {
                    match self.mode(m) {
                        Ok(mode) if mode == "leader" => leaders.push(m),
                        Ok(mode) if mode == "follower" => {}
                        other => modes.push(format!("member {m}: {other:?}")),
                    }
                }
                match leaders.as_slice() {
                    [leader] if modes.is_empty() => Ok(*leader),
                    _ => Err(format!("leaders {leaders:?}, others {modes:?}")),
                }
            })
    }

    /// Members running and not partitioned.
    fn serving_members(&self) -> Vec<usize> {
        (0..MEMBERS)
            .filter(|&m| self.members[m].is_running() && self.partitions[m].is_none())
            .collect()
    }

    /// Kills member `m` with SIGKILL (by its pid) and reaps it.
    pub fn kill(&mut self, m: usize) -> anyhow::Result<()> {
        self.member_mut(m)?.stop()
    }

    /// Starts the stopped members `ms` again (with their data) and waits until each serves.
    pub fn restart(&mut self, ms: &[usize]) -> anyhow::Result<()> {
        for &m in ms {
            self.member_mut(m)?.relaunch()?;
        }
        for &m in ms {
            self.member_mut(m)?
                .wait_ready()
                .with_context(|| format!("ensemble member {m} rejoining the quorum"))?;
        }
        Ok(())
    }

    /// Drops every packet in and out of member `m`'s namespace (loopback excepted) until
    /// [`heal`](Self::heal): its clients and its peers lose it; it keeps running.
    pub fn partition(&mut self, m: usize) -> anyhow::Result<()> {
        let ns = self.member_netns(m)?.to_owned();
        ensure!(
            self.partitions[m].is_none(),
            "member {m} is already partitioned"
        );
        self.partitions[m] = Some(Partition::isolate(&ns)?);
        Ok(())
    }

    /// Ends member `m`'s partition.
    pub fn heal(&mut self, m: usize) -> anyhow::Result<()> {
        let partition = self.partitions.get_mut(m).and_then(Option::take);
        ensure!(partition.is_some(), "member {m} is not partitioned");
        drop(partition);
        Ok(())
    }

    /// The members that have a client connection from `client` (their `cons` answer).
    pub fn members_with_client(&self, client: IpAddr) -> Vec<usize> {
        let needle = format!("/{client}:");
        self.serving_members()
            .into_iter()
            .filter(|&m| {
                self.members[m]
                    .four_letter_word("cons")
                    .is_ok_and(|cons| cons.contains(&needle))
            })
            .collect()
    }

    /// Runs one zkCli command against the ensemble (every member in its connect string) from the
    /// router namespace.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        cli_in(Some(&self.router), &self.connect_string(), args)
    }
}

impl Drop for ZkEnsemble {
    fn drop(&mut self) {
        self.partitions.clear();
        // Each member kills its JVM and removes its data directory.
        self.members.clear();
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = cmd::run("ip", &["netns", "del", &ns]) {
                eprintln!("ZooKeeper ensemble: cannot delete namespace {ns}: {e:#}");
            }
        }
        // The router namespace may be gone already (the lab dropped first): the bridge went with it.
        if self.bridge && Path::new(NETNS_DIR).join(&self.router).exists() {
            let _ = ip(&self.router, &["link", "del", BRIDGE]);
        }
    }
}

/// An nftables table in one namespace dropping traffic; deleted in `Drop`.
pub struct Partition {
    netns: String,
}

impl Partition {
    /// Drops everything in and out of `netns` except on loopback.
    pub fn isolate(netns: &str) -> anyhow::Result<Partition> {
        Partition::install(
            netns,
            &["iif", "lo", "accept"],
            &["oif", "lo", "accept"],
            "drop",
        )
    }

    /// Drops what `netns` sends to and receives from `prefix` (IPv4), nothing else.
    pub fn from_prefix_v4(netns: &str, prefix: &str) -> anyhow::Result<Partition> {
        Partition::install(
            netns,
            &["ip", "saddr", prefix, "drop"],
            &["ip", "daddr", prefix, "drop"],
            "accept",
        )
    }

    fn install(
        netns: &str,
        input_rule: &[&str],
        output_rule: &[&str],
        policy: &str,
    ) -> anyhow::Result<Partition> {
        nft(netns, &["add", "table", "inet", PARTITION_TABLE])?;
        // From here on Drop deletes the table, also when a later step fails.
        let partition = Partition {
            netns: netns.to_owned(),
        };
        for (chain, rule) in [("input", input_rule), ("output", output_rule)] {
            let spec = format!("{{ type filter hook {chain} priority 0; policy {policy}; }}");
            nft(
                netns,
                &["add", "chain", "inet", PARTITION_TABLE, chain, &spec],
            )?;
            let mut args = vec!["add", "rule", "inet", PARTITION_TABLE, chain];
            args.extend_from_slice(rule);
            nft(netns, &args)?;
        }
        Ok(partition)
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        if let Err(e) = nft(&self.netns, &["delete", "table", "inet", PARTITION_TABLE]) {
            eprintln!("cannot end the partition of {}: {e:#}", self.netns);
        }
    }
}

fn nft(netns: &str, args: &[&str]) -> anyhow::Result<String> {
    cmd::in_netns(netns, "nft", args)
}
