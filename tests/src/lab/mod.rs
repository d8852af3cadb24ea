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

mod bgp;
pub mod cmd;
mod daemons;
pub mod netns;
mod process;
pub mod tables;
pub mod topology;
mod wiring;
mod xdp_pass;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, ensure};

pub use daemons::lb_bin;
use lb_userspace::owner::lock_file_path;
use lb_userspace::report::status_file_path;
pub use netns::{PrivateNetns, run_in_netns, with_private_netns};
pub use process::NsProcess;
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
const READY_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// A daemon counts as started only once an XDP program is on its interface (off for stand-ins
    /// of `lb` that load no program).
    pub wait_for_xdp: bool,
    /// A command `lb run` is started through (`setpriv --bounding-set=...`: the privilege tests);
    /// empty: `lb run` itself. It must exec `lb`, so the daemon keeps the pid it was spawned with.
    pub lb_run_wrapper: Vec<String>,
    /// Route the VIPs by BGP instead of statically: BIRD in the router and every LB namespace, and
    /// `lb run` announcing through it (see [`bgp`]).
    pub bgp: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self {
            backends: 3,
            lbs: 1,
            decap: true,
            lb_bin: None,
            server_bin: None,
            wait_for_xdp: true,
            lb_run_wrapper: Vec::new(),
            bgp: false,
        }
    }
}

/// A running lab. Dropping it stops its processes and deletes its namespaces, pins and files.
///
/// Keep a lab on the thread that started it: its processes get SIGTERM when that thread ends (so a
/// killed test leaves no daemon running).
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
    /// The BIRDs of a BGP lab (the router's first), stopped after the daemons.
    birds: Vec<NsProcess>,
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
            None => daemons::find_server_bin()?,
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
            birds: Vec::new(),
            opts,
            _serial: serial,
        };
        lab.build_topology()?;
        if lab.opts.bgp {
            lab.start_bgp()?;
        }
        for i in 0..lab.opts.backends {
            lab.start_backend_server(i)?;
        }
        if lab.opts.decap {
            for i in 0..lab.opts.backends {
                lab.start_decap(i)?;
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
        // After the daemons, which withdraw through them as they stop.
        for bird in self.birds.drain(..).rev() {
            drop(bird);
        }
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
        // A daemon leaves its status and lock files when it exits without detaching.
        for lb in 0..self.opts.lbs {
            let pin_dir = self.lb_pin_dir(lb);
            for file in [status_file_path(&pin_dir), lock_file_path(&pin_dir)] {
                if let Err(e) = std::fs::remove_file(&file)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    eprintln!("lab {}: cannot remove {}: {e}", self.id, file.display());
                }
            }
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
