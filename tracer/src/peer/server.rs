//! The peer listener: mutual TLS, one JSON request per line, answered by the daemon's loop
//! (which owns the tables the answer is read from) through a bounded channel.
//!
//! Every resource is bounded: connections ([`MAX_CONNECTIONS`]), the handshake and idle time,
//! the line length, the asks per request, the questions waiting for the loop. A client
//! without a certificate from the cluster's tracer CA is refused in the handshake and never
//! sees a byte of an answer; nothing is served in plaintext.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{
        AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _,
        BufReader,
    },
    net::TcpListener,
    sync::{Semaphore, mpsc, oneshot},
};

use crate::verdict::PeerReason;

use super::{
    proto::{self, Answer, Ask, MAX_LINE, Response, VERSION},
    tls::TlsStore,
};

/// Connections served at once; more wait in the kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection without a request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a request may wait for the daemon's loop (it answers within a tick).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// Questions waiting for the daemon's loop; beyond, asks are answered `unknown` (busy).
pub const QUEUE: usize = 64;

/// A request handed to the daemon's loop.
#[derive(Debug)]
pub struct Question {
    /// The asks.
    pub asks: Vec<Ask>,
    /// Where the answers go.
    pub reply: oneshot::Sender<Vec<Answer>>,
}

/// Counts of the listener (for /metrics and the counters log line).
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Requests answered.
    pub requests: AtomicU64,
    /// Asks answered.
    pub asks: AtomicU64,
    /// Handshakes refused or failed (no or wrong certificate, not TLS, timeout).
    pub refused: AtomicU64,
    /// Requests refused as malformed, of another version or too large.
    pub bad_requests: AtomicU64,
    /// Asks answered `busy` because the loop's queue was full.
    pub busy: AtomicU64,
}

/// Binds `addr` (errors here stop start-up: the port is taken or the address is not this
/// node's) and returns the accept loop to spawn.
pub async fn serve(
    addr: SocketAddr,
    tls: TlsStore,
    node: String,
    questions: mpsc::Sender<Question>,
    stats: Arc<ServerStats>,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "peer service listening (mutual TLS)");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let node: Arc<str> = node.into();
    Ok(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (tcp, from) = match listener.accept().await {
                Ok(c) => c,
                Err(err) => {
                    tracing::debug!(%err, "peer accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current().server);
            let (node, questions, stats) = (node.clone(), questions.clone(), stats.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(err)) => {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(%from, %err, "peer connection refused in the TLS handshake");
                        return;
                    }
                    Err(_) => {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(%from, "peer connection refused: no TLS handshake in time");
                        return;
                    }
                };
                if let Err(err) = connection(stream, &node, &questions, &stats).await {
                    tracing::debug!(%from, %err, "peer connection ended");
                }
            });
        }
    })
}

/// Serves requests on one authenticated connection until it closes, idles or misbehaves.
async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    node: &str,
    questions: &mpsc::Sender<Question>,
    stats: &ServerStats,
) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        let read = {
            let mut limited = (&mut stream).take(u64::try_from(MAX_LINE).unwrap_or(u64::MAX) + 1);
            tokio::time::timeout(IDLE_TIMEOUT, limited.read_until(b'\n', &mut line)).await
        };
        let n = match read {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        let request = if line.len() > MAX_LINE {
            Err(format!("request line longer than {MAX_LINE} bytes"))
        } else {
            proto::parse_request(line.trim_ascii_end()).map_err(|e| e.to_string())
        };
        let req = match request {
            Ok(r) => r,
            Err(error) => {
                stats.bad_requests.fetch_add(1, Ordering::Relaxed);
                let resp = Response {
                    v: VERSION,
                    node: node.to_owned(),
                    answers: Vec::new(),
                    error: Some(error),
                };
                write_line(stream.get_mut(), &resp).await?;
                return Ok(());
            }
        };
        let answers = ask_loop(req.asks, questions, stats).await;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        stats.asks.fetch_add(
            u64::try_from(answers.len()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let resp = Response {
            v: VERSION,
            node: node.to_owned(),
            answers,
            error: None,
        };
        write_line(stream.get_mut(), &resp).await?;
    }
}

/// Hands the asks to the daemon's loop and waits for its answers (`busy` when it cannot take
/// them, `timeout` when it does not answer in time).
async fn ask_loop(
    asks: Vec<Ask>,
    questions: &mpsc::Sender<Question>,
    stats: &ServerStats,
) -> Vec<Answer> {
    let tickets: Vec<u64> = asks.iter().map(|a| a.n).collect();
    let all = |reason| -> Vec<Answer> {
        tickets
            .iter()
            .map(|&n| Answer::unknown(n, reason))
            .collect()
    };
    let (tx, rx) = oneshot::channel();
    if questions.try_send(Question { asks, reply: tx }).is_err() {
        stats.busy.fetch_add(
            u64::try_from(tickets.len()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        return all(PeerReason::Busy);
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
        Ok(Ok(answers)) => answers,
        _ => all(PeerReason::Timeout),
    }
}

/// Writes one JSON line.
pub async fn write_line<W: AsyncWrite + Unpin, T: serde::Serialize>(
    w: &mut W,
    msg: &T,
) -> std::io::Result<()> {
    let mut buf = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    buf.push(b'\n');
    w.write_all(&buf).await?;
    w.flush().await
}
