//! The network-namespace lab: an edge deployment with a one-arm load balancer and direct server return.
//!
//! ```text
//! client ns ──veth── router ns ──bridge br-lb── lb0 ns (lb1 … : ECMP over several LBs)
//!                         └──────bridge br-be── b0, b1, b2 … ns (backends)
//! ```
//!
//! The client reaches the VIPs through the router, which routes them to the load balancers. A load
//! balancer's XDP program encapsulates each packet (IPIP / ip6ip6) toward a backend and sends it back
//! out of its only interface; the backend's decap program strips the outer header, its kernel answers
//! from the VIP on `lo`, and the answer goes straight back to the client through the router.
//!
//! [`Lab`] owns everything it creates and removes it in `Drop`, also when a test panics. Labs of one
//! process run one at a time (a global lock), since the machine is small and the tests measure shares.

mod cmd;
mod netns;
mod process;
pub mod topology;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};

use crate::eventually::wait_until;
use cmd::{ethtool_features, ip, sysctl};
pub use netns::run_in_netns;
use process::{NsProcess, log_tail};
use topology::*;

/// Labs of one process run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());
/// Numbers the labs of this process, for unique names.
static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// Where bpffs is mounted; each lab pins under its own directory there.
const BPFFS: &str = "/sys/fs/bpf";
/// The port every backend server listens on.
pub const SERVER_PORT: u16 = 80;
/// How long a started process may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// What to build.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Backend namespaces `b0 …`, each running a lab server on port 80.
    pub backends: usize,
    /// Load-balancer namespaces `lb0 …` (more than one: the router spreads VIP traffic with ECMP).
    pub lbs: usize,
    /// Run `lb decap` on every backend (needed for traffic through a load balancer).
    pub decap: bool,
    /// The `lb` binary; default `$LB_BIN`, else the workspace's `target/{release,debug}/lb`.
    pub lb_bin: Option<PathBuf>,
    /// The `lab-server` binary; default `$LAB_SERVER_BIN`, else beside the running executable.
    pub server_bin: Option<PathBuf>,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self {
            backends: 3,
            lbs: 1,
            decap: true,
            lb_bin: None,
            server_bin: None,
        }
    }
}

/// A running lab. Dropping it stops its processes and deletes its namespaces, pins and files.
pub struct Lab {
    id: String,
    opts: LabOptions,
    server_bin: PathBuf,
    /// Temporary directory: configs and process logs.
    dir: PathBuf,
    /// `/sys/fs/bpf/lbt-<id>`, once created.
    pin_root: Option<PathBuf>,
    /// Namespaces this lab created, in creation order.
    namespaces: Vec<String>,
    servers: Vec<Option<NsProcess>>,
    decaps: Vec<Option<NsProcess>>,
    lbs: Vec<Option<NsProcess>>,
    /// `lb register` on each backend (see `start_register`).
    registers: Vec<Option<NsProcess>>,
    /// XDP_PASS-like programs on the router's ports toward the load balancers (see `start_peer_xdp`).
    peer_xdp: Vec<NsProcess>,
    /// Dropped last, after the cleanup in `Drop::drop`.
    _serial: MutexGuard<'static, ()>,
}

