//! `cargo xtask dist`: the Debian package. Generates the man pages and completions with the built
//! `lb` (`lb generate`), then packages with cargo-deb (`[package.metadata.deb]` of lb-userspace).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::cargo;

/// Where `lb generate` writes; lb-userspace's deb assets read from here.
fn gen_dir(root: &Path) -> PathBuf {
    root.join("target").join("dist").join("gen")
}

/// Builds the package from the release `lb` already built; returns the `.deb`'s path.
pub fn package(root: &Path) -> anyhow::Result<PathBuf> {
    let gen_dir = gen_dir(root);
    // Pages of a command that no longer exists must not linger into the package.
    if gen_dir.exists() {
        std::fs::remove_dir_all(&gen_dir)
            .with_context(|| format!("cannot remove {}", gen_dir.display()))?;
    }
    let lb = cargo::release_bin(root, "lb");
    let status = Command::new(&lb)
        .arg("generate")
        .arg("--out")
        .arg(&gen_dir)
        .status()
        .with_context(|| format!("cannot start {}", lb.display()))?;
    if !status.success() {
        bail!(
            "`lb generate --out {}` failed ({status})",
            gen_dir.display()
        );
    }
    let deb = root.join("target").join("debian").join(format!(
        "lb_{}_{}.deb",
        env!("CARGO_PKG_VERSION"),
        debian_arch()?
    ));
    let deb_arg = deb.to_string_lossy().into_owned();
    cargo::cargo(
        root,
        &[
            "deb",
            "-p",
            "lb-userspace",
            "--no-build",
            "--output",
            &deb_arg,
        ],
    )?;
    if !deb.is_file() {
        bail!("cargo deb succeeded but {} is not there", deb.display());
    }
    Ok(deb)
}

/// The host's Debian architecture name (`amd64`), which the package is built for.
fn debian_arch() -> anyhow::Result<String> {
    let out = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .context("cannot run `dpkg --print-architecture`")?;
    if !out.status.success() {
        bail!("`dpkg --print-architecture` failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
