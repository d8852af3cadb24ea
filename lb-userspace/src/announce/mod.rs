//! Announcing VIPs with BIRD: which VIP prefixes this host should attract ([`announce_set`], pure),
//! the include file BIRD reads them from ([`render_include`]), and the [`Announcer`] that writes it
//! and asks BIRD to reload over its control socket ([`bird`]) when the set changes.
//!
//! A VIP is announced while the data plane is attached and at least one of the services on its
//! address has a backend that takes new flows (active, weight > 0, not down by its health check,
//! or all of them in panic mode). On SIGINT/SIGTERM the daemon withdraws everything, waits
//! `--withdraw-grace-s` so the routers move the traffic, then stops.

pub mod bird;
mod task;

pub use task::{AnnounceHandle, AnnounceState};

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{info, warn};

use crate::model::DesiredState;
use crate::plan::ServiceHealth;

/// The static protocol of the IPv4 VIPs in the include file (name it in the BGP export filter).
pub const PROTOCOL_V4: &str = "lb_vips4";
/// The static protocol of the IPv6 VIPs.
pub const PROTOCOL_V6: &str = "lb_vips6";
/// Default `--birdc-socket`: Debian's `bird2`.
pub const DEFAULT_BIRD_SOCKET: &str = "/run/bird/bird.ctl";
/// Default `--withdraw-grace-s`.
pub const DEFAULT_WITHDRAW_GRACE: Duration = Duration::from_secs(5);

/// The VIP addresses to announce: those of `applied` services with a backend that takes new flows
/// after `health` (the applied health of a service by name); none unless `attached`.
pub fn announce_set<'a>(
    applied: &DesiredState,
    attached: bool,
    health: impl Fn(&str) -> Option<&'a ServiceHealth>,
) -> BTreeSet<IpAddr> {
    if !attached {
        return BTreeSet::new();
    }
    applied
        .services
        .values()
        .filter(|s| {
            let down = health(&s.name).map(|h| &h.down);
            s.backends
                .values()
                .any(|b| b.takes_new_flows() && !down.is_some_and(|d| d.contains(&b.addr)))
        })
        .map(|s| s.vip.ip())
        .collect()
}

/// The include file: one static protocol per family with a blackhole /32 or /128 route per VIP
/// (the route only carries the prefix to BGP; export it there, never to the kernel).
pub fn render_include(set: &BTreeSet<IpAddr>) -> String {
    let mut out = String::from(
        "# Written by `lb run --announce-bird-include`: the VIPs this host attracts. Do not edit;\n\
         # include it from bird.conf and export these protocols' routes to BGP.\n",
    );
    for (name, channel, v6) in [(PROTOCOL_V4, "ipv4", false), (PROTOCOL_V6, "ipv6", true)] {
        let _ = writeln!(out, "protocol static {name} {{\n\t{channel};");
        for ip in set.iter().filter(|ip| ip.is_ipv6() == v6) {
            let len = if v6 { 128 } else { 32 };
            let _ = writeln!(out, "\troute {ip}/{len} blackhole;");
        }
        out.push_str("}\n");
    }
    out
}

/// Where the announcement goes.
#[derive(Clone, Debug)]
pub struct AnnounceOptions {
    /// The include file (`--announce-bird-include`).
    pub include: PathBuf,
    /// BIRD's control socket (`--birdc-socket`).
    pub socket: PathBuf,
    /// How long SIGINT/SIGTERM waits between the withdrawal and the stop (`--withdraw-grace-s`).
    pub withdraw_grace: Duration,
}

/// Keeps BIRD's view of this host's VIPs equal to the wanted set: writes the include file and
/// reconfigures BIRD when the set changes, and retries after a failure.
pub struct Announcer {
    opts: AnnounceOptions,
    /// The set BIRD confirmed it loaded; `None` until it did (or after a failure).
    confirmed: Option<BTreeSet<IpAddr>>,
    wanted: BTreeSet<IpAddr>,
    /// The last error, logged once until it changes or a reload succeeds.
    last_error: Option<String>,
}

impl Announcer {
    pub fn new(opts: AnnounceOptions) -> Announcer {
        Announcer {
            opts,
            confirmed: None,
            wanted: BTreeSet::new(),
            last_error: None,
        }
    }

