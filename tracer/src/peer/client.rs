//! The asking side: one worker task per peer node, each with its own connection (kept open
//! between requests) and queue. Asks are batched (everything queued when the worker gets to
//! it, up to [`MAX_ASKS`] per request); every ask has a deadline and gets an outcome — the
//! peer's answer, or why there is none (unreachable, refused, timeout, busy).
//!
//! Bounded: workers ([`MAX_WORKERS`]; beyond, the least recently used is let go), each queue
//! ([`QUEUE`]), one request in flight per peer.

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader},
    net::TcpStream,
    sync::mpsc,
};

use crate::verdict::PeerReason;

use super::{
    proto::{Answer, Ask, MAX_ASKS, MAX_LINE, Request, Response, VERSION},
    server::write_line,
    tls::{SERVER_NAME, TlsStore},
};

/// Peers with a worker at once.
pub const MAX_WORKERS: usize = 64;
/// Asks queued per peer; beyond, `busy`.
pub const QUEUE: usize = 1024;

/// One ask with its deadline.
#[derive(Debug)]
pub struct Queued {
    /// The ask.
    pub ask: Ask,
    /// When its answer is due.
    pub deadline: Instant,
}

/// The outcome of one ask.
#[derive(Debug)]
pub struct Outcome {
    /// The ask's ticket.
    pub n: u64,
    /// The answer, or why there is none.
    pub answer: Result<Answer, PeerReason>,
}

struct Worker {
    addr: SocketAddr,
    tx: mpsc::Sender<Queued>,
    used: Instant,
}

/// Sends asks to peers and collects their outcomes on a channel.
pub struct Asker {
    tls: TlsStore,
    workers: HashMap<String, Worker>,
    outcomes: mpsc::UnboundedSender<Outcome>,
}

impl Asker {
    /// An asker whose outcomes go to `outcomes`.
    pub fn new(tls: TlsStore, outcomes: mpsc::UnboundedSender<Outcome>) -> Self {
        Self {
            tls,
            workers: HashMap::new(),
            outcomes,
        }
    }

    /// Queues `q` for the tracer of `node` at `addr`. `Err(Busy)` when its queue is full.
    pub fn ask(&mut self, node: &str, addr: SocketAddr, q: Queued) -> Result<(), PeerReason> {
        let stale = self
            .workers
            .get(node)
            .is_some_and(|w| w.addr != addr || w.tx.is_closed());
        if stale {
            // The peer moved (a new tracer pod) or its worker ended: start afresh.
            self.workers.remove(node);
        }
        if !self.workers.contains_key(node) {
            if self.workers.len() >= MAX_WORKERS
                && let Some(lru) = self
                    .workers
                    .iter()
                    .min_by_key(|(_, w)| w.used)
                    .map(|(k, _)| k.clone())
            {
                self.workers.remove(&lru);
            }
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(worker(
                node.to_owned(),
                addr,
                self.tls.clone(),
                rx,
                self.outcomes.clone(),
            ));
            self.workers.insert(
                node.to_owned(),
                Worker {
                    addr,
                    tx,
                    used: Instant::now(),
                },
            );
        }
        let Some(w) = self.workers.get_mut(node) else {
            return Err(PeerReason::Busy);
        };
        w.used = Instant::now();
        w.tx.try_send(q).map_err(|_| PeerReason::Busy)
    }
}

type Conn = BufReader<tokio_rustls::client::TlsStream<TcpStream>>;

/// Connects and completes the TLS handshake by `deadline`.
async fn connect(addr: SocketAddr, tls: &TlsStore, deadline: Instant) -> Result<Conn, PeerReason> {
    let left = deadline.saturating_duration_since(Instant::now());
    let tcp = match tokio::time::timeout(left, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(err)) => {
            tracing::debug!(%addr, %err, "peer connect");
            return Err(PeerReason::Unreachable);
        }
        Err(_) => return Err(PeerReason::Timeout),
    };
    let _ = tcp.set_nodelay(true);
    let connector = tokio_rustls::TlsConnector::from(tls.current().client);
    let name = ServerName::try_from(SERVER_NAME).map_err(|_| PeerReason::Refused)?;
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, connector.connect(name, tcp)).await {
        Ok(Ok(s)) => Ok(BufReader::new(s)),
        Ok(Err(err)) => {
            tracing::warn!(%addr, %err, "peer TLS handshake failed (certificates from another CA?)");
            Err(PeerReason::Refused)
        }
        Err(_) => Err(PeerReason::Timeout),
    }
}

