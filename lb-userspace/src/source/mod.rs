//! Where desired states come from. A [`Source`] (as pingora's `ServiceDiscovery`) yields validated
//! desired states and reports how it is doing; the daemon loop is written once over it. Two
//! implement it: [`file::FileSource`] (a TOML file) and [`zk::ZooKeeperSource`] (a ZooKeeper tree).
//! Both answer to one address-family rule, [`Families`].

mod family;
pub mod file;
pub mod zk;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

pub use family::Families;

use crate::model::DesiredState;
use crate::report::SourceStatus;
use crate::zk::source::{ServiceReadHook, ZkSourceConfig};

/// A future borrowing its source.
pub type SourceFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

pub trait Source {
    /// The state to start with. An invalid file is an error; ZooKeeper is waited for (bounded),
    /// and `Ok(None)` says it did not answer in time (its first answer comes through
    /// [`Source::next`]). Either way the daemon starts from its state file if it has one.
    fn first(&mut self) -> SourceFuture<'_, anyhow::Result<Option<DesiredState>>>;

    /// Waits for the next state. Invalid input is logged and recorded in the status by the source,
    /// and waited past: the last good state keeps forwarding.
    fn next(&mut self) -> SourceFuture<'_, DesiredState>;

    /// SIGHUP: a state to apply now, if the source has one at hand (ZooKeeper resyncs instead and
    /// delivers through [`Source::next`]).
    fn hangup(&mut self) -> Option<DesiredState>;

    /// The source's part of the daemon report.
    fn status(&self) -> SourceStatus;

    /// When the source last confirmed its state, if it knows better than the daemon (ZooKeeper:
    /// the last full read, even when it changed nothing).
    fn last_sync_unix_ms(&self) -> Option<u64> {
        None
    }
}

/// Where desired states come from: exactly one of `--config` and `--zk`.
pub enum SourceSpec {
    File(PathBuf),
    ZooKeeper(ZkSourceConfig),
}

impl SourceSpec {
    /// Checks what can be checked before anything else (root, the interface, the data plane): a
    /// configuration file is validated as `lb config check` does, and every error is reported.
    pub fn precheck(&self) -> anyhow::Result<()> {
        match self {
            SourceSpec::File(path) => {
                crate::config::check_config_file(path)
                    .map(drop)
                    .map_err(|errors| {
                        anyhow::anyhow!(
                            "the configuration file is invalid, nothing was started:\n{errors}"
                        )
                    })
            }
            // ZooKeeper's tree is checked per node once connected; a bad node never stops `lb run`.
            SourceSpec::ZooKeeper(_) => Ok(()),
        }
    }

    /// Starts the source on the current tokio runtime. `first_read`: told each service of
    /// ZooKeeper's first full read as soon as its nodes are in (a file is read at once: unused).
    pub fn open(&self, first_read: Option<ServiceReadHook>) -> Box<dyn Source> {
        match self {
            SourceSpec::File(path) => Box::new(file::FileSource::open(path.clone())),
            SourceSpec::ZooKeeper(config) => Box::new(zk::ZooKeeperSource::spawn(ZkSourceConfig {
                first_read_hook: first_read,
                ..config.clone()
            })),
        }
    }

    /// The ZooKeeper tree's layout when the source reads our own schema (where services'
    /// nodes can be read one by one: [`SourceSpec::open`]'s `first_read`).
    pub fn own_zk_schema(&self) -> Option<&crate::zk::schema::Schema> {
        match self {
            SourceSpec::ZooKeeper(config) if config.registry.is_none() => {
                Some(&config.target.schema)
            }
            _ => None,
        }
    }
}
