use super::*;

fn service(name: &str, vip: &str, registry_name: &str) -> RegistryService {
    RegistryService {
        spec: ServiceSpec::new(name, vip.parse().unwrap()),
        registry_name: registry_name.to_owned(),
        endpoint: None,
    }
}

fn curator_instance(address: &str, port: u16, payload: &str) -> Vec<u8> {
    format!(
        r#"{{"name":"web-svc","id":"id-{address}","address":"{address}","port":{port},"sslPort":null,"payload":{payload},"registrationTimeUTC":1700000000000,"serviceType":"DYNAMIC","uriSpec":null}}"#
    )
    .into_bytes()
}

fn raw(service: &str, nodes: &[(&str, Vec<u8>)]) -> RawTree {
    let mut tree = RawTree::new();
    tree.insert(
        service.to_owned(),
        RawService {
            data: None,
            backends: nodes
                .iter()
                .map(|(n, d)| ((*n).to_owned(), d.clone()))
                .collect(),
        },
    );
    tree
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn curator_instances_become_backends_and_bad_ones_are_skipped_alone() {
    let registry = Registry::new(
        RegistryFormat::Curator,
        vec![service("web", "198.18.100.1:80", "web-svc")],
    )
    .unwrap();
    let schema = Schema::new("/discovery").unwrap();
    let tree = raw(
        "web",
        &[
            ("a", curator_instance("198.18.2.11", 80, "null")),
            ("b", curator_instance("198.18.2.12", 80, r#"{"weight":3}"#)),
            ("c", b"{\"address\":".to_vec()),
            ("d", curator_instance("198.18.2.13", 8080, "null")),
            ("e", curator_instance("2001:db8::14", 80, "null")),
            ("f", curator_instance("198.18.2.11", 80, "null")),
        ],
    );
    let snapshot = build_snapshot(&registry, &schema, &tree, &DesiredState::default());
    let web = &snapshot.state.services["web"];
    assert_eq!(web.vip, addr("198.18.100.1:80"));
    assert_eq!(
        web.backends.keys().copied().collect::<Vec<_>>(),
        [addr("198.18.2.11:80"), addr("198.18.2.12:80")]
    );
    assert_eq!(web.backends[&addr("198.18.2.12:80")].weight, 3);
    let rejected: Vec<&str> = snapshot
        .rejections
        .iter()
        .map(|r| r.path.as_str())
        .collect();
    assert_eq!(
        rejected,
        [
            "/discovery/web-svc/c",
            "/discovery/web-svc/d",
            "/discovery/web-svc/e",
            "/discovery/web-svc/f"
        ]
    );
    assert!(
        snapshot.rejections[1].reason.contains("port"),
        "{:?}",
        snapshot.rejections[1]
    );
    assert!(
        snapshot.rejections[3].reason.contains("instance a"),
        "{:?}",
        snapshot.rejections[3]
    );
    assert!(
        snapshot
            .rejections
            .iter()
            .all(|r| r.outcome == INSTANCE_SKIPPED)
    );
}

#[test]
fn a_service_without_instances_is_there_with_no_backends() {
    let registry = Registry::new(
        RegistryFormat::Curator,
        vec![
            service("web", "198.18.100.1:80", "web"),
            service("api", "198.18.100.2:80", "api"),
        ],
    )
    .unwrap();
    let schema = Schema::new("/").unwrap();
    let snapshot = build_snapshot(
        &registry,
        &schema,
        &RawTree::new(),
        &DesiredState::default(),
    );
    assert_eq!(snapshot.state.services.len(), 2);
    assert!(snapshot.state.services["api"].backends.is_empty());
    assert_eq!(
        registry.instances_dir(&schema, registry.services().next().unwrap()),
        "/api"
    );
}

#[test]
fn serverset_members_alive_only_and_other_children_ignored() {
    let mut svc = service("web", "[2001:db8::100]:80", "twitter/web/prod");
    svc.endpoint = Some("http".into());
    let registry = Registry::new(RegistryFormat::Serverset, vec![svc]).unwrap();
    let schema = Schema::new("/serversets").unwrap();
    let member = |host: &str, status: &str| {
        format!(
            r#"{{"serviceEndpoint":{{"host":"{host}","port":9000}},"additionalEndpoints":{{"http":{{"host":"{host}","port":80}}}},"status":"{status}","shard":0}}"#
        )
        .into_bytes()
    };
    let tree = raw(
        "web",
        &[
            ("member_0000000001", member("2001:db8::11", "ALIVE")),
            ("member_0000000002", member("2001:db8::12", "STOPPING")),
            ("member_0000000003", b"{}".to_vec()),
            ("lock", b"not a member".to_vec()),
        ],
    );
    let snapshot = build_snapshot(&registry, &schema, &tree, &DesiredState::default());
    let web = &snapshot.state.services["web"];
    assert_eq!(
        web.backends.keys().copied().collect::<Vec<_>>(),
        [addr("[2001:db8::11]:80")]
    );
    assert_eq!(snapshot.rejections.len(), 1);
    assert_eq!(
        snapshot.rejections[0].path,
        "/serversets/twitter/web/prod/member_0000000003"
    );
}

#[test]
fn registry_names_and_endpoints_are_checked() {
    let mut bad_endpoint = service("web", "198.18.100.1:80", "web");
    bad_endpoint.endpoint = Some("http".into());
    assert!(matches!(
        Registry::new(RegistryFormat::Curator, vec![bad_endpoint]),
        Err(RegistryError::InvalidEndpoint { .. })
    ));
    for (format, name) in [
        (RegistryFormat::Curator, "a/b"),
        (RegistryFormat::Serverset, "/a"),
        (RegistryFormat::Serverset, "a//b"),
        (RegistryFormat::Serverset, "a/.."),
        (RegistryFormat::Curator, ""),
    ] {
        assert!(
            matches!(
                Registry::new(format, vec![service("web", "198.18.100.1:80", name)]),
                Err(RegistryError::InvalidRegistryName { .. })
            ),
            "{name}"
        );
    }
    assert!(matches!(
        Registry::new(RegistryFormat::Curator, vec![]),
        Err(RegistryError::NoServices)
    ));
}
