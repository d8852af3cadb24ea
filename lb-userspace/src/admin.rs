//! `lb service put|rm|ls` and `lb backend put|rm|weight|ls`: an operator's CLI over the ZooKeeper
//! schema. Everything is validated with the same model code the daemon uses before it is written;
//! changes to several nodes go in one multi-op transaction, guarded by the version of the node the
//! validation read, so a concurrent edit makes the write fail instead of slipping past validation.
//! Hand edits with `zkCli.sh` produce the same nodes and are read the same way.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Serialize;
use zookeeper_client::{Client, CreateMode, Error as ZkErr, MultiWriteError};

use crate::model::{BackendSpec, ModelError, ServiceSpec, backend_from_json, service_from_json};
use crate::zk::acl::node_acls;
use crate::zk::client::{ZkError, ZkTarget};
use crate::zk::schema::{Schema, backend_node_name, parse_backend_node_name};
use crate::zk::snapshot::{RawTree, build_snapshot};
use crate::zk::source::read_tree;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("refused, nothing was written: {0}")]
    Invalid(#[from] ModelError),
    #[error("refused, nothing was written: {0}")]
    Refused(String),
    #[error(
        "service {service} does not exist ({path} is missing); create it with `lb service put {service} --vip IP:PORT`"
    )]
    NoService { service: String, path: String },
    #[error("backend {backend} of service {service} does not exist ({path} is missing)")]
    NoBackend {
        service: String,
        backend: SocketAddr,
        path: String,
    },
    #[error(
        "{path} changed while this command ran (another writer); nothing was written, run the command again"
    )]
    Concurrent { path: String },
    #[error(transparent)]
    Zk(#[from] ZkError),
}

fn op(op: &'static str, path: &str) -> impl FnOnce(ZkErr) -> AdminError {
    let f = ZkError::op(op, path);
    move |e| AdminError::Zk(f(e))
}

/// Whether a put created the node or replaced its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    Updated,
}

impl PutOutcome {
    pub fn verb(self) -> &'static str {
        match self {
            PutOutcome::Created => "created",
            PutOutcome::Updated => "updated",
        }
    }
}

/// The fields of a service node, as the operator gives them.
#[derive(Clone, Debug, Default)]
pub struct ServiceFields {
    pub vip: Option<SocketAddr>,
    pub scheduler: Option<String>,
    pub persistence_timeout_s: Option<u32>,
    pub persistence_netmask: Option<u8>,
    /// The `health_check` object as JSON.
    pub health_check: Option<serde_json::Value>,
    /// Panic threshold in percent (0: off).
    pub panic_threshold: Option<u8>,
}

impl ServiceFields {
    /// The node's JSON: only the fields given (the daemon applies the documented defaults).
    pub fn to_json(&self, vip: SocketAddr) -> serde_json::Value {
        let mut o = serde_json::Map::new();
        o.insert("vip".into(), vip.to_string().into());
        o.insert("proto".into(), "tcp".into());
        if let Some(s) = &self.scheduler {
            o.insert("scheduler".into(), s.clone().into());
        }
        if let Some(t) = self.persistence_timeout_s {
            o.insert("persistence_timeout_s".into(), t.into());
        }
        if let Some(m) = self.persistence_netmask {
            o.insert("persistence_netmask".into(), m.into());
        }
        if let Some(h) = &self.health_check {
            o.insert("health_check".into(), h.clone());
        }
        if let Some(p) = self.panic_threshold {
            o.insert("panic_threshold".into(), p.into());
        }
        serde_json::Value::Object(o)
    }
}

