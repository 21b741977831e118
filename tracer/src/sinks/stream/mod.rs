//! The live-stream endpoint of `tracer run`: a Unix socket (root only) that serves verdict lines
//! (and packet events on request) to `tracer observe` clients.
//!
//! Protocol: the client sends one request line, JSON
//! `{"filter": {...}, "not": [{...}], "last": N, "since": "<RFC 3339>", "follow": bool,
//! "events": bool, "stamp": bool}` (every field optional; see [`Request`]). The server answers
//! with the last `N` matching lines it kept (published at or after `since`), then, when
//! `follow`, every new matching line as it is published. Lines are the daemon's JSON lines,
//! unchanged, one per `\n`; with `stamp`, each object line gets a first key `decided_at`: when
//! the daemon published it (a verdict is published when it is decided, so this is the stream's
//! order, unlike `time`, the flow's first sighting). Other line types may appear:
//! `{"type":"warning","message":...}` before anything else, when a filter names a namespace,
//! pod, node or Service no verdict has named since the daemon started (a typo returns nothing,
//! silently, otherwise); `{"type":"notice","skipped":n,...}` when this client fell behind and
//! `n` lines were skipped for it; and `{"type":"error","message":...}` (then the server closes)
//! for a bad request.
//!
//! Who may connect: the socket file is mode 0600 in a 0700 directory, and each client's uid
//! (`SO_PEERCRED`) is checked as well: root or the daemon's own uid only. A mode loosened by
//! hand or by a mount does not open the stream to other users; they get an error line.
//!
//! The daemon never waits on clients: [`Hub::publish`] appends to a bounded history and a
//! bounded broadcast channel and returns. Each client has its own task; one that reads too
//! slowly lags the channel and is told how much it missed; one that stops reading altogether is
//! disconnected after [`WRITE_TIMEOUT`].
//!
//! Here: the [`Hub`], its history and the [`Request`] format. The socket (binding, the accept
//! loop, who may connect) is in [`socket`], one client's connection (reading and parsing its
//! request, sending history and following) in [`client`], the "never seen" name checks in
//! [`seen`].

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;

pub mod client;
pub mod filter;
mod seen;
pub mod selector;
pub mod socket;

pub use socket::serve;

use self::filter::{Filter, Selection};
use self::seen::Seen;

/// Default path of the live-stream socket.
pub const DEFAULT_SOCKET: &str = "/run/tracer/tracer.sock";

/// Lines the broadcast channel holds for the slowest client before that client starts to miss
/// lines (it is then told how many with a notice). The daemon publishes a tick's verdicts in
/// one go (a window closing on thousands of queries at once), so a client that reads as fast
/// as it can still needs room for a whole burst: with 2,048 a live client missed 82 lines of a
/// 2,400-verdict burst. The channel keeps the last this many lines whether or not anyone reads
/// them, but they are the same allocations as the newest lines of the history, so only lines
/// the history already let go of (its memory bound, under floods) cost extra.
pub const BROADCAST_CAPACITY: usize = 8192;
/// Verdict lines kept for `--last`; the oldest is evicted first. Healthy lines (`answered`,
/// `established`, summaries) and the others are kept apart, this many of each, so a flood of
/// healthy connections cannot push the failures out.
pub const HISTORY_LIMIT: usize = 10_000;
/// Memory the kept lines of one kind (healthy verdicts, other verdicts, packet events) may
/// take, bytes, estimated from their length: at thousands of lines a second the count alone
/// would let the history outgrow the daemon's memory limit.
pub const HISTORY_BYTES: usize = 12 << 20;
/// Packet event lines kept for `--last --events`; the oldest is evicted first.
pub const EVENT_HISTORY_LIMIT: usize = 2_000;
/// Longest request line accepted, in bytes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// How long a client may take to send its request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A client whose socket accepts nothing for this long is disconnected.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most clients served at once; more are refused with an error line.
pub const MAX_CLIENTS: usize = 64;
/// Most queued lines one client task writes per socket write.
const BATCH_LINES: usize = 512;
/// Most distinct names of one kind (namespaces, pods, nodes, Services) remembered for the
/// "never seen" warnings; past it, names of that kind are no longer checked.
pub const MAX_SEEN_NAMES: usize = 4096;
/// Most seen names listed in one warning.
const SEEN_LISTED: usize = 8;

/// One published line.
#[derive(Debug)]
struct Entry {
    seq: u64,
    line: Arc<str>,
    /// The fields filters read ([`filter::facets`]), not the whole line parsed.
    value: Value,
    event: bool,
    /// When it was published (for verdicts: when they were decided).
    published: jiff::Timestamp,
}

#[derive(Debug, Default)]
struct History {
    next_seq: u64,
    /// Verdicts other than healthy ones.
    verdicts: Kept,
    /// `answered` and `established` verdicts and summaries.
    healthy: Kept,
    events: Kept,
    seen: Seen,
}

/// Kept lines of one kind, bounded by count and by estimated memory.
#[derive(Debug, Default)]
struct Kept {
    lines: VecDeque<Arc<Entry>>,
    bytes: usize,
}

