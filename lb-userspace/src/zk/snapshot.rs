//! Raw znode data → a validated [`DesiredState`], one znode at a time.
//!
//! Validation is per znode so that one bad write never takes anything else down:
//! - a bad backend node is skipped (the service forwards with its other backends);
//! - a bad service node keeps the service's last good fields (from the previous state) with the
//!   backends that fit them; a service never seen good is not applied;
//! - a VIP claimed by a second service is refused for the newcomer: the service that held it in the
//!   previous state keeps it (with no previous holder, the lexicographically first name wins), and the
//!   newcomer keeps its own last good version if it had one.
//!
//! Every refusal comes back as a [`Rejection`] (znode path and reason) for the caller to log and count.
//!
//! A [`SnapshotBuilder`] remembers each service it built from its own node alone (no fallback to
//! the last good version): told which services changed since, it builds only those, so a change at
//! fleet size (100,000 backends) validates one service's nodes, not all of them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use lb_common::VipKey;

use super::schema::{Schema, parse_backend_node_name};
use crate::model::{DesiredState, ModelError, ServiceSpec, backend_from_json, service_from_json};

/// The znodes of one service as read from ZooKeeper.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawService {
    /// Data of `<root>/services/<name>`; `None` when it has none.
    pub data: Option<Vec<u8>>,
    /// Children of `<root>/services/<name>/backends`: node name → data (empty for "weight 1, active").
    pub backends: BTreeMap<String, Vec<u8>>,
}

/// Every service node under `<root>/services`, by node name.
pub type RawTree = BTreeMap<String, RawService>;

/// A znode that was not (or not entirely) taken, and why.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rejection {
    pub path: String,
    pub reason: String,
    /// What happened instead (`"backend skipped"`, `"last good version kept"`, ...).
    pub outcome: &'static str,
}

/// A warning about a znode that was taken (an unknown field, ignored for forward compatibility).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Warning {
    pub path: String,
    pub message: String,
}

/// The desired state built from one read of the tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub state: DesiredState,
    pub rejections: Vec<Rejection>,
    pub warnings: Vec<Warning>,
}

const BACKEND_SKIPPED: &str = "backend skipped";
const KEPT_LAST_GOOD: &str = "last good version kept";
const NOT_APPLIED: &str = "service not applied (no good version yet)";

/// Builds the desired state from `raw`, using `previous` (the state built last time) for the last
/// good version of services whose node is bad and for who held a VIP first.
pub fn build_snapshot(schema: &Schema, raw: &RawTree, previous: &DesiredState) -> Snapshot {
    SnapshotBuilder::default().build(schema, raw, previous, None)
}

/// [`build_snapshot`] that builds again only what changed: services whose last build used nothing
/// but their own nodes are taken as they were unless named as changed.
#[derive(Debug, Default)]
pub struct SnapshotBuilder {
    /// Services built from their own nodes alone, as of the last build.
    built: BTreeMap<String, BuiltService>,
}

/// One service as its own nodes make it, with what they were refused and warned about.
#[derive(Clone, Debug)]
struct BuiltService {
    spec: Arc<ServiceSpec>,
    rejections: Vec<Rejection>,
    warnings: Vec<Warning>,
}