impl Lab {
    /// Builds the topology, starts a server on every backend and, with `decap`, `lb decap` there.
    /// Waits for the lab lock first. A failure removes whatever was already created.
    pub fn start(opts: LabOptions) -> anyhow::Result<Lab> {
        ensure!(
            (1..=MAX_BACKENDS).contains(&opts.backends),
            "a lab has 1..={MAX_BACKENDS} backends, not {}",
            opts.backends
        );
        ensure!(
            (1..=MAX_LBS).contains(&opts.lbs),
            "a lab has 1..={MAX_LBS} load balancers, not {}",
            opts.lbs
        );
        let server_bin = match &opts.server_bin {
            Some(p) => p.clone(),
            None => find_server_bin()?,
        };
        let serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let id = format!(
            "{}x{}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("lbt-{id}"));
        std::fs::create_dir(&dir)
            .with_context(|| format!("cannot create the lab directory {}", dir.display()))?;
        let mut lab = Lab {
            id,
            server_bin,
            dir,
            pin_root: None,
            namespaces: Vec::new(),
            servers: (0..opts.backends).map(|_| None).collect(),
            decaps: (0..opts.backends).map(|_| None).collect(),
            lbs: (0..opts.lbs).map(|_| None).collect(),
            registers: (0..opts.backends).map(|_| None).collect(),
            peer_xdp: Vec::new(),
            opts,
            _serial: serial,
        };
        lab.build_topology()?;
        for i in 0..lab.opts.backends {
            lab.start_backend_server(i)?;
        }
        if lab.opts.decap {
            for i in 0..lab.opts.backends {
                lab.start_decap(i)?;
            }
            for lb in 0..lab.opts.lbs {
                lab.start_peer_xdp(lb)?;
            }
        }
        Ok(lab)
    }

    /// Prefix of every namespace name of this lab (`lbt<pid>x<n>-`).
    pub fn netns_prefix(&self) -> String {
        format!("lbt{}-", self.id)
    }

    pub fn client_netns(&self) -> String {
        self.netns("client")
    }

    pub fn router_netns(&self) -> String {
        self.netns("router")
    }

    pub fn lb_netns(&self, lb: usize) -> String {
        self.netns(&format!("lb{lb}"))
    }

    pub fn backend_netns(&self, i: usize) -> String {
        self.netns(&Self::backend_name(i))
    }

    fn netns(&self, role: &str) -> String {
        format!("{}{role}", self.netns_prefix())
    }

    /// The lab's temporary directory (configs, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What backend `i`'s server answers: `b0`, `b1`, …
    pub fn backend_name(i: usize) -> String {
        format!("b{i}")
    }

    pub fn backend_v4(i: usize) -> Ipv4Addr {
        topology::backend_v4(i)
    }

    pub fn backend_v6(i: usize) -> Ipv6Addr {
        topology::backend_v6(i)
    }

    /// Backend `i`'s server address in one family.
    pub fn backend_addr(i: usize, v6: bool) -> SocketAddr {
        let ip = if v6 {
            IpAddr::V6(backend_v6(i))
        } else {
            IpAddr::V4(backend_v4(i))
        };
        SocketAddr::new(ip, SERVER_PORT)
    }

    /// `198.18.100.n`; `n` in `1..=4` is configured on every backend.
    pub fn vip_v4(n: u8) -> Ipv4Addr {
        topology::vip_v4(n)
    }

    /// `2001:db8:100::n`.
    pub fn vip_v6(n: u8) -> Ipv6Addr {
        topology::vip_v6(n)
    }

    /// Runs `f` on a thread inside the client namespace (see [`run_in_netns`]).
    pub fn in_client<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        run_in_netns(&self.client_netns(), f)
    }

    // ---- topology ------------------------------------------------------------------------------

    fn build_topology(&mut self) -> anyhow::Result<()> {
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
            // The LB answers with XDP_TX; a veth delivers XDP_TX frames only to a peer with NAPI
            // (GRO on; with `decap` an XDP program is attached to this port too, see start_peer_xdp).
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

        self.route_vips(&router)
    }

