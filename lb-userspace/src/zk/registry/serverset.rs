//! Twitter/Finagle serversets: `<root>/<path>/member_<sequence>`, ephemeral sequential nodes whose
//! data is the member's `ServiceInstance` (Thrift's JSON as Finagle's `ZkAnnouncer` writes it):
//!
//! ```json
//! {"serviceEndpoint":{"host":"198.18.2.11","port":80},
//!  "additionalEndpoints":{"http":{"host":"198.18.2.11","port":8080}},"status":"ALIVE","shard":0}
//! ```
//!
//! What `lb` takes: the `serviceEndpoint` (or the `additionalEndpoints` entry the mapping's
//! `endpoint` names), from members whose `status` is `ALIVE` only (`STARTING`, `STOPPING`, `STOPPED`,
//! `DEAD`, `WARNING` are not counted, and are not errors). Serversets carry no weight: every member
//! has weight 1. Children not named `member_…` are not members and are ignored.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

use super::{Instance, decode};
use crate::model::BackendState;

/// The prefix of member nodes (`member_0000000042`).
pub const MEMBER_PREFIX: &str = "member_";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Member {
    service_endpoint: Option<Endpoint>,
    #[serde(default)]
    additional_endpoints: Option<BTreeMap<String, Endpoint>>,
    status: Option<Status>,
    #[serde(default)]
    #[allow(dead_code)]
    shard: Option<i64>,
}

#[derive(Deserialize)]
struct Endpoint {
    host: String,
    port: u16,
}

#[derive(Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum Status {
    Dead,
    Starting,
    Alive,
    Stopping,
    Stopped,
    Warning,
}

/// Reads one member node: `Ok(None)` for a member that is not `ALIVE`. `endpoint` names an
/// `additionalEndpoints` entry to use instead of the `serviceEndpoint`.
pub fn parse_member(data: &[u8], endpoint: Option<&str>) -> Result<Option<Instance>, String> {
    let member: Member = decode(data, "serverset member")?;
    let status = member
        .status
        .ok_or("missing field \"status\" (ALIVE, STARTING, STOPPING, STOPPED, DEAD or WARNING)")?;
    if status != Status::Alive {
        return Ok(None);
    }
    let (field, endpoint) = match endpoint {
        None => (
            "serviceEndpoint".to_owned(),
            member
                .service_endpoint
                .ok_or("missing field \"serviceEndpoint\"")?,
        ),
        Some(name) => (
            format!("additionalEndpoints.{name}"),
            member
                .additional_endpoints
                .and_then(|mut all| all.remove(name))
                .ok_or_else(|| {
                    format!("the member has no additionalEndpoints entry \"{name}\" (the mapping's endpoint)")
                })?,
        ),
    };
    let ip: IpAddr = endpoint.host.parse().map_err(|_| {
        format!(
            "{field}.host \"{}\" is not an IP address (lb does not resolve host names)",
            endpoint.host
        )
    })?;
    Ok(Some(Instance {
        addr: SocketAddr::new(ip, endpoint.port),
        weight: 1,
        state: BackendState::Active,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMBER: &str = r#"{"serviceEndpoint":{"host":"198.18.2.11","port":80},"additionalEndpoints":{"http":{"host":"198.18.2.11","port":8080}},"status":"ALIVE","shard":0}"#;

    #[test]
    fn an_alive_member() {
        let instance = parse_member(MEMBER.as_bytes(), None).unwrap().unwrap();
        assert_eq!(instance.addr, "198.18.2.11:80".parse().unwrap());
        assert_eq!(instance.weight, 1);
        let http = parse_member(MEMBER.as_bytes(), Some("http"))
            .unwrap()
            .unwrap();
        assert_eq!(http.addr, "198.18.2.11:8080".parse().unwrap());
        let minimal = r#"{"serviceEndpoint":{"host":"2001:db8::11","port":80},"status":"ALIVE"}"#;
        let v6 = parse_member(minimal.as_bytes(), None).unwrap().unwrap();
        assert_eq!(v6.addr, "[2001:db8::11]:80".parse().unwrap());
    }

    #[test]
    fn members_not_alive_are_not_counted() {
        for status in ["STARTING", "STOPPING", "STOPPED", "DEAD", "WARNING"] {
            let data = MEMBER.replace("ALIVE", status);
            assert_eq!(parse_member(data.as_bytes(), None), Ok(None), "{status}");
        }
    }

    #[test]
    fn bad_members_are_rejected() {
        let cases = [
            (MEMBER.replace("ALIVE", "UP"), "status"),
            (MEMBER.replace(r#","status":"ALIVE""#, ""), "status"),
            (
                r#"{"additionalEndpoints":{},"status":"ALIVE"}"#.to_owned(),
                "serviceEndpoint",
            ),
            (
                MEMBER.replace(r#""port":80"#, r#""port":"80""#),
                "serviceEndpoint.port",
            ),
            (
                MEMBER.replace(r#"{"host":"198.18.2.11","port":80}"#, r#"{"port":80}"#),
                "host",
            ),
            (MEMBER.replacen("198.18.2.11", "web-1", 1), "not an IP"),
            ("{".to_owned(), "JSON"),
        ];
        for (data, expect) in cases {
            let err = parse_member(data.as_bytes(), None).unwrap_err();
            assert!(err.contains(expect), "{data}: {err}");
        }
        let err = parse_member(MEMBER.as_bytes(), Some("grpc")).unwrap_err();
        assert!(err.contains("\"grpc\""), "{err}");
    }
}
