//! The file source: a static TOML file, reloaded on SIGHUP and when it changes (polled, so edits in
//! place and atomic rename-over are both noticed). A file that does not validate is rejected whole
//! with its line and field; the last good configuration keeps forwarding.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tracing::{error, info};

use super::{Source, SourceFuture};
use crate::config;
use crate::model::DesiredState;
use crate::report::{FileStatus, SourceStatus};
use crate::telemetry::{Reload, telemetry};

/// How often the configuration file is checked for changes.
const FILE_POLL: Duration = Duration::from_secs(1);

/// What identifies one version of the file: modification time, length, inode.
type Fingerprint = Option<(SystemTime, u64, u64)>;

pub struct FileSource {
    path: PathBuf,
    poll: tokio::time::Interval,
    last_seen: Fingerprint,
    /// Why the file's current content was rejected.
    rejected: Option<String>,
}

fn fingerprint(path: &Path) -> Fingerprint {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

impl FileSource {
    /// Follows `path` (on the current tokio runtime).
    pub fn open(path: PathBuf) -> FileSource {
        FileSource::polling(path, FILE_POLL)
    }

    fn polling(path: PathBuf, every: Duration) -> FileSource {
        let mut poll = tokio::time::interval(every);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        FileSource {
            last_seen: fingerprint(&path),
            path,
            poll,
            rejected: None,
        }
    }

    /// Reads the file; an invalid one is logged and recorded, and `None` keeps the last good state.
    fn reload(&mut self) -> Option<DesiredState> {
        match config::load_config_file(&self.path) {
            Ok(desired) => {
                self.rejected = None;
                Some(desired)
            }
            Err(e) => {
                error!("configuration rejected, the last good configuration keeps forwarding: {e}");
                self.rejected = Some(e.to_string());
                telemetry().reload(Reload::Rejected);
                None
            }
        }
    }
}

impl Source for FileSource {
    fn first(&mut self) -> SourceFuture<'_, anyhow::Result<Option<DesiredState>>> {
        let result = config::load_config_file(&self.path).map(Some).map_err(|e| {
            // Recorded so the status shows why a start from the state file happened.
            self.rejected = Some(e.to_string());
            telemetry().reload(Reload::Rejected);
            anyhow::anyhow!("{e}")
        });
        let result = result.context("the configuration is invalid; nothing was loaded");
        Box::pin(std::future::ready(result))
    }

    fn next(&mut self) -> SourceFuture<'_, DesiredState> {
        Box::pin(async move {
            loop {
                self.poll.tick().await;
                let now = fingerprint(&self.path);
                if now != self.last_seen {
                    self.last_seen = now;
                    info!(file = %self.path.display(), "configuration file changed: reloading");
                    if let Some(desired) = self.reload() {
                        return desired;
                    }
                }
            }
        })
    }

    fn hangup(&mut self) -> Option<DesiredState> {
        info!(file = %self.path.display(), "SIGHUP: reloading");
        self.last_seen = fingerprint(&self.path);
        self.reload()
    }

    fn status(&self) -> SourceStatus {
        SourceStatus::File(FileStatus {
            config_file: self.path.clone(),
            rejected: self.rejected.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[services]]
name = "web"
vip = "198.18.100.1:80"
backends = [{ addr = "198.18.2.11:80" }]
"#;

    /// Replaces the file by renaming a new one over it (a new inode, as editors and deploy tools do).
    fn replace(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn temp_dir(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("lb-file-source-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    async fn next_within(source: &mut FileSource, wait: Duration) -> Option<DesiredState> {
        tokio::time::timeout(wait, source.next()).await.ok()
    }

    #[tokio::test]
    async fn reloads_on_change_and_keeps_the_last_good_state_past_a_broken_file() {
        let dir = temp_dir("reload");
        let path = dir.0.join("lb.toml");
        std::fs::write(&path, GOOD).unwrap();
        let mut source = FileSource::polling(path.clone(), Duration::from_millis(10));
        let first = source.first().await.unwrap().unwrap();
        assert_eq!(first.services["web"].backends.len(), 1);

        replace(
            &path,
            &GOOD.replace("}]", "}, { addr = \"198.18.2.12:80\" }]"),
        );
        let changed = next_within(&mut source, Duration::from_secs(5))
            .await
            .expect("the change was noticed");
        assert_eq!(changed.services["web"].backends.len(), 2);
        assert_eq!(
            source.status(),
            SourceStatus::File(FileStatus {
                config_file: path.clone(),
                rejected: None
            })
        );

        replace(&path, "[[services]]\nname = \"web\"\nvip = \"nowhere\"\n");
        assert!(
            next_within(&mut source, Duration::from_millis(300))
                .await
                .is_none(),
            "a broken file yields no state"
        );
        let SourceStatus::File(status) = source.status() else {
            panic!("a file source reports a file status");
        };
        let why = status.rejected.expect("the rejection is reported");
        assert!(why.contains("lb.toml:3"), "{why}");
        assert!(source.hangup().is_none(), "SIGHUP re-reads the broken file");

        replace(&path, GOOD);
        let fixed = next_within(&mut source, Duration::from_secs(5))
            .await
            .expect("the fix was noticed");
        assert_eq!(fixed, first);
        assert!(matches!(
            source.status(),
            SourceStatus::File(FileStatus { rejected: None, .. })
        ));
        assert_eq!(source.hangup(), Some(first), "SIGHUP reloads");
    }

    #[tokio::test]
    async fn an_invalid_file_refuses_start_up_and_names_the_line() {
        let dir = temp_dir("start");
        let path = dir.0.join("lb.toml");
        std::fs::write(
            &path,
            "[[services]]\nname = \"web\"\nscheduler = \"fastest\"\n",
        )
        .unwrap();
        let mut source = FileSource::polling(path, Duration::from_millis(10));
        let err = format!("{:#}", source.first().await.unwrap_err());
        assert!(err.contains("nothing was loaded"), "{err}");
        assert!(err.contains("lb.toml:"), "{err}");
    }
}
