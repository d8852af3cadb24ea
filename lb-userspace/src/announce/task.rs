//! The [`Announcer`] on a task of its own, so a slow or hung BIRD never holds up the daemon's loop:
//! the loop hands it the wanted set ([`AnnounceHandle::want`], never blocking) and reads back what
//! BIRD has ([`AnnounceHandle::state`]).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use tokio::sync::watch;

use super::{AnnounceOptions, Announcer};

/// How often a failed hand-over is retried.
const RETRY: Duration = Duration::from_secs(1);

/// What the task last achieved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnnounceState {
    /// The set BIRD has loaded.
    pub announced: BTreeSet<IpAddr>,
    /// The last failure; `None` once a hand-over worked.
    pub error: Option<String>,
    /// The `want` generation this state answers.
    pub generation: u64,
    /// BIRD is behind the wanted set.
    pub pending: bool,
}

pub struct AnnounceHandle {
    opts: AnnounceOptions,
    wanted: watch::Sender<(u64, BTreeSet<IpAddr>)>,
    state: watch::Receiver<AnnounceState>,
    task: tokio::task::JoinHandle<()>,
}

impl AnnounceHandle {
    /// Starts the task (inside a tokio runtime) wanting `first` (so a restart hands BIRD the set it
    /// has at once, not an empty one first).
    pub fn spawn(announcer: Announcer, first: BTreeSet<IpAddr>) -> AnnounceHandle {
        let opts = announcer.options().clone();
        let (wanted, wanted_rx) = watch::channel((1, first));
        let (state_tx, state) = watch::channel(AnnounceState {
            pending: true,
            ..Default::default()
        });
        let task = tokio::spawn(run(announcer, wanted_rx, state_tx));
        AnnounceHandle {
            opts,
            wanted,
            state,
            task,
        }
    }

    pub fn options(&self) -> &AnnounceOptions {
        &self.opts
    }

    /// Wants `set` announced; a no-op when it is already the wanted set. Returns its generation.
    pub fn want(&self, set: BTreeSet<IpAddr>) -> u64 {
        self.wanted.send_if_modified(|(generation, wanted)| {
            if *wanted == set {
                return false;
            }
            *generation += 1;
            *wanted = set;
            true
        });
        self.wanted.borrow().0
    }

    pub fn state(&self) -> AnnounceState {
        self.state.borrow().clone()
    }

    /// Resolves when the state changed.
    pub async fn changed(&mut self) {
        if self.state.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Wants `set` and waits (at most `timeout`) until BIRD has it; the error otherwise.
    pub async fn settle(&mut self, set: BTreeSet<IpAddr>, timeout: Duration) -> Result<(), String> {
        let generation = self.want(set.clone());
        let tried =
            tokio::time::timeout(timeout, self.state.wait_for(|s| s.generation >= generation))
                .await
                .is_ok();
        let state = self.state();
        match tried {
            true if !state.pending && state.announced == set => Ok(()),
            true => Err(state
                .error
                .unwrap_or_else(|| "BIRD did not take the set".to_owned())),
            false => Err(format!(
                "no answer from BIRD on {} within {}s",
                self.opts.socket.display(),
                timeout.as_secs()
            )),
        }
    }
}

impl Drop for AnnounceHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    mut announcer: Announcer,
    mut wanted: watch::Receiver<(u64, BTreeSet<IpAddr>)>,
    state: watch::Sender<AnnounceState>,
) {
    loop {
        let (generation, set) = wanted.borrow_and_update().clone();
        announcer.sync(set).await;
        let pending = announcer.pending();
        state.send_if_modified(|s| {
            let new = AnnounceState {
                announced: announcer.announced(),
                error: announcer.error().map(str::to_owned),
                generation,
                pending,
            };
            let changed = *s != new;
            *s = new;
            changed
        });
        if pending {
            tokio::select! {
                r = wanted.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(RETRY) => {}
            }
        } else if wanted.changed().await.is_err() {
            return;
        }
    }
}
