//! ZooKeeper against a real server (Debian's ZooKeeper, started by each test on 127.0.0.1): the
//! source the daemon follows, the admin CLI, `lb register`, and how `lb run` picks its source. The lab
//! tests of `lb run --zk` are in `tests/lab/zk.rs`.

// Test helpers outside #[test] functions may unwrap: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod admin;
mod config_check;
mod register;
mod registry;
mod source;
mod source_args;

/// The daemon library's debug logs in the test's captured output (once per process).
fn log_to_test_output() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("lb_userspace=debug")
        .try_init();
}
