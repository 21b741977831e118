//! One `tracer observe` client's connection: refusing it, reading and parsing its request
//! line ([`parse_request`]), sending the history it asks for and following the stream.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixStream, unix::OwnedWriteHalf},
    sync::broadcast::error::{RecvError, TryRecvError},
};

use super::filter::Selection;
use super::{
    BATCH_LINES, Entry, Hub, MAX_CLIENTS, MAX_REQUEST_BYTES, ObserveStats, REQUEST_TIMEOUT,
    Request, WRITE_TIMEOUT, push_line,
};

/// Tells a client whose uid may not read the stream so, and closes.
pub(super) async fn deny(mut stream: UnixStream, uid: u32, own_uid: u32) {
    let who = if own_uid == 0 {
        "root only".to_owned()
    } else {
        format!("root or uid {own_uid} only")
    };
    let line = error_line(&format!(
        "permission denied: uid {uid} may not read the observe stream ({who}); run tracer \
         observe as root, e.g. kubectl exec into the tracer pod"
    ));
    let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(line.as_bytes())).await;
}

/// Tells a client the server has [`MAX_CLIENTS`] already, and closes.
pub(super) async fn refuse(mut stream: UnixStream) {
    let line = error_line(&format!(
        "too many observe clients (at most {MAX_CLIENTS}); try again later"
    ));
    let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(line.as_bytes())).await;
}

/// An `{"type":"error"}` line.
fn error_line(message: &str) -> String {
    let mut s = json!({"type": "error", "message": message}).to_string();
    s.push('\n');
    s
}

/// A `{"type":"warning"}` line.
fn warning_line(message: &str) -> String {
    let mut s = json!({"type": "warning", "message": message}).to_string();
    s.push('\n');
    s
}

/// A `{"type":"notice"}` line: `skipped` lines were skipped for this client.
fn notice_line(skipped: u64) -> String {
    let mut s = json!({
        "type": "notice",
        "skipped": skipped,
        "message": format!("this client fell behind: {skipped} lines skipped"),
    })
    .to_string();
    s.push('\n');
    s
}

/// Reads the request line: `Ok(None)` when the client hung up without one.
async fn read_request(
    rd: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> Result<Option<Request>, String> {
    let mut buf = Vec::new();
    let limit = u64::try_from(MAX_REQUEST_BYTES).unwrap_or(u64::MAX);
    let read = tokio::time::timeout(
        REQUEST_TIMEOUT,
        (&mut *rd).take(limit + 1).read_until(b'\n', &mut buf),
    )
    .await;
    match read {
        Err(_) => return Err(format!("no request line within {REQUEST_TIMEOUT:?}")),
        Ok(Err(err)) => return Err(format!("reading the request: {err}")),
        Ok(Ok(0)) => return Ok(None),
        Ok(Ok(_)) => {}
    }
    parse_request(&buf).map(Some)
}

/// Parses one request line as a client sent it (bytes, possibly with its newline): an empty
/// line is the default request; anything else must be a [`Request`] in JSON.
pub fn parse_request(buf: &[u8]) -> Result<Request, String> {
    if buf.len() > MAX_REQUEST_BYTES {
        return Err(format!(
            "request line longer than {MAX_REQUEST_BYTES} bytes"
        ));
    }
    let text = std::str::from_utf8(buf).map_err(|_| "request is not UTF-8".to_owned())?;
    let text = text.trim();
    if text.is_empty() {
        return Ok(Request::default());
    }
    serde_json::from_str(text).map_err(|err| format!("bad request: {err}"))
}

/// Writes `buf` within [`WRITE_TIMEOUT`]; false when the client is gone or stalled.
async fn write_out(wr: &mut OwnedWriteHalf, buf: &[u8], stats: &ObserveStats) -> bool {
    match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(buf)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            stats.inner.stalled.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("observe client stalled: disconnected");
            false
        }
    }
}