impl SnapshotBuilder {
    /// The snapshot of `raw` (as [`build_snapshot`]). `changed` names the services whose nodes may
    /// differ from the last build's `raw`; `None`: any may (a full read).
    pub fn build(
        &mut self,
        schema: &Schema,
        raw: &RawTree,
        previous: &DesiredState,
        changed: Option<&BTreeSet<String>>,
    ) -> Snapshot {
        let mut kept = std::mem::take(&mut self.built);
        let mut out = Snapshot::default();
        let mut candidates: BTreeMap<String, Candidate> = BTreeMap::new();
        for (name, node) in raw {
            let unchanged = changed.is_some_and(|c| !c.contains(name));
            if let Some(built) = kept.remove(name).filter(|_| unchanged) {
                out.rejections.extend(built.rejections.iter().cloned());
                out.warnings.extend(built.warnings.iter().cloned());
                candidates.insert(
                    name.clone(),
                    Candidate {
                        spec: Arc::clone(&built.spec),
                        is_last_good: false,
                    },
                );
                self.built.insert(name.clone(), built);
                continue;
            }
            let mut own = Snapshot::default();
            let candidate = build_service(schema, name, node, previous, &mut own);
            out.rejections.extend(own.rejections.iter().cloned());
            out.warnings.extend(own.warnings.iter().cloned());
            let Some(candidate) = candidate else {
                continue;
            };
            // A service whose node was refused stands on its last good version (`previous`):
            // built again every time. Any other is what its nodes alone make.
            if !candidate.is_last_good {
                let built = BuiltService {
                    spec: Arc::clone(&candidate.spec),
                    rejections: own.rejections,
                    warnings: own.warnings,
                };
                self.built.insert(name.clone(), built);
            }
            candidates.insert(name.clone(), candidate);
        }
        resolve_vip_claims(schema, &mut candidates, previous, &mut out.rejections);
        out.state.services = candidates
            .into_iter()
            .map(|(name, c)| (name, c.spec))
            .collect();
        out
    }
}

/// What the nodes of one service make of it on their own: no last good version to fall back on,
/// VIP claims not settled. For work done ahead of a snapshot (start-up builds a service's tables
/// while the rest of the tree is still read); `None` when the nodes make no valid service.
pub fn service_alone(schema: &Schema, name: &str, node: &RawService) -> Option<Arc<ServiceSpec>> {
    let mut scratch = Snapshot::default();
    build_service(schema, name, node, &DesiredState::default(), &mut scratch)
        .filter(|c| !c.is_last_good)
        .map(|c| c.spec)
}

/// A service that made it through its own validation, before VIP claims are settled.
struct Candidate {
    spec: Arc<ServiceSpec>,
    /// The spec came from `previous` already (it cannot fall back any further): its node was
    /// refused.
    is_last_good: bool,
}

fn build_service(
    schema: &Schema,
    name: &str,
    node: &RawService,
    previous: &DesiredState,
    out: &mut Snapshot,
) -> Option<Candidate> {
    let service_path = schema.service_path(name);
    let last_good = previous.services.get(name);
    let reject_service = |reason: String, out: &mut Snapshot| -> Option<(ServiceSpec, bool)> {
        let outcome = if last_good.is_some() {
            KEPT_LAST_GOOD
        } else {
            NOT_APPLIED
        };
        out.rejections.push(Rejection {
            path: service_path.clone(),
            reason,
            outcome,
        });
        last_good.map(|spec| (without_backends(spec), true))
    };

    let data = node.data.as_deref().unwrap_or_default();
    let parsed = if data.iter().all(u8::is_ascii_whitespace) {
        reject_service(
            "the service node has no data; write JSON such as {\"vip\": \"198.18.100.1:80\"}"
                .into(),
            out,
        )
    } else {
        match service_from_json(name, data) {
            Ok((spec, warnings)) => {
                out.warnings
                    .extend(warnings.into_iter().map(|message| Warning {
                        path: service_path.clone(),
                        message,
                    }));
                Some((spec, false))
            }
            Err(e) => reject_service(e.to_string(), out),
        }
    };
    let (mut spec, is_last_good) = parsed?;

    let fields_only = without_backends(&spec);
    for (node_name, data) in &node.backends {
        let path = schema.backend_node_path(name, node_name);
        match build_backend(&fields_only, node_name, data) {
            Ok((backend, warnings)) => {
                out.warnings
                    .extend(warnings.into_iter().map(|message| Warning {
                        path: path.clone(),
                        message,
                    }));
                spec.backends.insert(backend.addr, backend);
            }
            Err(reason) => out.rejections.push(Rejection {
                path,
                reason,
                outcome: BACKEND_SKIPPED,
            }),
        }
    }
    // Rules about the whole service (the backend count) can only be checked now.
    if let Err(e) = spec.validate() {
        let (fallback, is_last_good) = reject_service(e.to_string(), out)?;
        return Some(Candidate {
            spec: last_good.cloned().unwrap_or_else(|| Arc::new(fallback)),
            is_last_good,
        });
    }
    Some(Candidate {
        spec: Arc::new(spec),
        is_last_good,
    })
}

