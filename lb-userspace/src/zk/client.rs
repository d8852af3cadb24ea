//! Connecting to ZooKeeper: the connect string, the root, the credentials, and the options every
//! `lb` subcommand that talks to ZooKeeper shares.

use std::time::Duration;

use zookeeper_client::Client;

use super::auth::{AuthError, DigestAuth};
use super::schema::{Schema, SchemaError};

/// Where the data lives: the ensemble (with an optional chroot), the root under it, the credentials.
#[derive(Clone, Debug)]
pub struct ZkTarget {
    /// `HOST:PORT[,HOST:PORT...][/chroot]`.
    pub connect: String,
    pub schema: Schema,
    pub auth: Option<DigestAuth>,
}

#[derive(Debug, thiserror::Error)]
pub enum ZkError {
    #[error(
        "the ZooKeeper connect string is empty; give HOST:PORT[,HOST:PORT...][/chroot], e.g. 127.0.0.1:2181"
    )]
    EmptyConnectString,
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(
        "cannot connect to ZooKeeper at {connect}: {source} (check that the ensemble is up and reachable{auth_hint})"
    )]
    Connect {
        connect: String,
        source: zookeeper_client::Error,
        auth_hint: &'static str,
    },
    #[error("ZooKeeper {op} of {path} failed: {source}{hint}")]
    Op {
        op: &'static str,
        path: String,
        source: zookeeper_client::Error,
        hint: &'static str,
    },
}

impl ZkError {
    /// Wraps an operation's error with what was done to which node.
    pub fn op(
        op: &'static str,
        path: &str,
    ) -> impl FnOnce(zookeeper_client::Error) -> ZkError + use<> {
        let path = path.to_owned();
        move |source| ZkError::Op {
            op,
            path,
            hint: match source {
                zookeeper_client::Error::NoAuth => {
                    " (the node's ACL refuses this session: give credentials it allows with --zk-auth-file or $LB_ZK_AUTH; \
                     nodes written with credentials can be changed only by authenticated sessions of that identity)"
                }
                zookeeper_client::Error::ConnectionLoss
                | zookeeper_client::Error::SessionExpired => " (ZooKeeper went away; try again)",
                _ => "",
            },
            source,
        }
    }
}

impl ZkTarget {
    pub fn new(connect: &str, root: &str, auth: Option<DigestAuth>) -> Result<ZkTarget, ZkError> {
        if connect.trim().is_empty() {
            return Err(ZkError::EmptyConnectString);
        }
        Ok(ZkTarget {
            connect: connect.trim().to_owned(),
            schema: Schema::new(root)?,
            auth,
        })
    }

    /// Opens a session. `session_timeout` is negotiated with the server (which clamps it to its
    /// `minSessionTimeout..=maxSessionTimeout`).
    pub async fn connect(&self, session_timeout: Duration) -> Result<Client, ZkError> {
        let mut connector = Client::connector()
            .with_session_timeout(session_timeout)
            // Fail after one pass over the hosts; callers retry with their own backoff.
            .with_fail_eagerly();
        if let Some(auth) = &self.auth {
            connector = connector.with_auth("digest", &auth.to_bytes());
        }
        connector
            .connect(&self.connect)
            .await
            .map_err(|source| ZkError::Connect {
                connect: self.connect.clone(),
                auth_hint: if matches!(source, zookeeper_client::Error::AuthFailed) {
                    "; ZooKeeper refused the credentials: check the user:password in --zk-auth-file (or $LB_ZK_AUTH)"
                } else {
                    ""
                },
                source,
            })
    }
}