/// Decrements a gauge when dropped (the client task may end at any await).
struct Decrement<'a>(&'a AtomicU64);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Decrements the hub's count of event subscribers when dropped.
struct EventClient<'a>(&'a AtomicUsize);

impl Drop for EventClient<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one client: reads its request, sends the history it asks for, then follows.
pub(super) async fn serve_client(stream: UnixStream, hub: &Hub, stats: &ObserveStats) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let request = match read_request(&mut rd).await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(message) => {
            stats.inner.bad_requests.fetch_add(1, Ordering::Relaxed);
            let _ = write_out(&mut wr, error_line(&message).as_bytes(), stats).await;
            return;
        }
    };
    let compiled = Selection::compile(&request.filter, &request.not)
        .map_err(|e| e.to_string())
        .and_then(|selection| {
            let since = request
                .since
                .as_deref()
                .map(|s| {
                    s.parse::<jiff::Timestamp>()
                        .map_err(|e| format!("bad since {s:?}: {e}"))
                })
                .transpose()?;
            Ok((selection, since))
        });
    let (selection, since) = match compiled {
        Ok(c) => c,
        Err(message) => {
            stats.inner.bad_requests.fetch_add(1, Ordering::Relaxed);
            let _ = write_out(&mut wr, error_line(&message).as_bytes(), stats).await;
            return;
        }
    };
    let warnings: String = hub
        .unseen_warnings(&request)
        .iter()
        .map(|w| warning_line(w))
        .collect();
    if !warnings.is_empty() && !write_out(&mut wr, warnings.as_bytes(), stats).await {
        return;
    }
    let _event_client = request.events.then(|| {
        hub.inner.event_clients.fetch_add(1, Ordering::Relaxed);
        EventClient(&hub.inner.event_clients)
    });
    let (history, mut rx) = hub.subscribe(request.last, &selection, since, request.events);
    stats.inner.clients.fetch_add(1, Ordering::Relaxed);
    stats.inner.clients_total.fetch_add(1, Ordering::Relaxed);
    let _connected = Decrement(&stats.inner.clients);

    let mut buf = Vec::new();
    for chunk in history.chunks(BATCH_LINES) {
        buf.clear();
        for e in chunk {
            push_line(&mut buf, e, request.stamp);
        }
        if !write_out(&mut wr, &buf, stats).await {
            return;
        }
        stats
            .inner
            .lines_sent
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    if !request.follow {
        let _ = wr.shutdown().await;
        return;
    }

    let wanted = |e: &Entry| (request.events || !e.event) && selection.matches(&e.value);
    let mut scratch = [0u8; 256];
    loop {
        buf.clear();
        let mut lines = 0u64;
        tokio::select! {
            got = rx.recv() => {
                let mut first = Some(match got {
                    Ok(e) => Ok(e),
                    Err(RecvError::Lagged(n)) => Err(n),
                    Err(RecvError::Closed) => return,
                });
                // Drain what is already queued into one write (at most BATCH_LINES; the rest
                // stays queued for the next round, nothing fetched is dropped).
                for _ in 0..BATCH_LINES {
                    let next = match first.take() {
                        Some(n) => n,
                        None => match rx.try_recv() {
                            Ok(e) => Ok(e),
                            Err(TryRecvError::Lagged(n)) => Err(n),
                            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                        },
                    };
                    match next {
                        Ok(e) => {
                            if wanted(&e) {
                                push_line(&mut buf, &e, request.stamp);
                                lines += 1;
                            }
                        }
                        Err(n) => {
                            stats.inner.lines_skipped.fetch_add(n, Ordering::Relaxed);
                            buf.extend_from_slice(notice_line(n).as_bytes());
                        }
                    }
                }
            }
            read = rd.read(&mut scratch) => {
                // The client sends nothing after its request: EOF or an error means it is gone.
                match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        }
        if !buf.is_empty() {
            if !write_out(&mut wr, &buf, stats).await {
                return;
            }
            stats.inner.lines_sent.fetch_add(lines, Ordering::Relaxed);
        }
    }
}
