//! Writes the state file on a thread of its own: at fleet size (100,000 backends) encoding it
//! takes tens of milliseconds and its fsyncs may take longer on a busy disk, and the daemon's loop
//! (ZooKeeper, probes, the next change) must not wait for either. Only the newest state matters:
//! one queued but not yet written is replaced by a newer one.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use tracing::warn;

use super::SavedState;

/// The writer thread; dropping it writes what is queued, then ends the thread.
pub struct StateFileWriter {
    queue: Arc<Queue>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Queue {
    slot: Mutex<Slot>,
    ready: Condvar,
}

#[derive(Default)]
struct Slot {
    next: Option<SavedState>,
    closed: bool,
}

impl StateFileWriter {
    /// Starts the thread that writes `path`.
    pub fn spawn(path: PathBuf) -> std::io::Result<StateFileWriter> {
        let queue = Arc::new(Queue::default());
        let thread = std::thread::Builder::new()
            .name("lb-state-file".into())
            .spawn({
                let queue = Arc::clone(&queue);
                move || write_queued(&path, &queue)
            })?;
        Ok(StateFileWriter {
            queue,
            thread: Some(thread),
        })
    }

    /// Queues `saved` to be written (replacing a state queued and not written yet).
    pub fn write(&self, saved: SavedState) {
        let mut slot = self.queue.lock();
        slot.next = Some(saved);
        self.queue.ready.notify_one();
    }
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for StateFileWriter {
    fn drop(&mut self) {
        self.queue.lock().closed = true;
        self.queue.ready.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The thread: writes each state queued until the writer is dropped (and what it queued last). A
/// failure is logged once until a write succeeds (forwarding goes on: only a restart without the
/// source would miss the state).
fn write_queued(path: &std::path::Path, queue: &Queue) {
    let mut warned = false;
    loop {
        let saved = {
            let mut slot = queue.lock();
            loop {
                if let Some(saved) = slot.next.take() {
                    break saved;
                }
                if slot.closed {
                    return;
                }
                slot = queue
                    .ready
                    .wait(slot)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        match super::write(path, &saved) {
            Ok(()) => warned = false,
            Err(e) if !warned => {
                warned = true;
                warn!(
                    "writing the state file {} failed: {e}; a restart while the source is unreachable \
                     would not find this state",
                    path.display()
                );
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DesiredState, ServiceSpec};

    fn saved(services: usize) -> SavedState {
        SavedState {
            desired: DesiredState::of((0..services).map(|i| {
                ServiceSpec::new(
                    format!("s{i}"),
                    format!("198.18.100.1:{}", 80 + i).parse().unwrap(),
                )
            })),
            down: Vec::new(),
            written_unix_ms: services as u64,
        }
    }

    #[test]
    fn the_last_state_queued_is_on_disk_once_the_writer_is_dropped() {
        let dir = std::env::temp_dir().join(format!("lb-state-writer-{}", std::process::id()));
        let path = dir.join("state.json");
        let writer = StateFileWriter::spawn(path.clone()).unwrap();
        for n in 1..=20 {
            writer.write(saved(n));
        }
        drop(writer);
        let read = crate::state_file::read(&path)
            .unwrap()
            .expect("a state file");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(read.desired, saved(20).desired);
        assert_eq!(read.written_unix_ms, 20);
    }
}
