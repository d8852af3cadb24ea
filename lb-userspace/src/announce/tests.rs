use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use super::bird::{ReplyLine, ReplyReader, parse_line};
use super::*;
use crate::model::{BackendSpec, BackendState, ServiceSpec};

fn backend(last: u8) -> SocketAddr {
    SocketAddr::from(([198, 18, 1, last], 80))
}

fn service(name: &str, vip: &str, backends: &[BackendSpec]) -> ServiceSpec {
    let mut s = ServiceSpec::new(name, vip.parse().unwrap());
    for b in backends {
        s = s.with_backend(b.clone());
    }
    s
}

fn state(services: Vec<ServiceSpec>) -> DesiredState {
    DesiredState::of(services)
}

fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn no_health(_: &str) -> Option<&'static ServiceHealth> {
    None
}

#[test]
fn services_with_a_backend_taking_flows_are_announced() {
    let s = state(vec![
        service("web", "198.18.100.1:80", &[BackendSpec::new(backend(1))]),
        service("v6", "[2001:db8::1]:80", &[BackendSpec::new(backend(2))]),
    ]);
    assert_eq!(
        announce_set(&s, true, no_health),
        ips(&["198.18.100.1", "2001:db8::1"])
    );
}

#[test]
fn nothing_is_announced_while_detached() {
    let s = state(vec![service(
        "web",
        "198.18.100.1:80",
        &[BackendSpec::new(backend(1))],
    )]);
    assert!(announce_set(&s, false, no_health).is_empty());
}

#[test]
fn drained_weight_zero_and_down_backends_withdraw_the_vip() {
    let mut drained = BackendSpec::new(backend(1));
    drained.state = BackendState::Draining;
    let mut zero = BackendSpec::new(backend(2));
    zero.weight = 0;
    let down = BackendSpec::new(backend(3));
    let s = state(vec![
        service("idle", "198.18.100.1:80", &[drained, zero, down]),
        service("empty", "198.18.100.2:80", &[]),
        service("ok", "198.18.100.3:80", &[BackendSpec::new(backend(4))]),
    ]);
    let health = ServiceHealth {
        down: [backend(3)].into_iter().collect(),
        panic: false,
    };
    let set = announce_set(&s, true, |name| (name == "idle").then_some(&health));
    assert_eq!(set, ips(&["198.18.100.3"]));
}

#[test]
fn a_vip_shared_by_ports_stays_while_one_service_serves() {
    let mut drained = BackendSpec::new(backend(1));
    drained.state = BackendState::Draining;
    let s = state(vec![
        service("http", "198.18.100.1:80", &[drained]),
        service("https", "198.18.100.1:443", &[BackendSpec::new(backend(2))]),
    ]);
    assert_eq!(announce_set(&s, true, no_health), ips(&["198.18.100.1"]));
}

#[test]
fn the_include_holds_one_blackhole_route_per_vip_per_family() {
    let text = render_include(&ips(&["198.18.100.2", "198.18.100.1", "2001:db8::1"]));
    let body: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        body,
        [
            "protocol static lb_vips4 {",
            "\tipv4;",
            "\troute 198.18.100.1/32 blackhole;",
            "\troute 198.18.100.2/32 blackhole;",
            "}",
            "protocol static lb_vips6 {",
            "\tipv6;",
            "\troute 2001:db8::1/128 blackhole;",
            "}",
        ]
    );
}

#[test]
fn the_empty_include_still_defines_both_protocols() {
    let text = render_include(&BTreeSet::new());
    assert!(text.contains("protocol static lb_vips4 {\n\tipv4;\n}"));
    assert!(text.contains("protocol static lb_vips6 {\n\tipv6;\n}"));
    assert!(!text.contains("\troute"));
}

