//! The HTTP listeners of the metrics: `/metrics`, `/healthz` and `/readyz` on
//! `--metrics-addr` ([`serve`]), `/healthz` and `/readyz` only on `--health-addr`
//! ([`serve_health`]), each with its own connection slots and timeouts.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use super::Metrics;

/// Most HTTP connections served at once.
pub const MAX_HTTP_CONNECTIONS: usize = 32;
/// How long a client may take to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest an HTTP connection may stay open.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Most connections the health listener ([`serve_health`]) serves at once: its own slots,
/// which metrics clients cannot take.
pub const MAX_HEALTH_CONNECTIONS: usize = 8;
/// How long a client of the health listener may take to send its request headers (a probe
/// sends them at once; the kubelet's probe timeout is a few seconds).
pub const HEALTH_HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a connection to the health listener may stay open.
pub const HEALTH_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Metrics {
    /// The answer to one HTTP request on a listener serving `endpoints`.
    fn respond(&self, req: &Request<Incoming>, endpoints: Endpoints) -> Response<Full<Bytes>> {
        let reply = |status: StatusCode, ctype: &'static str, body: Bytes| {
            let mut resp = Response::new(Full::new(body));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(ctype),
            );
            resp
        };
        const TEXT: &str = "text/plain; charset=utf-8";
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                TEXT,
                Bytes::from_static(b"only GET\n"),
            );
        }
        match req.uri().path() {
            "/metrics" if endpoints == Endpoints::Health => reply(
                StatusCode::NOT_FOUND,
                TEXT,
                Bytes::from_static(
                    b"not found: this listener serves /healthz and /readyz; /metrics is on \
                      --metrics-addr\n",
                ),
            ),
            "/metrics" => reply(StatusCode::OK, CONTENT_TYPE, Bytes::from(self.render())),
            "/healthz" if self.is_alive(monotonic_s()) => {
                reply(StatusCode::OK, TEXT, Bytes::from_static(b"ok\n"))
            }
            "/healthz" => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                Bytes::from_static(b"stalled: the main loop has not gone round recently\n"),
            ),
            "/readyz" if self.is_ready() => {
                reply(StatusCode::OK, TEXT, Bytes::from_static(b"ready\n"))
            }
            "/readyz" => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                Bytes::from_static(b"not ready: programs not attached yet\n"),
            ),
            _ => reply(
                StatusCode::NOT_FOUND,
                TEXT,
                Bytes::from_static(b"not found: try /metrics, /healthz, /readyz\n"),
            ),
        }
    }
}

/// `/healthz` fails when the daemon's main loop has not gone round for this long.
pub const HEARTBEAT_MAX: Duration = Duration::from_secs(30);

/// `CLOCK_MONOTONIC` in whole seconds.
pub fn monotonic_s() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0)
}

/// What one listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoints {
    /// `/metrics`, `/healthz`, `/readyz` (`--metrics-addr`).
    All,
    /// `/healthz` and `/readyz` only (`--health-addr`).
    Health,
}

/// Limits of one listener.
#[derive(Clone, Copy, Debug)]
struct Limits {
    endpoints: Endpoints,
    what: &'static str,
    connections: usize,
    header_timeout: Duration,
    connection_timeout: Duration,
}

const METRICS_LIMITS: Limits = Limits {
    endpoints: Endpoints::All,
    what: "metrics endpoint",
    connections: MAX_HTTP_CONNECTIONS,
    header_timeout: HEADER_TIMEOUT,
    connection_timeout: CONNECTION_TIMEOUT,
};

const HEALTH_LIMITS: Limits = Limits {
    endpoints: Endpoints::Health,
    what: "health endpoint",
    connections: MAX_HEALTH_CONNECTIONS,
    header_timeout: HEALTH_HEADER_TIMEOUT,
    connection_timeout: HEALTH_CONNECTION_TIMEOUT,
};

/// Binds `addr` now (so a taken port fails start-up) and returns the server: a future that
/// serves the endpoints until dropped, to spawn. Connection errors are logged per connection.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    bind(addr, metrics, METRICS_LIMITS, "--metrics-addr").await
}

/// Binds `addr` now (so a taken port fails start-up) and returns the health server: `/healthz`
/// and `/readyz` only, on their own [`MAX_HEALTH_CONNECTIONS`] slots, until dropped.
pub async fn serve_health(
    addr: SocketAddr,
    metrics: Metrics,
) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    bind(addr, metrics, HEALTH_LIMITS, "--health-addr").await
}

/// Binds `addr` for a server with `limits` (`flag` names the option that set the address).
async fn bind(
    addr: SocketAddr,
    metrics: Metrics,
    limits: Limits,
    flag: &str,
) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {} {addr} ({flag})", limits.what))?;
    Ok(serve_with(listener, metrics, limits))
}

/// Serves the endpoints on a bound listener until the future is dropped (tests bind port 0).
#[cfg(test)]
pub async fn serve_listener(listener: TcpListener, metrics: Metrics) {
    serve_with(listener, metrics, METRICS_LIMITS).await;
}

/// Serves `/healthz` and `/readyz` on a bound listener until the future is dropped.
#[cfg(test)]
pub async fn serve_health_listener(listener: TcpListener, metrics: Metrics) {
    serve_with(listener, metrics, HEALTH_LIMITS).await;
}

async fn serve_with(listener: TcpListener, metrics: Metrics, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.connections));
    let what = limits.what;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(err) => {
                tracing::warn!(%err, "{what}: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, "{what}: too many connections, closing one");
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let resp = metrics.respond(&req, limits.endpoints);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(limits.connection_timeout, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::debug!(%peer, %err, "{what} connection"),
                Err(_) => tracing::debug!(%peer, "{what} connection timed out"),
            }
        });
    }
}
