//! Failure paths of the pod watch, against a MOCK API server (`tower_test::mock`, the approach
//! kube-rs uses for its own watcher tests): a scripted service that answers the client's list,
//! watch and probe requests with whatever status codes and event streams a scenario needs.
//!
//! A mock, because a real API server cannot be made to answer 410 Gone, cut a watch stream, or
//! return 5xx on demand. The happy path and the real decoding are covered against a real
//! kube-apiserver in `tests/tests/enrich_apiserver.rs`.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::channel::mpsc;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::StreamBody;
use serde_json::{Value, json};
use tower_test::mock::{self, SendResponse};

use super::{
    CacheState, MetaCache,
    cache::Mode,
    model::ObjKey,
    watch::{Tuning, spawn_pods},
};

type Chunk = Result<Frame<Bytes>, std::io::Error>;
type MockBody = StreamBody<mpsc::UnboundedReceiver<Chunk>>;
type Handle = mock::Handle<Request<kube::client::Body>, Response<MockBody>>;
type Responder = SendResponse<Response<MockBody>>;

const NODE: &str = "node-a";

/// What the client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// The watcher's (paged) list.
    List,
    /// A watch, from this resourceVersion.
    Watch(String),
    /// The cache's `limit=1` health probe.
    Probe,
}

fn classify(req: &Request<kube::client::Body>) -> Kind {
    let query = req.uri().query().unwrap_or_default();
    let param = |name: &str| {
        query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| v.to_owned())
        })
    };
    assert!(
        req.uri().path() == "/api/v1/pods",
        "unexpected path {}",
        req.uri()
    );
    assert_eq!(
        param("fieldSelector").as_deref(),
        Some("spec.nodeName%3Dnode-a"),
        "pods are scoped to the node: {}",
        req.uri()
    );
    if param("watch").as_deref() == Some("true") || param("watch").as_deref() == Some("1") {
        Kind::Watch(param("resourceVersion").unwrap_or_default())
    } else if param("limit").as_deref() == Some("1") {
        Kind::Probe
    } else {
        Kind::List
    }
}

fn body_once(v: &Value) -> MockBody {
    let (tx, rx) = mpsc::unbounded();
    tx.unbounded_send(Ok(Frame::data(Bytes::from(v.to_string()))))
        .expect("fresh channel");
    StreamBody::new(rx)
}

fn json_response(code: u16, v: &Value) -> Response<MockBody> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(body_once(v))
        .expect("response")
}

fn status(code: u16, reason: &str) -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("mock: {reason}"), "reason": reason, "code": code })
}

fn pod(name: &str, ip: &str, rv: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": "default", "resourceVersion": rv },
        "spec": { "nodeName": NODE, "containers": [] },
        "status": { "phase": "Running", "podIP": ip },
    })
}

fn pod_list(rv: &str, items: &[Value]) -> Value {
    json!({ "apiVersion": "v1", "kind": "PodList", "metadata": { "resourceVersion": rv },
            "items": items })
}

/// An open watch response; events are pushed through the returned sender, dropping it ends
/// the stream cleanly.
fn watch_response() -> (Response<MockBody>, mpsc::UnboundedSender<Chunk>) {
    let (tx, rx) = mpsc::unbounded();
    let resp = Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(StreamBody::new(rx))
        .expect("response");
    (resp, tx)
}

fn send_event(tx: &mpsc::UnboundedSender<Chunk>, kind: &str, object: Value) {
    let line = json!({ "type": kind, "object": object }).to_string() + "\n";
    tx.unbounded_send(Ok(Frame::data(Bytes::from(line))))
        .expect("watch stream open");
}

struct Mock {
    handle: std::pin::Pin<Box<Handle>>,
    /// How probes are answered (200 with an empty list, or this error code).
    probe_code: u16,
    probes: usize,
}

impl Mock {
    /// The next list or watch request; probes in between are answered per `probe_code`.
    async fn next(&mut self) -> (Kind, Responder) {
        loop {
            let (req, send) =
                tokio::time::timeout(Duration::from_secs(15), self.handle.as_mut().next_request())
                    .await
                    .expect("the watcher sent no request within 15 s")
                    .expect("client gone");
            let kind = classify(&req);
            if kind == Kind::Probe {
                self.probes += 1;
                if self.probe_code == 200 {
                    send.send_response(json_response(200, &pod_list("99", &[])));
                } else {
                    send.send_response(json_response(
                        self.probe_code,
                        &status(self.probe_code, "ServiceUnavailable"),
                    ));
                }
                continue;
            }
            return (kind, send);
        }
    }
}