#[test]
fn reply_lines_parse() {
    assert_eq!(
        parse_line("0001 BIRD 2.0.12 ready."),
        Some(ReplyLine::Coded {
            code: 1,
            last: true,
            text: "BIRD 2.0.12 ready.".into()
        })
    );
    assert_eq!(
        parse_line("0002-Reading configuration from /etc/bird/bird.conf"),
        Some(ReplyLine::Coded {
            code: 2,
            last: false,
            text: "Reading configuration from /etc/bird/bird.conf".into()
        })
    );
    assert_eq!(
        parse_line(" more"),
        Some(ReplyLine::Continued("more".into()))
    );
    assert_eq!(
        parse_line("+0008 spontaneous"),
        Some(ReplyLine::Spontaneous("0008 spontaneous".into()))
    );
    assert_eq!(
        parse_line("0003"),
        Some(ReplyLine::Coded {
            code: 3,
            last: true,
            text: String::new()
        })
    );
    assert_eq!(parse_line("hello"), None);
    assert_eq!(parse_line("12"), None);
    assert_eq!(parse_line("0003x"), None);
}

fn read(lines: &[&str]) -> Option<bird::Reply> {
    let mut r = ReplyReader::default();
    lines.iter().find_map(|l| r.push(parse_line(l).unwrap()))
}

#[test]
fn a_reconfigure_reply_succeeds() {
    let reply = read(&[
        "0002-Reading configuration from /etc/bird/bird.conf",
        "+0008 ignored",
        "0003 Reconfigured",
    ])
    .unwrap();
    assert!(reply.is_success());
    assert_eq!(reply.code, 3);
    assert_eq!(
        reply.text,
        "Reading configuration from /etc/bird/bird.conf; Reconfigured"
    );
}

#[test]
fn an_error_anywhere_fails_the_reply() {
    let reply = read(&[
        "0002-Reading configuration from /etc/bird/bird.conf",
        "8002 /etc/bird/bird.conf:3:1 syntax error",
    ])
    .unwrap();
    assert!(!reply.is_success());
    assert_eq!(reply.code, 8002);
    assert!(reply.text.contains("syntax error"));
    assert!(read(&["0002-Reading", " still reading"]).is_none());
}

