//! The lab's BGP (with [`LabOptions::bgp`](super::LabOptions::bgp)): a BIRD 2 in the router and in
//! every load balancer's namespace. Each LB's BIRD announces what `lb run --announce-bird-include`
//! writes to its include file; the router's imports those routes and installs them in its kernel
//! with ECMP (`merge paths`), instead of the static VIP routes of the other labs.
//!
//! ```text
//! router 198.18.3.1 / 2001:db8:3::1 AS 64512 ── eBGP ── lbN 198.18.3.(2+N) / 2001:db8:3::(2+N) AS 64513
//! ```
//!
//! Every LB is in the same AS, so the router's routes to a VIP have equal AS paths and are merged
//! into one multipath route. Timers are short (hold 3 s, connect retry 1 s) so the tests converge
//! in seconds. Each BIRD runs in the foreground (`bird -f`) as a child [`NsProcess`], stopped by pid.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context as _, ensure};

use super::Lab;
use super::cmd::{self, ip};
use super::process::NsProcess;
use super::topology::*;
use crate::eventually::wait_until;

const ROUTER_AS: u32 = 64512;
const LB_AS: u32 = 64513;
/// The BGP timers of every session (seconds): BIRD's smallest hold time, quick reconnects.
const TIMERS: &str = "\thold time 3;\n\tkeepalive time 1;\n\tconnect retry time 1;\n\tconnect delay time 1;\n\terror wait time 1, 2;\n";

impl Lab {
    /// The router's BIRD, then one BIRD per load balancer with an empty include file.
    pub(super) fn start_bgp(&mut self) -> anyhow::Result<()> {
        let router = self.router_netns();
        let conf = self.bird_conf_path("router");
        std::fs::write(&conf, router_conf(self.opts.lbs))
            .with_context(|| format!("cannot write {}", conf.display()))?;
        self.spawn_bird("router", &router)?;
        for lb in 0..self.opts.lbs {
            let include = self.lb_bird_include(lb);
            let empty = lb_userspace::announce::render_include(&Default::default());
            std::fs::write(&include, empty)
                .with_context(|| format!("cannot write {}", include.display()))?;
            let name = format!("lb{lb}");
            let conf = self.bird_conf_path(&name);
            std::fs::write(&conf, lb_conf(lb, &include.display().to_string()))
                .with_context(|| format!("cannot write {}", conf.display()))?;
            self.spawn_bird(&name, &self.lb_netns(lb))?;
        }
        Ok(())
    }

    fn spawn_bird(&mut self, name: &str, netns: &str) -> anyhow::Result<()> {
        let socket = self.bird_socket(name);
        let args = [
            "-f".to_owned(),
            "-c".to_owned(),
            path_str(&self.bird_conf_path(name))?,
            "-s".to_owned(),
            path_str(&socket)?,
        ];
        let log = self.dir.join(format!("{name}-bird.log"));
        let mut proc = NsProcess::spawn(
            &format!("{name} bird"),
            netns,
            std::path::Path::new("bird"),
            &args,
            &log,
        )?;
        let mut last = None;
        let ready = wait_until(super::READY_TIMEOUT, || {
            if proc.check_running().is_err() {
                return true;
            }
            last = self.birdc(name, &["show", "status"]).err();
            last.is_none()
        });
        proc.check_running().context(
            "bird exited while starting (is the `bird2` package installed? `cargo xtask setup`)",
        )?;
        ensure!(
            ready && last.is_none(),
            "{name}'s bird did not answer on {} within {:?}: {last:?}\n{}",
            socket.display(),
            super::READY_TIMEOUT,
            proc.log_tail()
        );
        self.birds.push(proc);
        Ok(())
    }

    /// `birdc -s SOCKET ARGS` against `name`'s BIRD (`router`, `lb0`, …); its output.
    pub fn birdc(&self, name: &str, args: &[&str]) -> anyhow::Result<String> {
        let socket = path_str(&self.bird_socket(name))?;
        let mut all = vec!["-s", socket.as_str()];
        all.extend_from_slice(args);
        cmd::run("birdc", &all)
    }

    /// The include file load balancer `lb`'s BIRD reads and its `lb run` writes.
    pub fn lb_bird_include(&self, lb: usize) -> PathBuf {
        self.dir.join(format!("lb{lb}-vips.conf"))
    }

