//! Forwards aya-log records of the XDP programs into `log` (and from there into tracing). Only
//! started with `LoadOptions::kernel_log`; otherwise the programs' log level is 0 and nothing runs.

use std::{
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::Ebpf;
use aya_log::EbpfLogger;

use super::DataplaneError;

/// aya-log's level value for `debug` (error = 1 … trace = 5); 0 turns logging off.
pub(crate) const LEVEL_DEBUG: u8 = 4;
pub(crate) const LEVEL_OFF: u8 = 0;

/// How long one poll waits, which bounds how long `Drop` waits for the thread.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// A thread that drains the kernel log ring buffer until dropped.
pub(crate) struct KernelLog {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl KernelLog {
    pub(crate) fn start(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        let mut logger =
            EbpfLogger::init(ebpf).map_err(|e| DataplaneError::KernelLog(e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_thread = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("lb-kernel-log".into())
            .spawn(move || {
                while !stop_thread.load(Ordering::Relaxed) {
                    let mut pfd = libc::pollfd {
                        fd: logger.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut pfd, 1, POLL_INTERVAL.as_millis() as i32) };
                    logger.flush();
                }
            })
            .map_err(|e| DataplaneError::KernelLog(e.to_string()))?;
        Ok(KernelLog {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for KernelLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
