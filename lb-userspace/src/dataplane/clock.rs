//! The program's clock: a thread of `lb run` stores `CLOCK_MONOTONIC_COARSE` into
//! `LB_CONFIG[0].now_ns` every [`PROGRAM_CLOCK_TICK_NS`], through a memory mapping of the map, so
//! an established flow's packet reads the time from the configuration it already loads instead of
//! calling `bpf_ktime_get_coarse_ns` (the flow touch, the next-hop cache).
//!
//! The thread owns nothing but the mapping, so a busy or blocked control loop never stops the
//! clock. Stopping it (the guard's drop: a clean stop or a restart) stores 0, which hands the
//! program back to the kernel's clock while no daemon runs. After `kill -9` the time stands still
//! until the next `lb run` starts its clock: flows are not touched and cached next hops are not
//! refreshed meanwhile (forwarding goes on; see `sweeper`, which does not age flows by a clock
//! that stood still).

use std::{
    os::fd::BorrowedFd,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use lb_common::{LbConfig, limits::PROGRAM_CLOCK_TICK_NS, maps::CONFIG};

use super::{DataplaneError, mmap::SharedMapping, now_coarse_ns};

/// Where `now_ns` lives in the mapping of `LB_CONFIG` (element 0).
const NOW_OFFSET: usize = std::mem::offset_of!(LbConfig, now_ns);

/// The running clock thread; dropping it stops the thread and stores 0.
pub struct ProgramClock {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
    mapping: Arc<SharedMapping>,
    started_ns: u64,
}

/// `now_ns` in the shared mapping, as an atomic (the program reads it with plain loads; an aligned
/// 8-byte store is never torn).
fn now_cell(mapping: &SharedMapping) -> &AtomicU64 {
    // SAFETY: the mapping covers element 0 of LB_CONFIG; `now_ns` is 8-byte aligned there (the
    // value is `repr(C)` and element 0 starts the page); the reference lives no longer than
    // `mapping`.
    unsafe { AtomicU64::from_ptr(mapping.base().add(NOW_OFFSET).cast()) }
}

impl ProgramClock {
    /// Maps `LB_CONFIG` (its fd) and starts the thread.
    pub(crate) fn start(config_fd: BorrowedFd<'_>) -> Result<Self, DataplaneError> {
        let mapping = Arc::new(SharedMapping::new(
            config_fd,
            CONFIG,
            size_of::<LbConfig>(),
            true,
        )?);
        let started_ns = now_coarse_ns();
        now_cell(&mapping).store(started_ns, Ordering::Relaxed);
        let (stop, stopped) = mpsc::channel::<()>();
        let shared = Arc::clone(&mapping);
        let thread = thread::Builder::new()
            .name("lb-clock".into())
            .spawn(move || {
                let tick = Duration::from_nanos(PROGRAM_CLOCK_TICK_NS);
                // Ends when the guard drops its sender (or is gone).
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    now_cell(&shared).store(now_coarse_ns(), Ordering::Relaxed);
                }
            })
            .map_err(DataplaneError::ClockThread)?;
        Ok(ProgramClock {
            stop: Some(stop),
            thread: Some(thread),
            mapping,
            started_ns,
        })
    }

    /// The first time it stored.
    pub fn started_ns(&self) -> u64 {
        self.started_ns
    }
}

impl Drop for ProgramClock {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        now_cell(&self.mapping).store(0, Ordering::Relaxed);
    }
}