    /// The router sends the VIP prefixes to the load balancers; to several with L4-hashed ECMP.
    fn route_vips(&self, router: &str) -> anyhow::Result<()> {
        let all: Vec<usize> = (0..self.opts.lbs).collect();
        self.replace_vip_routes(router, &all, "add")
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

    // ---- processes -----------------------------------------------------------------------------

    /// Starts backend `i`'s lab server (port 80, both families) and waits until it listens.
    pub fn start_backend_server(&mut self, i: usize) -> anyhow::Result<()> {
        ensure!(
            i < self.opts.backends,
            "backend {i} does not exist (the lab has {})",
            self.opts.backends
        );
        ensure!(
            self.servers[i].is_none(),
            "backend {i}'s server is already running"
        );
        let name = Self::backend_name(i);
        let args: Vec<String> = vec![
            "--name".into(),
            name.clone(),
            "--listen".into(),
            format!("0.0.0.0:{SERVER_PORT}"),
            "--listen".into(),
            format!("[::]:{SERVER_PORT}"),
        ];
        let log = self.dir.join(format!("{name}-server.log"));
        let proc = NsProcess::spawn_and_wait_line(
            &format!("{name} server"),
            &self.backend_netns(i),
            &self.server_bin,
            &args,
            &log,
            "ready",
            READY_TIMEOUT,
        )?;
        self.servers[i] = Some(proc);
        Ok(())
    }

    /// Stops backend `i`'s lab server (its open connections are reset by the kernel).
    pub fn stop_backend_server(&mut self, i: usize) -> anyhow::Result<()> {
        let proc = self.servers.get_mut(i).and_then(Option::take);
        ensure!(proc.is_some(), "backend {i}'s server is not running");
        Ok(())
    }

    /// A veth delivers native XDP_TX frames only to a peer whose own XDP receive path is running
    /// (on this kernel GRO alone is not enough), so the router's port toward load balancer `lb` gets
    /// an XDP program too. `lb decap` is used because it passes every packet not addressed to the
    /// router itself untouched (none is), so it acts as XDP_PASS.
    fn start_peer_xdp(&mut self, lb: usize) -> anyhow::Result<()> {
        let ns = self.router_netns();
        let port = format!("lb{lb}");
        let pin_dir = self.pin_root()?.join(format!("router-{port}"));
        let args: Vec<String> = vec![
            "decap".into(),
            "--iface".into(),
            port.clone(),
            "--pin-dir".into(),
            path_arg(&pin_dir)?,
        ];
        let log = self.dir.join(format!("router-{port}-xdp.log"));
        let mut proc = NsProcess::spawn(
            &format!("router {port} xdp"),
            &ns,
            &self.lb_bin()?,
            &args,
            &log,
        )?;
        wait_ready(&mut proc, || {
            let link = ip(&ns, &["link", "show", "dev", &port])?;
            ensure!(
                link.contains("prog/xdp"),
                "no XDP program on {port} of {ns}"
            );
            Ok(())
        })?;
        self.peer_xdp.push(proc);
        Ok(())
    }

    /// Starts `lb decap` on backend `i` and waits until its XDP program is attached.
    fn start_decap(&mut self, i: usize) -> anyhow::Result<()> {
        let ns = self.backend_netns(i);
        let name = Self::backend_name(i);
        let pin_dir = self.pin_root()?.join(&name);
        let args: Vec<String> = vec![
            "decap".into(),
            "--iface".into(),
            "eth0".into(),
            "--pin-dir".into(),
            path_arg(&pin_dir)?,
        ];
        let log = self.dir.join(format!("{name}-decap.log"));
        let mut proc =
            NsProcess::spawn(&format!("{name} decap"), &ns, &self.lb_bin()?, &args, &log)?;
        wait_ready(&mut proc, || {
            let link = ip(&ns, &["link", "show", "dev", "eth0"])?;
            ensure!(link.contains("prog/xdp"), "no XDP program on eth0 of {ns}");
            Ok(())
        })?;
        self.decaps[i] = Some(proc);
        Ok(())
    }

    /// Writes `config_toml` to the lab directory and starts `lb run` in load balancer `lb`'s
    /// namespace with small map sizes and `extra_args`; waits (20 s at most) until `lb status`
    /// answers. On failure the error carries the daemon's log tail.
    pub fn start_lb(
        &mut self,
        lb: usize,
        config_toml: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<()> {
        self.check_lb_free(lb)?;
        let config = self.lb_config_path(lb);
        std::fs::write(&config, config_toml)
            .with_context(|| format!("cannot write {}", config.display()))?;
        let source = vec!["--config".to_owned(), path_arg(&config)?];
        self.spawn_lb(lb, source, extra_args)
    }

    /// Starts `lb run --zk ZK` (following ZooKeeper, no configuration file) in load balancer `lb`'s
    /// namespace, like [`start_lb`](Self::start_lb) otherwise. `zk` must be reachable from the LB's
    /// namespace (e.g. a server in the router namespace on [`ROUTER_LBS_V4`]).
    pub fn start_lb_zk(&mut self, lb: usize, zk: &str, extra_args: &[&str]) -> anyhow::Result<()> {
        self.check_lb_free(lb)?;
        self.spawn_lb(lb, vec!["--zk".to_owned(), zk.to_owned()], extra_args)
    }

    fn check_lb_free(&self, lb: usize) -> anyhow::Result<()> {
        ensure!(
            lb < self.opts.lbs,
            "load balancer {lb} does not exist (the lab has {})",
            self.opts.lbs
        );
        ensure!(
            self.lbs[lb].is_none(),
            "load balancer {lb} is already running"
        );
        Ok(())
    }

    /// `lb run` with `source_args` (`--config FILE` or `--zk HOST:PORT`); waits until it answers.
    fn spawn_lb(
        &mut self,
        lb: usize,
        source_args: Vec<String>,
        extra_args: &[&str],
    ) -> anyhow::Result<()> {
        self.pin_root()?;
        let pin_dir = self.lb_pin_dir(lb);
        let mut args: Vec<String> = [
            "run",
            "--iface",
            "eth0",
            "--pin-dir",
            &path_arg(&pin_dir)?,
            "--max-services",
            "16",
            "--max-backends",
            "256",
            "--table-size",
            "4099",
            "--flow-table-size",
            "65536",
            "--persist-table-size",
            "4096",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(source_args);
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let log = self.lb_log_path(lb);
        let mut proc = NsProcess::spawn(
            &format!("lb{lb}"),
            &self.lb_netns(lb),
            &self.lb_bin()?,
            &args,
            &log,
        )?;
        let lb_bin = self.lb_bin()?;
        let ns = self.lb_netns(lb);
        // Without decap no traffic can go through a load balancer (labs that test the lab itself,
        // with a stand-in `lb`), so only `lb status` is waited for there.
        let wait_attached = self.opts.decap;
        wait_ready(&mut proc, || {
            lb_status(&lb_bin, &pin_dir)?;
            if !wait_attached {
                return Ok(());
            }
            // Maps are pinned before the program is attached; wait for the attachment too.
            let link = ip(&ns, &["link", "show", "dev", "eth0"])?;
            ensure!(
                link.contains("prog/xdp"),
                "no XDP program on eth0 of {ns} yet"
            );
            Ok(())
        })?;
        self.lbs[lb] = Some(proc);
        Ok(())
    }

    /// Starts `lb register --zk ZK --service SERVICE --addr <backend i's address> ARGS...` inside
    /// backend `i`'s namespace (its log is `b<i>-register.log` in the lab directory). `zk` must be
    /// reachable from the backends (e.g. a server in the router namespace on [`ROUTER_BACKENDS_V4`]).
    /// Returns at once; wait for the node (or the service in `lb status`) to appear.
    pub fn start_register(
        &mut self,
        i: usize,
        zk: &str,
        service: &str,
        v6: bool,
        extra_args: &[&str],
    ) -> anyhow::Result<()> {
        ensure!(
            i < self.opts.backends,
            "backend {i} does not exist (the lab has {})",
            self.opts.backends
        );
        ensure!(
            self.registers[i].is_none(),
            "backend {i} already runs `lb register`"
        );
        let mut args: Vec<String> = vec![
            "register".into(),
            "--zk".into(),
            zk.into(),
            "--service".into(),
            service.into(),
            "--addr".into(),
            Self::backend_addr(i, v6).to_string(),
        ];
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let name = Self::backend_name(i);
        let log = self.dir.join(format!("{name}-register.log"));
        let proc = NsProcess::spawn(
            &format!("{name} register"),
            &self.backend_netns(i),
            &self.lb_bin()?,
            &args,
            &log,
        )?;
        self.registers[i] = Some(proc);
        Ok(())
    }

    /// Sends a signal to backend `i`'s `lb register`.
    pub fn signal_register(&mut self, i: usize, signal: libc::c_int) -> anyhow::Result<()> {
        match self.registers.get_mut(i) {
            Some(Some(proc)) => proc.signal(signal),
            _ => bail!("backend {i} runs no `lb register`"),
        }
    }

    /// Waits (at most `timeout`) for backend `i`'s `lb register` to exit and forgets it; returns how
    /// it ended.
    pub fn wait_register_exit(
        &mut self,
        i: usize,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let Some(Some(proc)) = self.registers.get_mut(i) else {
            bail!("backend {i} runs no `lb register`");
        };
        let mut exit = None;
        wait_until(timeout, || {
            exit = proc.exit_status();
            exit.is_some()
        });
        match exit {
            Some(status) => {
                self.registers[i] = None;
                Ok(status)
            }
            None => bail!(
                "backend {i}'s `lb register` did not exit within {timeout:?}\n{}",
                proc.log_tail()
            ),
        }
    }

    /// Runs `lb ARGS` to completion inside the lab namespace `netns` (e.g. the admin CLI next to a
    /// ZooKeeper server in the router namespace) and returns its stdout.
    pub fn run_lb_in(&self, netns: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec![
            format!("--net={}/{netns}", cmd::NETNS_DIR),
            "--".to_owned(),
            path_arg(&self.lb_bin()?)?,
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        cmd::run("nsenter", &all)
    }

    /// Backend `i`'s `lb register` log so far.
    pub fn register_log(&self, i: usize) -> anyhow::Result<String> {
        let log = self
            .dir
            .join(format!("{}-register.log", Self::backend_name(i)));
        std::fs::read_to_string(&log).with_context(|| format!("cannot read {}", log.display()))
    }

    /// Points the router's VIP routes at the load balancers `lbs` only (one: a plain route; several:
    /// ECMP), as a routing change or an LB taken out of service would. Flows move between LBs.
    pub fn route_vips_via(&self, lbs: &[usize]) -> anyhow::Result<()> {
        ensure!(
            !lbs.is_empty() && lbs.iter().all(|&lb| lb < self.opts.lbs),
            "route_vips_via({lbs:?}): the lab has load balancers 0..{}",
            self.opts.lbs
        );
        self.replace_vip_routes(&self.router_netns(), lbs, "replace")
    }

    /// Stops load balancer `lb`'s daemon.
    pub fn stop_lb(&mut self, lb: usize) -> anyhow::Result<()> {
        let proc = self.lbs.get_mut(lb).and_then(Option::take);
        ensure!(proc.is_some(), "load balancer {lb} is not running");
        Ok(())
    }

    /// Replaces load balancer `lb`'s configuration file atomically (write + rename), then sends the
    /// daemon SIGHUP.
    pub fn rewrite_config(&mut self, lb: usize, config_toml: &str) -> anyhow::Result<()> {
        let config = self.lb_config_path(lb);
        let tmp = config.with_extension("toml.tmp");
        std::fs::write(&tmp, config_toml)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &config)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), config.display()))?;
        self.signal_lb(lb, libc::SIGHUP)
    }