/// Creates a service or replaces its fields (its backends stay). Refused when the result would be
/// invalid, when an existing backend would no longer fit the VIP, or when another service holds the VIP.
pub async fn put_service(
    client: &Client,
    target: &ZkTarget,
    name: &str,
    data: &serde_json::Value,
) -> Result<PutOutcome, AdminError> {
    let schema = &target.schema;
    let bytes = serde_json::to_vec(data).map_err(|e| AdminError::Refused(e.to_string()))?;
    let (spec, _warnings) = service_from_json(name, &bytes)?;
    let tree = read_tree(client, schema).await?.unwrap_or_default();
    let path = schema.service_path(name);

    for (other, raw) in &tree {
        if other == name {
            continue;
        }
        let Some(other_data) = &raw.data else {
            continue;
        };
        if let Ok((other_spec, _)) = service_from_json(other, other_data)
            && other_spec.vip_key() == spec.vip_key()
        {
            return Err(ModelError::DuplicateVip {
                first: other.clone(),
                second: name.to_owned(),
                vip: spec.vip,
            }
            .into());
        }
    }
    if let Some(existing) = tree.get(name) {
        for node in existing.backends.keys() {
            if let Ok(addr) = parse_backend_node_name(node) {
                spec.clone()
                    .with_backend(BackendSpec::new(addr))
                    .validate()
                    .map_err(|e| {
                        AdminError::Refused(format!(
                            "{e} (backend {addr} is already registered; change or remove it first)"
                        ))
                    })?;
            }
        }
    }

    let acls = node_acls(target.auth.is_some());
    match client.get_data(&path).await {
        Ok((_, stat)) => {
            client
                .set_data(&path, &bytes, Some(stat.version))
                .await
                .map_err(|e| match e {
                    ZkErr::BadVersion => AdminError::Concurrent { path: path.clone() },
                    e => op("write", &path)(e),
                })?;
            Ok(PutOutcome::Updated)
        }
        Err(ZkErr::NoNode) => {
            let options = CreateMode::Persistent.with_acls(acls);
            // The parents first (idempotent), then the service and its backends directory together.
            client
                .mkdir(&schema.services_dir(), &options)
                .await
                .map_err(op("create", &schema.services_dir()))?;
            let mut multi = client.new_multi_writer();
            let backends = schema.backends_dir(name);
            multi
                .add_create(&path, &bytes, &options)
                .map_err(op("create", &path))?;
            multi
                .add_create(&backends, &[], &options)
                .map_err(op("create", &backends))?;
            multi.commit().await.map_err(|e| match e {
                MultiWriteError::OperationFailed {
                    source: ZkErr::NodeExists,
                    ..
                } => AdminError::Concurrent { path: path.clone() },
                e => op("create", &path)(e.into()),
            })?;
            Ok(PutOutcome::Created)
        }
        Err(e) => Err(op("read", &path)(e)),
    }
}

/// Deletes a service with all its backends in one transaction. Returns the backend node names
/// removed. A backend registering meanwhile makes the transaction fail; it is retried (3 times).
pub async fn remove_service(
    client: &Client,
    target: &ZkTarget,
    name: &str,
) -> Result<Vec<String>, AdminError> {
    let schema = &target.schema;
    let path = schema.service_path(name);
    let dir = schema.backends_dir(name);
    for _ in 0..3 {
        let (_, stat) = match client.get_data(&path).await {
            Ok(x) => x,
            Err(ZkErr::NoNode) => {
                return Err(AdminError::NoService {
                    service: name.to_owned(),
                    path,
                });
            }
            Err(e) => return Err(op("read", &path)(e)),
        };
        let (backends, has_dir) = match client.list_children(&dir).await {
            Ok(children) => (children, true),
            Err(ZkErr::NoNode) => (Vec::new(), false),
            Err(e) => return Err(op("list", &dir)(e)),
        };
        let mut multi = client.new_multi_writer();
        for b in &backends {
            let p = schema.backend_node_path(name, b);
            multi.add_delete(&p, None).map_err(op("delete", &p))?;
        }
        if has_dir {
            multi.add_delete(&dir, None).map_err(op("delete", &dir))?;
        }
        multi
            .add_delete(&path, Some(stat.version))
            .map_err(op("delete", &path))?;
        match multi.commit().await {
            Ok(_) => return Ok(backends),
            // A child appeared or vanished, or the service changed: read again.
            Err(MultiWriteError::OperationFailed {
                source: ZkErr::NotEmpty | ZkErr::NoNode | ZkErr::BadVersion,
                ..
            }) => continue,
            Err(e) => return Err(op("delete", &path)(e.into())),
        }
    }
    Err(AdminError::Concurrent { path })
}

/// One row of `lb service ls`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ServiceRow {
    pub name: String,
    pub vip: Option<String>,
    pub scheduler: Option<String>,
    pub persistence_timeout_s: Option<u32>,
    /// Backends the daemon would use.
    pub backends: usize,
    /// Why nodes of this service are rejected, if any are.
    pub errors: Vec<String>,
}

