//! The lab with ZooKeeper: a [`Lab`] whose load balancers follow a private [`ZkServer`] running in
//! the router namespace (so every LB and backend reaches it), or a three-member [`ZkEnsemble`]
//! attached to the router ([`ZkLab::start_ensemble`]), driven with the operator's tools (the admin
//! CLI `lb service|backend …`, zkCli hand edits). Used by the lab tests, the demo and the
//! control-plane bench.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, ensure};

use crate::config::ServiceConfig;
use crate::eventually::Eventually;
use crate::lab::topology::{ROUTER_BACKENDS_V4, ROUTER_LBS_V4};
use crate::lab::{Lab, LabOptions};
use crate::scenario::{Status, status_serves};
use crate::zk_ensemble::ZkEnsemble;
use crate::zk_server::{ZkServer, ZkServerOptions};

/// How long a ZooKeeper change may take to reach the data plane (debounce 100 ms, status polling).
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the lab's ZooKeeper is, as its clients are told.
pub trait LabZooKeeper {
    /// The connect string from the router namespace (the admin CLI, zkCli).
    fn router_connect(&self) -> String;
    /// The connect string from the load balancers' namespaces.
    fn lb_connect(&self) -> String;
    /// The connect string from the backends' namespaces.
    fn backend_connect(&self) -> String;
    /// One zkCli command, run from the router namespace.
    fn cli(&self, args: &[&str]) -> anyhow::Result<String>;
}

/// One server in the router namespace, on every address.
impl LabZooKeeper for ZkServer {
    fn router_connect(&self) -> String {
        self.connect_string()
    }

    fn lb_connect(&self) -> String {
        format!("{ROUTER_LBS_V4}:{}", self.port())
    }

    fn backend_connect(&self) -> String {
        format!("{ROUTER_BACKENDS_V4}:{}", self.port())
    }

    fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        ZkServer::cli(self, args)
    }
}

/// The ensemble's members, reached through the router from everywhere.
impl LabZooKeeper for ZkEnsemble {
    fn router_connect(&self) -> String {
        self.connect_string()
    }

    fn lb_connect(&self) -> String {
        self.connect_string()
    }

    fn backend_connect(&self) -> String {
        self.connect_string()
    }

    fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        ZkEnsemble::cli(self, args)
    }
}

/// A lab and its ZooKeeper (one server unless started with [`ZkLab::start_ensemble`]). Fields drop
/// in order: the lab's processes (daemons, registrations) stop before ZooKeeper does; each removes
/// what it created, also when a test fails.
pub struct ZkLab<Z: LabZooKeeper = ZkServer> {
    pub lab: Lab,
    pub zk: Z,
    /// Print every admin command before running it, as the operator would type it (the demo).
    pub echo: bool,
}

impl ZkLab<ZkEnsemble> {
    /// Starts the lab as `opts` say, then a three-member ensemble attached to its router.
    pub fn start_ensemble(opts: LabOptions) -> anyhow::Result<ZkLab<ZkEnsemble>> {
        let lab = Lab::start(opts).context("starting the lab")?;
        let zk = ZkEnsemble::start(&lab.router_netns(), &lab.netns_prefix())
            .context("starting the ZooKeeper ensemble")?;
        Ok(ZkLab {
            lab,
            zk,
            echo: false,
        })
    }
}

impl ZkLab<ZkServer> {
    /// Starts the lab as `opts` say, then ZooKeeper in its router namespace on every address.
    pub fn start(opts: LabOptions) -> anyhow::Result<ZkLab> {
        let lab = Lab::start(opts).context("starting the lab")?;
        let zk = ZkServer::start_with(ZkServerOptions {
            netns: Some(lab.router_netns()),
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            ..ZkServerOptions::default()
        })
        .context("starting ZooKeeper in the router namespace")?;
        Ok(ZkLab {
            lab,
            zk,
            echo: false,
        })
    }
}

impl<Z: LabZooKeeper> ZkLab<Z> {
    /// The connect string the load balancers use.
    pub fn lb_connect(&self) -> String {
        self.zk.lb_connect()
    }

    /// The connect string the backends use.
    pub fn backend_connect(&self) -> String {
        self.zk.backend_connect()
    }

    /// `lb ARGS --zk CONNECT`, run in the router namespace (the operator's admin CLI); its stdout.
    pub fn admin(&self, args: &[&str]) -> anyhow::Result<String> {
        let connect = self.zk.router_connect();
        if self.echo {
            println!("$ lb {} --zk {connect}", args.join(" "));
        }
        let mut all = args.to_vec();
        all.extend(["--zk", &connect]);
        self.lab
            .run_lb_in(&self.lab.router_netns(), &all)
            .with_context(|| format!("lb {}", args.join(" ")))
    }

    /// A hand edit with zkCli (`create PATH DATA`, `set PATH DATA`, `delete PATH`); fails when
    /// zkCli says the node is missing or already there.
    pub fn zkcli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.zk.cli(args)?;
        ensure!(
            !out.contains("Node does not exist") && !out.contains("Node already exists"),
            "zkCli {args:?}: {out}"
        );
        Ok(out)
    }

    /// `lb service put` and `lb backend put` for every backend of `svc`.
    pub fn put(&self, svc: &ServiceConfig) -> anyhow::Result<()> {
        let vip = svc.vip.to_string();
        self.admin(&[
            "service",
            "put",
            &svc.name,
            "--vip",
            &vip,
            "--scheduler",
            &svc.scheduler,
        ])?;
        for b in &svc.backends {
            self.put_backend(&svc.name, b.addr, b.weight)?;
        }
        Ok(())
    }

    /// `lb backend put SERVICE ADDR --weight W`.
    pub fn put_backend(&self, service: &str, addr: SocketAddr, weight: u32) -> anyhow::Result<()> {
        self.admin(&[
            "backend",
            "put",
            service,
            &addr.to_string(),
            "--weight",
            &weight.to_string(),
        ])
        .map(drop)
    }

    /// `lb run --zk` on load balancer `lb` (see [`Lab::start_lb_zk`]).
    pub fn start_lb(&mut self, lb: usize, extra_args: &[&str]) -> anyhow::Result<()> {
        let connect = self.lb_connect();
        self.lab.start_lb_zk(lb, &connect, extra_args)
    }

    /// `lb status --json` of load balancer `lb`.
    pub fn status(&self, lb: usize) -> anyhow::Result<Status> {
        self.lab.lb_status_json(lb)
    }

    /// Waits (at most [`APPLY_TIMEOUT`]) until load balancer `lb` serves exactly `svc` to new
    /// connections; the error carries the last status and the daemon's log.
    pub fn wait_serves(&self, lb: usize, svc: &ServiceConfig) -> anyhow::Result<()> {
        Eventually::new(format!("lb{lb} to serve {svc:?}"), APPLY_TIMEOUT)
            .poll(|| match self.lab.lb_status_json(lb) {
                Ok(s) if status_serves(&s, svc) => Ok(()),
                Ok(s) => Err(format!("{s:#?}")),
                Err(e) => Err(format!("{e:#}")),
            })
            .with_context(|| format!("lb{lb}'s log:\n{}", self.lab.lb_log(lb).unwrap_or_default()))
    }
}
