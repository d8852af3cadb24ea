//! The local control socket of `lb run` (like `ipvsadm -e` / `-Z` against the kernel): a Unix
//! socket, root only, that takes one JSON request per connection and answers one JSON line.
//!
//! - `backend_weight` / `backend_state` change a backend of the static configuration file: the
//!   file is edited in place (comments and layout kept), validated as `lb config check` does,
//!   replaced atomically, then applied. A daemon that follows ZooKeeper refuses them (the change
//!   belongs in ZooKeeper, where every LB of the fleet sees it).
//! - `stats_zero` zeroes the data plane's traffic counters (not the flow table, not the
//!   connection counts least-conn balances on).

pub mod file_edit;
pub mod server;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::BackendState;

/// Where the sockets live (systemd's `RuntimeDirectory=lb`).
pub const SOCKET_DIR: &str = "/run/lb";

/// The socket of the daemon using `pin_dir`: one per balancer, as the state file is.
pub fn default_socket_path(pin_dir: &Path) -> PathBuf {
    let name = pin_dir.to_string_lossy().replace('/', "_");
    Path::new(SOCKET_DIR).join(format!("{name}.sock"))
}

/// A request: one JSON object on one line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    BackendWeight {
        service: String,
        backend: SocketAddr,
        weight: u32,
    },
    BackendState {
        service: String,
        backend: SocketAddr,
        state: BackendState,
    },
    StatsZero,
}

/// As the log shows it: `backend_weight web 198.18.2.11:80 3`.
impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::BackendWeight {
                service,
                backend,
                weight,
            } => write!(f, "backend_weight {service} {backend} {weight}"),
            Request::BackendState {
                service,
                backend,
                state,
            } => write!(f, "backend_state {service} {backend} {}", state.name()),
            Request::StatsZero => f.write_str("stats_zero"),
        }
    }
}

/// The answer: what was done, or why nothing was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Done { message: String },
    Refused { reason: String },
}

/// How long the CLI waits for the daemon's answer (an apply is milliseconds).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one request to the daemon at `socket` and returns its answer.
pub fn call(socket: &Path, request: &Request) -> anyhow::Result<Response> {
    use anyhow::Context as _;
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        // A backend change has another way to go; zeroing counters has not.
        let or_zk = match request {
            Request::BackendWeight { .. } | Request::BackendState { .. } => {
                "; to change it in ZooKeeper instead, give --zk HOST:PORT (or set LB_ZK)"
            }
            Request::StatsZero => "",
        };
        anyhow::anyhow!(
            "cannot reach the daemon's control socket {}: {e} (is `lb run` running with this --pin-dir, or give --control-socket; the socket is root-only){or_zk}",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(CALL_TIMEOUT))?;
    stream.set_write_timeout(Some(CALL_TIMEOUT))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line).context("sending the request")?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .context("reading the daemon's answer")?;
    serde_json::from_str(&answer).with_context(|| {
        format!("the daemon answered something that is not a response: {answer:?}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_object_each() {
        let r = Request::BackendState {
            service: "web".into(),
            backend: "[2001:db8::11]:80".parse().unwrap(),
            state: BackendState::Draining,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"op":"backend_state","service":"web","backend":"[2001:db8::11]:80","state":"draining"}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        assert_eq!(
            serde_json::to_string(&Request::StatsZero).unwrap(),
            r#"{"op":"stats_zero"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"rm_rf"}"#).is_err());
    }

    #[test]
    fn the_socket_is_named_after_the_pin_dir() {
        assert_eq!(
            default_socket_path(Path::new("/sys/fs/bpf/lb")),
            Path::new("/run/lb/_sys_fs_bpf_lb.sock")
        );
    }
}
