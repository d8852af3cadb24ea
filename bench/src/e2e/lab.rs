//! The bench's lab: the `lb-tests` lab with ZooKeeper (client, router, one LB, three backends with
//! `lb decap`), nginx instead of the lab server on every backend, and each [`Mode`] entered and
//! left on it. Everything a mode adds is held by a guard and removed when it drops; the lab
//! removes the rest (namespaces, pins, processes) when it drops, also on failure.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, bail, ensure};
use lb_tests::config::{BackendConfig, ServiceConfig};
use lb_tests::eventually::Eventually;
use lb_tests::lab::{NsProcess, cmd};
use lb_tests::zk_lab::{APPLY_TIMEOUT, ZkLab};
use lb_tests::{Lab, LabOptions};

use super::floor::{FloorProgram, set_floor_macs};
use super::mode::Mode;
use super::nftables::NftBalancer;
use super::route::IpGuard;
use super::servers::{nginx_dir, start_haproxy, start_nginx};

/// Backends of the lab.
pub const BACKENDS: usize = 3;
/// The one load balancer's index.
const LB: usize = 0;
/// The service `lb` modes configure in ZooKeeper.
const SERVICE: &str = "web";

/// The lab and its nginx servers (dropped first).
pub struct E2eLab {
    nginx: Vec<NsProcess>,
    pub zk: ZkLab,
}

/// What a mode added to the lab; dropping it removes that (an `lb` mode's daemon is stopped by
/// [`E2eLab::leave`], else by the lab).
pub enum ActiveMode {
    Direct(IpGuard),
    Floor(FloorProgram),
    Lb { pid: u32 },
    Nftables(NftBalancer),
    Haproxy { proc: NsProcess, _vip: IpGuard },
}

impl ActiveMode {
    /// The process of the LB namespace whose CPU is counted (`lb run`, HAProxy).
    pub fn lb_process(&self) -> Option<u32> {
        match self {
            ActiveMode::Lb { pid } => Some(*pid),
            ActiveMode::Haproxy { proc, .. } => Some(proc.pid()),
            _ => None,
        }
    }
}

impl E2eLab {
    pub fn start() -> anyhow::Result<E2eLab> {
        let mut zk = ZkLab::start(LabOptions {
            backends: BACKENDS,
            ..LabOptions::default()
        })?;
        let lab = &mut zk.lab;
        let (client, router, lbns) = (lab.client_netns(), lab.router_netns(), lab.lb_netns(LB));
        // Many short connections: every port of the range, TIME_WAIT ports reused (timestamps on).
        for ns in [&client, &lbns] {
            cmd::sysctl(
                ns,
                &[
                    "net.ipv4.ip_local_port_range=1024 65535",
                    "net.ipv4.tcp_tw_reuse=1",
                    "net.core.somaxconn=4096",
                ],
            )?;
        }
        set_floor_macs(&lbns, &router)?;
        lab.attach_pass_to_router_port(LB)?;
        let mut nginx = Vec::new();
        for i in 0..BACKENDS {
            lab.stop_backend_server(i)?;
            let ns = lab.backend_netns(i);
            cmd::sysctl(&ns, &["net.core.somaxconn=4096"])?;
            let name = Lab::backend_name(i);
            let dir = nginx_dir(lab.dir(), &name);
            nginx.push(
                start_nginx(&ns, &dir, &name, &router, Lab::backend_addr(i, false))
                    .with_context(|| format!("starting nginx on {name}"))?,
            );
        }
        Ok(E2eLab { nginx, zk })
    }

