//! `--zk-format curator|serverset` against a real server: instances registered the way Apache
//! Curator's service discovery and Finagle's serversets register them become backends of the
//! mapped services; instances that go away (their session ends) are removed; a malformed instance
//! is rejected on its own while the others keep forwarding.
//!
//! Curator's writer is a JVM library (`libcurator-java` is not packaged in Debian 12), so the
//! instances are written here exactly as `ServiceDiscoveryImpl.registerService` writes them: the
//! service node a container (`creatingParentContainersIfNeeded`), each instance an ephemeral node
//! named by its id whose data is `JsonInstanceSerializer`'s JSON of the `ServiceInstance`, the
//! fields in Jackson's order: `name`, `id`, `address`, `port`, `sslPort`, `payload`,
//! `registrationTimeUTC`, `serviceType`, `uriSpec` (nulls written out). Serverset members are
//! `member_` ephemeral sequential nodes with `serviceEndpoint`, `additionalEndpoints`, `status`,
//! `shard`, as Finagle's `ZkAnnouncer` writes them.

use std::sync::Arc;
use std::time::Duration;

use lb_tests::zk_server::ZkServer;
use lb_userspace::config::check_mapping;
use lb_userspace::zk::client::ZkTarget;
use lb_userspace::zk::registry::{Registry, RegistryFormat, RegistryService};
use lb_userspace::zk::source::{ZkSource, ZkSourceConfig};
use zookeeper_client::{Acls, Client, CreateMode};

use crate::source::{addr, backends, state_where, status_where, writer};

fn registry(format: RegistryFormat, mapping: &str) -> Registry {
    let services = check_mapping(mapping, "mapping.toml")
        .unwrap()
        .into_iter()
        .map(|m| RegistryService {
            spec: m.spec,
            registry_name: m.registry_name,
            endpoint: m.endpoint,
        })
        .collect();
    Registry::new(format, services).unwrap()
}

fn spawn(server: &ZkServer, root: &str, registry: Registry) -> ZkSource {
    let target = ZkTarget::new(&server.connect_string(), root, None).unwrap();
    let mut config = ZkSourceConfig::new(target);
    config.session_timeout = Duration::from_secs(2);
    config.backoff_max = Duration::from_millis(500);
    config.registry = Some(Arc::new(registry));
    ZkSource::spawn(config)
}

/// `JsonInstanceSerializer`'s bytes for an instance (`payload` already JSON).
fn curator_json(name: &str, id: &str, address: &str, port: u16, payload: &str) -> String {
    format!(
        r#"{{"name":"{name}","id":"{id}","address":"{address}","port":{port},"sslPort":null,"payload":{payload},"registrationTimeUTC":1764720000000,"serviceType":"DYNAMIC","uriSpec":null}}"#
    )
}

