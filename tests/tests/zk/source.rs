//! The ZooKeeper source against a real server (Debian's ZooKeeper, started by the test on 127.0.0.1).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lb_tests::eventually::Eventually;
use lb_tests::zk_server::ZkServer;
use lb_userspace::model::DesiredState;
use lb_userspace::zk::client::ZkTarget;
use lb_userspace::zk::source::{ZkConnection, ZkSource, ZkSourceConfig, ZkStatus};
use tokio::sync::watch;
use zookeeper_client::{Acls, Client, CreateMode};

const WAIT: Duration = Duration::from_secs(20);

pub(crate) async fn writer(server: &ZkServer) -> Client {
    Client::connect(&server.connect_string())
        .await
        .expect("test client connects")
}

async fn create(client: &Client, path: &str, data: &str) {
    let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
    if let Some((parent, _)) = path.rsplit_once('/')
        && !parent.is_empty()
    {
        client.mkdir(parent, &options).await.expect("mkdir -p");
    }
    client
        .create(path, data.as_bytes(), &options)
        .await
        .unwrap_or_else(|e| panic!("create {path}: {e}"));
}

/// Waits (bounded) until the latest state satisfies `pred`; returns it.
pub(crate) async fn state_where(
    states: &mut watch::Receiver<Option<Arc<DesiredState>>>,
    what: &str,
    pred: impl Fn(&DesiredState) -> bool,
) -> Arc<DesiredState> {
    Eventually::new(format!("a state with {what}"), WAIT)
        .poll_async(|| {
            let seen = latest(states, what);
            let got = seen.clone().filter(|s| pred(s));
            async move { got.ok_or(seen) }
        })
        .await
        .unwrap()
}

pub(crate) async fn status_where(
    status: &mut watch::Receiver<ZkStatus>,
    what: &str,
    pred: impl Fn(&ZkStatus) -> bool,
) -> ZkStatus {
    Eventually::new(format!("a status with {what}"), WAIT)
        .poll_async(|| {
            let now = latest(status, what);
            let got = if pred(&now) { Ok(now) } else { Err(now) };
            async move { got }
        })
        .await
        .unwrap()
}

/// The receiver's latest value, marked seen; panics once the source has stopped.
fn latest<T: Clone>(rx: &mut watch::Receiver<T>, what: &str) -> T {
    assert!(
        rx.has_changed().is_ok(),
        "the source stopped while waiting for {what}"
    );
    rx.borrow_and_update().clone()
}

pub(crate) fn backends(state: &DesiredState, service: &str) -> Vec<SocketAddr> {
    state
        .services
        .get(service)
        .map(|s| s.backends.keys().copied().collect())
        .unwrap_or_default()
}

