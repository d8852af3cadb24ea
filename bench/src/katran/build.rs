//! Building Katran's `balancer.bpf.o` from its sources, which stay outside the repository: they are
//! copied into a build directory (the workspace's `target/katran/`) and compiled there with the
//! command of their README (clang to LLVM IR, `llc` to BPF), so nothing of Katran is ever written
//! into the tree.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail, ensure};

/// The program's source, relative to the Katran directory.
const SOURCE: &str = "src/katran/lib/bpf/balancer.bpf.c";
/// The object, in the build directory.
pub const OBJECT: &str = "balancer.bpf.o";
/// Directories deeper than this are not Katran's layout (and a link loop cannot run forever).
const MAX_DEPTH: usize = 8;
/// Debian 12 installs `llc` (package `llvm`) and `llc-14` (package `llvm-14`, clang's own).
const LLC: &[&str] = &["llc", "llc-14"];

/// Copies the sources at `sources` into `build_dir` (replacing what an earlier build left) and
/// compiles `balancer.bpf.o` there; returns its path.
pub fn build(sources: &Path, build_dir: &Path) -> anyhow::Result<PathBuf> {
    ensure!(
        sources.join(SOURCE).is_file(),
        "no Katran sources at {}: {SOURCE} is missing (pass --katran DIR or set LB_BENCH_KATRAN \
         to a copy of Katran's BPF sources)",
        sources.display()
    );
    if build_dir.exists() {
        fs::remove_dir_all(build_dir)
            .with_context(|| format!("removing the old Katran build {}", build_dir.display()))?;
    }
    copy_tree(sources, build_dir, 0)?;
    let src = build_dir.join("src");
    let object = build_dir.join(OBJECT);
    compile(&src, &object)?;
    Ok(object)
}

/// clang (IR on stdout) piped into llc, in `src` as Katran's README says.
fn compile(src: &Path, object: &Path) -> anyhow::Result<()> {
    let llc = find_llc()?;
    let mut clang = Command::new("clang")
        .current_dir(src)
        .args([
            "-I.",
            "-I../include",
            "-DDEBUG",
            "-D__KERNEL__",
            "-Wno-unused-value",
            "-Wno-pointer-sign",
            "-Wno-compare-distinct-pointer-types",
            "-O2",
            "-emit-llvm",
            "-c",
            "-g",
            SOURCE.trim_start_matches("src/"),
            "-o",
            "-",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start clang (`cargo xtask setup` installs it)")?;
    let ir = clang
        .stdout
        .take()
        .context("clang's standard output was not captured")?;
    let llc_out = Command::new(llc)
        .current_dir(src)
        .args(["-march=bpf", "-filetype=obj", "-o"])
        .arg(object)
        .stdin(ir)
        .output()
        .with_context(|| format!("cannot start {llc}"))?;
    let clang_out = clang.wait_with_output().context("waiting for clang")?;
    if !clang_out.status.success() {
        bail!(
            "clang failed to compile Katran's {SOURCE} ({}): {}",
            clang_out.status,
            String::from_utf8_lossy(&clang_out.stderr).trim()
        );
    }
    if !llc_out.status.success() {
        bail!(
            "{llc} failed to turn Katran's IR into BPF ({}): {}",
            llc_out.status,
            String::from_utf8_lossy(&llc_out.stderr).trim()
        );
    }
    ensure!(
        object.is_file(),
        "{llc} exited 0 but wrote no {}",
        object.display()
    );
    Ok(())
}

fn find_llc() -> anyhow::Result<&'static str> {
    LLC.iter()
        .copied()
        .find(|name| {
            Command::new(name)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .with_context(|| {
            format!(
                "none of {} is installed (`cargo xtask setup` installs llvm)",
                LLC.join(", ")
            )
        })
}

fn copy_tree(from: &Path, to: &Path, depth: usize) -> anyhow::Result<()> {
    ensure!(
        depth <= MAX_DEPTH,
        "{} is nested deeper than Katran's sources ({MAX_DEPTH} levels)",
        from.display()
    );
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry.with_context(|| format!("reading {}", from.display()))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst, depth + 1)?;
        } else {
            fs::copy(&src, &dst)
                .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_sources_say_where_they_were_looked_for_and_how_to_point_elsewhere() {
        let e = build(
            Path::new("/nonexistent/katran"),
            Path::new("/nonexistent/build"),
        )
        .expect_err("no sources there");
        let msg = format!("{e:#}");
        assert!(
            msg.contains("/nonexistent/katran") && msg.contains("--katran"),
            "{msg}"
        );
    }
}
