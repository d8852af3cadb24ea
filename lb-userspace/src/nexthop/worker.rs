//! The keeper on a thread of its own: the daemon's loop hands it the backend set and never waits;
//! refreshes queued while one runs collapse into the latest.

use std::net::IpAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;

use anyhow::Context as _;
use tracing::warn;

use super::NextHopKeeper;

enum Request {
    Refresh(Vec<IpAddr>),
    /// Stop; `true`: remove lb's entries first.
    Finish(bool),
}

/// The `lb-nexthop` thread and its queue. Dropping it releases lb's entries (an error exit before
/// the daemon decided); [`NextHopTask::finish`] says which.
pub struct NextHopTask {
    requests: mpsc::Sender<Request>,
    thread: Option<JoinHandle<()>>,
}

impl NextHopTask {
    /// Moves `keeper` to a thread of its own. Start it after `privilege::shed_after_attach`, so
    /// the thread inherits only what the daemon keeps.
    pub fn spawn(keeper: NextHopKeeper) -> anyhow::Result<NextHopTask> {
        let (requests, queue) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("lb-nexthop".into())
            .spawn(move || serve(keeper, queue))
            .context("cannot start the lb-nexthop thread")?;
        Ok(NextHopTask {
            requests,
            thread: Some(thread),
        })
    }

    /// Queues a refresh for these backends; returns at once.
    pub fn refresh(&self, backends: impl IntoIterator<Item = IpAddr>) {
        let backends = backends.into_iter().collect();
        if self.requests.send(Request::Refresh(backends)).is_err() {
            warn!("the lb-nexthop thread has stopped: next hops are no longer kept");
        }
    }

    /// Stops the thread; `release`: after removing lb's entries, else leaving them for the program
    /// that goes on forwarding (and for the next `lb run` to adopt).
    pub fn finish(mut self, release: bool) {
        self.stop(release);
    }

    fn stop(&mut self, release: bool) {
        let _ = self.requests.send(Request::Finish(release));
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            warn!("the lb-nexthop thread panicked");
        }
    }
}

impl Drop for NextHopTask {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop(true);
        }
    }
}

fn serve(mut keeper: NextHopKeeper, queue: mpsc::Receiver<Request>) {
    while let Ok(mut request) = queue.recv() {
        // Only the latest set matters.
        while matches!(request, Request::Refresh(_)) {
            match queue.try_recv() {
                Ok(next) => request = next,
                Err(_) => break,
            }
        }
        match request {
            Request::Refresh(backends) => {
                keeper.refresh(&backends);
            }
            Request::Finish(release) => {
                if release {
                    keeper.release();
                } else {
                    keeper.keep();
                }
                return;
            }
        }
    }
    // The task was dropped without a word: the keeper's drop releases.
}