/// Every service, as the daemon would read it (with the reasons for anything it would reject).
pub async fn list_services(
    client: &Client,
    target: &ZkTarget,
) -> Result<Vec<ServiceRow>, AdminError> {
    let schema = &target.schema;
    let tree: RawTree = read_tree(client, schema).await?.unwrap_or_default();
    let snapshot = build_snapshot(schema, &tree, &Default::default());
    let mut rows = Vec::new();
    for name in tree.keys() {
        let spec: Option<&ServiceSpec> = snapshot.state.services.get(name);
        let prefix = schema.service_path(name);
        let errors = snapshot
            .rejections
            .iter()
            .filter(|r| r.path == prefix || r.path.starts_with(&format!("{prefix}/")))
            .map(|r| format!("{}: {}", r.path, r.reason))
            .collect();
        rows.push(ServiceRow {
            name: name.clone(),
            vip: spec.map(|s| s.vip.to_string()),
            scheduler: spec.map(|s| s.scheduler.name().to_owned()),
            persistence_timeout_s: spec.map(|s| s.persistence_timeout_s),
            backends: spec.map_or(0, |s| s.backends.len()),
            errors,
        });
    }
    Ok(rows)
}

/// Reads and validates a service node; the version guards the write that follows.
async fn read_service(
    client: &Client,
    schema: &Schema,
    name: &str,
) -> Result<(ServiceSpec, i32), AdminError> {
    let path = schema.service_path(name);
    match client.get_data(&path).await {
        Ok((data, stat)) => {
            let (spec, _) = service_from_json(name, &data).map_err(|e| {
                AdminError::Refused(format!(
                    "the service node {path} is invalid ({e}); fix it with `lb service put` first"
                ))
            })?;
            Ok((spec, stat.version))
        }
        Err(ZkErr::NoNode) => Err(AdminError::NoService {
            service: name.to_owned(),
            path,
        }),
        Err(e) => Err(op("read", &path)(e)),
    }
}

fn backend_json(backend: &BackendSpec) -> Vec<u8> {
    serde_json::json!({ "weight": backend.weight, "state": backend.state.name() })
        .to_string()
        .into_bytes()
}

/// Creates a persistent backend node or replaces its data, checked against its service (port,
/// family, weight) in a transaction that also checks the service did not change meanwhile.
pub async fn put_backend(
    client: &Client,
    target: &ZkTarget,
    service: &str,
    backend: &BackendSpec,
) -> Result<PutOutcome, AdminError> {
    let schema = &target.schema;
    let (spec, version) = read_service(client, schema, service).await?;
    spec.with_backend(backend.clone()).validate()?;
    let service_path = schema.service_path(service);
    let dir = schema.backends_dir(service);
    let path = schema.backend_path(service, backend.addr);
    let data = backend_json(backend);
    let options = CreateMode::Persistent.with_acls(node_acls(target.auth.is_some()));
    let existing = client.check_stat(&path).await.map_err(op("read", &path))?;
    let has_dir = client
        .check_stat(&dir)
        .await
        .map_err(op("read", &dir))?
        .is_some();
    let mut multi = client.new_multi_writer();
    multi
        .add_check_version(&service_path, version)
        .map_err(op("check", &service_path))?;
    let outcome = match existing {
        Some(stat) => {
            multi
                .add_set_data(&path, &data, Some(stat.version))
                .map_err(op("write", &path))?;
            PutOutcome::Updated
        }
        None => {
            if !has_dir {
                multi
                    .add_create(&dir, &[], &options)
                    .map_err(op("create", &dir))?;
            }
            multi
                .add_create(&path, &data, &options)
                .map_err(op("create", &path))?;
            PutOutcome::Created
        }
    };
    multi.commit().await.map_err(|e| match e {
        MultiWriteError::OperationFailed {
            source: ZkErr::BadVersion | ZkErr::NodeExists | ZkErr::NoNode,
            ..
        } => AdminError::Concurrent { path: path.clone() },
        e => op("write", &path)(e.into()),
    })?;
    Ok(outcome)
}

pub async fn remove_backend(
    client: &Client,
    target: &ZkTarget,
    service: &str,
    backend: SocketAddr,
) -> Result<(), AdminError> {
    let schema = &target.schema;
    let path = schema.backend_path(service, backend);
    match client.delete(&path, None).await {
        Ok(()) => Ok(()),
        Err(ZkErr::NoNode) => Err(AdminError::NoBackend {
            service: service.to_owned(),
            backend,
            path,
        }),
        Err(e) => Err(op("delete", &path)(e)),
    }
}