impl Kept {
    fn push(&mut self, entry: Arc<Entry>, limit: usize) {
        let cost = entry_cost(&entry);
        while !self.lines.is_empty()
            && (self.lines.len() >= limit || self.bytes.saturating_add(cost) > HISTORY_BYTES)
        {
            if let Some(old) = self.lines.pop_front() {
                self.bytes = self.bytes.saturating_sub(entry_cost(&old));
            }
        }
        self.bytes = self.bytes.saturating_add(cost);
        self.lines.push_back(entry);
    }
}

/// Estimated memory of a kept line: the text, its facets (a fraction of it) and the entry.
fn entry_cost(e: &Entry) -> usize {
    e.line.len().saturating_mul(2).saturating_add(256)
}

#[derive(Debug)]
struct HubInner {
    tx: broadcast::Sender<Arc<Entry>>,
    history: Mutex<History>,
    verdict_limit: usize,
    event_limit: usize,
    event_clients: AtomicUsize,
    started: Instant,
}

/// Where the daemon publishes its output lines for `tracer observe` clients. Cheap to clone;
/// every clone is the same hub.
#[derive(Clone, Debug)]
pub struct Hub {
    inner: Arc<HubInner>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    /// A hub with the default bounds ([`BROADCAST_CAPACITY`], [`HISTORY_LIMIT`],
    /// [`EVENT_HISTORY_LIMIT`]).
    pub fn new() -> Self {
        Self::with_limits(BROADCAST_CAPACITY, HISTORY_LIMIT, EVENT_HISTORY_LIMIT)
    }

    /// A hub with explicit bounds (each at least 1).
    pub fn with_limits(capacity: usize, history: usize, event_history: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self {
            inner: Arc::new(HubInner {
                tx,
                history: Mutex::new(History::default()),
                verdict_limit: history.max(1),
                event_limit: event_history.max(1),
                event_clients: AtomicUsize::new(0),
                started: Instant::now(),
            }),
        }
    }

    /// Publishes one output line (without its trailing newline) and its parsed value. Never
    /// blocks on clients: it appends to the bounded history and the bounded channel and returns.
    /// Packet events (`"type":"packet"`) are kept apart from verdicts so they cannot push
    /// verdicts out of the history.
    pub fn publish(&self, line: Arc<str>, value: Arc<Value>) {
        let line = if line.contains('\n') {
            // The protocol is one line per message; re-serialize anything multi-line.
            Arc::from(value.to_string())
        } else {
            line
        };
        let event = crate::sinks::json::is_packet_event(&value);
        let healthy = !event && filter::is_healthy(&value);
        let facets = filter::facets(&value);
        drop(value);
        let mut h = self
            .inner
            .history
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !event {
            h.seen.note(&facets);
        }
        let entry = Arc::new(Entry {
            seq: h.next_seq,
            line,
            value: facets,
            event,
            published: jiff::Timestamp::now(),
        });
        h.next_seq += 1;
        let (kept, limit) = if event {
            (&mut h.events, self.inner.event_limit)
        } else if healthy {
            (&mut h.healthy, self.inner.verdict_limit)
        } else {
            (&mut h.verdicts, self.inner.verdict_limit)
        };
        kept.push(Arc::clone(&entry), limit);
        // Sent under the history lock so a subscriber sees every line exactly once: either in
        // its history snapshot or on its receiver. No receivers is not an error.
        let _ = self.inner.tx.send(entry);
    }

    /// Serializes `value` and publishes it.
    #[cfg(test)]
    pub fn publish_value(&self, value: Value) {
        let line: Arc<str> = Arc::from(value.to_string());
        self.publish(line, Arc::new(value));
    }

    /// True while at least one client asked for packet events: the daemon may skip serializing
    /// packet events for the hub otherwise.
    pub fn wants_events(&self) -> bool {
        self.inner.event_clients.load(Ordering::Relaxed) > 0
    }

    /// Lines currently kept (verdicts, packet events).
    #[cfg(test)]
    pub fn history_len(&self) -> (usize, usize) {
        let h = self
            .inner
            .history
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (
            h.verdicts.lines.len() + h.healthy.lines.len(),
            h.events.lines.len(),
        )
    }

    /// Warnings for the names in `request`'s filters that no verdict has carried so far.
    fn unseen_warnings(&self, request: &Request) -> Vec<String> {
        let filters: Vec<(&Filter, bool)> = std::iter::once((&request.filter, false))
            .chain(request.not.iter().map(|f| (f, true)))
            .collect();
        let h = self
            .inner
            .history
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        h.seen.warnings(&filters, self.inner.started.elapsed())
    }