fn setup() -> (MetaCache, Mock) {
    let (service, handle) = mock::pair::<Request<kube::client::Body>, Response<MockBody>>();
    let client = kube::Client::new(service, "default");
    let cache = MetaCache::new(
        Mode::Live,
        Some(NODE.to_owned()),
        "eni".to_owned(),
        ObjKey::new("kube-system", "kube-dns"),
    );
    let tuning = Tuning {
        probe_interval: Duration::from_millis(100),
        probe_timeout: Duration::from_secs(2),
    };
    spawn_pods(&cache, client, Some(NODE), tuning);
    let mock = Mock {
        handle: Box::pin(handle),
        probe_code: 200,
        probes: 0,
    };
    (cache, mock)
}

async fn wait_for(what: &str, cache: &MetaCache, cond: impl Fn(&MetaCache) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond(cache) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; state {:?}, stats {:?}",
            cache.state(),
            cache.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn has(cache: &MetaCache, addr: &str, name: &str) -> bool {
    cache.pod_by_ip(ip(addr)).is_some_and(|p| p.name == name)
}

/// MOCK: the watch answers 410 Gone (resourceVersion too old, as after an etcd compaction or a
/// long disconnection). The watcher must relist and the relist must replace the table: pods
/// missing from the new list disappear. A real API server cannot be made to send 410 on demand.
#[tokio::test]
async fn watch_410_gone_relists_and_replaces() {
    let (cache, mut api) = setup();
    assert_eq!(cache.state(), CacheState::Syncing);

    let (kind, send) = api.next().await;
    assert_eq!(kind, Kind::List);
    send.send_response(json_response(
        200,
        &pod_list("10", &[pod("a", "10.0.0.1", "10")]),
    ));
    wait_for("first sync", &cache, |c| c.state() == CacheState::Ready).await;
    assert!(has(&cache, "10.0.0.1", "a"));

    let (kind, send) = api.next().await;
    assert_eq!(kind, Kind::Watch("10".to_owned()));
    let (resp, tx) = watch_response();
    send.send_response(resp);
    send_event(&tx, "ERROR", status(410, "Expired"));

    // The watcher backs off, then lists again from scratch.
    let (kind, send) = api.next().await;
    assert_eq!(kind, Kind::List, "410 Gone must lead to a relist");
    assert!(
        matches!(cache.state(), CacheState::Stale { .. }),
        "stale between the 410 and the relist, although probes succeeded: {:?}",
        cache.state()
    );
    assert!(api.probes > 0, "probes were answered 200 meanwhile");
    send.send_response(json_response(
        200,
        &pod_list("20", &[pod("b", "10.0.0.2", "20")]),
    ));
    let (kind, _send_keep) = api.next().await;
    assert_eq!(
        kind,
        Kind::Watch("20".to_owned()),
        "watches from the relist's version"
    );

    wait_for("relist applied", &cache, |c| has(c, "10.0.0.2", "b")).await;
    assert!(
        cache.pod_by_ip(ip("10.0.0.1")).is_none(),
        "a was not in the relist"
    );
    assert_eq!(cache.state(), CacheState::Ready);
    let stats = cache.stats();
    assert_eq!(stats.relists, 2, "{stats:?}");
    assert_eq!(stats.stale_episodes, 1, "{stats:?}");
    assert_eq!(stats.recoveries, 1, "{stats:?}");
}

/// MOCK: the watch stream ends (the API server closes it on its timeout or a load balancer
/// drops it), then one is cut by an I/O error. The watcher must resume from the last
/// resourceVersion it saw — without a relist — and lose no event. A real API server cannot be
/// made to drop a connection mid-stream on demand.
#[tokio::test]
async fn dropped_watch_resumes_from_last_version() {
    let (cache, mut api) = setup();
    let (_, send) = api.next().await;
    send.send_response(json_response(
        200,
        &pod_list("10", &[pod("a", "10.0.0.1", "10")]),
    ));

    let (kind, send) = api.next().await;
    assert_eq!(kind, Kind::Watch("10".to_owned()));
    let (resp, tx) = watch_response();
    send.send_response(resp);
    send_event(&tx, "ADDED", pod("b", "10.0.0.2", "11"));
    wait_for("b added", &cache, |c| has(c, "10.0.0.2", "b")).await;
    drop(tx); // clean end of stream

    let (kind, send) = api.next().await;
    assert_eq!(kind, Kind::Watch("11".to_owned()), "resumed, not relisted");
    let (resp, tx) = watch_response();
    send.send_response(resp);
    send_event(&tx, "ADDED", pod("c", "10.0.0.3", "12"));
    send_event(&tx, "DELETED", pod("a", "10.0.0.1", "13"));
    wait_for("c added, a deleted", &cache, |c| {
        has(c, "10.0.0.3", "c") && c.pod_by_ip(ip("10.0.0.1")).is_none()
    })
    .await;
    // Now the connection is reset under the stream.
    tx.unbounded_send(Err(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "mock: connection reset",
    )))
    .expect("stream open");
    drop(tx);
    wait_for("reset seen", &cache, |c| c.stats().watch_errors >= 1).await;

    let (kind, send) = api.next().await;
    assert_eq!(
        kind,
        Kind::Watch("13".to_owned()),
        "resumed after the reset too"
    );
    let (resp, tx) = watch_response();
    send.send_response(resp);
    send_event(&tx, "MODIFIED", pod("b", "10.0.0.22", "14"));
    wait_for("b moved", &cache, |c| has(c, "10.0.0.22", "b")).await;
    assert!(
        cache.pod_by_ip(ip("10.0.0.2")).is_none(),
        "b's old IP forgotten"
    );
    wait_for("healthy again", &cache, |c| c.state() == CacheState::Ready).await;

    let stats = cache.stats();
    assert_eq!(stats.relists, 1, "never relisted: {stats:?}");
    assert_eq!(stats.events, 4, "{stats:?}");
    assert_eq!(stats.stale_episodes, 1, "the reset: {stats:?}");
}

