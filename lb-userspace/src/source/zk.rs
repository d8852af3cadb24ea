//! The ZooKeeper source behind [`Source`]: the task in `zk::source` follows the tree and sends
//! states on a watch channel; this adapter waits on it.

use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use super::{Source, SourceFuture};
use crate::model::DesiredState;
use crate::report::SourceStatus;
use crate::zk::source::{ZkSource, ZkSourceConfig};

/// How long start-up waits for ZooKeeper's first state before attaching with none (it is applied
/// whenever it arrives).
const FIRST_STATE_WAIT: Duration = Duration::from_secs(15);

pub struct ZooKeeperSource {
    zk: ZkSource,
}

impl ZooKeeperSource {
    /// Starts following ZooKeeper on the current tokio runtime.
    pub fn spawn(config: ZkSourceConfig) -> ZooKeeperSource {
        info!(zk = %config.target.connect, root = %config.target.schema.root(), "following ZooKeeper");
        ZooKeeperSource {
            zk: ZkSource::spawn(config),
        }
    }
}

impl Source for ZooKeeperSource {
    fn first(&mut self) -> SourceFuture<'_, anyhow::Result<Option<DesiredState>>> {
        Box::pin(async move {
            let states = &mut self.zk.states;
            let wait = async {
                loop {
                    if let Some(state) = states.borrow_and_update().clone() {
                        return Some(state);
                    }
                    if states.changed().await.is_err() {
                        return None;
                    }
                }
            };
            match tokio::time::timeout(FIRST_STATE_WAIT, wait).await {
                Ok(state) => Ok(Some(state.as_deref().cloned().unwrap_or_default())),
                Err(_) => {
                    warn!(
                        "no state from ZooKeeper within {FIRST_STATE_WAIT:?}; its services are applied \
                         as soon as it answers"
                    );
                    Ok(None)
                }
            }
        })
    }

    fn next(&mut self) -> SourceFuture<'_, DesiredState> {
        Box::pin(async move {
            loop {
                if self.zk.states.changed().await.is_err() {
                    // The source task ended (it never does on its own): forward the last state.
                    error!(
                        "the ZooKeeper source stopped; forwarding continues with the last state"
                    );
                    std::future::pending::<()>().await;
                }
                let latest: Option<Arc<DesiredState>> = self.zk.states.borrow_and_update().clone();
                if let Some(state) = latest {
                    return (*state).clone();
                }
            }
        })
    }

    fn hangup(&mut self) -> Option<DesiredState> {
        info!("SIGHUP: full ZooKeeper resync");
        self.zk.resync();
        None
    }

    fn status(&self) -> SourceStatus {
        SourceStatus::Zookeeper(self.zk.status.borrow().clone())
    }

    fn last_sync_unix_ms(&self) -> Option<u64> {
        self.zk.status.borrow().last_sync_unix_ms
    }
}
