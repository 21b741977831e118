//! Pod egress at the highest connection rate one pod reaches in the lab: a client in pod
//! default/client opens TCP connections as fast as it can to a listener in the lab's internet
//! (through node A's SNAT, `--random-fully` as the VPC CNI does) and closes each with a reset,
//! so ports come back within seconds and SNAT ports collide with other connections' pod ports.
//! The scripts are shared by the benchmark ([`run`]) and the lab test `tests/egress_load.rs`.

#![allow(
    clippy::indexing_slicing,
    reason = "serde_json::Value indexed by key yields Null when absent; it never panics"
)]

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::Value;

use crate::{bench, lab, tracer::TracerProcess};

/// Accepts and closes connections on 203.0.113.80:`argv[1]` until killed.
pub const LISTENER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("203.0.113.80", int(sys.argv[1])))
s.listen(4096)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    c.close()
"#;

/// Connects to 203.0.113.80:`argv[1]` for `argv[2]` seconds (at most `argv[3]` times, `argv[4]`
/// seconds apart), each connection closed with a reset; prints `connects <n> errors <m>`.
pub const CLIENT: &str = r#"
import socket, struct, sys, time
port = int(sys.argv[1])
end = time.time() + float(sys.argv[2])
most = int(sys.argv[3]) if len(sys.argv) > 3 else 1 << 62
pause = float(sys.argv[4]) if len(sys.argv) > 4 else 0
n = err = 0
while time.time() < end and n + err < most:
    time.sleep(pause)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    try:
        s.connect(("203.0.113.80", port))
        n += 1
    except OSError:
        err += 1
    s.close()
print("connects", n, "errors", err, flush=True)
"#;

/// The listener's port in the benchmark.
const PORT: u16 = 8082;