/// MOCK: the API server answers 503 (overloaded, or restarting behind a load balancer), first to
/// the initial list, later to the watch, while probes fail too; then it recovers. The cache must
/// stay Syncing until the first list succeeds, go Stale while the watch fails after that, and
/// be Ready again once the API answers, with no restart. A real API server cannot be made to
/// answer 5xx on demand.
#[tokio::test]
async fn server_errors_then_recovery() {
    let (cache, mut api) = setup();
    api.probe_code = 503;

    let (kind, send) = api.next().await;
    assert_eq!(kind, Kind::List);
    send.send_response(json_response(503, &status(503, "ServiceUnavailable")));
    wait_for("error seen", &cache, |c| c.stats().watch_errors == 1).await;
    assert_eq!(
        cache.state(),
        CacheState::Syncing,
        "no data yet: syncing, not stale"
    );
    assert!(cache.last_error().is_some_and(|e| e.contains("pods")));

    let (kind, send) = api.next().await;
    assert_eq!(kind, Kind::List, "retried after backoff");
    send.send_response(json_response(500, &status(500, "InternalError")));
    let (kind, send) = api.next().await;
    assert_eq!(kind, Kind::List);
    send.send_response(json_response(
        200,
        &pod_list("10", &[pod("a", "10.0.0.1", "10")]),
    ));
    wait_for("ready after the list", &cache, |c| {
        c.state() == CacheState::Ready
    })
    .await;
    assert!(has(&cache, "10.0.0.1", "a"));

    // Now the watch fails: Stale, and lookups keep answering from what is known.
    let (kind, send) = api.next().await;
    assert_eq!(kind, Kind::Watch("10".to_owned()));
    let before = std::time::SystemTime::now();
    send.send_response(json_response(503, &status(503, "ServiceUnavailable")));
    wait_for("stale", &cache, |c| {
        matches!(c.state(), CacheState::Stale { .. })
    })
    .await;
    let CacheState::Stale { since } = cache.state() else {
        unreachable!("checked above")
    };
    assert!(since >= before);
    assert!(has(&cache, "10.0.0.1", "a"), "stale data is still served");
    let probes = api.probes;

    // The watcher retries; this time the watch opens but stays quiet (nothing changed), so
    // only the probe can tell that the API is back.
    let (kind, send) = api.next_with_probe_wait(probes).await;
    assert_eq!(kind, Kind::Watch("10".to_owned()));
    let (resp, _tx) = watch_response();
    send.send_response(resp);
    assert!(matches!(cache.state(), CacheState::Stale { .. }));
    api.probe_code = 200;
    let serve = tokio::spawn(async move {
        // Keep answering probes until the test ends.
        let _ = api.next().await;
    });
    wait_for("recovered", &cache, |c| c.state() == CacheState::Ready).await;
    serve.abort();
    let stats = cache.stats();
    assert!(stats.relists >= 3, "{stats:?}");
    assert!(stats.watch_errors >= 3, "{stats:?}");
    assert_eq!(
        stats.recoveries, 2,
        "list recovery + watch recovery: {stats:?}"
    );
    assert_eq!(cache.last_error(), None);
}

impl Mock {
    /// Like [`Mock::next`], and checks that probes were sent (and failed) while waiting.
    async fn next_with_probe_wait(&mut self, probes_before: usize) -> (Kind, Responder) {
        let r = self.next().await;
        assert!(
            self.probes > probes_before,
            "the failing watch was probed while backing off"
        );
        r
    }
}