    /// The last `last` kept lines that match and were published at or after `since` (oldest
    /// first), and a receiver for what follows.
    fn subscribe(
        &self,
        last: usize,
        selection: &Selection,
        since: Option<jiff::Timestamp>,
        events: bool,
    ) -> (Vec<Arc<Entry>>, broadcast::Receiver<Arc<Entry>>) {
        let (verdicts, evs, rx) = {
            let h = self
                .inner
                .history
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let rx = self.inner.tx.subscribe();
            if last == 0 {
                return (Vec::new(), rx);
            }
            // Copy the Arcs only; matching happens outside the lock.
            let mut verdicts: Vec<Arc<Entry>> = h
                .verdicts
                .lines
                .iter()
                .chain(h.healthy.lines.iter())
                .cloned()
                .collect();
            verdicts.sort_unstable_by_key(|e| e.seq);
            let evs: Vec<Arc<Entry>> = if events {
                h.events.lines.iter().cloned().collect()
            } else {
                Vec::new()
            };
            (verdicts, evs, rx)
        };
        let mut a = verdicts.iter().rev().peekable();
        let mut b = evs.iter().rev().peekable();
        let mut out = Vec::new();
        while out.len() < last {
            // Newest first across both queues.
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.seq > y.seq => a.next(),
                (Some(_), Some(_)) | (None, Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, None) => break,
            };
            if let Some(e) = next
                && since.is_none_or(|s| e.published >= s)
                && selection.matches(&e.value)
            {
                out.push(Arc::clone(e));
            }
        }
        out.reverse();
        (out, rx)
    }
}

/// What a client asks for: one JSON line. Every field is optional.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Request {
    /// Which lines (server-side filtering).
    pub filter: Filter,
    /// Negated filters (`--not`): a line matching any of them is left out. Each one must set
    /// at least one flag.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not: Vec<Filter>,
    /// How many of the kept matching lines to send first (0: none).
    pub last: usize,
    /// Only kept lines published at or after this time (RFC 3339), for `--since`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Keep the connection open and stream new lines (default true).
    pub follow: bool,
    /// Include packet events (`"type":"packet"`), when the daemon publishes them.
    pub events: bool,
    /// Add `decided_at` (when the daemon published the line, RFC 3339 UTC, ms) as the first key
    /// of every object line.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stamp: bool,
}

impl Default for Request {
    fn default() -> Self {
        Self {
            filter: Filter::default(),
            not: Vec::new(),
            last: 0,
            since: None,
            follow: true,
            events: false,
            stamp: false,
        }
    }
}

/// Key [`Request::stamp`] adds to lines.
pub const DECIDED_AT: &str = "decided_at";

/// Appends `line` (with `decided_at` first when `stamp`) and a newline to `buf`.
fn push_line(buf: &mut Vec<u8>, e: &Entry, stamp: bool) {
    match e.line.strip_prefix('{') {
        Some(rest) if stamp => {
            let ts = e.published.strftime("%Y-%m-%dT%H:%M:%S%.3fZ");
            let sep = if rest.trim_start().starts_with('}') {
                ""
            } else {
                ","
            };
            buf.extend_from_slice(format!("{{\"{DECIDED_AT}\":\"{ts}\"{sep}").as_bytes());
            buf.extend_from_slice(rest.as_bytes());
        }
        _ => buf.extend_from_slice(e.line.as_bytes()),
    }
    buf.push(b'\n');
}

#[derive(Debug, Default)]
struct StatsInner {
    clients: AtomicU64,
    clients_total: AtomicU64,
    lines_sent: AtomicU64,
    lines_skipped: AtomicU64,
    bad_requests: AtomicU64,
    refused: AtomicU64,
    denied: AtomicU64,
    stalled: AtomicU64,
}

/// Counters of the live-stream server. Cheap to clone; every clone is the same counters.
#[derive(Clone, Debug, Default)]
pub struct ObserveStats {
    inner: Arc<StatsInner>,
}

/// A copy of [`ObserveStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// Clients connected and subscribed now.
    pub clients: u64,
    /// Clients served since start.
    pub clients_total: u64,
    /// Lines written to clients (history and live, notices excluded).
    pub lines_sent: u64,
    /// Lines skipped for clients that fell behind the broadcast channel.
    pub lines_skipped: u64,
    /// Requests refused as malformed.
    pub bad_requests: u64,
    /// Clients refused because [`MAX_CLIENTS`] were connected.
    pub refused: u64,
    /// Clients refused because their uid is neither 0 nor the daemon's
    /// ([`socket::peer_allowed`]).
    pub denied: u64,
    /// Clients disconnected because their socket accepted nothing for [`WRITE_TIMEOUT`].
    pub stalled: u64,
}

