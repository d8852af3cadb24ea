//! `lb register` against a real ZooKeeper: the node follows the local check, survives a session
//! expiry, and drains then leaves on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use lb_tests::eventually::Eventually;
use lb_tests::zk_server::ZkServer;
use lb_userspace::model::BackendSpec;
use lb_userspace::register::{LocalCheck, Registration, register};
use lb_userspace::zk::client::ZkTarget;
use zookeeper_client::{Acls, Client, CreateMode, Stat};

const WAIT: Duration = Duration::from_secs(25);

/// Polls `probe` (bounded by [`WAIT`]) until it returns `Some`.
async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    Eventually::new(what, WAIT)
        .every(Duration::from_millis(50))
        .poll_async(|| {
            let probe = probe();
            async move { probe.await.ok_or("nothing yet") }
        })
        .await
        .unwrap()
}

async fn node(zk: &Client, path: &str) -> Option<(Vec<u8>, Stat)> {
    zk.get_data(path).await.ok()
}

async fn setup(server: &ZkServer, vip_port: u16) -> Client {
    let zk = Client::connect(&server.connect_string()).await.unwrap();
    let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
    zk.mkdir("/lb/services", &options).await.unwrap();
    let data = format!(r#"{{"vip": "198.18.100.1:{vip_port}"}}"#);
    zk.create("/lb/services/web", data.as_bytes(), &options)
        .await
        .unwrap();
    zk
}

fn registration(server: &ZkServer, backend: SocketAddr) -> Registration {
    let mut spec = BackendSpec::new(backend);
    spec.weight = 2;
    Registration {
        target: ZkTarget::new(&server.connect_string(), "/lb", None).unwrap(),
        session_timeout: Duration::from_secs(2),
        service: "web".into(),
        backend: spec,
        check: Some(LocalCheck::Tcp(backend)),
        drain: Duration::from_secs(1),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_follows_its_check_survives_expiry_and_drains() {
    crate::log_to_test_output();
    let mut server = ZkServer::start().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let zk = setup(&server, backend.port()).await;
    let path = format!("/lb/services/web/backends/{backend}");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(register(registration(&server, backend), async move {
        let _ = stop_rx.await;
    }));

    let (data, stat) = eventually("the node", || node(&zk, &path)).await;
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&data).unwrap(),
        serde_json::json!({"weight": 2, "state": "active"})
    );
    assert_ne!(stat.ephemeral_owner, 0, "the node is ephemeral");
    let first_owner = stat.ephemeral_owner;

    // The check fails: the node goes; it passes again: the node is back.
    drop(listener);
    eventually("the node to go while the check fails", || async {
        node(&zk, &path).await.is_none().then_some(())
    })
    .await;
    let listener = tokio::net::TcpListener::bind(backend).await.unwrap();
    eventually("the node to return", || node(&zk, &path)).await;

    // Session expiry (ZooKeeper down longer than the session timeout): the node comes back on a
    // new session.
    drop(zk);
    server.stop().unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await; // an outage of fixed length is the point here
    server.restart().unwrap();
    let zk = Client::connect(&server.connect_string()).await.unwrap();
    let (_, stat) = eventually("the node on a new session", || async {
        node(&zk, &path)
            .await
            .filter(|(_, s)| s.ephemeral_owner != first_owner)
    })
    .await;
    assert_ne!(stat.ephemeral_owner, 0);

    // Shutdown: draining first, then gone, then the task ends cleanly.
    stop_tx.send(()).unwrap();
    let (data, _) = eventually("the draining state", || async {
        node(&zk, &path)
            .await
            .filter(|(d, _)| String::from_utf8_lossy(d).contains("draining"))
    })
    .await;
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&data).unwrap()["weight"],
        2
    );
    tokio::time::timeout(WAIT, task)
        .await
        .expect("register returns after draining")
        .unwrap()
        .unwrap();
    assert!(node(&zk, &path).await.is_none(), "deleted after the drain");
    drop(listener);
}

#[tokio::test]
async fn refuses_a_backend_that_does_not_fit_or_a_missing_service() {
    let server = ZkServer::start().unwrap();
    let _zk = setup(&server, 80).await;
    let mut reg = registration(&server, "127.0.0.1:8080".parse().unwrap());
    reg.check = None;
    let err = register(reg.clone(), std::future::pending())
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("uses port 8080 but the VIP port is 80"),
        "{err:#}"
    );
    reg.service = "missing".into();
    let err = register(reg, std::future::pending()).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("lb service put missing"),
        "{err:#}"
    );
}
