//! The end-to-end bench (`lb-e2e-bench`, `cargo xtask bench --e2e`): real TCP from `wrk` in the
//! client namespace to nginx on the backends, through each [`mode::Mode`] in turn (no LB, the
//! `lb_floor` program, `lb run` with two schedulers over three backends and round robin over
//! `floor`'s one, nftables, HAProxy), interleaved over rounds.
//!
//! - [`lab`]: the `lb-tests` lab with nginx, and entering / leaving each mode (guards);
//! - [`servers`] (nginx, HAProxy), [`nftables`], [`floor`] (`lb_floor`), [`route`]: the modes' parts;
//! - [`wrk`]: the load; [`cpu`], [`links`]: what is read around each run; [`measure`]: one run
//!   and its path checks; [`summary`]: medians, ratios, goals; [`report`]: Markdown and SVG.

pub mod cpu;
pub mod floor;
pub mod lab;
pub mod links;
pub mod measure;
pub mod mode;
pub mod nftables;
pub mod report;
pub mod route;
pub mod servers;
pub mod summary;
pub mod wrk;
