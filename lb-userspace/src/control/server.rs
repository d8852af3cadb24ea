//! The daemon's side of the control socket: it accepts connections, checks that the peer is root,
//! reads one request, and hands it to the follow loop (the one owner of the maps and the state),
//! which answers through a oneshot channel.

use std::io;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::{Request, Response};

/// Longer requests are refused (the longest real one is ~150 bytes).
const MAX_REQUEST: u64 = 4096;
/// A client that does not send its request in this time is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A request and where its answer goes.
pub type Call = (Request, oneshot::Sender<Response>);

/// The bound socket; the file is removed when this is dropped.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `path` (mode 0600, its directory created 0700). A socket file left by a daemon that
/// died is replaced; one a live daemon answers on is not.
pub fn bind(path: &Path) -> io::Result<ControlSocket> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another daemon answers on it",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(ControlSocket {
        listener,
        path: path.to_owned(),
    })
}

impl ControlSocket {
    /// Accepts connections until the task is dropped; each request goes to `calls`.
    pub async fn serve(self, calls: mpsc::Sender<Call>) {
        info!(socket = %self.path.display(), "control socket ready");
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!("control socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let calls = calls.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, calls).await {
                    warn!("control socket client: {e}");
                }
            });
        }
    }
}

async fn answer(stream: UnixStream, calls: mpsc::Sender<Call>) -> io::Result<()> {
    let peer = stream.peer_cred()?;
    let (read, mut write) = stream.into_split();
    // Read the request even from a caller about to be refused: closing on an unread request
    // would fail its write (EPIPE) before it could read why.
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => return Ok(()),
        Ok(r) => {
            r?;
        }
    }
    let response = if peer.uid() != 0 {
        Response::Refused {
            reason: format!("the control socket is root-only (uid {} asked)", peer.uid()),
        }
    } else {
        match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::Refused {
                reason: format!("not a request ({e}); use the `lb` CLI of the same version"),
            },
            Ok(request) => {
                info!(pid = peer.pid().unwrap_or(0), %request, "control request");
                let (tx, rx) = oneshot::channel();
                if calls.send((request, tx)).await.is_err() {
                    Response::Refused {
                        reason: "the daemon is stopping".into(),
                    }
                } else {
                    rx.await.unwrap_or(Response::Refused {
                        reason: "the daemon stopped before it answered".into(),
                    })
                }
            }
        }
    };
    let mut out = serde_json::to_vec(&response).map_err(io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await
}
