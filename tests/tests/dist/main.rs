//! The Debian package `cargo xtask dist` builds (`$LB_DEB`, set by `cargo xtask test`): its control
//! fields, every path it installs, and what those files do once extracted — the binary runs, the man
//! pages render, the completions know the subcommands, the example configuration passes the packaged
//! `lb config check`, and the unit starts the packaged binary.

// Test helpers outside #[test] functions may unwrap: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// What the package installs (`lb-userspace`'s `[package.metadata.deb]` assets), man pages aside.
const INSTALLED: &[&str] = &[
    "./usr/bin/lb",
    "./lib/systemd/system/lb.service",
    "./etc/default/lb",
    "./usr/share/doc/lb/README.md",
    "./usr/share/doc/lb/examples/lb.toml",
    "./usr/share/bash-completion/completions/lb",
    "./usr/share/zsh/vendor-completions/_lb",
    "./usr/share/fish/vendor_completions.d/lb.fish",
];

/// The visible subcommands of `lb` (the hidden `generate` aside): each has a man page and completions.
const SUBCOMMANDS: &[&str] = &[
    "run", "decap", "detach", "status", "flows", "top", "register", "service", "backend", "stats",
    "config", "version",
];

fn deb() -> PathBuf {
    let Some(deb) = std::env::var_os("LB_DEB") else {
        panic!(
            "LB_DEB is not set: these tests check the package `cargo xtask dist` builds; run them \
             with `cargo xtask test -p lb-tests --test dist` (it builds the package and sets LB_DEB)"
        );
    };
    let deb = PathBuf::from(deb);
    assert!(deb.is_file(), "LB_DEB={} is not a file", deb.display());
    deb
}

fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&std::ffi::OsStr]) -> Output {
    let program = program.as_ref();
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.to_string_lossy()));
    assert!(
        out.status.success(),
        "{} {:?} failed ({}): {}{}",
        program.to_string_lossy(),
        args,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn dpkg_deb(args: &[&str]) -> String {
    let deb = deb();
    let mut all: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    all.insert(1, deb.as_os_str());
    stdout(&run("dpkg-deb", &all))
}

/// The package extracted into a directory of its own, removed on drop (also when the test fails).
struct Extracted(PathBuf);

impl Extracted {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("lb-dist-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let extracted = Self(dir);
        run(
            "dpkg-deb",
            &["-x".as_ref(), deb().as_os_str(), extracted.0.as_os_str()],
        );
        extracted
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    fn read(&self, rel: &str) -> String {
        let path = self.path(rel);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }

    fn lb(&self, args: &[&str]) -> Output {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        Command::new(self.path("usr/bin/lb"))
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Extracted {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn debian_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[test]
fn control_fields_name_the_package_its_version_and_architecture() {
    let fields = dpkg_deb(&["-f", "Package", "Version", "Architecture", "Depends"]);
    let field = |name: &str| {
        fields
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in the control fields:\n{fields}"))
            .to_owned()
    };
    assert_eq!(field("Package"), "lb");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(field("Architecture"), debian_arch());
    let depends = field("Depends");
    assert!(
        depends.contains("libc6") && depends.contains("iproute2"),
        "{fields}"
    );
    let info = dpkg_deb(&["-I"]);
    assert!(info.contains("Package: lb"), "{info}");
    let conffiles = dpkg_deb(&["-I", "conffiles"]);
    assert_eq!(conffiles.trim(), "/etc/default/lb");
}

#[test]
fn the_listing_holds_every_installed_path() {
    let listing = dpkg_deb(&["-c"]);
    let paths: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    for want in INSTALLED {
        assert!(
            paths.contains(want),
            "{want} is not in the package:\n{listing}"
        );
    }
    let mut pages = vec!["./usr/share/man/man1/lb.1.gz".to_owned()];
    pages.extend(
        SUBCOMMANDS
            .iter()
            .map(|c| format!("./usr/share/man/man1/lb-{c}.1.gz")),
    );
    pages.push("./usr/share/man/man1/lb-service-put.1.gz".to_owned());
    for page in &pages {
        assert!(
            paths.contains(&page.as_str()),
            "{page} is not in the package:\n{listing}"
        );
    }
    assert!(
        !paths.iter().any(|p| p.contains("lb-generate")),
        "the hidden `lb generate` got a man page:\n{listing}"
    );
    let bin = listing
        .lines()
        .find(|l| l.ends_with(" ./usr/bin/lb"))
        .unwrap();
    assert!(bin.starts_with("-rwxr-xr-x"), "{bin}");
}

#[test]
fn the_extracted_binary_runs_and_accepts_the_example_config() {
    let pkg = Extracted::new("binary");
    let version = pkg.lb(&["--version"]);
    assert!(version.status.success());
    let text = stdout(&version);
    assert!(
        text.starts_with(&format!("lb {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    let example = pkg.path("usr/share/doc/lb/examples/lb.toml");
    let check = pkg.lb(&["config", "check", example.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "the example configuration fails `lb config check`: {}{}",
        stdout(&check),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(stdout(&check).contains(": ok: "), "{}", stdout(&check));
}

/// Renders a gzipped man page as text; groff's warnings (`-ww`) fail the test.
fn render_man(page: &Path) -> String {
    let roff = run("gzip", &["-dc".as_ref(), page.as_os_str()]).stdout;
    let mut groff = Command::new("groff")
        .args(["-man", "-Tutf8", "-P", "-cbou", "-ww"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("groff (groff-base; `cargo xtask setup` installs it)");
    use std::io::Write as _;
    groff.stdin.take().unwrap().write_all(&roff).unwrap();
    let out = groff.wait_with_output().unwrap();
    assert!(out.status.success(), "groff failed on {}", page.display());
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(
        warnings.is_empty(),
        "groff on {}: {warnings}",
        page.display()
    );
    stdout(&out)
}

#[test]
fn the_man_pages_render() {
    let pkg = Extracted::new("man");
    let man1 = pkg.path("usr/share/man/man1");
    let lb = render_man(&man1.join("lb.1.gz"));
    assert!(
        lb.contains("NAME") && lb.contains("lb - XDP layer-4 load balancer"),
        "{lb}"
    );
    for c in SUBCOMMANDS {
        assert!(
            lb.contains(&format!("lb-{c}(1)")),
            "lb(1) does not list lb-{c}(1):\n{lb}"
        );
    }
    let run_page = render_man(&man1.join("lb-run.1.gz"));
    assert!(run_page.contains("lb run"), "{run_page}");
    assert!(run_page.contains("--iface"), "{run_page}");
    for entry in std::fs::read_dir(&man1).unwrap() {
        render_man(&entry.unwrap().path());
    }
}

#[test]
fn the_completions_know_the_subcommands() {
    let pkg = Extracted::new("completions");
    let bash = pkg.read("usr/share/bash-completion/completions/lb");
    let zsh = pkg.read("usr/share/zsh/vendor-completions/_lb");
    let fish = pkg.read("usr/share/fish/vendor_completions.d/lb.fish");
    assert!(bash.contains("complete -F _lb"), "not a bash completion");
    assert!(zsh.starts_with("#compdef lb"), "not a zsh completion");
    for c in SUBCOMMANDS {
        assert!(
            bash.contains(&format!("lb,{c})")),
            "bash completion lacks {c}"
        );
        assert!(zsh.contains(&format!("'{c}:")), "zsh completion lacks {c}");
        assert!(
            fish.contains(&format!("-a \"{c}\"")),
            "fish completion lacks {c}"
        );
    }
    // Options of a subcommand, too.
    assert!(bash.contains("--iface"));
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(pkg.path("usr/share/bash-completion/completions/lb"))
        .output()
        .unwrap();
    assert!(
        syntax.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&syntax.stderr)
    );
}

#[test]
fn the_unit_runs_the_packaged_binary() {
    let pkg = Extracted::new("unit");
    let unit = pkg.read("lib/systemd/system/lb.service");
    let values = |key: &str| -> Vec<&str> {
        unit.lines()
            .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
            .collect()
    };
    assert_eq!(values("ExecStart"), ["/usr/bin/lb run $LB_ARGS"]);
    assert_eq!(values("EnvironmentFile"), ["-/etc/default/lb"]);
    assert!(
        values("ReadWritePaths")
            .iter()
            .any(|v| v.split_whitespace().any(|p| p == "-/etc/lb")),
        "{unit}"
    );
    assert_eq!(values("RuntimeDirectory"), ["lb"]);
    let docs = values("Documentation").join(" ");
    assert!(
        docs.contains("file:///usr/share/doc/lb/README.md"),
        "{docs}"
    );
    assert!(pkg.path("usr/share/doc/lb/README.md").is_file());
    let default = pkg.read("etc/default/lb");
    assert!(
        default.lines().any(|l| l.starts_with("#LB_ARGS=")),
        "/etc/default/lb has no commented LB_ARGS example:\n{default}"
    );
    assert!(
        !default.lines().any(|l| l.starts_with("LB_ARGS=")),
        "/etc/default/lb must not set LB_ARGS for the admin:\n{default}"
    );
}
