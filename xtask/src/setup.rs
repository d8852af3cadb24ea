//! `cargo xtask setup`: checks each thing the build and the tests need and installs what is missing.
//! Idempotent, and fast when nothing is missing (each check is one cheap command).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context as _, bail};

/// Debian packages the namespace lab, the ZooKeeper tests and the bench use.
/// `systemd` gives `systemd-analyze verify` (the unit test); `clang` builds Katran's object for the bench;
/// nginx, wrk, haproxy and nftables are the end-to-end bench's backends, load and peers; `dpkg-dev`
/// gives cargo-deb `dpkg-shlibdeps` (the package's Depends), `groff-base` renders the man pages in the
/// `dist` tests; `bird2` is the BGP daemon of the lab's router and LBs (the VIP announcement tests).
const APT_PACKAGES: &[&str] = &[
    "dpkg-dev",
    "groff-base",
    "iproute2",
    "ethtool",
    "util-linux",
    "procps",
    "zookeeper",
    "systemd",
    "clang",
    // `llc`: the bench builds Katran's balancer.bpf.o with clang | llc, as Katran's README does.
    "llvm",
    "nginx",
    "wrk",
    "haproxy",
    "nftables",
    "bird2",
];
/// The LLVM major version of the nightly toolchain that bpf-linker must be built against.
const LLVM_MAJOR: &str = "22";
const BPFFS: &str = "/sys/fs/bpf";
/// cargo-deb builds the Debian package (`cargo xtask dist`); this release builds with our toolchain.
const CARGO_DEB_VERSION: &str = "3.8.0";

pub fn run() -> anyhow::Result<()> {
    check_root()?;
    apt_packages()?;
    nightly()?;
    bpf_linker()?;
    cargo_deb()?;
    bpffs()?;
    println!("setup: everything is in place");
    Ok(())
}

fn ok(what: &str) {
    println!("setup: ok      {what}");
}

fn doing(what: &str) {
    println!("setup: doing   {what}");
}

fn check_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!("xtask setup must run as root (installs packages, mounts bpffs); euid is {euid}");
    }
    ok("running as root");
    Ok(())
}

/// Runs a command and returns its output, whatever its exit status.
fn output(program: &str, args: &[&str]) -> anyhow::Result<Output> {
    Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run `{program} {}`", args.join(" ")))
}

/// Runs a command with inherited output; fails when it fails.
fn status(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn apt_packages() -> anyhow::Result<()> {
    let mut args = vec!["-W", "-f=${Package} ${Status}\n"];
    args.extend_from_slice(APT_PACKAGES);
    // dpkg-query exits 1 when a package is unknown but still lists the known ones.
    let out = output("dpkg-query", &args)?;
    let installed: BTreeSet<&str> = std::str::from_utf8(&out.stdout)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.ends_with(" install ok installed"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed.contains(p))
        .collect();
    if missing.is_empty() {
        ok(&format!("apt packages: {}", APT_PACKAGES.join(", ")));
        return Ok(());
    }
    doing(&format!(
        "apt-get update; apt-get install {}",
        missing.join(" ")
    ));
    status(
        Command::new("apt-get").args(["update", "-q"]),
        "apt-get update",
    )?;
    // nginx, haproxy and bird2 would start as host services on install: the tests run their own, in namespaces.
    let _no_start = NoServiceStart::install()?;
    status(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
        "apt-get install",
    )
}

/// Debian's `policy-rc.d` answering 101 ("action forbidden") while packages are installed, so their
/// services are not started; removed on drop. An existing policy is left as it is.
struct NoServiceStart(Option<&'static Path>);

impl NoServiceStart {
    const PATH: &'static str = "/usr/sbin/policy-rc.d";

    fn install() -> anyhow::Result<Self> {
        let path = Path::new(Self::PATH);
        if path.exists() {
            return Ok(Self(None));
        }
        std::fs::write(path, "#!/bin/sh\nexit 101\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot make {} executable", path.display()))?;
        Ok(Self(Some(path)))
    }
}

impl Drop for NoServiceStart {
    fn drop(&mut self) {
        if let Some(path) = self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn nightly() -> anyhow::Result<()> {
    let toolchains = output("rustup", &["toolchain", "list"])?;
    let has_nightly = String::from_utf8_lossy(&toolchains.stdout)
        .lines()
        .any(|l| l.starts_with("nightly-"));
    if has_nightly {
        ok("rust nightly toolchain");
    } else {
        doing("rustup toolchain install nightly");
        status(
            Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ]),
            "rustup toolchain install nightly",
        )?;
    }
    let comps = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )?;
    if String::from_utf8_lossy(&comps.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        ok("rust-src for nightly");
        return Ok(());
    }
    doing("rustup component add rust-src --toolchain nightly");
    status(
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
        "rustup component add rust-src",
    )
}

