//! What the follow loop does with a control-socket request (see [`crate::control`]).

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use tracing::info;

use super::{Ctx, apply_desired, write_report};
use crate::control::file_edit::{BackendChange, edit_backend};
use crate::control::{Request, Response};
use crate::source::{Source, SourceSpec};

pub(super) fn handle(ctx: &mut Ctx<'_>, source: &mut dyn Source, request: Request) -> Response {
    let response = match request {
        Request::BackendWeight {
            service,
            backend,
            weight,
        } => edit(
            ctx,
            source,
            &service,
            backend,
            BackendChange::Weight(weight),
        ),
        Request::BackendState {
            service,
            backend,
            state,
        } => edit(ctx, source, &service, backend, BackendChange::State(state)),
        Request::StatsZero => zero(ctx, source),
    };
    match &response {
        Response::Done { message } => info!("control: {message}"),
        Response::Refused { reason } => info!("control request refused: {reason}"),
    }
    response
}

fn refused(reason: String) -> Response {
    Response::Refused { reason }
}

fn edit(
    ctx: &mut Ctx<'_>,
    source: &mut dyn Source,
    service: &str,
    backend: std::net::SocketAddr,
    change: BackendChange,
) -> Response {
    let SourceSpec::File(path) = &ctx.opts.source else {
        return refused(
            "this daemon follows ZooKeeper: change the backend there (`lb backend weight|drain --zk HOSTS ...`), where every LB sees it".into(),
        );
    };
    let path = path.clone();
    match edit_file(&path, service, backend, change) {
        Err(reason) => refused(reason),
        Ok((desired, was)) => {
            apply_desired(ctx, desired);
            write_report(ctx, source);
            let (field, now) = match change {
                BackendChange::Weight(w) => ("weight", w.to_string()),
                BackendChange::State(s) => ("state", format!("\"{}\"", s.name())),
            };
            Response::Done {
                message: format!(
                    "backend {backend} of {service}: {field} {} -> {now}; saved to {} and applied (generation {})",
                    was.unwrap_or_else(|| "(default)".into()),
                    path.display(),
                    ctx.applier.generation(),
                ),
            }
        }
    }
}

/// Edits the file, validates it and replaces it atomically (keeping its mode); the daemon then
/// applies what was written, so the file and the data plane never disagree for long.
fn edit_file(
    path: &Path,
    service: &str,
    backend: std::net::SocketAddr,
    change: BackendChange,
) -> Result<(crate::model::DesiredState, Option<String>), String> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {origin}: {e}; nothing changed"))?;
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {origin}: {e}; nothing changed"))?
        .permissions()
        .mode();
    let edited =
        edit_backend(&text, &origin, service, backend, change).map_err(|e| e.to_string())?;
    crate::atomic_file::write(path, edited.text.as_bytes()).map_err(|e| {
        format!(
            "cannot write {origin} ({e}), so nothing changed: the daemon persists every change to its \
             file; make the file and its directory writable by the daemon (the unit's ReadWritePaths), \
             or edit the file yourself (it is reloaded when it changes)"
        )
    })?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    Ok((edited.desired, edited.was))
}

fn zero(ctx: &mut Ctx<'_>, source: &mut dyn Source) -> Response {
    match ctx.dp.zero_stats() {
        Err(e) => refused(format!("zeroing the counters failed: {e}")),
        Ok(()) => {
            // The daemon's own totals follow the data plane's.
            ctx.swept_total = 0;
            ctx.evictions = 0;
            write_report(ctx, source);
            Response::Done {
                message: "traffic counters zeroed (flows and connection counts kept)".into(),
            }
        }
    }
}
