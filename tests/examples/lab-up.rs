//! Brings up a lab with `lb` serving one VIP and keeps it until the given seconds pass or stdin
//! closes, printing the namespace names: for poking at it by hand (`ip netns exec`, tcpdump).
//!
//! `LB_BIN=target/release/lb cargo run --release -p lb-tests --example lab-up -- 300 [scheduler]`
//!
//! Stop it with Ctrl-D (the lab is torn down); after Ctrl-C or a kill, `cargo xtask clean-labs`
//! removes the namespaces it leaves.

use std::io::Read as _;
use std::time::Duration;

use anyhow::Context as _;
use lb_tests::config::to_toml;
use lb_tests::scenario::{service, vip};
use lb_tests::{Lab, LabOptions};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let secs: u64 = args
        .next()
        .map_or(Ok(300), |s| s.parse())
        .context("seconds")?;
    let scheduler = args.next().unwrap_or_else(|| "wrr".into());
    let mut lab = Lab::start(LabOptions::default())?;
    let services = [
        service("v4", vip(1, false), &scheduler, &[1, 2, 3]),
        service("v6", vip(1, true), &scheduler, &[1, 2, 3]),
    ];
    lab.start_lb(0, &to_toml(&services), &[])?;
    println!(
        "lab up: namespaces {}*, logs in {}",
        lab.netns_prefix(),
        lab.dir().display()
    );
    println!(
        "client: {}  lb0: {}  b0: {}",
        lab.client_netns(),
        lab.lb_netns(0),
        lab.backend_netns(0)
    );
    // Ends on stdin EOF or after `secs`, whichever is first.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(Duration::from_secs(secs));
    Ok(())
}