    /// The `lb run` arguments that announce through load balancer `lb`'s BIRD (each unless
    /// `extra_args` sets it; a short withdraw grace so stopping a lab is quick).
    pub(super) fn announce_args(
        &self,
        lb: usize,
        extra_args: &[&str],
    ) -> anyhow::Result<Vec<String>> {
        let mut args = Vec::new();
        for (flag, value) in [
            (
                "--announce-bird-include",
                path_str(&self.lb_bird_include(lb))?,
            ),
            (
                "--birdc-socket",
                path_str(&self.bird_socket(&format!("lb{lb}")))?,
            ),
            ("--withdraw-grace-s", "1".to_owned()),
        ] {
            if !extra_args.contains(&flag) {
                args.extend([flag.to_owned(), value]);
            }
        }
        Ok(args)
    }

    /// The gateways of the router's kernel route to `vip` (/32 or /128) that BIRD installed; empty
    /// without one.
    pub fn router_vip_next_hops(&self, vip: IpAddr) -> anyhow::Result<Vec<IpAddr>> {
        let (family, len) = if vip.is_ipv6() {
            ("-6", 128)
        } else {
            ("-4", 32)
        };
        let prefix = format!("{vip}/{len}");
        let out = ip(
            &self.router_netns(),
            &[
                "-j", family, "route", "show", "exact", &prefix, "proto", "bird",
            ],
        )?;
        let routes: Vec<serde_json::Value> = serde_json::from_str(out.trim_start_matches('\n'))
            .with_context(|| format!("`ip -j route show exact {prefix}` is not JSON: {out}"))?;
        let mut hops = Vec::new();
        for route in &routes {
            let gateways: Vec<&serde_json::Value> = match route.get("nexthops") {
                Some(serde_json::Value::Array(list)) => {
                    list.iter().filter_map(|h| h.get("gateway")).collect()
                }
                _ => route.get("gateway").into_iter().collect(),
            };
            for g in gateways {
                let text = g.as_str().context("a gateway that is not a string")?;
                hops.push(text.parse().with_context(|| format!("gateway {text:?}"))?);
            }
        }
        hops.sort();
        Ok(hops)
    }

    fn bird_conf_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-bird.conf"))
    }

    fn bird_socket(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-bird.ctl"))
    }
}

fn path_str(path: &std::path::Path) -> anyhow::Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("path {} is not UTF-8", path.display()))
}

/// The router: a BGP session per LB and family, everything imported, merged into ECMP routes.
fn router_conf(lbs: usize) -> String {
    let mut c = format!(
        "log stderr all;\nrouter id {ROUTER_LBS_V4};\nprotocol device {{ scan time 1; }}\n\
         protocol kernel kernel4 {{\n\tipv4 {{ import none; export where source = RTS_BGP; }};\n\tmerge paths on;\n}}\n\
         protocol kernel kernel6 {{\n\tipv6 {{ import none; export where source = RTS_BGP; }};\n\tmerge paths on;\n}}\n"
    );
    for lb in 0..lbs {
        for (name, local, neighbor, channel) in [
            (
                format!("lb{lb}"),
                ROUTER_LBS_V4.to_string(),
                lb_v4(lb).to_string(),
                "ipv4",
            ),
            (
                format!("lb{lb}v6"),
                ROUTER_LBS_V6.to_string(),
                lb_v6(lb).to_string(),
                "ipv6",
            ),
        ] {
            let _ = write!(
                c,
                "protocol bgp {name} {{\n\tlocal {local} as {ROUTER_AS};\n\tneighbor {neighbor} as {LB_AS};\n{TIMERS}\
                 \t{channel} {{ import all; export none; }};\n}}\n"
            );
        }
    }
    c
}

/// Load balancer `lb`: the include's static protocols exported to the router, nothing imported,
/// no kernel protocol (the blackhole routes never reach the LB's own kernel).
fn lb_conf(lb: usize, include: &str) -> String {
    use lb_userspace::announce::{PROTOCOL_V4, PROTOCOL_V6};
    let mut c = format!(
        "log stderr all;\nrouter id {};\ninclude \"{include}\";\nprotocol device {{ scan time 1; }}\n",
        lb_v4(lb)
    );
    for (name, local, neighbor, channel, protocol) in [
        (
            "router4",
            lb_v4(lb).to_string(),
            ROUTER_LBS_V4.to_string(),
            "ipv4",
            PROTOCOL_V4,
        ),
        (
            "router6",
            lb_v6(lb).to_string(),
            ROUTER_LBS_V6.to_string(),
            "ipv6",
            PROTOCOL_V6,
        ),
    ] {
        let _ = write!(
            c,
            "protocol bgp {name} {{\n\tlocal {local} as {LB_AS};\n\tneighbor {neighbor} as {ROUTER_AS};\n{TIMERS}\
             \t{channel} {{ import none; export where proto = \"{protocol}\"; }};\n}}\n"
        );
    }
    c
}
