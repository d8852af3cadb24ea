//! `lb register` options.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;
use lb_userspace::model::{BackendSpec, MAX_WEIGHT};
use lb_userspace::register::{LocalCheck, Registration};

use super::zk::ZkArgs;

#[derive(clap::Args, Debug)]
pub struct RegisterArgs {
    #[command(flatten)]
    pub zk: ZkArgs,
    /// The service to join (its node must exist: `lb service put`).
    #[arg(long)]
    pub service: String,
    /// This backend's address, IP:PORT; the port must be the service's VIP port (DSR).
    #[arg(long)]
    pub addr: SocketAddr,
    #[arg(long, default_value_t = 1)]
    pub weight: u32,
    /// Register only while this local check passes: `tcp` (connect to --addr) or
    /// `http://HOST:PORT/PATH` (status 200-399). Checked every second.
    #[arg(long)]
    pub check: Option<String>,
    /// On SIGTERM/SIGINT, how long to stay registered as draining before the node is deleted (s).
    #[arg(long, default_value_t = 10)]
    pub drain_s: u64,
}

impl RegisterArgs {
    pub fn registration(&self) -> anyhow::Result<Registration> {
        if self.weight > MAX_WEIGHT {
            bail!("--weight {} is above the maximum {MAX_WEIGHT}", self.weight);
        }
        let target = self.zk.target()?;
        let check = self
            .check
            .as_deref()
            .map(|c| LocalCheck::parse(c, self.addr))
            .transpose()?;
        let mut backend = BackendSpec::new(self.addr);
        backend.weight = self.weight;
        Ok(Registration {
            target,
            session_timeout: self.zk.session_timeout(),
            service: self.service.clone(),
            backend,
            check,
            drain: Duration::from_secs(self.drain_s),
        })
    }
}
