//! Test support for the load balancer: a network-namespace lab with a client, a router, load balancers
//! and backends ([`lab`]), client helpers that drive real TCP connections through it ([`client`]), a
//! writer of `lb` configuration files ([`config`]) bounded polling ([`eventually`]) a private ZooKeeper server ([`zk_server`]), a three-member ensemble ([`zk_ensemble`]) and the lab with either ([`zk_lab`]), and the
//! `BPF_PROG_TEST_RUN` network, frames and map fixtures of the XDP tests and bench ([`xdp`]).
//!
//! Everything the lab creates is removed by [`lab::Lab`]'s `Drop`, also when a test fails.

pub mod client;
pub mod config;
pub mod eventually;
pub mod lab;
pub mod scenario;
pub mod synflood;
pub mod xdp;
pub mod zk_ensemble;
pub mod zk_lab;
pub mod zk_server;

pub use client::{ContinuousLoad, HeldConn, LoadReport, Spread, hold, spread};
pub use config::{BackendConfig, ServiceConfig};
pub use lab::{Lab, LabOptions};
