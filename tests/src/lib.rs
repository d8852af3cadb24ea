//! lab
pub mod zk_server;
