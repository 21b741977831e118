//! Load benchmark: DNS throughput through the lab with the tracer off and on, measured in one
//! run, with the tracer's CPU time, peak memory and its own loss counters.

#![allow(
    clippy::indexing_slicing,
    reason = "serde_json::Value indexed by key yields Null when absent; it never panics"
)]

use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{lab, tracer::TracerProcess};

/// Result of one dnsperf run.
struct Perf {
    qps: f64,
    lost: u64,
    sent: u64,
}

fn dnsperf(ns: &str, seconds: u32) -> Result<Perf> {
    let data = std::env::temp_dir().join("tracer-bench-queries.txt");
    let names = [
        "kubernetes.default.svc.cluster.local A",
        "web.shop.svc.cluster.local A",
        "nosuch.default.svc.cluster.local A",
    ];
    fs::write(&data, names.join("\n") + "\n").context("writing the query file")?;
    let secs = seconds.to_string();
    let data_s = data.to_string_lossy().into_owned();
    let out = lab::exec_in(
        ns,
        &[
            "dnsperf",
            "-s",
            "198.19.0.10",
            "-d",
            &data_s,
            "-l",
            &secs,
            "-c",
            "4",
            "-q",
            "200",
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |label: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let (Some(qps), Some(sent), Some(lost)) = (
        field("Queries per second"),
        field("Queries sent"),
        field("Queries lost"),
    ) else {
        bail!(
            "could not read dnsperf output:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    Ok(Perf {
        qps,
        lost: lost as u64,
        sent: sent as u64,
    })
}

/// (user+system CPU seconds, peak RSS KiB) of a process.
fn usage(pid: u32) -> Option<(f64, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit(')').next()?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; index 11 and 12 after the comm.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())?;
    Some((ticks / hz.max(1.0), hwm))
}

/// Runs the load benchmark for `seconds` per phase and prints the figures.
pub fn run(seconds: u32) -> Result<()> {
    let guard = lab::LabGuard::up()?;
    lab::pin(lab::Pin::A)?;
    let client = guard
        .topology()
        .pod("default", "client")
        .context("client pod")?
        .clone();

    let off = dnsperf(&client.netns, seconds)?;
    let tracer = TracerProcess::start(lab::NS_NODE_A, &["--stats-interval", "1s"])?;
    let pid = tracer.pid();
    let before = usage(pid).unwrap_or_default();
    let started = Instant::now();
    let on = dnsperf(&client.netns, seconds)?;
    let wall = started.elapsed();
    // Let the last windows close so every flow gets its verdict.
    std::thread::sleep(Duration::from_secs(6));
    let after = usage(pid).unwrap_or_default();
    let verdicts = tracer
        .lines()
        .iter()
        .filter(|v| v["schema"] == "tracer.flow/v1")
        .count();
    let unknown = tracer
        .lines()
        .iter()
        .filter(|v| v["verdict"] == "unknown")
        .count();
    let stderr = tracer.stderr();
    let last_counters = stderr
        .lines()
        .rev()
        .find(|l| l.contains("counters"))
        .unwrap_or("")
        .to_owned();
    drop(tracer);
    drop(guard);

    println!(
        "DNS load through the lab (client pod → kube-dns → local unbound), {seconds} s per phase, one run"
    );
    println!(
        "{:<14} {:>12} {:>10} {:>10}",
        "phase", "queries/s", "sent", "lost"
    );
    println!(
        "{:<14} {:>12.0} {:>10} {:>10}",
        "tracer off", off.qps, off.sent, off.lost
    );
    println!(
        "{:<14} {:>12.0} {:>10} {:>10}",
        "tracer on", on.qps, on.sent, on.lost
    );
    println!("throughput ratio on/off: {:.3}", on.qps / off.qps.max(1.0));
    let cpu = (after.0 - before.0).max(0.0);
    println!(
        "tracer CPU: {:.2} s over {:.1} s of load ({:.0}% of one core); peak RSS {} KiB",
        cpu,
        wall.as_secs_f64(),
        100.0 * cpu / wall.as_secs_f64().max(0.001),
        after.1
    );
    println!(
        "verdict lines: {verdicts} (of which unknown: {unknown}) for {} queries",
        on.sent
    );
    println!(
        "tracer counters at exit: {}",
        last_counters.split("counters").last().unwrap_or("").trim()
    );
    Ok(())
}
