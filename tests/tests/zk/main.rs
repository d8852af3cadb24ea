//! ZooKeeper against a real server (Debian's ZooKeeper, started by each test on 127.0.0.1): the
//! source the daemon follows, the admin CLI, `lb register`, and how `lb run` picks its source. The lab
//! tests of `lb run --zk` are in `tests/lab/zk.rs`.

// Test helpers outside #[test] functions may unwrap: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod admin;
mod register;
mod source;
mod source_args;