pub(crate) fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_validates_and_fails_static() {
    crate::log_to_test_output();
    let mut server = ZkServer::start().expect("ZooKeeper starts");
    let zk = writer(&server).await;
    create(&zk, "/lb/services/web", r#"{"vip": "198.18.100.1:80"}"#).await;
    create(&zk, "/lb/services/web/backends/198.18.2.11:80", "").await;
    create(
        &zk,
        "/lb/services/web/backends/198.18.2.12:80",
        r#"{"weight": 2}"#,
    )
    .await;

    let target = ZkTarget::new(&server.connect_string(), "/lb", None).unwrap();
    let mut config = ZkSourceConfig::new(target);
    config.session_timeout = Duration::from_secs(2);
    config.backoff_max = Duration::from_millis(500);
    config.guard.grace = Duration::from_secs(2);
    let mut source = ZkSource::spawn(config);

    // Full read on start.
    let state = state_where(&mut source.states, "web with two backends", |s| {
        backends(s, "web").len() == 2
    })
    .await;
    assert_eq!(
        state.services["web"].backends[&addr("198.18.2.12:80")].weight,
        2
    );

    // A burst of 40 writes becomes one or two reads (debounce), not forty.
    let reads_before = reads_so_far(&source.status.borrow());
    let paths: Vec<String> = (0..40)
        .map(|i| format!("/lb/services/web/backends/198.18.3.{i}:80"))
        .collect();
    let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
    // All requests are sent before any answer is awaited: one burst.
    let writes: Vec<_> = paths.iter().map(|p| zk.create(p, b"", &options)).collect();
    for w in writes {
        w.await.expect("burst create");
    }
    state_where(&mut source.states, "the burst", |s| {
        backends(s, "web").len() == 42
    })
    .await;
    let reads = reads_so_far(&source.status.borrow()) - reads_before;
    assert!((1..=3).contains(&reads), "{reads} reads for one burst");
    let deletes: Vec<_> = paths.iter().map(|p| zk.delete(p, None)).collect();
    for d in deletes {
        d.await.expect("burst delete");
    }
    // 40 of 42 vanishing at once is a mass removal: the guard holds them for the grace (2 s here).
    let status = status_where(&mut source.status, "the guard holding 40", |s| {
        s.held_backends == 40
    })
    .await;
    assert_eq!(status.services, 1);
    assert_eq!(
        backends(source.states.borrow().as_ref().unwrap(), "web").len(),
        42
    );
    state_where(
        &mut source.states,
        "the held backends gone after the grace",
        |s| backends(s, "web").len() == 2,
    )
    .await;
    assert_eq!(source.status.borrow().held_backends, 0);

    // A burst of writes, then malformed nodes: the good ones arrive, the bad ones are rejected and
    // everything else stays.
    create(&zk, "/lb/services/web/backends/198.18.2.13:80", "").await;
    create(&zk, "/lb/services/web/backends/198.18.2.14:8080", "").await;
    create(&zk, "/lb/services/web/backends/198.18.2.15:80", "{oops").await;
    create(&zk, "/lb/services/broken", "{not json").await;
    create(&zk, "/lb/services/api", r#"{"vip": "198.18.100.2:443"}"#).await;
    create(&zk, "/lb/services/api/backends/198.18.2.21:443", "").await;
    let state = state_where(&mut source.states, "api and a third web backend", |s| {
        backends(s, "web").len() == 3 && backends(s, "api").len() == 1
    })
    .await;
    assert_eq!(
        backends(&state, "web"),
        vec![
            addr("198.18.2.11:80"),
            addr("198.18.2.12:80"),
            addr("198.18.2.13:80")
        ]
    );
    assert!(!state.services.contains_key("broken"));
    let status = status_where(&mut source.status, "3 rejections", |s| {
        s.current_rejections == 3
    })
    .await;
    assert_eq!(status.rejections, 3);
    assert_eq!(status.connection, ZkConnection::Connected);
    assert!(status.session_id.is_some());
    assert!(status.last_sync_unix_ms.is_some());

    // Fail static: with ZooKeeper gone for 5 s nothing new is sent.
    drop(zk);
    source.states.borrow_and_update();
    server.stop().unwrap();
    status_where(&mut source.status, "a lost connection", |s| {
        s.connection != ZkConnection::Connected
    })
    .await;
    let quiet = tokio::time::timeout(Duration::from_secs(5), source.states.changed()).await;
    assert!(quiet.is_err(), "a state was sent while ZooKeeper was down");
    assert_eq!(
        backends(source.states.borrow().as_ref().unwrap(), "web").len(),
        3
    );

    // Back: a change made after the restart arrives (full resync on the new or resumed session).
    server.restart().unwrap();
    let zk = writer(&server).await;
    create(&zk, "/lb/services/web/backends/198.18.2.16:80", "").await;
    let state = state_where(&mut source.states, "the backend added after restart", |s| {
        backends(s, "web").contains(&addr("198.18.2.16:80"))
    })
    .await;
    assert_eq!(backends(&state, "web").len(), 4);
    status_where(&mut source.status, "connected again", |s| {
        s.connection == ZkConnection::Connected
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_outage_resumes_the_watch_and_a_missing_services_node_keeps_the_state() {
    crate::log_to_test_output();
    let mut server = ZkServer::start().expect("ZooKeeper starts");
    let zk = writer(&server).await;
    create(&zk, "/lb/services/web", r#"{"vip": "198.18.100.1:80"}"#).await;
    drop(zk);
    let target = ZkTarget::new(&server.connect_string(), "/lb", None).unwrap();
    let mut config = ZkSourceConfig::new(target);
    config.session_timeout = Duration::from_secs(20);
    let mut source = ZkSource::spawn(config);
    state_where(&mut source.states, "web", |s| {
        s.services.contains_key("web")
    })
    .await;
    let session = source.status.borrow().session_id.clone();
    assert!(session.is_some());

    server.restart().unwrap();
    let zk = writer(&server).await;
    create(&zk, "/lb/services/web/backends/198.18.2.11:80", "").await;
    state_where(
        &mut source.states,
        "the backend added after the restart",
        |s| backends(s, "web") == vec![addr("198.18.2.11:80")],
    )
    .await;
    let status = status_where(&mut source.status, "connected", |s| {
        s.connection == ZkConnection::Connected
    })
    .await;
    assert_eq!(
        status.session_id, session,
        "the session was resumed, not replaced"
    );
    // A later change still arrives: the persistent watch came back with the session.
    create(&zk, "/lb/services/web/backends/198.18.2.12:80", "").await;
    state_where(&mut source.states, "a second backend", |s| {
        backends(s, "web").len() == 2
    })
    .await;

    // The whole services node vanishes in one transaction: kept, not read as "no services".
    let reads = source.status.borrow().full_reads;
    let mut multi = zk.new_multi_writer();
    for path in [
        "/lb/services/web/backends/198.18.2.11:80",
        "/lb/services/web/backends/198.18.2.12:80",
        "/lb/services/web/backends",
        "/lb/services/web",
        "/lb/services",
    ] {
        multi.add_delete(path, None).unwrap();
    }
    multi.commit().await.expect("delete everything");
    status_where(&mut source.status, "a read after the deletion", |s| {
        s.full_reads > reads
    })
    .await;
    assert!(!source.states.has_changed().unwrap(), "no state was sent");
    assert_eq!(
        backends(source.states.borrow().as_ref().unwrap(), "web").len(),
        2
    );
    // An empty services node does remove every service.
    let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
    zk.create("/lb/services", b"", &options).await.unwrap();
    state_where(&mut source.states, "no services", |s| s.services.is_empty()).await;
}

/// A single change after a quiet period is read at once, not after the debounce (3 s here, so the
/// difference is unmistakable); the rest of a burst that follows is still coalesced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_change_skips_the_debounce_and_a_burst_is_still_coalesced() {
    crate::log_to_test_output();
    let server = ZkServer::start().expect("ZooKeeper starts");
    let zk = writer(&server).await;
    create(&zk, "/lb/services/web", r#"{"vip": "198.18.100.1:80"}"#).await;
    create(&zk, "/lb/services/web/backends/198.18.2.11:80", "").await;
    let target = ZkTarget::new(&server.connect_string(), "/lb", None).unwrap();
    let mut config = ZkSourceConfig::new(target);
    config.debounce_quiet = Duration::from_secs(3);
    config.debounce_max = Duration::from_secs(6);
    let mut source = ZkSource::spawn(config);
    state_where(&mut source.states, "web", |s| backends(s, "web").len() == 1).await;
    // Quiet for longer than the debounce, then one change.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let written = std::time::Instant::now();
    create(&zk, "/lb/services/web/backends/198.18.2.12:80", "").await;
    state_where(&mut source.states, "the second backend", |s| {
        backends(s, "web").len() == 2
    })
    .await;
    let took = written.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "a single change waited for the 3 s debounce: {took:?}"
    );
    // A burst right after that read: coalesced into few reads.
    let reads_before = reads_so_far(&source.status.borrow());
    let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
    let paths: Vec<String> = (0..20)
        .map(|i| format!("/lb/services/web/backends/198.18.3.{i}:80"))
        .collect();
    let writes: Vec<_> = paths.iter().map(|p| zk.create(p, b"", &options)).collect();
    for w in writes {
        w.await.expect("burst create");
    }
    state_where(&mut source.states, "the burst", |s| {
        backends(s, "web").len() == 22
    })
    .await;
    let reads = reads_so_far(&source.status.borrow()) - reads_before;
    assert!((1..=2).contains(&reads), "{reads} reads for one burst");
}

/// Reads of the tree so far, full or of the changed services only.
fn reads_so_far(status: &lb_userspace::report::ZkStatus) -> u64 {
    status.full_reads + status.partial_reads
}
