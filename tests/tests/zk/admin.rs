//! The admin CLI against a real ZooKeeper: the library calls, the `lb` binary, and zkCli hand edits.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use lb_tests::eventually::Eventually;
use lb_tests::zk_server::ZkServer;
use lb_userspace::admin::{
    AdminError, BackendEdit, PutOutcome, ServiceEdit, ServiceField, list_backends, list_services,
    put_backend, put_service, remove_backend, remove_service, set_backend_weight,
};
use lb_userspace::model::BackendState;
use lb_userspace::zk::client::ZkTarget;
use zookeeper_client::Client;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

async fn open(server: &ZkServer) -> (Client, ZkTarget) {
    let target = ZkTarget::new(&server.connect_string(), "/lb", None).unwrap();
    let client = target.connect(Duration::from_secs(5)).await.unwrap();
    (client, target)
}

fn fields(vip: &str) -> ServiceEdit {
    ServiceEdit {
        vip: Some(addr(vip)),
        scheduler: Some("wrr".into()),
        ..Default::default()
    }
}

fn with_scheduler(vip: &str, scheduler: &str) -> ServiceEdit {
    ServiceEdit {
        vip: Some(addr(vip)),
        scheduler: Some(scheduler.into()),
        ..Default::default()
    }
}

fn state(state: BackendState) -> BackendEdit {
    BackendEdit {
        weight: None,
        state: Some(state),
    }
}

