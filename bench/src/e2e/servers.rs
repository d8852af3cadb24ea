//! nginx on the backends and HAProxy on the LB: private configuration files in the lab's
//! directory, run in the foreground as [`NsProcess`]es (stopped by pid when dropped), never as the
//! host's services.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use lb_tests::eventually::Eventually;
use lb_tests::lab::{NsProcess, run_in_netns};

const NGINX: &str = "/usr/sbin/nginx";
const HAPROXY: &str = "/usr/sbin/haproxy";
/// How long a server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// nginx's configuration: a worker per CPU (one backend alone can use the machine), no access log, a fixed small answer naming the backend;
/// keep-alive connections never closed by the server during a run.
fn nginx_conf(dir: &Path, name: &str) -> String {
    let d = dir.display();
    format!(
        "worker_processes auto;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 60s;
    server {{
        listen 80 backlog=4096;
        listen [::]:80 backlog=4096;
        location / {{ return 200 \"{name}\\n\"; }}
    }}
}}
"
    )
}

/// HAProxy's configuration: `mode tcp`, round robin over `backends`, listening on `vip`.
fn haproxy_conf(vip: SocketAddr, backends: &[SocketAddr]) -> String {
    let mut conf = format!(
        "global
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend vip
    bind {vip}
    default_backend web
backend web
    balance roundrobin
"
    );
    for (i, b) in backends.iter().enumerate() {
        conf.push_str(&format!("    server b{i} {b}\n"));
    }
    conf
}

/// Starts nginx in `netns` with its files under `dir` (created) and waits until `probe` accepts
/// connections from `probe_netns`.
pub fn start_nginx(
    netns: &str,
    dir: &Path,
    name: &str,
    probe_netns: &str,
    probe: SocketAddr,
) -> anyhow::Result<NsProcess> {
    ensure_installed(NGINX)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(dir, name))
        .with_context(|| format!("cannot write {}", conf.display()))?;
    let args = vec![
        "-p".to_owned(),
        path_str(dir)?,
        "-e".to_owned(),
        path_str(&dir.join("error.log"))?,
        "-c".to_owned(),
        path_str(&conf)?,
    ];
    let mut proc = NsProcess::spawn(
        &format!("{name} nginx"),
        netns,
        Path::new(NGINX),
        &args,
        &dir.join("nginx.log"),
    )?;
    wait_accepting(&mut proc, probe_netns, probe)?;
    Ok(proc)
}

/// Starts HAProxy in `netns` (the VIP must be a local address there) and waits until it accepts.
pub fn start_haproxy(
    netns: &str,
    dir: &Path,
    vip: SocketAddr,
    backends: &[SocketAddr],
) -> anyhow::Result<NsProcess> {
    ensure_installed(HAPROXY)?;
    let conf = dir.join("haproxy.cfg");
    std::fs::write(&conf, haproxy_conf(vip, backends))
        .with_context(|| format!("cannot write {}", conf.display()))?;
    // -db: foreground, no daemon; -f: only this file.
    let args = vec!["-db".to_owned(), "-f".to_owned(), path_str(&conf)?];
    let mut proc = NsProcess::spawn(
        "haproxy",
        netns,
        Path::new(HAPROXY),
        &args,
        &dir.join("haproxy.log"),
    )?;
    wait_accepting(&mut proc, netns, vip)?;
    Ok(proc)
}

fn wait_accepting(proc: &mut NsProcess, netns: &str, addr: SocketAddr) -> anyhow::Result<()> {
    Eventually::new(
        format!("{addr} to accept connections in {netns}"),
        READY_TIMEOUT,
    )
    .every(Duration::from_millis(50))
    .poll(|| {
        if let Err(e) = proc.check_running() {
            // Stop waiting: the error below carries the log.
            return Ok(Err(e));
        }
        run_in_netns(netns, || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
        })
        .map_err(|e| format!("{e:#}"))?
        .map(|_| Ok(()))
        .map_err(|e| e.to_string())
    })??;
    Ok(())
}

fn ensure_installed(program: &str) -> anyhow::Result<()> {
    ensure!(
        Path::new(program).is_file(),
        "{program} is not installed; run `cargo xtask setup`"
    );
    Ok(())
}

fn path_str(path: &Path) -> anyhow::Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("path {} is not UTF-8", path.display()))
}

/// Directory of backend `name`'s nginx under the lab directory.
pub fn nginx_dir(lab_dir: &Path, name: &str) -> PathBuf {
    lab_dir.join(format!("nginx-{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_lists_every_backend_in_tcp_mode() {
        let vip: SocketAddr = "198.18.100.1:80".parse().expect("addr");
        let b: Vec<SocketAddr> = ["198.18.2.11:80", "198.18.2.12:80"]
            .iter()
            .map(|s| s.parse().expect("addr"))
            .collect();
        let conf = haproxy_conf(vip, &b);
        assert!(conf.contains("mode tcp") && conf.contains("balance roundrobin"));
        assert!(conf.contains("bind 198.18.100.1:80"));
        assert!(conf.contains("server b1 198.18.2.12:80"));
    }

    #[test]
    fn nginx_keeps_its_files_in_its_directory() {
        let conf = nginx_conf(Path::new("/tmp/x"), "b0");
        assert!(conf.contains("pid /tmp/x/nginx.pid;"));
        assert!(conf.contains("return 200 \"b0\\n\""));
        assert!(!conf.contains("/var/"));
    }
}
