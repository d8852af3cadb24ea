//! One map write, as data: what the planner decides and the executor performs.

use std::net::SocketAddr;

use lb_common::service::SERVICE_NAME_LEN;
use lb_common::{BackendEntry, ServiceEntry, ServiceMeta, VipKey};

use crate::model::ServiceSpec;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    SetBackendConns {
        id: u32,
        conns: u64,
    },
    PutBackend {
        id: u32,
        entry: BackendEntry,
    },
    /// Backend ids into the schedule pool at `offset`.
    WriteTable {
        offset: u32,
        ids: Vec<u32>,
    },
    PutServiceMeta {
        id: u32,
        meta: ServiceMeta,
    },
    PutService {
        key: VipKey,
        entry: ServiceEntry,
    },
    DeleteService {
        key: VipKey,
    },
}

/// An op and the op that takes it back (`None`: nothing refers to what it wrote yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub op: Op,
    pub undo: Option<Op>,
}

impl Step {
    pub fn new(op: Op, undo: Option<Op>) -> Step {
        Step { op, undo }
    }
}

pub fn backend_entry(addr: &SocketAddr, service_id: u32, weight: u32, flags: u32) -> BackendEntry {
    let (words, family) = lb_common::addr::to_words(addr.ip());
    BackendEntry {
        addr: words,
        service_id,
        weight,
        flags,
        port_be: addr.port().to_be(),
        family,
        _pad: 0,
    }
}

pub fn service_meta(spec: &ServiceSpec) -> ServiceMeta {
    let mut meta = ServiceMeta {
        vip: spec.vip_key(),
        in_use: 1,
        ..Default::default()
    };
    let bytes = spec.name.as_bytes();
    let n = bytes.len().min(SERVICE_NAME_LEN - 1);
    meta.name[..n].copy_from_slice(&bytes[..n]);
    meta
}
