//! Honesty under loss, in the real kernel: the tracer's ring buffer is shrunk to one page and
//! the daemon is stopped (SIGSTOP) for 3 s in the middle of DNS load over UDP (dnsperf, to both
//! replicas, one of them on node B) and TCP (`dig +tcp`), so the kernel must drop records (and
//! its DNS table, which the stopped daemon does not sweep, overflows too). Every
//! query is answered (dnsperf and dig say so), so any `unanswered` or `lost_beyond_node` the
//! tracer prints is false. The test fails if the ring did not overflow (it would prove nothing)
//! or if one false verdict appears; the loss must be visible in the tracer's counters.

use std::time::Duration;

use serde_json::Value;
use tracer_tests::{TracerProcess, lab, privileged};

const LOAD_S: u64 = 6;
const STOP_S: u64 = 3;

#[test]
fn overloaded_ring_and_stopped_daemon_give_no_false_verdict() {
    if !privileged() {
        return;
    }
    let guard = lab::LabGuard::up().expect("lab up");
    lab::pin(lab::Pin::Both).expect("pin both");
    let client = guard
        .topology()
        .pod("default", "client")
        .expect("client")
        .clone();
    let mut tracer = TracerProcess::start(
        lab::NS_NODE_A,
        &[
            "--ring-bytes",
            "4096",
            "--window",
            "2s",
            "--stats-interval",
            "1s",
        ],
    )
    .expect("tracer");
    let pid = libc::pid_t::try_from(tracer.pid()).expect("pid");

    let queries = std::env::temp_dir().join(format!("tracer-honesty-{}.txt", std::process::id()));
    std::fs::write(
        &queries,
        "kubernetes.default.svc.cluster.local A\nweb.shop.svc.cluster.local A\n",
    )
    .expect("query file");
    let netns = client.netns.clone();
    let data = queries.to_string_lossy().into_owned();
    // A rate the lab answers without loss, far more than one page of ring holds.
    let perf = std::thread::spawn(move || {
        lab::exec_in(
            &netns,
            &[
                "dnsperf",
                "-s",
                "198.19.0.10",
                "-d",
                &data,
                "-l",
                &LOAD_S.to_string(),
                "-c",
                "4",
                "-Q",
                "10000",
            ],
        )
    });
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill(2) on the tracer process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    // TCP queries while the daemon cannot read: their SYN/SYN-ACK records compete for the ring.
    let mut tcp_answered = 0;
    for i in 0..10 {
        let out = lab::exec_in(
            &client.netns,
            &[
                "dig",
                "+tcp",
                "+time=2",
                "+tries=1",
                "@198.19.0.10",
                &format!("tcp{i}.lab.tracer"),
            ],
        )
        .expect("dig");
        if String::from_utf8_lossy(&out.stdout).contains("->>HEADER<<-") {
            tcp_answered += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(STOP_S).saturating_sub(Duration::from_secs(2)));
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let out = perf.join().expect("dnsperf thread").expect("dnsperf runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let _ = std::fs::remove_file(&queries);
    let lost_queries = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("Queries lost:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok());
    assert_eq!(
        lost_queries,
        Some(0),
        "the lab must answer every query for this test to mean anything:\n{text}"
    );
    assert_eq!(tcp_answered, 10, "every TCP query was answered (any rcode)");

    // Every open flow ends within the window plus its hold; then the last counters.
    std::thread::sleep(Duration::from_secs(5));
    tracer.stop().expect("tracer stops");
    let stderr = tracer.stderr();
    let lost: u64 = ["tc_ringbuf_full", "drop_ringbuf_full", "dns_ringbuf_full"]
        .iter()
        .map(|n| xtask::bench::counter(&stderr, n))
        .sum();
    assert!(
        lost > 0,
        "the ring never overflowed: the test proved nothing\n{stderr}"
    );

    let verdicts: Vec<Value> = tracer
        .lines()
        .into_iter()
        .filter(|v| v["schema"] == "tracer.flow/v1")
        .collect();
    let false_verdicts: Vec<&Value> = verdicts
        .iter()
        .filter(|v| {
            matches!(
                v["verdict"].as_str(),
                Some("unanswered" | "lost_beyond_node")
            )
        })
        .collect();
    let unknown = verdicts
        .iter()
        .filter(|v| v["verdict"] == "unknown")
        .count();
    let answered: u64 = verdicts
        .iter()
        .filter(|v| v["verdict"] == "answered")
        .map(|v| v["count"].as_u64().unwrap_or(1))
        .sum();
    eprintln!(
        "ring records lost: {lost}; lines: {} ({answered} answers, {unknown} unknown)",
        verdicts.len()
    );
    assert!(
        false_verdicts.is_empty(),
        "{} false verdicts, e.g. {:#}",
        false_verdicts.len(),
        false_verdicts[0]
    );
    // Whatever could not be decided says why.
    for v in verdicts.iter().filter(|v| v["verdict"] == "unknown") {
        assert_eq!(v["evidence"], "incomplete", "{v:#}");
    }
    drop(guard);
}
