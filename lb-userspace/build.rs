use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

// Builds lb-ebpf for bpfel-unknown-none (nightly + bpf-linker; `cargo xtask setup` installs both)
// so one `cargo build` produces the daemon with the XDP object embedded.
fn main() -> anyhow::Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("lb-userspace has no parent directory"))?;
    git_commit(workspace);
    // The object embeds lb-common's types and sizes: a change there must rebuild it too.
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("lb-common").display()
    );
    let root = workspace.join("lb-ebpf");
    let root_dir = root.to_str().context("lb-ebpf path is not UTF-8")?;
    aya_build::build_ebpf(
        [Package { name: "lb-ebpf", root_dir, ..Default::default() }],
        Toolchain::default(),
    )
    .context("building the eBPF object failed; `cargo xtask setup` installs nightly rust-src and bpf-linker")
}

/// `LB_GIT_COMMIT` for `lb version`: the commit the build is made from, "unknown" outside a git
/// checkout (a source tarball, a package build).
fn git_commit(workspace: &Path) {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(workspace)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=LB_GIT_COMMIT={commit}");
    // Rebuilt when HEAD moves: HEAD itself, the branch it names, packed refs.
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    let paths = [
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["rev-parse", "--git-path", "packed-refs"]),
        branch.and_then(|r| git(&["rev-parse", "--git-path", &r])),
    ];
    for path in paths.into_iter().flatten() {
        let path = workspace.join(path);
        // A path that does not exist would rerun this script (and the eBPF build) every time.
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