/// Reads one backend node and checks it against its service (port, family, address kind).
fn build_backend(
    service: &ServiceSpec,
    node_name: &str,
    data: &[u8],
) -> Result<(crate::model::BackendSpec, Vec<String>), String> {
    parse_backend_node_name(node_name).map_err(|e| e.to_string())?;
    let (backend, warnings) = backend_from_json(node_name, data).map_err(|e| e.to_string())?;
    let alone = service.clone().with_backend(backend.clone());
    alone.validate().map_err(|e| e.to_string())?;
    Ok((backend, warnings))
}

fn without_backends(spec: &ServiceSpec) -> ServiceSpec {
    ServiceSpec {
        backends: BTreeMap::new(),
        ..spec.clone()
    }
}

/// Settles services that claim the same VIP until every VIP has one service. Losers fall back to
/// their last good version (which may hold another VIP) or are dropped.
fn resolve_vip_claims(
    schema: &Schema,
    candidates: &mut BTreeMap<String, Candidate>,
    previous: &DesiredState,
    rejections: &mut Vec<Rejection>,
) {
    let previous_holder: BTreeMap<VipKey, &str> = previous
        .services
        .values()
        .map(|s| (s.vip_key(), s.name.as_str()))
        .collect();
    // Each round either drops a service or moves one to its last good version (once), so this ends
    // within twice the number of services.
    for _ in 0..=2 * candidates.len() {
        let mut claims: BTreeMap<VipKey, Vec<&str>> = BTreeMap::new();
        for (name, c) in candidates.iter() {
            claims.entry(c.spec.vip_key()).or_default().push(name);
        }
        let mut losers: Vec<(String, String)> = Vec::new();
        for (key, names) in &claims {
            if names.len() < 2 {
                continue;
            }
            // `names` is in name order, so the first is the lexicographic winner.
            let holder = previous_holder
                .get(key)
                .copied()
                .filter(|h| names.contains(h))
                .unwrap_or(names[0]);
            for name in names.iter().filter(|n| **n != holder) {
                losers.push(((*name).to_owned(), holder.to_owned()));
            }
        }
        if losers.is_empty() {
            return;
        }
        for (loser, holder) in losers {
            let Some(candidate) = candidates.get(&loser) else {
                continue;
            };
            let vip = candidate.spec.vip;
            let error = ModelError::DuplicateVip {
                first: holder,
                second: loser.clone(),
                vip,
            };
            let fallback = previous
                .services
                .get(&loser)
                .filter(|_| !candidate.is_last_good);
            rejections.push(Rejection {
                path: schema.service_path(&loser),
                reason: error.to_string(),
                outcome: if fallback.is_some() {
                    KEPT_LAST_GOOD
                } else {
                    NOT_APPLIED
                },
            });
            match fallback {
                Some(spec) => {
                    candidates.insert(
                        loser,
                        Candidate {
                            spec: spec.clone(),
                            is_last_good: true,
                        },
                    );
                }
                None => {
                    candidates.remove(&loser);
                }
            }
        }
    }
    // Unreachable in practice (see above); never let a conflict through.
    let keys: BTreeSet<String> = candidates.keys().cloned().collect();
    let mut seen: BTreeSet<VipKey> = BTreeSet::new();
    for name in keys {
        let key = candidates[&name].spec.vip_key();
        if !seen.insert(key) {
            candidates.remove(&name);
        }
    }
}

#[cfg(test)]
mod tests;