/// Sends one request and reads its response by `deadline`.
async fn exchange(
    conn: &mut Conn,
    req: &Request,
    deadline: Instant,
) -> Result<Response, PeerReason> {
    let left = deadline.saturating_duration_since(Instant::now());
    let io = async {
        write_line(conn.get_mut(), req).await?;
        let mut line = Vec::with_capacity(4096);
        let mut limited = (&mut *conn).take(u64::try_from(MAX_LINE).unwrap_or(u64::MAX) + 1);
        let n = limited.read_until(b'\n', &mut line).await?;
        if n == 0 || line.len() > MAX_LINE {
            return Err(std::io::Error::other("closed or oversized response"));
        }
        Ok::<_, std::io::Error>(line)
    };
    let line = match tokio::time::timeout(left, io).await {
        Ok(Ok(l)) => l,
        Ok(Err(err)) => {
            tracing::debug!(%err, "peer exchange");
            return Err(PeerReason::Unreachable);
        }
        Err(_) => return Err(PeerReason::Timeout),
    };
    let resp: Response = serde_json::from_slice(line.trim_ascii_end()).map_err(|err| {
        tracing::warn!(%err, "peer sent a malformed response");
        PeerReason::Refused
    })?;
    if let Some(error) = &resp.error {
        tracing::warn!(%error, node = %resp.node, "peer refused the request");
        return Err(PeerReason::Refused);
    }
    Ok(resp)
}

/// Serves one peer: batches its queue into requests, one at a time.
async fn worker(
    node: String,
    addr: SocketAddr,
    tls: TlsStore,
    mut rx: mpsc::Receiver<Queued>,
    outcomes: mpsc::UnboundedSender<Outcome>,
) {
    let mut conn: Option<Conn> = None;
    // A worker idle this long ends (its connection with it).
    const IDLE: Duration = Duration::from_secs(300);
    loop {
        let first = match tokio::time::timeout(IDLE, rx.recv()).await {
            Ok(Some(q)) => q,
            _ => return,
        };
        let mut batch = vec![first];
        while batch.len() < MAX_ASKS {
            match rx.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        let now = Instant::now();
        let (late, batch): (Vec<Queued>, Vec<Queued>) =
            batch.into_iter().partition(|q| q.deadline <= now);
        let send = |n: u64, answer: Result<Answer, PeerReason>| {
            let _ = outcomes.send(Outcome { n, answer });
        };
        for q in late {
            send(q.ask.n, Err(PeerReason::Timeout));
        }
        let Some(deadline) = batch.iter().map(|q| q.deadline).min() else {
            continue;
        };
        let req = Request {
            v: VERSION,
            asks: batch.iter().map(|q| q.ask.clone()).collect(),
        };
        let result = async {
            // A kept connection may have been closed by the peer meanwhile: one fresh retry.
            for fresh in [false, true] {
                if fresh || conn.is_none() {
                    conn = Some(connect(addr, &tls, deadline).await?);
                }
                let Some(c) = conn.as_mut() else {
                    return Err(PeerReason::Unreachable);
                };
                match exchange(c, &req, deadline).await {
                    Ok(r) => return Ok(r),
                    Err(PeerReason::Unreachable) if !fresh => conn = None,
                    Err(e) => return Err(e),
                }
            }
            Err(PeerReason::Unreachable)
        }
        .await;
        match result {
            Ok(resp) => {
                let mut answers: HashMap<u64, Answer> =
                    resp.answers.into_iter().map(|a| (a.n, a)).collect();
                for q in &batch {
                    send(q.ask.n, answers.remove(&q.ask.n).ok_or(PeerReason::Refused));
                }
            }
            Err(reason) => {
                tracing::info!(%node, %addr, reason = reason.as_str(), asks = batch.len(), "peer gave no answer");
                conn = None;
                for q in &batch {
                    send(q.ask.n, Err(reason));
                }
            }
        }
    }
}
