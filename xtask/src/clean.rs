//! `cargo xtask clean-labs`: removes what namespace labs of test processes that no longer exist left
//! behind (a test killed before its `Drop` ran). Only names of the lab's own pattern
//! (`lbt<pid>x<n>-…` namespaces, `lbt-<pid>x<n>` directories) whose `<pid>` is not running.

use std::path::Path;
use std::process::Command;

use anyhow::Context as _;

/// `<pid>` of a lab id `<pid>x<n>`, if it is one.
fn lab_pid(id: &str) -> Option<u32> {
    let (pid, n) = id.split_once('x')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

pub fn run() -> anyhow::Result<()> {
    let mut removed = 0;
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .context("cannot run `ip netns list`")?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(id) = name
            .strip_prefix("lbt")
            .and_then(|rest| rest.split_once('-'))
            .map(|(id, _)| id)
        else {
            continue;
        };
        if lab_pid(id).is_some_and(|pid| !alive(pid)) {
            println!("clean-labs: ip netns del {name}");
            let status = Command::new("ip").args(["netns", "del", name]).status()?;
            if !status.success() {
                println!("clean-labs: could not delete {name} ({status})");
            }
            removed += 1;
        }
    }
    for dir in ["/sys/fs/bpf".into(), std::env::temp_dir()] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_prefix("lbt-") else {
                continue;
            };
            if lab_pid(id).is_some_and(|pid| !alive(pid)) && entry.path().is_dir() {
                println!("clean-labs: rm -r {}", entry.path().display());
                std::fs::remove_dir_all(entry.path())
                    .with_context(|| format!("cannot remove {}", entry.path().display()))?;
                removed += 1;
            }
        }
    }
    println!("clean-labs: removed {removed} leftovers of finished labs");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lab_ids_have_a_pid() {
        assert_eq!(lab_pid("123x4"), Some(123));
        assert_eq!(lab_pid("123"), None);
        assert_eq!(lab_pid("fx-1590"), None);
        assert_eq!(lab_pid("12x"), None);
    }
}