    pub fn vip() -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Lab::vip_v4(1)), 80)
    }

    pub fn backends() -> Vec<SocketAddr> {
        (0..BACKENDS).map(|i| Lab::backend_addr(i, false)).collect()
    }

    pub fn lab(&self) -> &Lab {
        &self.zk.lab
    }

    /// The router ports the counters are read from: toward the LB, then toward each backend.
    pub fn router_ports() -> Vec<String> {
        std::iter::once(format!("lb{LB}"))
            .chain((0..BACKENDS).map(Lab::backend_name))
            .collect()
    }

    /// Sets `mode` up: nothing else of another mode is in place (checked).
    pub fn enter(&mut self, mode: Mode) -> anyhow::Result<ActiveMode> {
        for proc in &mut self.nginx {
            proc.check_running()?;
        }
        let lbns = self.lab().lb_netns(LB);
        ensure!(
            !self.lab().lb_has_xdp(LB)?,
            "an XDP program is still on the LB's eth0 before {}",
            mode.name()
        );
        let vip = Self::vip();
        Ok(match mode {
            Mode::Direct => {
                let b0 = Lab::backend_v4(0).to_string();
                let route = format!("{}/32", vip.ip());
                ActiveMode::Direct(IpGuard::add(
                    &self.lab().router_netns(),
                    &["route"],
                    &[&route, "via", &b0],
                )?)
            }
            Mode::DirectEcmp => {
                let route = format!("{}/32", vip.ip());
                let hops: Vec<String> = (0..BACKENDS)
                    .map(|i| Lab::backend_v4(i).to_string())
                    .collect();
                let mut args = vec![route.as_str()];
                for hop in &hops {
                    args.extend(["nexthop", "via", hop.as_str()]);
                }
                ActiveMode::Direct(IpGuard::add(&self.lab().router_netns(), &["route"], &args)?)
            }
            Mode::Floor => {
                let pin = self.lab().pin_root_path().join("e2e_floor");
                ActiveMode::Floor(FloorProgram::attach(&lbns, &pin)?)
            }
            Mode::LbRr | Mode::LbMaglev | Mode::LbRr1Backend => {
                let Some(scheduler) = mode.lb_scheduler() else {
                    bail!("{} has no scheduler", mode.name());
                };
                self.start_lb(scheduler, mode.backends())?
            }
            Mode::Nftables => ActiveMode::Nftables(NftBalancer::install(
                &lbns,
                self.lab().dir(),
                vip,
                &Self::backends(),
            )?),
            Mode::Haproxy => {
                let addr = format!("{}/32", vip.ip());
                let vip_guard = IpGuard::add(&lbns, &["addr"], &[&addr, "dev", "lo"])?;
                let proc = start_haproxy(&lbns, self.lab().dir(), vip, &Self::backends())?;
                ActiveMode::Haproxy {
                    proc,
                    _vip: vip_guard,
                }
            }
        })
    }

    /// Undoes `active` (stops an `lb` mode's daemon, which detaches its program, and deletes its
    /// service from ZooKeeper: `lb backend put` only adds, and the next `lb` mode may use fewer
    /// backends).
    pub fn leave(&mut self, active: ActiveMode) -> anyhow::Result<()> {
        let was_lb = matches!(active, ActiveMode::Lb { .. });
        drop(active);
        if was_lb {
            self.zk.lab.stop_lb(LB)?;
            self.zk.admin(&["service", "rm", SERVICE])?;
        }
        Ok(())
    }

    /// Configures the service with `scheduler` over the first `backends` backends in ZooKeeper,
    /// starts `lb run --zk` and waits until it serves exactly that service with that scheduler.
    fn start_lb(&mut self, scheduler: &str, backends: usize) -> anyhow::Result<ActiveMode> {
        ensure!(
            (1..=BACKENDS).contains(&backends),
            "the lab has {BACKENDS} backends, not {backends}"
        );
        let backends = Self::backends()
            .into_iter()
            .take(backends)
            .map(|b| BackendConfig::active(b, 1))
            .collect();
        let svc = ServiceConfig::new(SERVICE, Self::vip(), scheduler, backends);
        self.zk.put(&svc)?;
        self.zk.start_lb(LB, &["--detach-on-exit"])?;
        self.zk.wait_serves(LB, &svc)?;
        let pid = Eventually::new(format!("lb{LB} to serve with {scheduler}"), APPLY_TIMEOUT)
            .poll(|| {
                let status = self.zk.status(LB).map_err(|e| format!("{e:#}"))?;
                let svc_sched = status
                    .service(SERVICE)
                    .map(|s| s.scheduler.clone())
                    .unwrap_or_default();
                match status.daemon {
                    Some(d) if svc_sched == scheduler => Ok(d.report.pid),
                    _ => Err(format!("scheduler {svc_sched:?}")),
                }
            })?;
        Ok(ActiveMode::Lb { pid })
    }

    /// Packets the `lb` service has forwarded so far (`lb status`). Not its new flows: a client
    /// that reuses a port (TIME_WAIT reuse) within the closed-flow timeout finds its old flow.
    pub fn lb_service_packets(&self) -> anyhow::Result<u64> {
        let status = self.zk.status(LB)?;
        status
            .service(SERVICE)
            .map(|s| s.packets)
            .with_context(|| format!("`lb status` shows no service {SERVICE}"))
    }
}
