//! Runs the setup commands of the lab (`ip`, `ethtool`, `sysctl`); a failure names the command and
//! carries its stderr.

use std::ffi::OsStr;
use std::process::Command;

use anyhow::{Context as _, bail};

/// Where the named network namespaces of `ip netns` live.
pub const NETNS_DIR: &str = "/run/netns";

/// Runs `program args` and returns its stdout; fails with the command line and stderr otherwise.
pub fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> anyhow::Result<String> {
    let line = || {
        let args: Vec<String> = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        format!("{program} {}", args.join(" "))
    };
    let out = Command::new(program).args(args).output().with_context(|| {
        format!(
            "cannot start `{}` (is it installed? `cargo xtask setup`)",
            line()
        )
    })?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            line(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n <netns> <args>`.
pub fn ip(netns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["-n", netns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Runs a program inside a namespace. `nsenter`, not `ip netns exec`: the latter remounts /sys, which
/// would hide the bpffs pins.
pub fn in_netns(netns: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let net = format!("--net={NETNS_DIR}/{netns}");
    let mut all = vec![net.as_str(), "--", program];
    all.extend_from_slice(args);
    run("nsenter", &all)
}

/// Sets sysctls (`key=value`) inside a namespace in one process.
pub fn sysctl(netns: &str, settings: &[&str]) -> anyhow::Result<()> {
    let mut args = vec!["-q", "-w"];
    args.extend_from_slice(settings);
    in_netns(netns, "sysctl", &args).map(drop)
}

/// `ethtool -K <dev> <features>` inside a namespace.
pub fn ethtool_features(netns: &str, dev: &str, features: &[&str]) -> anyhow::Result<()> {
    let mut args = vec!["-K", dev];
    args.extend_from_slice(features);
    in_netns(netns, "ethtool", &args).map(drop)
}
