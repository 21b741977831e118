//! Operator surface in the lab: two `tracer observe` clients with different filters receive
//! exactly the verdicts that match while the daemon writes every verdict to stdout; a client
//! that never reads does not hold the others back; `/metrics` counts match the JSON lines.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tracer_tests::{TracerProcess, dig, lab, privileged};

const SOCKET: &str = "/run/tracer-test/observe.sock";
const METRICS: &str = "127.0.0.1:9464";

/// A `tracer observe -o json …` client whose lines are collected with arrival times.
struct Observer {
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, Value)>>>,
}

impl Observer {
    fn start(filters: &[&str]) -> Self {
        let mut child = Command::new(xtask::tracer::tracer_bin())
            .args(["observe", "--socket", SOCKET, "-o", "json"])
            .args(filters)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("tracer observe starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout piped");
        let sink = Arc::clone(&lines);
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().expect("lock").push((Instant::now(), v));
                }
            }
        });
        Self { child, lines }
    }

    fn keys(&self) -> BTreeSet<String> {
        let lines = self.lines.lock().expect("lock");
        lines
            .iter()
            .filter(|(_, v)| v["schema"] == "tracer.flow/v1")
            .map(|(_, v)| key(v))
            .collect()
    }

    fn notices(&self) -> usize {
        self.lines
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, v)| v["type"] == "notice")
            .count()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn key(v: &Value) -> String {
    v["key"].as_str().unwrap_or_default().to_owned()
}

fn scrape() -> String {
    let out = lab::exec_in(
        lab::NS_NODE_A,
        &["curl", "-sf", &format!("http://{METRICS}/metrics")],
    )
    .expect("curl runs");
    assert!(
        out.status.success(),
        "scrape failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sum of `tracer_verdicts_total` per verdict label.
fn verdict_metrics(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("tracer_verdicts_total{"))
    {
        let verdict = line
            .split("verdict=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("");
        let n: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0);
        *out.entry(verdict.to_owned()).or_default() += n as u64;
    }
    out
}

#[test]
fn filtered_live_streams_stalled_client_and_metrics() {
    if !privileged() {
        return;
    }
    let guard = lab::LabGuard::up().expect("lab up");
    let topo = guard.topology().clone();
    let _ = std::fs::remove_dir_all("/run/tracer-test");
    let topology_file = lab::topology_path().to_string_lossy().into_owned();
    let tracer = TracerProcess::start(
        lab::NS_NODE_A,
        &[
            "--window",
            "2s",
            "--answered",
            "flows",
            "--socket",
            SOCKET,
            "--metrics-addr",
            METRICS,
            "--lab-metadata",
            &topology_file,
        ],
    )
    .expect("tracer");

    // A client that asks for everything, packet events included, and never reads.
    let mut stalled = UnixStream::connect(SOCKET).expect("connect to the observe socket");
    stalled
        .write_all(b"{\"filter\":{},\"last\":0,\"follow\":true,\"events\":true}\n")
        .expect("request");
    let lost = Observer::start(&["--verdict", "lost_beyond_node"]);
    let answered = Observer::start(&["--pod", "default/client", "--verdict", "answered"]);
    thread::sleep(Duration::from_millis(500));

    // Load: a few thousand answered queries from the client pod (and four packet events each,
    // enough to fill the stalled client's socket many times over), then lost queries from the
    // branch-ENI pod while the stalled client is still blocked.
    lab::pin(lab::Pin::A).expect("pin a");
    let client = topo.pod("default", "client").expect("client").clone();
    let sg = topo.pod("default", "sg-client").expect("sg-client").clone();
    let data = std::env::temp_dir().join("tracer-operator-queries.txt");
    std::fs::write(
        &data,
        "kubernetes.default.svc.cluster.local A\nweb.shop.svc.cluster.local A\n",
    )
    .expect("query file");
    let perf = lab::exec_in(
        &client.netns,
        &[
            "dnsperf",
            "-s",
            "198.19.0.10",
            "-d",
            &data.to_string_lossy(),
            "-l",
            "3",
            "-Q",
            "800",
        ],
    )
    .expect("dnsperf");
    assert!(
        perf.status.success(),
        "{}",
        String::from_utf8_lossy(&perf.stderr)
    );
    lab::set_failure(lab::Failure::PodSgNoDns, true).expect("failure on");
    for i in 0..3 {
        dig(&sg.netns, &["@198.19.0.10", &format!("lost{i}.lab.tracer")]);
    }

    // Every verdict is decided within the window; wait for the last lost one on stdout.
    let deadline = Instant::now() + Duration::from_secs(15);
    let stdout_lost = || {
        tracer
            .lines()
            .iter()
            .filter(|v| v["verdict"] == "lost_beyond_node")
            .count()
    };
    while stdout_lost() < 3 {
        assert!(
            Instant::now() < deadline,
            "lost verdicts missing on stdout: {}",
            tracer.stderr()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let stdout_seen = Instant::now();
    thread::sleep(Duration::from_secs(3));

    let all: Vec<Value> = tracer
        .lines()
        .into_iter()
        .filter(|v| v["schema"] == "tracer.flow/v1")
        .collect();
    let want_lost: BTreeSet<String> = all
        .iter()
        .filter(|v| v["verdict"] == "lost_beyond_node")
        .map(key)
        .collect();
    let want_answered: BTreeSet<String> = all
        .iter()
        .filter(|v| {
            v["verdict"] == "answered"
                && v["client"]["pod"] == "client"
                && v["client"]["namespace"] == "default"
        })
        .map(key)
        .collect();
    assert!(
        want_answered.len() > 1000,
        "load produced answered verdicts: {}",
        want_answered.len()
    );
    assert_eq!(
        lost.keys(),
        want_lost,
        "lost_beyond_node client got exactly the matching verdicts"
    );
    assert_eq!(
        answered.keys(),
        want_answered,
        "answered client got exactly the matching verdicts"
    );
    assert_eq!(
        lost.notices() + answered.notices(),
        0,
        "reading clients were never skipped"
    );
    // The stalled client held nobody back: the lost verdicts reached their observer promptly.
    let last_lost_arrival = lost
        .lines
        .lock()
        .expect("lock")
        .iter()
        .map(|(t, _)| *t)
        .max()
        .expect("lines");
    assert!(
        last_lost_arrival <= stdout_seen + Duration::from_secs(1),
        "observer lagged {:?} behind stdout",
        last_lost_arrival.saturating_duration_since(stdout_seen)
    );

    // /metrics counts match the JSON lines, per verdict.
    let text = scrape();
    let metrics = verdict_metrics(&text);
    let mut from_lines: BTreeMap<String, u64> = BTreeMap::new();
    for v in &all {
        *from_lines
            .entry(v["verdict"].as_str().unwrap_or("").to_owned())
            .or_default() += 1;
    }
    assert_eq!(metrics, from_lines, "verdict counters vs stdout lines");
    // And the stalled client really was stalled: the daemon either skipped lines for it
    // (counted) or dropped it (only the two reading clients remain connected).
    let metric = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(-1.0)
    };
    let skipped = metric("tracer_observe_skipped_total");
    let connected = metric("tracer_observe_clients ");
    assert!(
        skipped > 0.0 || connected == 2.0,
        "stalled client neither skipped nor dropped:\n{text}"
    );
    drop(stalled);
}
