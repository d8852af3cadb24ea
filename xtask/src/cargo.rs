//! Running cargo and the built binaries.

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// The workspace root: xtask lives one level below it.
pub fn workspace_root() -> anyhow::Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("xtask's manifest directory has no parent")
}

pub fn release_bin(root: &Path, name: &str) -> PathBuf {
    root.join("target").join("release").join(name)
}

/// The cargo that runs us (`$CARGO`), else the one on PATH.
fn cargo_program() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

pub fn command(program: impl AsRef<std::ffi::OsStr>, args: &[OsString]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

/// Runs `cargo <args>` in the workspace root; fails when cargo fails.
pub fn cargo(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    println!("xtask: cargo {}", args.join(" "));
    let status = Command::new(cargo_program())
        .args(args)
        .current_dir(root)
        .status()
        .context("cannot start cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Runs every host test in release mode with `LB_BIN` pointing at the freshly built daemon and
/// `LB_DEB` at the freshly built package.
pub fn test(root: &Path, extra: &[OsString], deb: &Path) -> anyhow::Result<()> {
    let lb = release_bin(root, "lb");
    let mut args: Vec<OsString> = [
        "test",
        "--release",
        "--no-fail-fast",
        "--workspace",
        "--exclude",
        "lb-ebpf",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.extend(extra.iter().cloned());
    println!(
        "xtask: LB_BIN={} LB_DEB={} cargo {}",
        lb.display(),
        deb.display(),
        args.join(" ".as_ref()).to_string_lossy()
    );
    let status = Command::new(cargo_program())
        .args(&args)
        .current_dir(root)
        .env("LB_BIN", &lb)
        .env("LB_DEB", deb)
        .status()
        .context("cannot start cargo test")?;
    if !status.success() {
        bail!("tests failed ({status})");
    }
    Ok(())
}

/// Replaces this process with `program args` (keeps the terminal, signals and exit code).
pub fn exec(program: &Path, args: &[OsString]) -> anyhow::Result<()> {
    let err = Command::new(program).args(args).exec();
    Err(err).with_context(|| format!("cannot run {}", program.display()))
}
