//! The state `lb run` starts from: its source's first state, or, when the source cannot deliver
//! one (ZooKeeper unreachable within its wait, the configuration file broken), the last good state
//! from the state file ([`crate::state_file`]). Health restarts as the state file last knew it.

use std::path::Path;
use std::time::SystemTime;

use tracing::{error, warn};

use crate::health::ProbeTarget;
use crate::model::DesiredState;
use crate::report::{StateFileStart, unix_ms};
use crate::state_file::{self, SavedState};

pub(super) struct FirstState {
    pub desired: DesiredState,
    /// Backends the state file had down: they start down.
    pub restored_down: Vec<ProbeTarget>,
    /// Set when `desired` is the state file's.
    pub from_state_file: Option<StateFileStart>,
    /// Neither the source nor the state file had a state: `desired` is empty until the source
    /// delivers (pinned maps are then adopted only when it does).
    pub waiting: bool,
}

/// Picks the first state from the source's answer and the state file at `path`. Refuses only when
/// the source's state is invalid and no state file stands in.
pub(super) fn choose(
    source_first: anyhow::Result<Option<DesiredState>>,
    path: &Path,
) -> anyhow::Result<FirstState> {
    let saved = state_file::read(path);
    if let Err(e) = &saved {
        error!("{e}");
    }
    let restored_down = match &saved {
        Ok(Some(saved)) => saved.down_targets(),
        _ => Vec::new(),
    };
    let source_error = match source_first {
        Ok(Some(desired)) => {
            return Ok(FirstState {
                desired,
                restored_down,
                from_state_file: None,
                waiting: false,
            });
        }
        Ok(None) => None,
        Err(e) => Some(e),
    };
    let reason = source_error.as_ref().map_or_else(
        || "the source delivered no state in time".to_owned(),
        |e| format!("{e:#}"),
    );
    match saved {
        Ok(Some(saved)) => Ok(from_saved(saved, restored_down, path, reason)),
        unusable => {
            let why = match unusable {
                Err(e) => e.to_string(),
                _ => format!("there is no state file {}", path.display()),
            };
            match source_error {
                Some(e) => Err(e.context(format!("and no last good state to start from: {why}"))),
                None => {
                    warn!(
                        "{reason} and {why}: starting with no services until the source delivers"
                    );
                    Ok(FirstState {
                        desired: DesiredState::default(),
                        restored_down: Vec::new(),
                        from_state_file: None,
                        waiting: true,
                    })
                }
            }
        }
    }
}

fn from_saved(
    saved: SavedState,
    restored_down: Vec<ProbeTarget>,
    path: &Path,
    reason: String,
) -> FirstState {
    warn!(
        state_file = %path.display(),
        services = saved.desired.services.len(),
        down = restored_down.len(),
        written_unix_ms = saved.written_unix_ms,
        "starting from the state file (the last good state), until the source delivers: {reason}"
    );
    FirstState {
        desired: saved.desired,
        restored_down,
        from_state_file: Some(StateFileStart {
            path: path.to_path_buf(),
            since_unix_ms: unix_ms(SystemTime::now()),
            written_unix_ms: saved.written_unix_ms,
            reason,
        }),
        waiting: false,
    }
}
