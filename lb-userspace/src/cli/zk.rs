//! The ZooKeeper options of `lb register`, `lb service` and `lb backend`.

use std::path::PathBuf;
use std::time::Duration;

use lb_userspace::zk::auth::DigestAuth;
use lb_userspace::zk::client::{ZkError, ZkTarget};
use lb_userspace::zk::schema::DEFAULT_ROOT;

#[derive(clap::Args, Clone, Debug)]
pub struct ZkArgs {
    /// ZooKeeper ensemble: HOST:PORT[,HOST:PORT...][/chroot].
    #[arg(long, env = "LB_ZK")]
    pub zk: String,
    #[command(flatten)]
    pub session: ZkSessionArgs,
}

/// `--zk` for the commands that work without it too (they then ask the local daemon).
#[derive(clap::Args, Clone, Debug)]
pub struct OptionalZkArgs {
    /// ZooKeeper ensemble: HOST:PORT[,HOST:PORT...][/chroot]; without it, the local daemon.
    #[arg(long, env = "LB_ZK")]
    pub zk: Option<String>,
    #[command(flatten)]
    pub session: ZkSessionArgs,
}

/// How to reach the tree once the ensemble is known.
#[derive(clap::Args, Clone, Debug)]
pub struct ZkSessionArgs {
    /// Root of the balancer's nodes in ZooKeeper.
    #[arg(long, default_value = DEFAULT_ROOT)]
    pub zk_root: String,
    /// File holding `user:password` for ZooKeeper digest auth (default: $LB_ZK_AUTH if set).
    #[arg(long)]
    pub zk_auth_file: Option<PathBuf>,
    /// ZooKeeper session timeout in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub zk_session_timeout_ms: u64,
}

impl ZkArgs {
    pub fn target(&self) -> Result<ZkTarget, ZkError> {
        let auth = DigestAuth::load(self.session.zk_auth_file.as_deref())?;
        ZkTarget::new(&self.zk, &self.session.zk_root, auth)
    }

    pub fn session_timeout(&self) -> Duration {
        Duration::from_millis(self.session.zk_session_timeout_ms)
    }
}

impl OptionalZkArgs {
    /// The ZooKeeper options when `--zk` (or `$LB_ZK`) was given.
    pub fn given(self) -> Option<ZkArgs> {
        let session = self.session;
        self.zk.map(|zk| ZkArgs { zk, session })
    }
}