    /// Sends a signal to load balancer `lb`'s daemon.
    pub fn signal_lb(&mut self, lb: usize, signal: libc::c_int) -> anyhow::Result<()> {
        match self.lbs.get_mut(lb) {
            Some(Some(proc)) => proc.signal(signal),
            _ => bail!("load balancer {lb} is not running"),
        }
    }

    /// Fails (with its log tail) when load balancer `lb`'s daemon is not running any more.
    pub fn check_lb_running(&mut self, lb: usize) -> anyhow::Result<()> {
        match self.lbs.get_mut(lb) {
            Some(Some(proc)) => proc.check_running(),
            _ => bail!("load balancer {lb} is not running"),
        }
    }

    /// `lb status --json` of load balancer `lb`.
    pub fn lb_status_json(&self, lb: usize) -> anyhow::Result<serde_json::Value> {
        let out = cmd::run(
            &path_arg(&self.lb_bin()?)?,
            &[
                "status",
                "--pin-dir",
                &path_arg(&self.lb_pin_dir(lb))?,
                "--json",
            ],
        )?;
        serde_json::from_str(&out)
            .with_context(|| format!("lb{lb}: `lb status --json` printed no JSON: {out}"))
    }

    /// `lb status` of load balancer `lb`, as the operator sees it.
    pub fn lb_status_text(&self, lb: usize) -> anyhow::Result<String> {
        cmd::run(
            &path_arg(&self.lb_bin()?)?,
            &["status", "--pin-dir", &path_arg(&self.lb_pin_dir(lb))?],
        )
    }