#[tokio::test]
async fn services_and_backends_round_trip_with_validation() {
    let server = ZkServer::start().unwrap();
    let (zk, target) = open(&server).await;

    assert_eq!(
        put_service(&zk, &target, "web", &fields("198.18.100.1:80"))
            .await
            .unwrap(),
        PutOutcome::Created
    );
    // The service and its backends directory were created together.
    assert!(
        zk.check_stat("/lb/services/web/backends")
            .await
            .unwrap()
            .is_some()
    );

    // Invalid services are refused before anything is written.
    let err = put_service(
        &zk,
        &target,
        "web2",
        &with_scheduler("198.18.100.2:80", "fastest"),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("unknown scheduler"), "{err}");
    let err = put_service(&zk, &target, "other", &fields("198.18.100.1:80"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("both use VIP"), "{err}");
    assert!(zk.check_stat("/lb/services/other").await.unwrap().is_none());

    // Backends: port mismatch refused with the reason; good ones created, then updated.
    let new = BackendEdit::default();
    let err = put_backend(&zk, &target, "web", addr("198.18.2.11:8080"), &new)
        .await
        .unwrap_err();
    assert!(matches!(err, AdminError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("but the VIP port is 80"), "{err}");
    let b = addr("198.18.2.11:80");
    assert_eq!(
        put_backend(&zk, &target, "web", b, &new).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        put_backend(&zk, &target, "web", b, &state(BackendState::Draining))
            .await
            .unwrap(),
        PutOutcome::Updated
    );
    put_backend(&zk, &target, "web", addr("198.18.2.12:80"), &new)
        .await
        .unwrap();
    let err = put_backend(&zk, &target, "nope", b, &new)
        .await
        .unwrap_err();
    assert!(matches!(err, AdminError::NoService { .. }), "{err}");

    set_backend_weight(&zk, &target, "web", addr("198.18.2.12:80"), 7)
        .await
        .unwrap();
    let err = set_backend_weight(&zk, &target, "web", addr("198.18.2.12:80"), 70_000)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("weights go from 0 to 65535"),
        "{err}"
    );

    let rows = list_backends(&zk, &target, "web").await.unwrap();
    let summary: Vec<(String, Option<u32>, Option<String>, &str)> = rows
        .iter()
        .map(|r| (r.node.clone(), r.weight, r.state.clone(), r.kind))
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "198.18.2.11:80".into(),
                Some(1),
                Some("draining".into()),
                "persistent"
            ),
            (
                "198.18.2.12:80".into(),
                Some(7),
                Some("active".into()),
                "persistent"
            ),
        ]
    );

    // A VIP change that strands an existing backend is refused.
    let err = put_service(&zk, &target, "web", &fields("198.18.100.1:443"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already registered"), "{err}");
    assert_eq!(
        put_service(
            &zk,
            &target,
            "web",
            &with_scheduler("198.18.100.1:80", "maglev")
        )
        .await
        .unwrap(),
        PutOutcome::Updated
    );

    let services = list_services(&zk, &target).await.unwrap();
    assert_eq!(services.len(), 1);
    assert_eq!(services[0].scheduler.as_deref(), Some("maglev"));
    assert_eq!(services[0].backends, 2);

    remove_backend(&zk, &target, "web", addr("198.18.2.11:80"))
        .await
        .unwrap();
    let err = remove_backend(&zk, &target, "web", addr("198.18.2.11:80"))
        .await
        .unwrap_err();
    assert!(matches!(err, AdminError::NoBackend { .. }), "{err}");

    // Removing a service takes its backends with it, in one transaction.
    let removed = remove_service(&zk, &target, "web").await.unwrap();
    assert_eq!(removed, vec!["198.18.2.12:80".to_owned()]);
    assert!(zk.check_stat("/lb/services/web").await.unwrap().is_none());
    assert!(list_services(&zk, &target).await.unwrap().is_empty());
}

#[tokio::test]
async fn edits_change_only_the_fields_given() {
    let server = ZkServer::start().unwrap();
    let (zk, target) = open(&server).await;
    let node = |zk: Client| async move {
        let (data, _) = zk.get_data("/lb/services/web").await.unwrap();
        serde_json::from_slice::<serde_json::Value>(&data).unwrap()
    };
    let created = ServiceEdit {
        vip: Some(addr("198.18.100.1:80")),
        scheduler: Some("rr".into()),
        health_check: Some(serde_json::json!({"kind": "tcp"})),
        panic_threshold: Some(30),
        ..Default::default()
    };
    put_service(&zk, &target, "web", &created).await.unwrap();
    // A field someone added by hand (a newer daemon's, say) survives every edit.
    let (data, stat) = zk.get_data("/lb/services/web").await.unwrap();
    let mut hand: serde_json::Value = serde_json::from_slice(&data).unwrap();
    hand["owner"] = "team-web".into();
    zk.set_data(
        "/lb/services/web",
        hand.to_string().as_bytes(),
        Some(stat.version),
    )
    .await
    .unwrap();

    // Persistence alone: the scheduler and the health check stay (they used to be reset).
    let persistence = ServiceEdit {
        persistence_timeout_s: Some(300),
        ..Default::default()
    };
    assert_eq!(
        put_service(&zk, &target, "web", &persistence)
            .await
            .unwrap(),
        PutOutcome::Updated
    );
    let v = node(zk.clone()).await;
    assert_eq!(v["scheduler"], "rr", "{v}");
    assert_eq!(v["health_check"]["kind"], "tcp", "{v}");
    assert_eq!(v["panic_threshold"], 30, "{v}");
    assert_eq!(v["persistence_timeout_s"], 300, "{v}");
    assert_eq!(v["vip"], "198.18.100.1:80", "{v}");
    assert_eq!(v["owner"], "team-web", "{v}");

    // --unset takes a field back to its default; the rest stays.
    let unset = ServiceEdit {
        unset: vec![ServiceField::HealthCheck, ServiceField::PanicThreshold],
        ..Default::default()
    };
    put_service(&zk, &target, "web", &unset).await.unwrap();
    let v = node(zk.clone()).await;
    assert!(v.get("health_check").is_none(), "{v}");
    assert!(v.get("panic_threshold").is_none(), "{v}");
    assert_eq!(v["scheduler"], "rr", "{v}");

    // An edit whose merged result is invalid writes nothing.
    let bad = ServiceEdit {
        persistence_netmask: Some(64),
        ..Default::default()
    };
    let err = put_service(&zk, &target, "web", &bad).await.unwrap_err();
    assert!(matches!(err, AdminError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("persistence_netmask"), "{err}");
    assert_eq!(node(zk.clone()).await, v);

    // --replace rewrites the node from the fields given alone.
    let replace = ServiceEdit {
        vip: Some(addr("198.18.100.1:80")),
        replace: true,
        ..Default::default()
    };
    put_service(&zk, &target, "web", &replace).await.unwrap();
    let v = node(zk.clone()).await;
    assert_eq!(
        v,
        serde_json::json!({"vip": "198.18.100.1:80", "proto": "tcp"})
    );
    // Creating needs a VIP, and says so.
    let err = put_service(&zk, &target, "api", &persistence)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("creating it needs --vip"), "{err}");
    assert!(zk.check_stat("/lb/services/api").await.unwrap().is_none());

    // Backends: a state change keeps the weight, a weight change keeps the state.
    let b = addr("198.18.2.11:80");
    let weighted = BackendEdit {
        weight: Some(7),
        state: None,
    };
    put_backend(&zk, &target, "web", b, &weighted)
        .await
        .unwrap();
    put_backend(&zk, &target, "web", b, &state(BackendState::Draining))
        .await
        .unwrap();
    let rows = list_backends(&zk, &target, "web").await.unwrap();
    assert_eq!(
        (rows[0].weight, rows[0].state.as_deref()),
        (Some(7), Some("draining"))
    );
    set_backend_weight(&zk, &target, "web", b, 2).await.unwrap();
    let rows = list_backends(&zk, &target, "web").await.unwrap();
    assert_eq!(
        (rows[0].weight, rows[0].state.as_deref()),
        (Some(2), Some("draining"))
    );
    // `weight` does not create a backend that is not there.
    let err = set_backend_weight(&zk, &target, "web", addr("198.18.2.99:80"), 2)
        .await
        .unwrap_err();
    assert!(matches!(err, AdminError::NoBackend { .. }), "{err}");
}

#[tokio::test]
async fn zkcli_hand_edits_read_like_admin_writes() {
    let server = ZkServer::start().unwrap();
    for args in [
        vec!["create", "/lb", ""],
        vec!["create", "/lb/services", ""],
        vec![
            "create",
            "/lb/services/web",
            r#"{"vip":"198.18.100.1:80","scheduler":"rr"}"#,
        ],
        vec!["create", "/lb/services/web/backends", ""],
        vec!["create", "/lb/services/web/backends/198.18.2.11:80", ""],
        vec!["create", "/lb/services/web/backends/198.18.2.12:8080", ""],
    ] {
        server.cli(&args).unwrap();
    }
    let (zk, target) = open(&server).await;
    let services = list_services(&zk, &target).await.unwrap();
    assert_eq!(services[0].scheduler.as_deref(), Some("rr"));
    assert_eq!(services[0].backends, 1);
    assert_eq!(services[0].errors.len(), 1, "{:?}", services[0].errors);
    assert!(services[0].errors[0].contains("198.18.2.12:8080"));
    let rows = list_backends(&zk, &target, "web").await.unwrap();
    assert_eq!(rows[0].weight, Some(1), "empty data is weight 1");
    assert!(rows[1].error.as_deref().unwrap().contains("port"));
    // The admin CLI's output is what zkCli reads back.
    set_backend_weight(&zk, &target, "web", addr("198.18.2.11:80"), 3)
        .await
        .unwrap();
    let out = server
        .cli(&["get", "/lb/services/web/backends/198.18.2.11:80"])
        .unwrap();
    assert!(out.contains(r#"{"state":"active","weight":3}"#), "{out}");
}

#[test]
fn the_lb_binary_puts_and_lists() {
    let server = ZkServer::start().unwrap();
    let lb = |args: &[&str]| {
        let out = Command::new(lb_tests::lab::lb_bin().unwrap())
            .args(args)
            .args(["--zk", &server.connect_string()])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = lb(&[
        "service",
        "put",
        "web",
        "--vip",
        "[2001:db8::100]:80",
        "--scheduler",
        "least-conn",
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("service web created"), "{out}");
    let (ok, _, err) = lb(&["backend", "put", "web", "[2001:db8::11]:81"]);
    assert!(!ok);
    assert!(err.contains("uses port 81 but the VIP port is 80"), "{err}");
    let (ok, out, err) = lb(&[
        "backend",
        "put",
        "web",
        "[2001:db8::11]:80",
        "--weight",
        "4",
    ]);
    assert!(ok, "{out}{err}");
    let (ok, out, _) = lb(&["backend", "ls", "web", "--json"]);
    assert!(ok);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows[0]["node"], "[2001:db8::11]:80");
    assert_eq!(rows[0]["weight"], 4);
    let (ok, out, _) = lb(&["service", "ls"]);
    assert!(ok);
    assert!(
        out.contains("[2001:db8::100]:80") && out.contains("least-conn"),
        "{out}"
    );
    // A partial put keeps the scheduler it does not name.
    let (ok, out, err) = lb(&["service", "put", "web", "--persistence-timeout-s", "60"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("service web updated"), "{out}");
    let (_, out, _) = lb(&["service", "ls", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows[0]["scheduler"], "least-conn", "{out}");
    assert_eq!(rows[0]["persistence_timeout_s"], 60, "{out}");
    // Bad flags are refused before any connection: nothing listens on port 1.
    for (args, reason) in [
        (
            &["service", "put", "web", "--scheduler", "fastest"][..],
            "unknown scheduler",
        ),
        (
            &["service", "put", "web", "--unset", "vip"][..],
            "not a field that can be unset",
        ),
        (
            &[
                "backend",
                "put",
                "web",
                "[2001:db8::11]:80",
                "--weight",
                "70000",
            ][..],
            "above the maximum 65535",
        ),
    ] {
        let out = Command::new(lb_tests::lab::lb_bin().unwrap())
            .args(args)
            .args(["--zk", "127.0.0.1:1", "--zk-session-timeout-ms", "500"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(reason), "{args:?}: {err}");
        assert!(
            !err.contains("127.0.0.1:1"),
            "{args:?} connected first: {err}"
        );
    }
    let (ok, out, err) = lb(&["service", "rm", "web"]);
    assert!(ok, "{err}");
    assert!(out.contains("removed with 1 backends"), "{out}");
}

#[tokio::test]
async fn with_credentials_only_the_writer_may_change_and_everyone_may_read() {
    use lb_userspace::zk::auth::DigestAuth;
    use lb_userspace::zk::source::{ZkSource, ZkSourceConfig};

    let server = ZkServer::start().unwrap();
    let auth = DigestAuth::parse("ops:s3cret", "test").unwrap();
    let admin_target = ZkTarget::new(&server.connect_string(), "/lb", Some(auth)).unwrap();
    let admin_zk = admin_target.connect(Duration::from_secs(5)).await.unwrap();
    put_service(&admin_zk, &admin_target, "web", &fields("198.18.100.1:80"))
        .await
        .unwrap();
    put_backend(
        &admin_zk,
        &admin_target,
        "web",
        addr("198.18.2.11:80"),
        &BackendEdit::default(),
    )
    .await
    .unwrap();

    // Someone without the credentials can read but not write.
    let (anon, anon_target) = open(&server).await;
    assert!(anon.get_data("/lb/services/web").await.is_ok());
    assert_eq!(
        anon.set_data("/lb/services/web", b"{}", None)
            .await
            .unwrap_err(),
        zookeeper_client::Error::NoAuth
    );
    let err = put_backend(
        &anon,
        &anon_target,
        "web",
        addr("198.18.2.12:80"),
        &BackendEdit::default(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("authenticated"), "{err}");

    // The daemon's source only reads, so it needs no credentials.
    let mut source = ZkSource::spawn(ZkSourceConfig::new(anon_target));
    let state = Eventually::new(
        "the source to read the protected tree",
        Duration::from_secs(20),
    )
    .poll_async(|| {
        let state = source.states.borrow_and_update().clone();
        async move { state.ok_or("no state yet") }
    })
    .await
    .unwrap();
    assert_eq!(state.services["web"].backends.len(), 1);
}
