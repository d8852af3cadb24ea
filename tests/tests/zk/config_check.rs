//! `lb config check` as an operator runs it: the `lb` binary, a user without privileges, a file
//! with several errors, and a real ZooKeeper tree with bad nodes.

use std::process::{Command, Output};

use lb_tests::zk_server::ZkServer;

const BAD: &str = r#"
[[services]]
name = "web"
vip = "198.18.100.1:80"
scheduler = "bogus"
backends = [ { addr = "198.18.2.11:80" } ]

[[services]]
name = "api"
vip = "198.18.100.2:81"
backends = [ { addr = "198.18.2.11:80", weight = -1 } ]
"#;

const GOOD: &str = r#"
[[services]]
name = "web"
vip = "198.18.100.1:80"
backends = [ { addr = "198.18.2.11:80" }, { addr = "198.18.2.12:80", weight = 2 } ]
"#;

/// Runs `lb ARGS` as user `nobody` (no capabilities, no root).
fn lb_as_nobody(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(lb_tests::lab::lb_bin().unwrap())
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A file `nobody` can read, removed on drop.
pub(crate) struct TempConfig(std::path::PathBuf);

impl TempConfig {
    pub(crate) fn new(name: &str, content: &str) -> TempConfig {
        let dir = std::env::temp_dir().join(format!("lb-config-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        TempConfig(path)
    }

    pub(crate) fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[test]
fn a_user_without_privileges_checks_a_file_and_sees_every_error() {
    let bad = TempConfig::new("bad.toml", BAD);
    let out = lb_as_nobody(&["config", "check", bad.arg()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let errors: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(": services["))
        .collect();
    assert_eq!(errors.len(), 2, "{stdout}");
    assert!(
        errors[0].starts_with(&format!(
            "{}:5:13: services[0].scheduler: unknown scheduler",
            bad.arg()
        )),
        "{stdout}"
    );
    assert!(
        errors[1].starts_with(&format!(
            "{}:11:50: services[1].backends[0].weight:",
            bad.arg()
        )),
        "{stdout}"
    );
    assert!(stdout.contains("2 error(s)"), "{stdout}");

    let good = TempConfig::new("good.toml", GOOD);
    let out = lb_as_nobody(&["config", "check", good.arg()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("ok: 1 service(s), 2 backend(s)"),
        "{stdout}"
    );
}

#[test]
fn lb_run_reports_a_bad_file_before_root_and_the_interface() {
    let bad = TempConfig::new("run.toml", BAD);
    let out = lb_as_nobody(&["run", "--config", bad.arg(), "--iface", "lb-no-such-if0"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("the configuration file is invalid"),
        "{stderr}"
    );
    assert!(
        stderr.contains("services[0].scheduler")
            && stderr.contains("services[1].backends[0].weight"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("root") && !stderr.contains("lb-no-such-if0"),
        "{stderr}"
    );
}

#[test]
fn a_fatal_error_follows_the_json_log_format() {
    let bad = TempConfig::new("json.toml", BAD);
    let out = lb_as_nobody(&[
        "--log-format",
        "json",
        "run",
        "--config",
        bad.arg(),
        "--iface",
        "lb-no-such-if0",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log line");
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v.get("level").is_some(), "{line}");
    }
    let fatal: serde_json::Value = serde_json::from_str(lines[lines.len() - 1]).unwrap();
    assert_eq!(fatal["level"], "ERROR", "{fatal}");
    let error = fatal["fields"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("services[0].scheduler"), "{fatal}");
    // Not a terminal: no colour codes.
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
}

#[test]
fn lb_version_names_the_commit_and_the_layout() {
    let out = lb_as_nobody(&["version"]);
    let (stdout, _) = text(&out);
    assert!(out.status.success());
    let layout = format!("data-plane layout {}", lb_common::layout::LAYOUT_VERSION);
    assert!(
        stdout.starts_with("lb ") && stdout.contains("commit ") && stdout.contains(&layout),
        "{stdout}"
    );
    let out = lb_as_nobody(&["--version"]);
    assert_eq!(text(&out).0, stdout, "--version and `lb version` differ");
}

#[test]
fn a_zookeeper_tree_is_checked_node_by_node() {
    let server = ZkServer::start().unwrap();
    let zk = server.connect_string();
    let lb = |args: &[&str]| {
        let out = Command::new(lb_tests::lab::lb_bin().unwrap())
            .args(args)
            .args(["--zk", &zk])
            .output()
            .unwrap();
        let (o, e) = text(&out);
        (out.status.code(), o, e)
    };
    let (code, out, err) = lb(&["service", "put", "web", "--vip", "198.18.100.1:80"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = lb(&["backend", "put", "web", "198.18.2.11:80"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = lb(&["config", "check"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("ok: 1 service(s), 1 backend(s)"), "{out}");

    // Nodes written by hand, as the admin CLI would refuse them.
    server
        .cli(&[
            "create",
            "/lb/services/api",
            r#"{"vip":"198.18.100.2:80","scheduler":"fastest"}"#,
        ])
        .unwrap();
    server
        .cli(&["create", "/lb/services/web/backends/not-an-address", ""])
        .unwrap();
    let (code, out, err) = lb(&["config", "check"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("/lb/services/api: ") && out.contains("unknown scheduler"),
        "{out}"
    );
    assert!(
        out.contains("/lb/services/web/backends/not-an-address: "),
        "{out}"
    );
    assert!(out.contains("2 error(s)"), "{out}");
}

/// `--zk-format curator`: the check reads the registry's instances through the mapping, as
/// `lb run` would, and names each bad instance node.
#[test]
fn a_curator_registry_is_checked_instance_by_instance() {
    let server = ZkServer::start().unwrap();
    let zk = server.connect_string();
    let mapping = TempConfig::new(
        "curator-mapping",
        "[[services]]\nname = \"web\"\nvip = \"198.18.100.1:80\"\nregistry_name = \"web-svc\"\n",
    );
    let instance = |id: &str, address: &str, port: u16| {
        format!(
            r#"{{"name":"web-svc","id":"{id}","address":"{address}","port":{port},"sslPort":null,"payload":null,"registrationTimeUTC":1764720000000,"serviceType":"DYNAMIC","uriSpec":null}}"#
        )
    };
    server.cli(&["create", "/discovery", ""]).unwrap();
    server.cli(&["create", "/discovery/web-svc", ""]).unwrap();
    let good = instance("a1", "198.18.2.11", 80);
    server
        .cli(&["create", "/discovery/web-svc/a1", &good])
        .unwrap();
    let check = |root: &str| {
        let out = Command::new(lb_tests::lab::lb_bin().unwrap())
            .args(["config", "check", "--zk", &zk, "--zk-root", root])
            .args(["--zk-format", "curator", "--zk-services", mapping.arg()])
            .output()
            .unwrap();
        let (o, e) = text(&out);
        (out.status.code(), o, e)
    };
    let (code, out, err) = check("/discovery");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("ok: 1 service(s), 1 backend(s)"), "{out}");

    // A host name and a port other than the VIP's: both rejected, by their node paths.
    let by_name = instance("a2", "web-2.example", 80);
    let other_port = instance("a3", "198.18.2.13", 8080);
    server
        .cli(&["create", "/discovery/web-svc/a2", &by_name])
        .unwrap();
    server
        .cli(&["create", "/discovery/web-svc/a3", &other_port])
        .unwrap();
    let (code, out, err) = check("/discovery");
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("/discovery/web-svc/a2: "), "{out}");
    assert!(out.contains("/discovery/web-svc/a3: "), "{out}");
    assert!(out.contains("2 error(s)"), "{out}");

    // A root that does not exist is an error that names it, not "0 services, ok".
    let (code, out, err) = check("/nowhere");
    assert_ne!(code, Some(0), "{out}{err}");
    assert!(err.contains("/nowhere"), "{out}{err}");

    // --zk-format without the mapping is refused before connecting.
    let out = Command::new(lb_tests::lab::lb_bin().unwrap())
        .args(["config", "check", "--zk", &zk, "--zk-format", "curator"])
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_ne!(out.status.code(), Some(0), "{o}{e}");
    assert!(e.contains("--zk-services"), "{o}{e}");
}