    /// Everything load balancer `lb`'s daemon has logged so far.
    pub fn lb_log(&self, lb: usize) -> anyhow::Result<String> {
        let log = self.lb_log_path(lb);
        std::fs::read_to_string(&log).with_context(|| format!("cannot read {}", log.display()))
    }

    pub fn lb_config_path(&self, lb: usize) -> PathBuf {
        self.dir.join(format!("lb{lb}.toml"))
    }

    fn lb_log_path(&self, lb: usize) -> PathBuf {
        self.dir.join(format!("lb{lb}.log"))
    }

    /// Load balancer `lb`'s pin directory (under the lab's bpffs directory).
    pub fn lb_pin_dir(&self, lb: usize) -> PathBuf {
        self.pin_root_path().join(format!("lb{lb}"))
    }

    /// The lab's bpffs directory (`/sys/fs/bpf/lbt-<id>`); created when the first daemon starts.
    pub fn pin_root_path(&self) -> PathBuf {
        Path::new(BPFFS).join(format!("lbt-{}", self.id))
    }

    /// Creates the lab's bpffs directory on first use.
    fn pin_root(&mut self) -> anyhow::Result<PathBuf> {
        if let Some(root) = &self.pin_root {
            return Ok(root.clone());
        }
        ensure!(
            bpffs_mounted()?,
            "bpffs is not mounted at {BPFFS}; run `cargo xtask setup`"
        );
        let root = self.pin_root_path();
        std::fs::create_dir(&root).with_context(|| format!("cannot create {}", root.display()))?;
        self.pin_root = Some(root.clone());
        Ok(root)
    }

