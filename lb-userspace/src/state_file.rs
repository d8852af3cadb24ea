//! The last good state, kept on disk: after every successful apply the daemon writes the desired
//! state it forwards (services, backends, weights, states) and the backends their health checks
//! found down. A start-up whose source cannot deliver its first state (ZooKeeper unreachable, the
//! configuration file momentarily broken) starts from it instead of from nothing, and health
//! restarts as last known rather than all-up.
//!
//! The path defaults to `/var/lib/lb/<pin dir>.state.json` (`--state-file`): persistent storage,
//! not `/run` (tmpfs) like the status and lock files, because a host that reboots while ZooKeeper
//! is down needs it most. The document is JSON with a `state_version`; its services are the
//! configuration file's fields, decoded through the one schema (`model::fields`), so a state file
//! never holds what the sources would reject. Written atomically ([`crate::atomic_file`]).

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::health::ProbeTarget;
use crate::model::fields::ServiceFields;
use crate::model::{DesiredState, ModelError};
use crate::report::BackendRef;

mod writer;

pub use writer::StateFileWriter;

/// Version of the document this build writes and reads; bump on an incompatible change.
pub const STATE_VERSION: u32 = 1;
/// Where state files live by default.
pub const STATE_DIR: &str = "/var/lib/lb";

/// `/sys/fs/bpf/lb` → `/var/lib/lb/_sys_fs_bpf_lb.state.json`: one per daemon (per pin directory).
pub fn default_path(pin_dir: &Path) -> PathBuf {
    let name = pin_dir.to_string_lossy().replace('/', "_");
    Path::new(STATE_DIR).join(format!("{name}.state.json"))
}

/// What a state file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SavedState {
    pub desired: DesiredState,
    /// Backends their service's health check had found down.
    pub down: Vec<BackendRef>,
    /// When it was written (milliseconds since the Unix epoch).
    pub written_unix_ms: u64,
}

impl SavedState {
    /// The probe targets that were down and are still probed by `desired`'s services.
    pub fn down_targets(&self) -> Vec<ProbeTarget> {
        self.down
            .iter()
            .filter_map(|d| {
                let service = self.desired.services.get(&d.service)?;
                let check = service.health_check.clone()?;
                service
                    .backends
                    .contains_key(&d.backend)
                    .then_some(ProbeTarget {
                        addr: d.backend,
                        check,
                    })
            })
            .collect()
    }
}

#[derive(Serialize, Deserialize)]
struct Document {
    state_version: u32,
    written_unix_ms: u64,
    services: Vec<ServiceFields>,
    #[serde(default)]
    down: Vec<BackendRef>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("reading the state file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "the state file {path} has version {found}, this lb reads version {STATE_VERSION}: remove \
         it (the next successful apply writes a new one) or use the lb release that wrote it"
    )]
    Version { path: PathBuf, found: u32 },
    #[error(
        "the state file {path} is corrupt{}: {message}; remove it (the next successful apply \
         writes a new one)", field_suffix(.field)
    )]
    Decode {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error(
        "the state file {path} holds an invalid state: {source}; remove it (the next successful \
         apply writes a new one)"
    )]
    Invalid {
        path: PathBuf,
        source: Box<ModelError>,
    },
}

fn field_suffix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!(" at {field}")
    }
}

/// The file's bytes (pretty JSON).
pub fn encode(saved: &SavedState) -> Vec<u8> {
    let document = Document {
        state_version: STATE_VERSION,
        written_unix_ms: saved.written_unix_ms,
        services: (saved.desired.services.values())
            .map(|s| ServiceFields::from_spec(s))
            .collect(),
        down: saved.down.clone(),
    };
    // Plain data (strings, numbers, lists): serializing it cannot fail.
    serde_json::to_vec_pretty(&document).unwrap_or_default()
}

/// Writes `saved` to `path` atomically and durably.
pub fn write(path: &Path, saved: &SavedState) -> io::Result<()> {
    crate::atomic_file::write(path, &encode(saved))
}

/// Reads the state file; `Ok(None)` when there is none.
pub fn read(path: &Path) -> Result<Option<SavedState>, StateFileError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateFileError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    decode(path, &text).map(Some)
}

/// Decodes a state file's text (`path` names it in errors): the version first, so another
/// release's file is named as such, then the services through the configuration's schema.
pub fn decode(path: &Path, text: &str) -> Result<SavedState, StateFileError> {
    #[derive(Deserialize)]
    struct Version {
        state_version: u32,
    }
    let decode_error = |e: serde_path_to_error::Error<serde_json::Error>| {
        let field = match e.path().to_string() {
            root if root == "." => String::new(),
            p => p,
        };
        StateFileError::Decode {
            path: path.to_path_buf(),
            field,
            message: e.into_inner().to_string(),
        }
    };
    let mut json = serde_json::Deserializer::from_str(text);
    let version: Version = serde_path_to_error::deserialize(&mut json).map_err(decode_error)?;
    if version.state_version != STATE_VERSION {
        return Err(StateFileError::Version {
            path: path.to_path_buf(),
            found: version.state_version,
        });
    }
    let mut json = serde_json::Deserializer::from_str(text);
    let document: Document = serde_path_to_error::deserialize(&mut json).map_err(decode_error)?;
    let invalid = |source| StateFileError::Invalid {
        path: path.to_path_buf(),
        source: Box::new(source),
    };
    let desired =
        desired_state(&document.services).map_err(|(field, message)| StateFileError::Decode {
            path: path.to_path_buf(),
            field,
            message,
        })?;
    desired.validate().map_err(invalid)?;
    Ok(SavedState {
        desired,
        down: document.down,
        written_unix_ms: document.written_unix_ms,
    })
}

/// The services of the document; a service without a name or a backend without an address is
/// named by its place.
fn desired_state(services: &[ServiceFields]) -> Result<DesiredState, (String, String)> {
    let missing = |field: String| (field, "missing".to_owned());
    let mut desired = DesiredState::default();
    for (i, fields) in services.iter().enumerate() {
        let name = fields
            .name
            .as_deref()
            .ok_or_else(|| missing(format!("services[{i}].name")))?;
        let mut spec = fields.to_spec(name);
        for (j, backend) in fields.backends.iter().flatten().enumerate() {
            let addr = backend
                .addr
                .ok_or_else(|| missing(format!("services[{i}].backends[{j}].addr")))?;
            spec.backends.insert(addr, backend.to_spec(addr));
        }
        if desired.insert(spec).is_some() {
            return Err((
                format!("services[{i}].name"),
                format!("service \"{name}\" is listed twice"),
            ));
        }
    }
    Ok(desired)
}

#[cfg(test)]
mod tests;