/// A fake BIRD on a unix socket: greets, reads one command, answers `answer`.
async fn fake_bird(
    path: &std::path::Path,
    answer: &'static str,
) -> tokio::task::JoinHandle<String> {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        write.write_all(b"0001 BIRD 2.0.12 ready.\n").await.unwrap();
        let mut lines = tokio::io::BufReader::new(read).lines();
        let command = lines.next_line().await.unwrap().unwrap_or_default();
        write.write_all(answer.as_bytes()).await.unwrap();
        command
    })
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("lb-announce-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

#[tokio::test]
async fn the_announcer_writes_and_reconfigures_only_on_change() {
    let dir = temp_dir("sync");
    let socket = dir.0.join("bird.ctl");
    let include = dir.0.join("vips.conf");
    let mut a = Announcer::new(AnnounceOptions {
        include: include.clone(),
        socket: socket.clone(),
        withdraw_grace: Duration::ZERO,
    });
    // No BIRD yet: the file is written, the failure says what to do, a retry is due.
    a.sync(ips(&["198.18.100.1"])).await;
    assert!(a.pending());
    assert!(a.error().unwrap().contains("start bird"), "{:?}", a.error());
    assert!(
        std::fs::read_to_string(&include)
            .unwrap()
            .contains("198.18.100.1/32")
    );

    let bird = fake_bird(&socket, "0002-Reading configuration\n0003 Reconfigured\n").await;
    a.retry().await;
    assert_eq!(bird.await.unwrap(), "configure");
    assert!(!a.pending());
    assert_eq!(a.announced(), ips(&["198.18.100.1"]));
    assert!(a.error().is_none());
    // Unchanged: nobody listens any more, so a reload attempt would fail.
    a.sync(ips(&["198.18.100.1"])).await;
    assert!(a.error().is_none());
}

#[tokio::test]
async fn a_refused_configure_names_the_error() {
    let dir = temp_dir("refused");
    let socket = dir.0.join("bird.ctl");
    let mut a = Announcer::new(AnnounceOptions {
        include: dir.0.join("vips.conf"),
        socket: socket.clone(),
        withdraw_grace: Duration::ZERO,
    });
    let bird = fake_bird(
        &socket,
        "0002-Reading configuration\n8002 bird.conf:7:3 syntax error\n",
    )
    .await;
    a.sync(ips(&["198.18.100.1"])).await;
    bird.await.unwrap();
    let e = a.error().unwrap();
    assert!(e.contains("8002") && e.contains("syntax error"), "{e}");
    assert!(a.pending());
    assert!(a.announced().is_empty());
}

#[tokio::test]
async fn the_task_hands_over_the_first_set_and_reports_a_missing_bird() {
    let dir = temp_dir("task");
    let socket = dir.0.join("bird.ctl");
    let include = dir.0.join("vips.conf");
    let opts = AnnounceOptions {
        include: include.clone(),
        socket: socket.clone(),
        withdraw_grace: Duration::ZERO,
    };
    let bird = fake_bird(&socket, "0003 Reconfigured\n").await;
    let mut handle = AnnounceHandle::spawn(Announcer::new(opts), ips(&["198.18.100.1"]));
    assert_eq!(bird.await.unwrap(), "configure");
    handle
        .settle(ips(&["198.18.100.1"]), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(handle.state().announced, ips(&["198.18.100.1"]));
    // The fake BIRD is gone: withdrawing fails, naming what to do.
    let _ = std::fs::remove_file(&socket);
    let e = handle
        .settle(BTreeSet::new(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(e.contains("start bird"), "{e}");
    assert!(
        !std::fs::read_to_string(&include)
            .unwrap()
            .contains("\troute")
    );
}

#[tokio::test]
async fn a_left_over_announcement_is_withdrawn_and_a_stopped_bird_announces_nothing() {
    let dir = temp_dir("left-over");
    let socket = dir.0.join("bird.ctl");
    let include = dir.0.join("vips.conf");
    std::fs::write(
        &include,
        render_include(&ips(&["198.18.100.1", "2001:db8::1"])),
    )
    .unwrap();
    let bird = fake_bird(&socket, "0003 Reconfigured\n").await;
    let outcome = withdraw_left_over(&include, &socket).await.unwrap();
    assert_eq!(bird.await.unwrap(), "configure");
    assert_eq!(
        outcome,
        Withdrawal::Withdrawn {
            reply: "Reconfigured".into()
        }
    );
    assert_eq!(
        std::fs::read_to_string(&include).unwrap(),
        render_include(&BTreeSet::new())
    );
    // Again, nothing listed: told all the same.
    let _ = std::fs::remove_file(&socket);
    let bird = fake_bird(&socket, "0003 Reconfigured\n").await;
    let again = withdraw_left_over(&include, &socket).await.unwrap();
    bird.await.unwrap();
    assert!(
        matches!(again, Withdrawal::NothingAnnounced { .. }),
        "{again:?}"
    );
    // BIRD stopped (its socket gone): the file is emptied, nothing is announced without it.
    let _ = std::fs::remove_file(&socket);
    std::fs::write(&include, render_include(&ips(&["198.18.100.1"]))).unwrap();
    let stopped = withdraw_left_over(&include, &socket).await.unwrap();
    assert!(
        matches!(stopped, Withdrawal::BirdNotRunning { .. }),
        "{stopped:?}"
    );
    assert!(
        !std::fs::read_to_string(&include)
            .unwrap()
            .contains("\troute")
    );
}

#[tokio::test]
async fn a_withdrawal_bird_refuses_or_a_file_it_cannot_write_is_an_error() {
    let dir = temp_dir("withdraw-error");
    let socket = dir.0.join("bird.ctl");
    let include = dir.0.join("vips.conf");
    std::fs::write(&include, render_include(&ips(&["198.18.100.1"]))).unwrap();
    let bird = fake_bird(&socket, "8002 bird.conf:7:3 syntax error\n").await;
    let e = withdraw_left_over(&include, &socket).await.unwrap_err();
    bird.await.unwrap();
    assert!(e.to_string().contains("syntax error"), "{e}");
    // Under a file, not a directory: it cannot be written.
    let unwritable = include.join("vips.conf");
    let e = withdraw_left_over(&unwritable, &socket).await.unwrap_err();
    assert!(matches!(e, AnnounceError::Write { .. }), "{e}");
}
