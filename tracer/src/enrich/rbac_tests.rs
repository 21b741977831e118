//! The ClusterRole in `deploy/clusterrole.yaml` grants exactly what the enrichment stage asks
//! the API server for: every watch is started against a mock API server that records each
//! request as (API group, resource, verb), and the set must equal the ClusterRole's rules.
//! A watch added without its rule, or a rule left behind after its watch went, fails here.

use std::{collections::BTreeSet, time::Duration};

use bytes::Bytes;
use futures::channel::mpsc;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::StreamBody;
use serde_json::{Value, json};
use tower_test::mock;

use super::{
    model::ObjKey,
    watch::{Tuning, start_with_client},
};

type Chunk = Result<Frame<Bytes>, std::io::Error>;
type MockBody = StreamBody<mpsc::UnboundedReceiver<Chunk>>;

/// (API group, resource, verb), as RBAC names them.
type Grant = (String, String, String);

const CLUSTERROLE: &str = include_str!("../../../deploy/clusterrole.yaml");

/// The rules of the ClusterRole, expanded to one grant per group, resource and verb. The file
/// uses flow lists (`resources: ["pods", "services"]`), which is all this reads.
fn granted() -> BTreeSet<Grant> {
    let list = |line: &str| -> Vec<String> {
        line.split_once('[')
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(inner, _)| {
                inner
                    .split(',')
                    .map(|s| s.trim().trim_matches('"').to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = BTreeSet::new();
    let (mut groups, mut resources) = (Vec::new(), Vec::new());
    for line in CLUSTERROLE.lines() {
        let t = line.trim().trim_start_matches("- ");
        if t.starts_with("apiGroups:") {
            groups = list(t);
        } else if t.starts_with("resources:") {
            resources = list(t);
        } else if t.starts_with("verbs:") {
            for g in &groups {
                for r in &resources {
                    for v in list(t) {
                        out.insert((g.clone(), r.clone(), v));
                    }
                }
            }
        } else {
            assert!(
                !t.starts_with("nonResourceURLs") && !t.starts_with("resourceNames"),
                "rule shape this test does not read: {t}"
            );
        }
    }
    out
}

/// What one request needs: a resource grant, or the discovery document of an API group
/// (granted to every authenticated user by the default `system:discovery` ClusterRole).
#[derive(Debug)]
enum Need {
    Grant(Grant),
    Discovery,
}

fn need(req: &Request<kube::client::Body>) -> Need {
    assert_eq!(req.method(), http::Method::GET, "read-only: {}", req.uri());
    let path: Vec<&str> = req.uri().path().trim_matches('/').split('/').collect();
    let query = req.uri().query().unwrap_or_default();
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let (group, rest) = match path.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", _, _] => return Need::Discovery,
        ["apis", group, _, rest @ ..] => (*group, rest),
        _ => panic!("unexpected request {}", req.uri()),
    };
    let (resource, named) = match rest {
        ["namespaces", _, resource] | [resource] => (*resource, false),
        ["namespaces", _, resource, _] | [resource, _] => (*resource, true),
        _ => panic!("unexpected request {}", req.uri()),
    };
    let verb = match (watch, named) {
        (true, _) => "watch",
        (false, false) => "list",
        (false, true) => "get",
    };
    Need::Grant((group.to_owned(), resource.to_owned(), verb.to_owned()))
}

fn respond(code: u16, v: &Value) -> Response<MockBody> {
    let (tx, rx) = mpsc::unbounded();
    tx.unbounded_send(Ok(Frame::data(Bytes::from(v.to_string()))))
        .expect("fresh channel");
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(StreamBody::new(rx))
        .expect("response")
}

/// Starts every watch against a mock API server and returns what was asked for, once each
/// watch has listed and started watching. `v1_slices`: whether discovery.k8s.io/v1 is served.
async fn requests(v1_slices: bool) -> BTreeSet<Grant> {
    let (service, handle) = mock::pair::<Request<kube::client::Body>, Response<MockBody>>();
    let mut handle = Box::pin(handle);
    let client = kube::Client::new(service, "default");
    let _cache = start_with_client(
        client,
        Some("node-a".to_owned()),
        "eni".to_owned(),
        ObjKey::new("kube-system", "kube-dns"),
        Some("tracer-system"),
        Tuning::default(),
    );
    let mut seen = BTreeSet::new();
    // Open watch streams stay open while the test reads.
    let mut open = Vec::new();
    let mut watches = 0;
    // Pods of the node, CoreDNS pods, the tracer's own pods (peers), Services, Nodes,
    // EndpointSlices.
    while watches < 6 {
        let (req, send) =
            tokio::time::timeout(Duration::from_secs(15), handle.as_mut().next_request())
                .await
                .unwrap_or_else(|_| panic!("no request within 15 s; seen {seen:?}"))
                .expect("client gone");
        match need(&req) {
            Need::Discovery if v1_slices => send.send_response(respond(
                200,
                &json!({"kind": "APIResourceList", "apiVersion": "v1",
                        "groupVersion": "discovery.k8s.io/v1",
                        "resources": [{"name": "endpointslices", "singularName": "endpointslice",
                                       "namespaced": true, "kind": "EndpointSlice",
                                       "verbs": ["list", "watch"]}]}),
            )),
            Need::Discovery => send.send_response(respond(
                404,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "reason": "NotFound", "code": 404}),
            )),
            Need::Grant(grant) => {
                if grant.2 == "watch" {
                    watches += 1;
                    let (tx, rx) = mpsc::unbounded();
                    open.push(tx);
                    send.send_response(
                        Response::builder()
                            .status(200)
                            .header("content-type", "application/json")
                            .body(StreamBody::new(rx))
                            .expect("response"),
                    );
                } else {
                    send.send_response(respond(
                        200,
                        &json!({"apiVersion": "v1", "kind": "List",
                                "metadata": {"resourceVersion": "1"}, "items": []}),
                    ));
                }
                seen.insert(grant);
            }
        }
    }
    seen
}

#[tokio::test]
async fn clusterrole_grants_exactly_what_the_watches_request() {
    let granted = granted();
    assert!(!granted.is_empty(), "rules parsed");
    for v1 in [true, false] {
        let asked = requests(v1).await;
        let missing: Vec<_> = asked.difference(&granted).collect();
        assert!(
            missing.is_empty(),
            "requested but not granted (v1 slices {v1}): {missing:?}"
        );
        let unused: Vec<_> = granted.difference(&asked).collect();
        assert!(
            unused.is_empty(),
            "granted but never requested (v1 slices {v1}): {unused:?}"
        );
    }
}