    fn lb_bin(&self) -> anyhow::Result<PathBuf> {
        match &self.opts.lb_bin {
            Some(p) => Ok(p.clone()),
            None => find_lb_bin(),
        }
    }

    /// Prints the tail of every log of this lab to stderr (what a failing test wants to see).
    pub fn dump_logs(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut logs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let name = log
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            eprintln!("{}", log_tail(&name, &log, 30));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("lab {}: a test failed; the logs:", self.id);
            self.dump_logs();
        }
        // Daemons first (they detach their programs), then what the namespaces hold.
        for proc in self
            .registers
            .iter_mut()
            .chain(&mut self.lbs)
            .chain(&mut self.decaps)
            .chain(&mut self.servers)
        {
            drop(proc.take());
        }
        self.peer_xdp.clear();
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = cmd::run("ip", &["netns", "del", &ns]) {
                eprintln!("lab {}: cannot delete namespace {ns}: {e:#}", self.id);
            }
        }
        if let Some(root) = self.pin_root.take()
            && let Err(e) = std::fs::remove_dir_all(&root)
        {
            eprintln!("lab {}: cannot remove {}: {e}", self.id, root.display());
        }
        if std::env::var_os("LAB_KEEP_LOGS").is_some() {
            eprintln!(
                "lab {}: kept {} (LAB_KEEP_LOGS)",
                self.id,
                self.dir.display()
            );
        } else if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("lab {}: cannot remove {}: {e}", self.id, self.dir.display());
        }
    }
}

/// Polls `ready` until it succeeds (at most [`READY_TIMEOUT`]); fails at once, with the log's tail,
/// when the process exits meanwhile.
fn wait_ready(
    proc: &mut NsProcess,
    mut ready: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut last = None;
    let became_ready = wait_until(READY_TIMEOUT, || {
        if proc.check_running().is_err() {
            return true;
        }
        last = ready().err();
        last.is_none()
    });
    proc.check_running().context("it exited while starting")?;
    match (became_ready, last) {
        (true, _) => Ok(()),
        (false, e) => Err(anyhow::anyhow!(
            "not ready within {READY_TIMEOUT:?}: {}\n{}",
            e.map(|e| format!("{e:#}")).unwrap_or_default(),
            proc.log_tail()
        )),
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

fn path_arg(path: &Path) -> anyhow::Result<String> {
    path.to_str()
        .map(str::to_string)
        .with_context(|| format!("path {} is not UTF-8", path.display()))
}

fn lb_status(lb_bin: &Path, pin_dir: &Path) -> anyhow::Result<()> {
    cmd::run(
        &path_arg(lb_bin)?,
        &["status", "--pin-dir", &path_arg(pin_dir)?, "--json"],
    )
    .map(drop)
}

fn bpffs_mounted() -> anyhow::Result<bool> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    Ok(mounts.lines().any(|l| {
        let mut f = l.split_whitespace().skip(1);
        f.next() == Some(BPFFS) && f.next() == Some("bpf")
    }))
}

/// The first of `candidates` that exists.
fn first_existing(what: &str, hint: &str, candidates: Vec<PathBuf>) -> anyhow::Result<PathBuf> {
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| {
            let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            format!("cannot find {what} (tried {}); {hint}", tried.join(", "))
        })
}

/// `$LB_BIN`, else the workspace's release or debug build.
fn find_lb_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("LB_BIN") {
        return Ok(PathBuf::from(p));
    }
    let target = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target");
    first_existing(
        "the lb binary",
        "set LB_BIN or build it (`cargo xtask build`)",
        vec![
            target.join("release").join("lb"),
            target.join("debug").join("lb"),
        ],
    )
}

/// `$LAB_SERVER_BIN`, else beside the running executable (a binary of this package) or one directory
/// up (an integration test in `target/<profile>/deps`).
fn find_server_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("LAB_SERVER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let candidates = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("lab-server"))
        .collect();
    first_existing(
        "the lab-server binary",
        "set LAB_SERVER_BIN or build it (`cargo build -p lb-tests --bins`)",
        candidates,
    )
}