fn bpf_linker() -> anyhow::Result<()> {
    if let Ok(out) = output("bpf-linker", &["--version"])
        && out.status.success()
    {
        ok(&format!(
            "bpf-linker ({})",
            String::from_utf8_lossy(&out.stdout).trim()
        ));
        return Ok(());
    }
    let prefix = llvm_prefix_from_nightly()?;
    doing(&format!(
        "cargo install bpf-linker (LLVM {LLVM_MAJOR} from {})",
        prefix.display()
    ));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    status(
        Command::new(cargo)
            .env("LLVM_PREFIX", &prefix)
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{LLVM_MAJOR}")),
        "cargo install bpf-linker",
    )
}

fn cargo_deb() -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    if let Ok(out) = Command::new(&cargo).args(["deb", "--version"]).output()
        && out.status.success()
    {
        ok(&format!(
            "cargo-deb ({})",
            String::from_utf8_lossy(&out.stdout).trim()
        ));
        return Ok(());
    }
    doing(&format!(
        "cargo install cargo-deb --locked --version {CARGO_DEB_VERSION}"
    ));
    status(
        Command::new(cargo).args([
            "install",
            "cargo-deb",
            "--locked",
            "--version",
            CARGO_DEB_VERSION,
        ]),
        "cargo install cargo-deb",
    )
}

/// bpf-linker must link against the LLVM that nightly rustc emits bitcode for. Nightly ships that LLVM
/// as `lib/libLLVM.so.<major>*` in its sysroot; a prefix directory with a `libLLVM.so` link to it is
/// all bpf-linker's build script needs.
fn llvm_prefix_from_nightly() -> anyhow::Result<PathBuf> {
    let out = output("rustc", &["+nightly", "--print", "sysroot"])?;
    if !out.status.success() {
        bail!(
            "`rustc +nightly --print sysroot` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let lib = sysroot.join("lib");
    let wanted = format!("libLLVM.so.{LLVM_MAJOR}");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("cannot list {}", lib.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&wanted))
        })
        .with_context(|| {
            format!(
                "no {wanted}* in {}; is nightly's LLVM still version {LLVM_MAJOR}?",
                lib.display()
            )
        })?;
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let prefix = Path::new(&home)
        .join(".cache")
        .join(format!("lb-llvm{LLVM_MAJOR}"));
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("cannot create {}", prefix_lib.display()))?;
    let own_name = llvm
        .file_name()
        .context("LLVM library path has no file name")?;
    for name in [std::ffi::OsStr::new("libLLVM.so"), own_name] {
        let link = prefix_lib.join(name);
        // Replace stale links (an older nightly) but never anything that is not a link.
        if link
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
        {
            std::fs::remove_file(&link)
                .with_context(|| format!("cannot replace {}", link.display()))?;
        }
        std::os::unix::fs::symlink(&llvm, &link)
            .with_context(|| format!("cannot link {} -> {}", link.display(), llvm.display()))?;
    }
    Ok(prefix)
}

fn bpffs_mounted() -> anyhow::Result<bool> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    Ok(mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let _source = f.next();
        f.next() == Some(BPFFS) && f.next() == Some("bpf")
    }))
}

fn bpffs() -> anyhow::Result<()> {
    if bpffs_mounted()? {
        ok(&format!("bpffs mounted at {BPFFS}"));
        return Ok(());
    }
    doing(&format!("mount -t bpf bpf {BPFFS}"));
    status(
        Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]),
        "mounting bpffs",
    )
}