/// Changes a backend's weight, keeping its state (and its node kind: a registered backend stays
/// ephemeral). Guarded by the node's version.
pub async fn set_backend_weight(
    client: &Client,
    target: &ZkTarget,
    service: &str,
    backend: SocketAddr,
    weight: u32,
) -> Result<(), AdminError> {
    let schema = &target.schema;
    let path = schema.backend_path(service, backend);
    let (spec, _) = read_service(client, schema, service).await?;
    let (data, stat) = match client.get_data(&path).await {
        Ok(x) => x,
        Err(ZkErr::NoNode) => {
            return Err(AdminError::NoBackend {
                service: service.to_owned(),
                backend,
                path,
            });
        }
        Err(e) => return Err(op("read", &path)(e)),
    };
    let node = backend_node_name(backend);
    let (mut current, _) = backend_from_json(&node, &data).map_err(|e| {
        AdminError::Refused(format!(
            "{path} holds invalid data ({e}); use `lb backend put` to replace it"
        ))
    })?;
    current.weight = weight;
    spec.with_backend(current.clone()).validate()?;
    client
        .set_data(&path, &backend_json(&current), Some(stat.version))
        .await
        .map_err(|e| match e {
            ZkErr::BadVersion => AdminError::Concurrent { path: path.clone() },
            e => op("write", &path)(e),
        })?;
    Ok(())
}

/// One row of `lb backend ls`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct BackendRow {
    pub node: String,
    pub weight: Option<u32>,
    pub state: Option<String>,
    /// `ephemeral` (kept by `lb register`) or `persistent` (written by an operator).
    pub kind: &'static str,
    pub error: Option<String>,
}

pub async fn list_backends(
    client: &Client,
    target: &ZkTarget,
    service: &str,
) -> Result<Vec<BackendRow>, AdminError> {
    let schema = &target.schema;
    let (spec, _) = read_service(client, schema, service).await?;
    let dir = schema.backends_dir(service);
    let children = match client.list_children(&dir).await {
        Ok(c) => c,
        Err(ZkErr::NoNode) => Vec::new(),
        Err(e) => return Err(op("list", &dir)(e)),
    };
    let reads: Vec<_> = children
        .iter()
        .map(|c| client.get_data(&schema.backend_node_path(service, c)))
        .collect();
    let mut rows = BTreeMap::new();
    for (node, read) in children.into_iter().zip(reads) {
        let (data, stat) = match read.await {
            Ok(x) => x,
            Err(ZkErr::NoNode) => continue,
            Err(e) => return Err(op("read", &schema.backend_node_path(service, &node))(e)),
        };
        let checked = parse_backend_node_name(&node)
            .map_err(|e| e.to_string())
            .and_then(|_| backend_from_json(&node, &data).map_err(|e| e.to_string()))
            .and_then(|(b, _)| {
                spec.clone()
                    .with_backend(b.clone())
                    .validate()
                    .map(|()| b)
                    .map_err(|e| e.to_string())
            });
        let kind = if stat.ephemeral_owner != 0 {
            "ephemeral"
        } else {
            "persistent"
        };
        let row = match checked {
            Ok(b) => BackendRow {
                node: node.clone(),
                weight: Some(b.weight),
                state: Some(b.state.name().to_owned()),
                kind,
                error: None,
            },
            Err(e) => BackendRow {
                node: node.clone(),
                weight: None,
                state: None,
                kind,
                error: Some(e),
            },
        };
        rows.insert(node, row);
    }
    Ok(rows.into_values().collect())
}

pub fn render_services(rows: &[ServiceRow]) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<24} {:<28} {:<10} {:>8} {:>8}",
        "SERVICE", "VIP", "SCHEDULER", "PERSIST", "BACKENDS"
    );
    for r in rows {
        let _ = writeln!(
            o,
            "{:<24} {:<28} {:<10} {:>8} {:>8}",
            r.name,
            r.vip.as_deref().unwrap_or("-"),
            r.scheduler.as_deref().unwrap_or("-"),
            r.persistence_timeout_s
                .map_or("-".to_owned(), |t| t.to_string()),
            r.backends
        );
        for e in &r.errors {
            let _ = writeln!(o, "  ! rejected: {e}");
        }
    }
    o
}

pub fn render_backends(rows: &[BackendRow]) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<42} {:>6} {:<9} {:<10}",
        "BACKEND", "WEIGHT", "STATE", "KIND"
    );
    for r in rows {
        let _ = writeln!(
            o,
            "{:<42} {:>6} {:<9} {:<10}",
            r.node,
            r.weight.map_or("-".to_owned(), |w| w.to_string()),
            r.state.as_deref().unwrap_or("-"),
            r.kind
        );
        if let Some(e) = &r.error {
            let _ = writeln!(o, "  ! rejected: {e}");
        }
    }
    o
}