/// Runs [`CLIENT`] in `netns` (on `cpu` when given): (connections, errors).
pub fn connect(netns: &str, cpu: Option<usize>, port: u16, args: &[&str]) -> Result<(u64, u64)> {
    let port = port.to_string();
    let argv = bench::on_cpu(cpu, &[&["python3", "-c", CLIENT, &port], args].concat());
    let out = lab::exec_in(netns, &argv.iter().map(String::as_str).collect::<Vec<_>>())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    match (
        words.nth(1).and_then(|n| n.parse().ok()),
        words.nth(1).and_then(|e| e.parse().ok()),
    ) {
        (Some(n), Some(e)) => Ok((n, e)),
        _ => bail!(
            "client output: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Starts [`LISTENER`] on `port` (on `cpu` when given) and returns once it listens (before
/// that, a connection would be refused: a genuine `rejected` in a window that expects none).
pub fn listen(cpu: Option<usize>, port: u16) -> Result<std::process::Child> {
    use std::io::BufRead as _;
    let port_s = port.to_string();
    let argv = bench::on_cpu(cpu, &["python3", "-c", LISTENER, &port_s]);
    let mut child = lab::spawn_in(
        lab::NS_INET,
        &argv.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    let mut first = String::new();
    if let Some(out) = child.stdout.take() {
        // Ends at the first line, or at EOF when the listener could not start.
        let _ = std::io::BufReader::new(out).read_line(&mut first);
    }
    if first.trim() != "listening" {
        let _ = child.kill();
        let err = child
            .wait_with_output()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_default();
        bail!("the listener on port {port} did not start: {err}");
    }
    Ok(child)
}

/// What the tracer printed about the benchmark's connections in one window.
#[derive(Default)]
struct Accounted {
    /// Connections counted `established`: summary counts plus per-flow lines.
    established: u64,
    summary_lines: u64,
    /// Per-flow `established` lines (connections with something to say: a retransmitted SYN).
    flow_lines: u64,
    /// `unknown` (the kernel could not hand over a record; incomplete evidence).
    unknown: u64,
    /// Any other verdict: every connection succeeded, so each is false.
    false_verdicts: u64,
    /// Bytes of stdout about these connections.
    bytes: u64,
}

fn account(tracer: &TracerProcess) -> Accounted {
    let mut a = Accounted::default();
    for raw in tracer.raw_lines() {
        let Ok(v) = serde_json::from_str::<Value>(&raw) else {
            continue;
        };
        if v["schema"] != "tracer.flow/v1" || v["kind"] != "egress" || v["server"]["port"] != PORT {
            continue;
        }
        a.bytes += raw.len() as u64 + 1;
        match (v["verdict"].as_str(), v["record"] == "summary") {
            (Some("established"), true) => {
                a.summary_lines += 1;
                a.established += v["count"].as_u64().unwrap_or(0);
            }
            (Some("established"), false) => {
                a.flow_lines += 1;
                a.established += 1;
            }
            (Some("unknown"), _) if v["evidence"] == "incomplete" => a.unknown += 1,
            _ => a.false_verdicts += 1,
        }
    }
    a
}

/// Runs the egress benchmark: `rounds` rounds of a tracer-off and a tracer-on window of
/// `seconds` each (the order turning each round), the client on the first CPU and the listener
/// on the last. Prints connections per second, what the tracer accounted for, its CPU, memory,
/// output and losses, and the on/off ratio.
pub fn run(seconds: u32, rounds: u32) -> Result<()> {
    let (guard, client, cpus) = bench::lab_for_load()?;
    let (client_cpu, listener_cpu) = if cpus >= 2 {
        (Some(0), Some(cpus - 1))
    } else {
        (None, None)
    };
    let mut listener = listen(listener_cpu, PORT)?;
    let secs = seconds.to_string();
    println!(
        "Pod egress through the lab (client pod → SNAT on node A's eth0 → 203.0.113.80:{PORT}), one Python client connecting as fast as it can, each connection reset on close; client on CPU 0, listener on the last CPU; {seconds} s windows, tracer off / on in turn (the order turning each round), default output (--established summary), one run"
    );
    println!(
        "{:<8} {:>9} {:>9} {:>11} {:>8} {:>8} {:>8} {:>6} {:>7} {:>8} {:>8} {:>7}",
        "window",
        "conn/s",
        "connects",
        "established",
        "summary",
        "own line",
        "unknown",
        "false",
        "cpu %",
        "rss MiB",
        "out KiB",
        "k-lost"
    );
    let mut ratios = Vec::new();
    let (mut worst_cpu, mut worst_rss, mut lost, mut false_verdicts) = (0f64, 0u64, 0u64, 0u64);
    let mut unaccounted = 0u64;
    for i in 0..rounds {
        let mut order = [false, true];
        if i % 2 == 1 {
            order.reverse();
        }
        let (mut off, mut on) = (0.0, 0.0);
        for tracer_on in order {
            if !tracer_on {
                let (n, errors) = connect(&client.netns, client_cpu, PORT, &[&secs])?;
                off = n as f64 / f64::from(seconds.max(1));
                println!(
                    "{:<8} {:>9.0} {:>9} {:>11}",
                    format!("off {}", i + 1),
                    off,
                    n,
                    if errors > 0 {
                        format!("{errors} err")
                    } else {
                        String::new()
                    }
                );
                continue;
            }
            let mut tracer = TracerProcess::start(lab::NS_NODE_A, &["--stats-interval", "60s"])?;
            let pid = tracer.pid();
            let before = bench::usage(pid).unwrap_or_default();
            let started = Instant::now();
            let (n, errors) = connect(&client.netns, client_cpu, PORT, &[&secs])?;
            let wall = started.elapsed().as_secs_f64();
            let after = bench::usage(pid).unwrap_or_default();
            // Connections still open get their verdicts, and the summaries go out, on exit.
            std::thread::sleep(Duration::from_millis(500));
            tracer.stop()?;
            let a = account(&tracer);
            let stderr = tracer.stderr();
            let k_lost: u64 = ["tc_ringbuf_full", "drop_ringbuf_full"]
                .iter()
                .map(|c| bench::counter(&stderr, c))
                .sum();
            on = n as f64 / f64::from(seconds.max(1));
            let cpu = 100.0 * (after.0 - before.0).max(0.0) / wall.max(0.001);
            println!(
                "{:<8} {:>9.0} {:>9} {:>11} {:>8} {:>8} {:>8} {:>6} {:>7.1} {:>8.1} {:>8.1} {:>7}",
                format!("on {}", i + 1),
                on,
                n,
                a.established,
                a.summary_lines,
                a.flow_lines,
                a.unknown,
                a.false_verdicts,
                cpu,
                after.1 as f64 / 1024.0,
                a.bytes as f64 / 1024.0,
                k_lost
            );
            if errors > 0 {
                println!("         ({errors} connections failed: not a clean window)");
            }
            worst_cpu = worst_cpu.max(cpu);
            worst_rss = worst_rss.max(after.1);
            lost += k_lost;
            false_verdicts += a.false_verdicts;
            unaccounted += n.saturating_sub(a.established + a.unknown);
        }
        ratios.push(on / off.max(1.0));
    }
    let _ = listener.kill();
    let _ = listener.wait();
    drop(guard);
    println!();
    println!(
        "connections/s on/off: median {:.3} over {} rounds ({})",
        bench::median(ratios.clone()),
        ratios.len(),
        ratios
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "false verdicts: {false_verdicts}; connections without a verdict (neither established nor unknown): {unaccounted}; kernel records lost: {lost}"
    );
    println!(
        "tracer under load: at most {worst_cpu:.1} % of one core, peak RSS {:.1} MiB",
        worst_rss as f64 / 1024.0
    );
    Ok(())
}