    pub fn options(&self) -> &AnnounceOptions {
        &self.opts
    }

    /// The set BIRD has loaded (empty until it confirmed one).
    pub fn announced(&self) -> BTreeSet<IpAddr> {
        self.confirmed.clone().unwrap_or_default()
    }

    /// The last failure to hand the set to BIRD; `None` once it took it.
    pub fn error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Is BIRD behind the wanted set (a retry is due)?
    pub fn pending(&self) -> bool {
        self.confirmed.as_ref() != Some(&self.wanted)
    }

    /// Wants `set` announced; writes and reloads only when it differs from what BIRD has.
    pub async fn sync(&mut self, set: BTreeSet<IpAddr>) {
        self.wanted = set;
        if self.pending() {
            self.push().await;
        }
    }

    /// Hands the wanted set to BIRD again (after a failure).
    pub async fn retry(&mut self) {
        if self.pending() {
            self.push().await;
        }
    }

    async fn push(&mut self) {
        match self.write_and_reload().await {
            Ok(reply) => {
                info!(
                    announced = %crate::log_values::List(&self.wanted.iter().collect::<Vec<_>>()),
                    include = %self.opts.include.display(),
                    bird = %reply,
                    "VIP announcement handed to BIRD"
                );
                self.confirmed = Some(self.wanted.clone());
                self.last_error = None;
            }
            Err(e) => {
                self.confirmed = None;
                let text = e.to_string();
                if self.last_error.as_deref() != Some(&text) {
                    warn!("announcing VIPs failed (retrying every second): {text}");
                }
                self.last_error = Some(text);
            }
        }
    }

    async fn write_and_reload(&self) -> Result<String, AnnounceError> {
        write_include(&self.opts.include, &self.wanted)?;
        Ok(bird::configure(&self.opts.socket).await?)
    }
}

/// Writes the include file `include` for `set`, atomically.
fn write_include(include: &Path, set: &BTreeSet<IpAddr>) -> Result<(), AnnounceError> {
    crate::atomic_file::write(include, render_include(set).as_bytes()).map_err(|source| {
        AnnounceError::Write {
            path: include.to_path_buf(),
            source,
        }
    })
}

/// What [`withdraw_left_over`] found and did.
#[derive(Debug, PartialEq, Eq)]
pub enum Withdrawal {
    /// The include file listed VIPs; it lists none now and BIRD has reloaded it (its reply).
    Withdrawn { reply: String },
    /// The include file listed no VIP; BIRD was told again all the same (its reply).
    NothingAnnounced { reply: String },
    /// The include file is empty now, and BIRD is not running (its socket is missing or refuses
    /// connections): it has no BGP session, so nothing is announced, and it reads the empty file
    /// when it starts.
    BirdNotRunning { error: String },
}

/// Withdraws what a run that ended without withdrawing (`kill -9`, a crash) left announced: writes
/// the include file `include` with no VIP and has the BIRD on `socket` reload it. An error means
/// BIRD may still announce the VIPs (the file could not be written, or a running BIRD did not
/// take it).
pub async fn withdraw_left_over(
    include: &Path,
    socket: &Path,
) -> Result<Withdrawal, AnnounceError> {
    let empty = render_include(&BTreeSet::new());
    let listed = match std::fs::read_to_string(include) {
        Ok(text) => text != empty,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        // Unreadable: assume it lists VIPs (the write below says why it fails, if it does).
        Err(_) => true,
    };
    write_include(include, &BTreeSet::new())?;
    match bird::configure(socket).await {
        Ok(reply) if listed => Ok(Withdrawal::Withdrawn { reply }),
        Ok(reply) => Ok(Withdrawal::NothingAnnounced { reply }),
        Err(bird::BirdError::Connect { source, .. })
            if matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(Withdrawal::BirdNotRunning {
                error: source.to_string(),
            })
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error(
        "cannot write the BIRD include file {}: {source}; check --announce-bird-include names a \
         writable path",
        path.display()
    )]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Bird(#[from] bird::BirdError),
}

#[cfg(test)]
mod tests;