/// Registers an instance as Curator does: the service's container, then the ephemeral instance.
async fn curator_register(client: &Client, base: &str, name: &str, id: &str, data: &str) {
    let container = CreateMode::Container.with_acls(Acls::anyone_all());
    client
        .mkdir(&format!("{base}/{name}"), &container)
        .await
        .expect("mkdir the service container");
    let ephemeral = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
    let path = format!("{base}/{name}/{id}");
    client
        .create(&path, data.as_bytes(), &ephemeral)
        .await
        .unwrap_or_else(|e| panic!("create {path}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_instances_are_the_backends() {
    crate::log_to_test_output();
    let server = ZkServer::start().expect("ZooKeeper starts");
    let a = writer(&server).await;
    let b = writer(&server).await;
    let base = "/discovery";
    let web = |id: &str, address: &str, port: u16, payload: &str| {
        curator_json("web-svc", id, address, port, payload)
    };
    curator_register(
        &a,
        base,
        "web-svc",
        "3c5e0a5e-0001",
        &web("3c5e0a5e-0001", "198.18.2.11", 80, "null"),
    )
    .await;
    curator_register(
        &b,
        base,
        "web-svc",
        "3c5e0a5e-0002",
        &web(
            "3c5e0a5e-0002",
            "198.18.2.12",
            80,
            r#"{"@class":"com.example.InstanceDetails","weight":3}"#,
        ),
    )
    .await;
    // Malformed: no address; and one on another port than the VIP's.
    curator_register(
        &a,
        base,
        "web-svc",
        "3c5e0a5e-0003",
        r#"{"name":"web-svc","id":"3c5e0a5e-0003","port":80}"#,
    )
    .await;
    curator_register(
        &a,
        base,
        "web-svc",
        "3c5e0a5e-0004",
        &web("3c5e0a5e-0004", "198.18.2.14", 8080, "null"),
    )
    .await;

    let mapping = r#"
[[services]]
name = "web"
vip = "198.18.100.1:80"
scheduler = "wrr"
registry_name = "web-svc"

[[services]]
name = "api"
vip = "198.18.100.2:443"
"#;
    let mut source = spawn(&server, base, registry(RegistryFormat::Curator, mapping));
    let state = state_where(&mut source.states, "web with its two good instances", |s| {
        backends(s, "web").len() == 2
    })
    .await;
    assert_eq!(
        backends(&state, "web"),
        [addr("198.18.2.11:80"), addr("198.18.2.12:80")]
    );
    assert_eq!(
        state.services["web"].backends[&addr("198.18.2.12:80")].weight,
        3
    );
    assert_eq!(state.services["web"].vip, addr("198.18.100.1:80"));
    // A mapped service nobody registered yet is there, with no backends.
    assert!(backends(&state, "api").is_empty());
    status_where(&mut source.status, "the two bad instances rejected", |s| {
        s.current_rejections == 2 && s.rejections == 2
    })
    .await;

    // A new instance appears (the recursive watch sees it)...
    curator_register(
        &a,
        base,
        "api",
        "9f00-0001",
        &curator_json("api", "9f00-0001", "198.18.2.21", 443, "null"),
    )
    .await;
    curator_register(
        &a,
        base,
        "web-svc",
        "3c5e0a5e-0005",
        &web("3c5e0a5e-0005", "198.18.2.13", 80, "null"),
    )
    .await;
    state_where(
        &mut source.states,
        "a third web instance and api's first",
        |s| backends(s, "web").len() == 3 && backends(s, "api") == [addr("198.18.2.21:443")],
    )
    .await;

    // ...and one goes away with its session (1 of 3: below the mass-removal share, removed at once).
    drop(b);
    let state = state_where(&mut source.states, "web without b's instance", |s| {
        backends(s, "web").len() == 2
    })
    .await;
    assert_eq!(
        backends(&state, "web"),
        [addr("198.18.2.11:80"), addr("198.18.2.13:80")]
    );
    // The bad instances are still rejected, and still the only rejections.
    assert_eq!(source.status.borrow().current_rejections, 2);
}

/// Announces a member as Finagle does: an ephemeral sequential `member_` node; returns its path.
async fn announce(client: &Client, dir: &str, data: String) -> String {
    let sequential = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
    let (_, sequence) = client
        .create(&format!("{dir}/member_"), data.as_bytes(), &sequential)
        .await
        .expect("announce");
    format!("{dir}/member_{sequence}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serverset_members_alive_are_the_backends() {
    crate::log_to_test_output();
    let server = ZkServer::start().expect("ZooKeeper starts");
    let zk = writer(&server).await;
    let dir = "/twitter/service/web/prod/web";
    let persistent = CreateMode::Persistent.with_acls(Acls::anyone_all());
    zk.mkdir(dir, &persistent).await.unwrap();
    let member = |host: &str, status: &str| {
        format!(
            r#"{{"serviceEndpoint":{{"host":"{host}","port":9990}},"additionalEndpoints":{{"http":{{"host":"{host}","port":80}}}},"status":"{status}","shard":0}}"#
        )
    };
    announce(&zk, dir, member("198.18.2.11", "ALIVE")).await;
    let starting = announce(&zk, dir, member("198.18.2.12", "STARTING")).await;
    announce(
        &zk,
        dir,
        r#"{"serviceEndpoint":{"host":"198.18.2.13"},"status":"ALIVE"}"#.to_owned(),
    )
    .await;

    let mapping = r#"
[[services]]
name = "web"
vip = "198.18.100.1:80"
registry_name = "web/prod/web"
endpoint = "http"
"#;
    let mut source = spawn(
        &server,
        "/twitter/service",
        registry(RegistryFormat::Serverset, mapping),
    );
    let state = state_where(&mut source.states, "web with its one ALIVE member", |s| {
        backends(s, "web") == [addr("198.18.2.11:80")]
    })
    .await;
    assert_eq!(
        state.services["web"].backends[&addr("198.18.2.11:80")].weight,
        1
    );
    status_where(&mut source.status, "the malformed member rejected", |s| {
        s.current_rejections == 1
    })
    .await;

    // The STARTING member turns ALIVE.
    zk.set_data(&starting, member("198.18.2.12", "ALIVE").as_bytes(), None)
        .await
        .unwrap();
    state_where(&mut source.states, "both members", |s| {
        backends(s, "web") == [addr("198.18.2.11:80"), addr("198.18.2.12:80")]
    })
    .await;
}