impl ObserveStats {
    /// Current values.
    pub fn snapshot(&self) -> StatsSnapshot {
        let i = &self.inner;
        StatsSnapshot {
            clients: i.clients.load(Ordering::Relaxed),
            clients_total: i.clients_total.load(Ordering::Relaxed),
            lines_sent: i.lines_sent.load(Ordering::Relaxed),
            lines_skipped: i.lines_skipped.load(Ordering::Relaxed),
            bad_requests: i.bad_requests.load(Ordering::Relaxed),
            refused: i.refused.load(Ordering::Relaxed),
            denied: i.denied.load(Ordering::Relaxed),
            stalled: i.stalled.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::seen::{NameSet, short_duration};
    use super::socket::{ServeError, bind, peer_allowed};
    use super::*;
    use serde_json::json;
    use std::{
        os::unix::fs::PermissionsExt as _,
        path::{Path, PathBuf},
        time::Instant,
    };
    use tokio::{
        io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
        net::{UnixStream, unix::OwnedWriteHalf},
    };

    fn verdict(i: usize, ns: &str, verdict: &str) -> Value {
        json!({"schema": "tracer.flow/v1", "kind": "dns", "i": i, "verdict": verdict,
               "client": {"namespace": ns, "pod": format!("pod-{i}")}, "dns": {"qname": "a.example"}})
    }

    struct Served {
        _dir: TempDir,
        path: PathBuf,
        hub: Hub,
        stats: ObserveStats,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Served {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static N: AtomicU64 = AtomicU64::new(0);
            let p = std::env::temp_dir().join(format!(
                "tracer-observe-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("temp dir");
            Self(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn start(hub: Hub) -> Served {
        let dir = TempDir::new("srv");
        let path = dir.0.join("sub/tracer.sock");
        let stats = ObserveStats::default();
        let listener = bind(&path).expect("bind");
        let task = tokio::spawn(listener.run(hub.clone(), stats.clone()));
        Served {
            _dir: dir,
            path,
            hub,
            stats,
            task,
        }
    }

    struct Client {
        lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
        _wr: OwnedWriteHalf,
    }

    impl Client {
        async fn connect(path: &Path, request: &str) -> Self {
            let stream = UnixStream::connect(path).await.expect("connect");
            let (rd, mut wr) = stream.into_split();
            wr.write_all(request.as_bytes()).await.expect("send");
            wr.write_all(b"\n").await.expect("send");
            Self {
                lines: BufReader::new(rd).lines(),
                _wr: wr,
            }
        }

        async fn next(&mut self) -> Option<Value> {
            let line = tokio::time::timeout(Duration::from_secs(5), self.lines.next_line())
                .await
                .expect("a line within 5 s")
                .expect("read");
            line.map(|l| serde_json::from_str(&l).expect("JSON line"))
        }

        async fn take(&mut self, n: usize) -> Vec<Value> {
            let mut out = Vec::new();
            for _ in 0..n {
                out.push(self.next().await.expect("line, not EOF"));
            }
            out
        }
    }

    async fn wait_clients(stats: &ObserveStats, n: u64) {
        let start = Instant::now();
        while stats.snapshot().clients != n {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{n} clients subscribed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn ids(lines: &[Value]) -> Vec<u64> {
        lines.iter().map(|v| v["i"].as_u64().expect("i")).collect()
    }

    #[tokio::test]
    async fn history_then_follow() {
        let s = start(Hub::new());
        for i in 0..10 {
            s.hub
                .publish_value(verdict(i, if i % 2 == 0 { "a" } else { "b" }, "answered"));
        }
        let mut c = Client::connect(&s.path, r#"{"filter":{"namespace":["a"]},"last":3}"#).await;
        assert_eq!(
            ids(&c.take(3).await),
            [4, 6, 8],
            "last 3 matching, oldest first"
        );
        wait_clients(&s.stats, 1).await;
        for i in 10..14 {
            s.hub
                .publish_value(verdict(i, if i % 2 == 0 { "a" } else { "b" }, "answered"));
        }
        assert_eq!(ids(&c.take(2).await), [10, 12]);
        let st = s.stats.snapshot();
        assert_eq!((st.lines_sent, st.clients, st.clients_total), (5, 1, 1));
        drop(c);
        let start = Instant::now();
        while s.stats.snapshot().clients != 0 {
            assert!(start.elapsed() < Duration::from_secs(5), "hang-up noticed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A burst larger than one write batch reaches a reading client whole: the entry fetched
    /// when a batch is full is not dropped (regression: every 513th line of a burst was lost).
    #[tokio::test]
    async fn bursts_longer_than_a_batch_arrive_whole() {
        let s = start(Hub::new());
        let mut c = Client::connect(&s.path, r#"{"filter":{"verdict":["answered"]}}"#).await;
        wait_clients(&s.stats, 1).await;
        let n = 3 * BATCH_LINES + 7;
        // Published without yielding: the client task finds them all queued at once.
        for i in 0..n {
            s.hub.publish_value(verdict(i, "a", "answered"));
        }
        let got = ids(&c.take(n).await);
        assert_eq!(got, (0..n as u64).collect::<Vec<_>>());
        assert_eq!(s.stats.snapshot().lines_skipped, 0);
    }

    #[tokio::test]
    async fn no_follow_ends_after_history() {
        let s = start(Hub::new());
        for i in 0..5 {
            s.hub.publish_value(verdict(i, "a", "dropped"));
        }
        let mut c = Client::connect(&s.path, r#"{"last":100,"follow":false}"#).await;
        assert_eq!(ids(&c.take(5).await), [0, 1, 2, 3, 4]);
        assert!(c.next().await.is_none(), "closed after the history");
        // An empty request line means defaults: follow, no history.
        let mut c = Client::connect(&s.path, "").await;
        wait_clients(&s.stats, 1).await;
        s.hub.publish_value(verdict(5, "a", "dropped"));
        assert_eq!(ids(&c.take(1).await), [5]);
    }

    /// A node making thousands of healthy connections a second: `--since`/`--last` still show
    /// the failure from before the flood, and the kept lines stay within their memory bound
    /// (before: 10,000 lines of any kind, each kept parsed as well, some 200 MB at 2.6 KB a
    /// line, beyond the DaemonSet's memory limit).
    #[tokio::test]
    async fn a_flood_of_healthy_lines_keeps_the_failures_within_a_memory_bound() {
        let s = start(Hub::new());
        s.hub.publish_value(verdict(0, "a", "dropped"));
        let padding = "x".repeat(2_600);
        for i in 1..=HISTORY_LIMIT + 100 {
            let mut v = verdict(
                i,
                "a",
                if i % 2 == 0 {
                    "answered"
                } else {
                    "established"
                },
            );
            v["hint"] = json!(padding);
            s.hub.publish_value(v);
        }
        let (kept, _) = s.hub.history_len();
        let cost = 2 * (2_600 + 150) + 256;
        assert!(
            kept > 1 && kept <= HISTORY_BYTES / cost + 1,
            "{kept} lines kept"
        );
        let mut c = Client::connect(
            &s.path,
            &format!(
                r#"{{"filter":{{"verdict":["dropped"]}},"last":{},"follow":false}}"#,
                2 * HISTORY_LIMIT
            ),
        )
        .await;
        assert_eq!(ids(&c.take(1).await), [0]);
        // And the newest healthy lines are there, in order.
        let mut c = Client::connect(&s.path, r#"{"last":3,"follow":false}"#).await;
        let n = HISTORY_LIMIT as u64 + 100;
        assert_eq!(ids(&c.take(3).await), [n - 2, n - 1, n]);
    }

    #[tokio::test]
    async fn two_clients_different_filters() {
        let s = start(Hub::new());
        let mut dropped = Client::connect(&s.path, r#"{"filter":{"verdict":["dropped"]}}"#).await;
        let mut ns_b = Client::connect(&s.path, r#"{"filter":{"namespace":["b"]}}"#).await;
        wait_clients(&s.stats, 2).await;
        let verdicts = ["answered", "dropped"];
        for i in 0..40 {
            let ns = if i % 4 < 2 { "a" } else { "b" };
            s.hub.publish_value(verdict(i, ns, verdicts[i % 2]));
        }
        // A sentinel both match, so each client's stream is known to be complete.
        s.hub.publish_value(verdict(99, "b", "dropped"));
        let want_dropped: Vec<u64> = (0..40).filter(|i| i % 2 == 1).chain([99]).collect();
        let want_b: Vec<u64> = (0..40).filter(|i| i % 4 >= 2).chain([99]).collect();
        assert_eq!(ids(&dropped.take(want_dropped.len()).await), want_dropped);
        assert_eq!(ids(&ns_b.take(want_b.len()).await), want_b);
    }

    #[tokio::test]
    async fn events_only_on_request() {
        let s = start(Hub::new());
        let mut plain = Client::connect(&s.path, "{}").await;
        let mut with = Client::connect(&s.path, r#"{"events":true}"#).await;
        wait_clients(&s.stats, 2).await;
        assert!(s.hub.wants_events());
        s.hub.publish_value(json!({"type": "packet", "i": 0}));
        s.hub.publish_value(verdict(1, "a", "answered"));
        assert_eq!(ids(&with.take(2).await), [0, 1]);
        assert_eq!(ids(&plain.take(1).await), [1]);
        drop(with);
        let start = Instant::now();
        while s.hub.wants_events() {
            assert!(start.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // History keeps events apart and merges them back in order.
        let mut c = Client::connect(&s.path, r#"{"events":true,"last":10,"follow":false}"#).await;
        assert_eq!(ids(&c.take(2).await), [0, 1]);
        assert_eq!(s.hub.history_len(), (1, 1));
    }

    #[tokio::test]
    async fn stamped_lines_since_and_negations() {
        let s = start(Hub::new());
        for i in 0..4 {
            s.hub
                .publish_value(verdict(i, if i % 2 == 0 { "a" } else { "b" }, "answered"));
        }
        // `stamp` puts decided_at first; the rest of the line is unchanged.
        let mut c = Client::connect(&s.path, r#"{"last":1,"follow":false,"stamp":true}"#).await;
        let v = c.next().await.expect("a line");
        let decided: jiff::Timestamp = v[DECIDED_AT]
            .as_str()
            .expect("decided_at")
            .parse()
            .expect("RFC 3339");
        assert!(jiff::Timestamp::now().duration_since(decided).as_secs_f64() < 60.0);
        assert_eq!(v["i"], 3);
        let mut e = Entry {
            seq: 0,
            line: Arc::from("{}"),
            value: json!({}),
            event: false,
            published: jiff::Timestamp::UNIX_EPOCH,
        };
        let mut buf = Vec::new();
        push_line(&mut buf, &e, true);
        assert_eq!(buf, b"{\"decided_at\":\"1970-01-01T00:00:00.000Z\"}\n");
        e.line = Arc::from("[1]");
        buf.clear();
        push_line(&mut buf, &e, true);
        assert_eq!(buf, b"[1]\n", "not an object: unchanged");
        // `since` in the future: nothing kept qualifies; in the past: everything.
        let future = jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::from_secs(60))
            .expect("time");
        let mut c = Client::connect(
            &s.path,
            &format!(r#"{{"last":10,"follow":false,"since":"{future}"}}"#),
        )
        .await;
        assert!(c.next().await.is_none());
        let mut c = Client::connect(
            &s.path,
            r#"{"last":10,"follow":false,"since":"2020-01-01T00:00:00Z"}"#,
        )
        .await;
        assert_eq!(ids(&c.take(4).await), [0, 1, 2, 3]);
        // `not`: lines matching a negated filter are left out.
        let mut c = Client::connect(
            &s.path,
            r#"{"last":10,"follow":false,"not":[{"namespace":["a"]}]}"#,
        )
        .await;
        assert_eq!(ids(&c.take(2).await), [1, 3]);
        assert!(c.next().await.is_none());
        for (req, needle) in [
            (r#"{"since":"yesterday"}"#, "bad since"),
            (r#"{"not":[{}]}"#, "--not must be followed"),
        ] {
            let mut c = Client::connect(&s.path, req).await;
            let v = c.next().await.expect("error line");
            assert_eq!(v["type"], "error", "{req}");
            assert!(
                v["message"].as_str().is_some_and(|m| m.contains(needle)),
                "{v}"
            );
        }
    }

    #[tokio::test]
    async fn warns_about_names_no_verdict_carried() {
        let s = start(Hub::new());
        // Before any verdict there is nothing to compare with: no warning.
        let mut c = Client::connect(
            &s.path,
            r#"{"filter":{"namespace":["shpo"]},"last":1,"follow":false}"#,
        )
        .await;
        assert!(c.next().await.is_none());
        s.hub.publish_value(json!({
            "kind": "dns", "verdict": "answered", "node": "ip-10-0-1-12.ec2.internal",
            "client": {"namespace": "shop", "pod": "web-7d9f-abcde", "node": "ip-10-0-1-12.ec2.internal"},
            "server": {"namespace": "kube-system", "pod": "coredns-5d78-xk2p", "service": "kube-system/kube-dns",
                       "node": "ip-10-0-2-7.ec2.internal"},
        }));
        let req = r#"{"filter":{"namespace":["shpo","shop"],"pod":["shop/web","default/web"],
                      "node":["ip-10-0-1-12","ip-10-0-9-9"],"service":["kube-dns","coredns"],
                      "to_pod":["kube-system/coredns"]},
                      "not":[{"from_namespace":["kube-sytem"]}],"last":5,"follow":false}"#
            .replace('\n', " ");
        let mut c = Client::connect(&s.path, &req).await;
        let mut warnings = Vec::new();
        let mut verdicts = 0;
        while let Some(v) = c.next().await {
            if v["type"] == "warning" {
                assert_eq!(verdicts, 0, "warnings come first");
                warnings.push(v["message"].as_str().expect("message").to_owned());
            } else {
                verdicts += 1;
            }
        }
        assert_eq!(verdicts, 1, "the matching verdict follows the warnings");
        assert_eq!(warnings.len(), 5, "{warnings:#?}");
        assert!(
            warnings[0].starts_with("--namespace \"shpo\": no verdict since tracer run started ("),
            "{}",
            warnings[0]
        );
        assert!(
            warnings[0].ends_with("names this namespace; namespaces seen: kube-system, shop"),
            "{}",
            warnings[0]
        );
        assert!(
            warnings[1].starts_with("--pod \"default/web\""),
            "{}",
            warnings[1]
        );
        assert!(
            warnings[1].contains("kube-system/coredns-5d78-xk2p, shop/web-7d9f-abcde"),
            "{}",
            warnings[1]
        );
        assert!(
            warnings[2].starts_with("--node \"ip-10-0-9-9\""),
            "{}",
            warnings[2]
        );
        assert!(
            warnings[2].contains("ip-10-0-1-12.ec2.internal, ip-10-0-2-7.ec2.internal"),
            "{}",
            warnings[2]
        );
        assert!(
            warnings[3].starts_with("--service \"coredns\""),
            "{}",
            warnings[3]
        );
        assert!(
            warnings[4].starts_with("--not --from-namespace \"kube-sytem\""),
            "{}",
            warnings[4]
        );
    }

    #[test]
    fn seen_names_are_bounded() {
        let mut set = NameSet::default();
        for i in 0..MAX_SEEN_NAMES + 10 {
            set.note(&format!("ns-{i}"));
        }
        assert_eq!(set.names.len(), MAX_SEEN_NAMES);
        assert!(set.full);
        assert!(set.any(|_| false), "a full set cannot prove absence");
        assert!(
            set.listing()
                .ends_with(&format!("and {} more", MAX_SEEN_NAMES - SEEN_LISTED))
        );
        assert_eq!(short_duration(Duration::from_secs(59)), "59s");
        assert_eq!(short_duration(Duration::from_secs(7_980)), "2h13m");
        assert_eq!(short_duration(Duration::from_secs(190_000)), "2d4h");
    }

    #[tokio::test]
    async fn bad_requests() {
        let s = start(Hub::new());
        for (req, needle) in [
            ("not json", "bad request"),
            (r#"{"last":-1}"#, "bad request"),
            (r#"{"filtre":{}}"#, "unknown field"),
            (r#"{"filter":{"pod":"x"}}"#, "bad request"),
            (r#"{"filter":{"ip":["300.1.1.1"]}}"#, "not an IP"),
            (r#"{"filter":{"pod":[""]}}"#, "empty"),
        ] {
            let mut c = Client::connect(&s.path, req).await;
            let v = c.next().await.expect("an error line");
            assert_eq!(v["type"], "error", "{req}");
            let msg = v["message"].as_str().expect("message");
            assert!(msg.contains(needle), "{req}: {msg}");
            assert!(c.next().await.is_none(), "{req}: closed after the error");
        }
        // Oversized request line.
        let big = format!(
            r#"{{"filter":{{"pod":["{}"]}}}}"#,
            "x".repeat(MAX_REQUEST_BYTES)
        );
        let mut c = Client::connect(&s.path, &big).await;
        let v = c.next().await.expect("error line");
        assert!(
            v["message"].as_str().is_some_and(|m| m.contains("longer")),
            "{v}"
        );
        assert_eq!(s.stats.snapshot().bad_requests, 7);
        assert_eq!(s.stats.snapshot().clients_total, 0);
    }

    #[tokio::test]
    async fn lines_with_missing_fields_and_odd_values() {
        let s = start(Hub::new());
        let mut c = Client::connect(&s.path, r#"{"filter":{"namespace":["a"]}}"#).await;
        let mut all = Client::connect(&s.path, "{}").await;
        wait_clients(&s.stats, 2).await;
        for v in [
            json!({}),
            json!(null),
            json!([1]),
            json!({"client": null}),
            json!("x"),
        ] {
            s.hub.publish_value(v);
        }
        // A multi-line "line" is re-serialized onto one line.
        s.hub
            .publish(Arc::from("{\n\"i\": 7\n}"), Arc::new(json!({"i": 7})));
        s.hub.publish_value(verdict(8, "a", "unknown"));
        assert_eq!(ids(&c.take(1).await), [8]);
        let got = all.take(7).await;
        assert_eq!(got[5], json!({"i": 7}));
    }

    #[tokio::test]
    async fn slow_client_gets_a_notice() {
        let s = start(Hub::with_limits(16, 100, 10));
        let stream = UnixStream::connect(&s.path).await.expect("connect");
        let (rd, mut wr) = stream.into_split();
        wr.write_all(b"{}\n").await.expect("send");
        wait_clients(&s.stats, 1).await;
        // Publish far more than the channel holds before the client task gets to run: on this
        // single-threaded runtime it cannot run until we yield.
        for i in 0..100 {
            s.hub.publish_value(verdict(i, "a", "answered"));
        }
        let mut c = Client {
            lines: BufReader::new(rd).lines(),
            _wr: wr,
        };
        let first = c.next().await.expect("a line");
        assert_eq!(first["type"], "notice", "{first}");
        let skipped = first["skipped"].as_u64().expect("skipped");
        assert_eq!(skipped, 84);
        let rest = c.take(16).await;
        assert_eq!(ids(&rest), (84..100).collect::<Vec<_>>());
        assert_eq!(s.stats.snapshot().lines_skipped, 84);
    }

    #[tokio::test]
    async fn stalled_client_does_not_delay_others() {
        const N: usize = 20_000;
        let s = start(Hub::with_limits(N + 10, 100, 10));
        // Connects and subscribes, then never reads.
        let stalled = UnixStream::connect(&s.path).await.expect("connect");
        let (_stalled_rd, mut stalled_wr) = stalled.into_split();
        stalled_wr.write_all(b"{}\n").await.expect("send");
        let mut fast = Client::connect(&s.path, "{}").await;
        wait_clients(&s.stats, 2).await;
        // ~6 MB in total: far more than a Unix socket buffers for the stalled client.
        let pad = "p".repeat(300);
        let hub = s.hub.clone();
        let publisher = tokio::spawn(async move {
            for i in 0..N {
                let mut v = verdict(i, "a", "answered");
                v["pad"] = json!(pad);
                hub.publish_value(v);
                if i % 256 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
        let start = Instant::now();
        let mut got = 0usize;
        while got < N {
            let v = fast.next().await.expect("line");
            assert_eq!(v["i"].as_u64(), Some(got as u64), "in order, none skipped");
            got += 1;
        }
        let took = start.elapsed();
        publisher.await.expect("publisher");
        // Getting every line while the other client reads nothing is the proof; the bound
        // only turns a hub that waits on the stalled client (it would wait forever) into a
        // failure on a loaded machine, so it is generous.
        assert!(
            took < Duration::from_secs(60),
            "fast client served in {took:?}"
        );
        // The stalled client is still connected and far behind: its writes are blocked.
        let st = s.stats.snapshot();
        assert_eq!(st.clients, 2);
        let stalled_sent = st.lines_sent - N as u64;
        assert!(
            stalled_sent < N as u64 / 2,
            "stalled client's socket accepted only {stalled_sent} lines"
        );
    }

    #[tokio::test]
    async fn too_many_clients_refused() {
        let s = start(Hub::new());
        let mut held = Vec::new();
        for _ in 0..MAX_CLIENTS {
            held.push(Client::connect(&s.path, "{}").await);
        }
        wait_clients(&s.stats, MAX_CLIENTS as u64).await;
        let mut extra = Client::connect(&s.path, "{}").await;
        let v = extra.next().await.expect("error line");
        assert_eq!(v["type"], "error");
        assert!(
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("too many")),
            "{v}"
        );
        assert_eq!(s.stats.snapshot().refused, 1);
        // A freed slot is usable again.
        held.pop();
        let start = Instant::now();
        while s.stats.snapshot().clients == MAX_CLIENTS as u64 {
            assert!(start.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut again = Client::connect(&s.path, "{}").await;
        wait_clients(&s.stats, MAX_CLIENTS as u64).await;
        s.hub.publish_value(verdict(1, "a", "answered"));
        assert_eq!(ids(&again.take(1).await), [1]);
    }

    #[tokio::test]
    async fn socket_file_rules() {
        let dir = TempDir::new("bind");
        // Parent created 0700, socket 0600.
        let path = dir.0.join("run/tracer/tracer.sock");
        let l = bind(&path).expect("bind");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().expect("parent")), 0o700);
        // In use: refused.
        assert!(matches!(bind(&path), Err(ServeError::InUse { .. })));
        // Dropping the listener removes the socket.
        drop(l);
        assert!(!path.exists());
        // A stale socket (nobody listening) is replaced.
        let stale = std::os::unix::net::UnixListener::bind(&path).expect("stale");
        drop(stale);
        assert!(path.exists());
        let l = bind(&path).expect("rebinds over a stale socket");
        drop(l);
        // Not a socket: refused and left alone.
        std::fs::write(&path, b"precious").expect("write");
        assert!(matches!(bind(&path), Err(ServeError::NotASocket { .. })));
        assert_eq!(std::fs::read(&path).expect("read"), b"precious");
        // No temp directories left behind.
        let left: Vec<_> = std::fs::read_dir(path.parent().expect("parent"))
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, [std::ffi::OsString::from("tracer.sock")]);
    }

    #[test]
    fn only_root_and_the_daemons_own_uid_may_connect() {
        assert!(peer_allowed(0, 0));
        assert!(peer_allowed(0, 1000), "root, whatever the daemon runs as");
        assert!(peer_allowed(1000, 1000), "the daemon's own user");
        assert!(!peer_allowed(65534, 0));
        assert!(!peer_allowed(1001, 1000));
    }

    /// Connects to `path` as uid/gid 65534 (a forked child that only makes raw system calls),
    /// asks for the last line without following and returns what the server wrote back.
    fn exchange_as_nobody(path: &Path) -> Vec<u8> {
        use std::os::unix::ffi::OsStrExt as _;
        // Everything the child needs is prepared before the fork: it must not allocate.
        // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (dst, src) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
            *dst = *src as libc::c_char;
        }
        let mut pipe = [0i32; 2];
        // SAFETY: pipe writes two descriptors into the array we own.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        let mut buf = [0u8; 1024];
        // SAFETY: the child only makes async-signal-safe system calls on memory prepared
        // above, then _exit()s; the parent waits for it below.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // SAFETY: the child (see above).
            unsafe {
                libc::close(pipe[0]);
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(65534) != 0
                    || libc::setuid(65534) != 0
                {
                    libc::_exit(2);
                }
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
                if fd < 0 || libc::connect(fd, (&raw const addr).cast(), len) != 0 {
                    libc::_exit(3);
                }
                let req = b"{\"last\":1,\"follow\":false}\n";
                libc::write(fd, req.as_ptr().cast(), req.len());
                let mut total = 0usize;
                loop {
                    let n = libc::read(fd, buf.as_mut_ptr().add(total).cast(), buf.len() - total);
                    if n <= 0 {
                        break;
                    }
                    total += n as usize;
                    if total == buf.len() {
                        break;
                    }
                }
                libc::write(pipe[1], buf.as_ptr().cast(), total);
                libc::_exit(0);
            }
        }
        // SAFETY: closing our copy of the write end; reading our end; reaping our child.
        unsafe { libc::close(pipe[1]) };
        let mut out = Vec::new();
        let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(pipe[0]) };
        std::io::Read::read_to_end(&mut f, &mut out).expect("read the pipe");
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child failed: status {status:#x}"
        );
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn other_users_are_refused_even_when_the_mode_allows_them() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: needs root (to connect as another uid)");
            return;
        }
        let s = start(Hub::new());
        s.hub.publish_value(verdict(1, "shop", "dropped"));
        // A mistake (or a mount) opens the directory and the socket to everyone.
        let parent = s.path.parent().expect("parent");
        for (p, mode) in [(parent, 0o755), (s.path.as_path(), 0o666)] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        let path = s.path.clone();
        let got = tokio::task::spawn_blocking(move || exchange_as_nobody(&path))
            .await
            .expect("child");
        let text = String::from_utf8_lossy(&got);
        let v: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(v["type"], "error", "{text}");
        let msg = v["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains("permission denied: uid 65534") && msg.contains("root"),
            "{msg}"
        );
        assert!(!text.contains("shop"), "no verdict leaked: {text}");
        assert_eq!(s.stats.snapshot().denied, 1);
        assert_eq!(s.stats.snapshot().clients_total, 0);
        // Root still gets the stream.
        let mut c = Client::connect(&s.path, r#"{"last":1,"follow":false}"#).await;
        assert_eq!(ids(&c.take(1).await), [1]);
    }

    #[tokio::test]
    async fn serve_reports_bind_errors() {
        let dir = TempDir::new("serve");
        let path = dir.0.join("file");
        std::fs::write(&path, b"x").expect("write");
        let Err(err) = serve(&path, Hub::new(), ObserveStats::default()) else {
            panic!("not a socket: bind must fail");
        };
        assert!(err.to_string().contains("not a socket"), "{err}");
    }
}
