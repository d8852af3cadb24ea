//! `lb flows` against real connections: every held connection is listed with its client address,
//! its service and the backend that greeted it, and the filters select exactly theirs.

use std::collections::BTreeMap;
use std::time::Duration;

use lb_tests::config::to_toml;
use lb_tests::lab::LabOptions;
use lb_tests::scenario::{service, status_shows, vip};
use lb_tests::{Lab, assert_eventually, hold};
use lb_userspace::flows::{FlowRow, FlowState};

const HELD: usize = 12;

#[test]
fn lb_flows_lists_every_held_connection_with_its_backend_and_filters() {
    let mut lab = Lab::start(LabOptions {
        server_bin: Some(env!("CARGO_BIN_EXE_lab-server").into()),
        ..Default::default()
    })
    .expect("the lab starts");
    let web = service("web", vip(1, false), "rr", &[1, 1, 1]);
    let api = service("api", vip(2, false), "maglev", &[1, 1, 1]);
    let both = [web.clone(), api.clone()];
    lab.start_lb(0, &to_toml(&both), &[]).expect("lb starts");
    assert_eventually!(
        lab.lb_status_json(0)
            .is_ok_and(|s| both.iter().all(|svc| status_shows(&s, svc))),
        Duration::from_secs(10),
        "lb never showed both services"
    );
    let held = lab
        .in_client(|| hold(web.vip, HELD))
        .expect("client")
        .expect("hold");
    let _other = lab
        .in_client(|| hold(api.vip, 3))
        .expect("client")
        .expect("hold");
    let backend_addr: BTreeMap<String, String> = (0..3)
        .map(|i| {
            (
                Lab::backend_name(i),
                Lab::backend_addr(i, false).to_string(),
            )
        })
        .collect();

    let rows: Vec<FlowRow> = serde_json::from_str(
        &lab.lb_flows(0, &["--service", "web", "--json"])
            .expect("lb flows"),
    )
    .expect("lb flows --json decodes");
    assert_eq!(rows.len(), HELD, "{rows:#?}");
    for conn in &held {
        let client = conn.local_addr().to_string();
        let row = rows
            .iter()
            .find(|r| r.client == client)
            .unwrap_or_else(|| panic!("{client} is not listed: {rows:#?}"));
        assert_eq!(row.service.as_deref(), Some("web"));
        assert_eq!(row.vip, web.vip.to_string());
        assert_eq!(
            row.backend.as_ref(),
            backend_addr.get(conn.backend()),
            "{row:?}"
        );
        assert_eq!(row.state, FlowState::Established, "{row:?}");
    }
    let all: Vec<FlowRow> =
        serde_json::from_str(&lab.lb_flows(0, &["--json"]).expect("lb flows")).expect("decodes");
    assert_eq!(all.len(), HELD + 3, "both services' flows");

    // --backend: exactly the held connections that backend greeted.
    let b0 = &backend_addr["b0"];
    let on_b0 = held.iter().filter(|c| c.backend() == "b0").count();
    let text = lab
        .lb_flows(0, &["--service", "web", "--backend", b0])
        .expect("lb flows");
    assert!(text.starts_with("SERVICE"), "{text}");
    assert!(text.ends_with(&format!("{on_b0} flows\n")), "{text}");
    assert_eq!(text.matches(b0.as_str()).count(), on_b0, "{text}");

    let err = lab
        .lb_flows(0, &["--service", "nope"])
        .expect_err("an unknown service");
    let err = format!("{err:#}");
    assert!(
        err.contains("no service nope") && (err.contains("api, web") || err.contains("web, api")),
        "{err}"
    );
}
