//! Load benchmark: DNS throughput through the lab with the tracer off, with the empty program
//! at every hook (the cost of the hooks themselves and the running daemon) and on, measured in
//! one run, with the tracer's CPU time, peak memory and its own loss counters.

#![allow(
    clippy::indexing_slicing,
    reason = "serde_json::Value indexed by key yields Null when absent; it never panics"
)]

use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{lab, profile, tracer::TracerProcess};

/// Result of one dnsperf run.
struct Perf {
    qps: f64,
    completed: u64,
}

/// Where and how long dnsperf runs.
#[derive(Clone, Copy)]
struct Load<'a> {
    /// The client pod's network namespace.
    netns: &'a str,
    /// Window length.
    seconds: u32,
    /// The CPU dnsperf is restricted to (the replica runs on another one), if any.
    cpu: Option<usize>,
}

fn dnsperf(load: Load<'_>) -> Result<Perf> {
    let data = std::env::temp_dir().join("tracer-bench-queries.txt");
    let names = [
        "kubernetes.default.svc.cluster.local A",
        "web.shop.svc.cluster.local A",
        "nosuch.default.svc.cluster.local A",
    ];
    fs::write(&data, names.join("\n") + "\n").context("writing the query file")?;
    let secs = load.seconds.to_string();
    let data_s = data.to_string_lossy().into_owned();
    let argv = on_cpu(
        load.cpu,
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
    );
    let out = lab::exec_in(
        load.netns,
        &argv.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |label: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let (Some(qps), Some(completed)) = (field("Queries per second"), field("Queries completed"))
    else {
        bail!(
            "could not read dnsperf output:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    Ok(Perf {
        qps,
        completed: completed as u64,
    })
}

/// (user+system CPU seconds, peak RSS KiB) of a process.
pub(crate) fn usage(pid: u32) -> Option<(f64, u64)> {
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

/// What one tracer-on window produced.
#[derive(Default)]
struct OnWindow {
    perf: Option<Perf>,
    /// Answers counted by the tracer: summary `count`s plus per-flow `answered` lines.
    answered: u64,
    summary_lines: u64,
    /// Verdicts that rest on the absence of an event, claimed with complete evidence.
    negative: u64,
    unknown: u64,
    other_verdicts: u64,
    /// tracer CPU seconds during the window and the window's length.
    cpu_s: f64,
    wall_s: f64,
    peak_rss_kib: u64,
    /// Records the kernel could not hand over (ring full, tables full).
    kernel_lost: u64,
    /// Per program (name, runs, kernel time in ns) when the window ran with BPF statistics.
    programs: Vec<(String, u64, u64)>,
    /// Queries the kernel tracked, and those of them whose slot was taken (hash table).
    tracked: u64,
    slot_taken: u64,
    /// Kernel time by source line, when the window was profiled.
    profile: Option<profile::Profile>,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Run count and run time of the tracer's programs `loaded` (as `our_programs` lists them;
/// the kernel keeps these figures while `kernel.bpf_stats_enabled` is 1).
fn program_stats(loaded: &[serde_json::Value]) -> Vec<(String, u64, u64)> {
    loaded
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["run_cnt"].as_u64().unwrap_or(0),
                p["run_time_ns"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// A number from the last `counters` line of the tracer's stderr (first occurrence of `name`).
pub fn counter(stderr: &str, name: &str) -> u64 {
    let last = stderr
        .lines()
        .rev()
        .find(|l| l.contains("counters"))
        .unwrap_or_default();
    last.split(&format!("\"{name}\":"))
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// How a tracer-on window runs.
#[derive(Clone, Copy, Default)]
struct Window {
    /// Stop the daemon (SIGSTOP) for this many seconds in the middle; 0: never.
    stop_s: u64,
    /// Collect the programs' kernel run time (kernel.bpf_stats_enabled must be on).
    stats: bool,
    /// Attach the empty program at every hook instead of the tracer's.
    empty: bool,
    /// Sample every CPU with perf during the load (see [`crate::profile`]).
    profile: bool,
}

/// One tracer-on window: start the tracer, load for `seconds` (stopping the daemon in the
/// middle when asked), stop it (its last summaries are flushed on exit), count what it printed.
fn on_window(load: Load<'_>, how: Window) -> Result<OnWindow> {
    let seconds = load.seconds;
    let mut args = vec!["--stats-interval", "60s"];
    if how.empty {
        args.push("--empty-programs");
    }
    let mut tracer = TracerProcess::start(lab::NS_NODE_A, &args)?;
    let pid = tracer.pid();
    let before = usage(pid).unwrap_or_default();
    let started = Instant::now();
    let stopper = (how.stop_s > 0).then(|| {
        let pid = libc::pid_t::try_from(pid).unwrap_or(0);
        let half = Duration::from_secs(u64::from(seconds) / 2);
        std::thread::spawn(move || {
            std::thread::sleep(half);
            // SAFETY: kill(2) on the tracer process this benchmark started.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            std::thread::sleep(Duration::from_secs(how.stop_s));
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        })
    });
    let recording = how.profile.then(|| profile::start(seconds)).transpose()?;
    let perf = dnsperf(load)?;
    if let Some(t) = stopper {
        let _ = t.join();
    }
    let wall = started.elapsed();
    let after = usage(pid).unwrap_or_default();
    let loaded = if how.stats || recording.is_some() {
        crate::tracer::our_programs()?
    } else {
        Vec::new()
    };
    let programs = if how.stats {
        program_stats(&loaded)
    } else {
        Vec::new()
    };
    // The line tables are read while the programs are loaded.
    let profile = match recording {
        Some(r) => {
            let ids: Vec<u32> = loaded
                .iter()
                .filter_map(|p| p["id"].as_u64().and_then(|id| u32::try_from(id).ok()))
                .collect();
            Some(r.finish(&profile::Programs::read(&ids)?)?)
        }
        None => None,
    };
    // Queries still open when dnsperf ended get their verdicts on exit.
    std::thread::sleep(Duration::from_millis(500));
    tracer.stop()?;
    let mut w = OnWindow {
        cpu_s: (after.0 - before.0).max(0.0),
        wall_s: wall.as_secs_f64(),
        peak_rss_kib: after.1,
        programs,
        profile,
        ..OnWindow::default()
    };
    for v in tracer.lines() {
        if v["schema"] != "tracer.flow/v1" {
            continue;
        }
        match v["verdict"].as_str() {
            Some("answered") if v["record"] == "summary" => {
                w.summary_lines += 1;
                w.answered += v["count"].as_u64().unwrap_or(0);
            }
            Some("answered") => w.answered += 1,
            Some("unanswered" | "lost_beyond_node") if v["evidence"] == "complete" => {
                w.negative += 1
            }
            Some("unknown") => w.unknown += 1,
            _ => w.other_verdicts += 1,
        }
    }
    let stderr = tracer.stderr();
    w.kernel_lost = [
        "tc_ringbuf_full",
        "drop_ringbuf_full",
        "dns_table_full",
        "dns_key_busy",
    ]
    .iter()
    .map(|n| counter(&stderr, n))
    .sum::<u64>()
        + counter(&stderr, "dns_ringbuf_full");
    w.tracked = counter(&stderr, "dns_tracked");
    w.slot_taken = counter(&stderr, "dns_slot_taken");
    w.perf = Some(perf);
    Ok(w)
}

/// The kinds of window of a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Off,
    Empty,
    On,
}

/// The order of round `i`'s windows. It turns each round (off, empty, on; empty, on, off; on,
/// off, empty), so that a drift of the machine's speed during the run favours no kind.
fn round_order(i: u32) -> [Kind; 3] {
    let mut kinds = [Kind::Off, Kind::Empty, Kind::On];
    kinds.rotate_left((i % 3) as usize);
    kinds
}

/// The median (0 for none).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The lab for a load benchmark: its guard, the client pod, and the number of CPUs.
pub(crate) fn lab_for_load() -> Result<(lab::LabGuard, lab::Pod, usize)> {
    let guard = lab::LabGuard::up()?;
    let client = guard
        .topology()
        .pod("default", "client")
        .context("client pod")?
        .clone();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok((guard, client, cpus))
}

/// `argv` restricted to `cpu` with taskset (unchanged when `None`).
pub(crate) fn on_cpu(cpu: Option<usize>, argv: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = match cpu {
        Some(c) => vec!["taskset".into(), "-c".into(), c.to_string()],
        None => Vec::new(),
    };
    out.extend(argv.iter().map(|a| (*a).to_owned()));
    out
}

/// Runs the load benchmark: `pairs` rounds of a tracer-off, an empty-programs and a tracer-on
/// window of `seconds` each (dnsperf and the replica pinned to CPUs of their own), then one
/// tracer-on window with the daemon stopped (SIGSTOP) for 3 s in the middle, kernel run time of
/// the tracer's and of the empty programs, then the idle cost. With `profile`, the tracer's kernel time in the statistics window is also broken down by
/// source line. Prints the figures.
pub fn run(seconds: u32, pairs: u32, profile: bool) -> Result<()> {
    let (guard, client, cpus) = lab_for_load()?;
    lab::pin(lab::Pin::A)?;
    // dnsperf and the replica on a CPU each: left to the scheduler, where it puts them changes
    // the throughput by up to ±8 % from one window to the next (measured), more than what is
    // measured here; pinned, by about ±1 %.
    let cpu = if cpus >= 2 {
        lab::pin_replica_cpu(lab::Replica::A, Some(cpus - 1))?;
        Some(0)
    } else {
        None
    };
    let load = Load {
        netns: &client.netns,
        seconds,
        cpu,
    };
    let placement = match cpu {
        Some(c) => format!("dnsperf on CPU {c}, the replica on CPU {}", cpus - 1),
        None => "one CPU".to_owned(),
    };
    println!(
        "DNS load through the lab (client pod → kube-dns ClusterIP → local unbound), dnsperf -c 4 -q 200, {placement}, {seconds} s windows, tracer off / empty programs / on in turn (the order turning each round), one run"
    );
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>10} {:>9} {:>8} {:>8} {:>9} {:>9}",
        "window",
        "qps",
        "completed",
        "answered",
        "summaries",
        "negative",
        "unknown",
        "cpu %",
        "rss MiB",
        "k-lost"
    );
    let mut ratios = Vec::new();
    let mut empty_ratios = Vec::new();
    let mut over_empty = Vec::new();
    let mut worst_cpu = 0f64;
    let mut worst_rss = 0u64;
    let mut mismatch = Vec::new();
    let mut all_negative = 0u64;
    let mut all_lost = 0u64;
    let mut report = |name: &str, w: &OnWindow| -> Result<()> {
        let p = w.perf.as_ref().context("no dnsperf figures")?;
        let cpu = 100.0 * w.cpu_s / w.wall_s.max(0.001);
        println!(
            "{name:<8} {:>10.0} {:>10} {:>10} {:>10} {:>9} {:>8} {:>8.1} {:>9.1} {:>9}",
            p.qps,
            p.completed,
            w.answered,
            w.summary_lines,
            w.negative,
            w.unknown,
            cpu,
            w.peak_rss_kib as f64 / 1024.0,
            w.kernel_lost
        );
        worst_cpu = worst_cpu.max(cpu);
        worst_rss = worst_rss.max(w.peak_rss_kib);
        mismatch.push((w.answered as f64 - p.completed as f64).abs() / (p.completed.max(1) as f64));
        all_negative += w.negative;
        all_lost += w.kernel_lost;
        Ok(())
    };
    for i in 0..pairs {
        let (mut off_qps, mut empty_qps, mut on_qps) = (0.0, 0.0, 0.0);
        for kind in round_order(i) {
            match kind {
                Kind::Off => {
                    let off = dnsperf(load)?;
                    println!(
                        "{:<8} {:>10.0} {:>10}",
                        format!("off {}", i + 1),
                        off.qps,
                        off.completed
                    );
                    off_qps = off.qps;
                }
                Kind::Empty => {
                    let empty = on_window(
                        load,
                        Window {
                            empty: true,
                            ..Window::default()
                        },
                    )?;
                    empty_qps = empty.perf.as_ref().map_or(0.0, |p| p.qps);
                    println!(
                        "{:<8} {:>10.0} {:>10} {:>54.1}",
                        format!("empty {}", i + 1),
                        empty_qps,
                        empty.perf.as_ref().map_or(0, |p| p.completed),
                        100.0 * empty.cpu_s / empty.wall_s.max(0.001)
                    );
                }
                Kind::On => {
                    let on = on_window(load, Window::default())?;
                    report(&format!("on {}", i + 1), &on)?;
                    on_qps = on.perf.as_ref().map_or(0.0, |p| p.qps);
                }
            }
        }
        ratios.push(on_qps / off_qps.max(1.0));
        empty_ratios.push(empty_qps / off_qps.max(1.0));
        over_empty.push(on_qps / empty_qps.max(1.0));
    }
    let stopped = on_window(
        load,
        Window {
            stop_s: 3,
            ..Window::default()
        },
    )?;
    report("on+stop", &stopped)?;

    // Where the kernel time goes: one tracer-on and one empty-programs window with BPF run-time
    // statistics (they cost a clock read per run, so these windows are not among the rounds).
    let was = fs::read_to_string(BPF_STATS).unwrap_or_default();
    fs::write(BPF_STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
    let timed = on_window(
        load,
        Window {
            stats: true,
            profile,
            ..Window::default()
        },
    );
    let timed_empty = on_window(
        load,
        Window {
            stats: true,
            empty: true,
            ..Window::default()
        },
    );
    fs::write(BPF_STATS, if was.trim() == "1" { "1" } else { "0" })
        .context("restoring kernel.bpf_stats_enabled")?;
    let (timed, timed_empty) = (timed?, timed_empty?);
    report("on+stats", &timed)?;

    // Idle: attached, no load.
    let tracer = TracerProcess::start(lab::NS_NODE_A, &["--stats-interval", "60s"])?;
    let before = usage(tracer.pid()).unwrap_or_default();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(20));
    let after = usage(tracer.pid()).unwrap_or_default();
    let idle = 100.0 * (after.0 - before.0).max(0.0) / t0.elapsed().as_secs_f64();
    drop(tracer);
    drop(guard);

    let worst_mismatch = mismatch.iter().copied().fold(0.0, f64::max);
    println!();
    for (what, v) in [
        ("qps on/off", &ratios),
        ("qps empty programs/off", &empty_ratios),
        ("qps on/empty programs", &over_empty),
    ] {
        println!(
            "{what}: median {:.3} over {} rounds ({})",
            median(v.clone()),
            v.len(),
            v.iter()
                .map(|r| format!("{r:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!(
        "answered (summary counts + per-flow lines) vs dnsperf completed: worst difference {:.4} %",
        100.0 * worst_mismatch
    );
    println!(
        "kernel records lost: {all_lost}; negative verdicts with complete evidence: {all_negative}"
    );
    println!(
        "tracer under load: at most {worst_cpu:.1} % of one core, peak RSS {:.1} MiB; idle: {idle:.2} % of one core",
        worst_rss as f64 / 1024.0
    );
    println!("kernel time per program under load (kernel.bpf_stats_enabled):");
    let tracer_ns = print_programs("tracer", &timed);
    let empty_ns = print_programs("empty programs", &timed_empty);
    println!(
        "  per completed query: tracer {tracer_ns:.0} ns, empty programs {empty_ns:.0} ns ({:.1}x)",
        tracer_ns / empty_ns.max(1.0)
    );
    println!(
        "  queries tracked in their slot: {:.1} % ({} of {}; the rest found it taken)",
        100.0 * timed.tracked.saturating_sub(timed.slot_taken) as f64 / timed.tracked.max(1) as f64,
        timed.tracked.saturating_sub(timed.slot_taken),
        timed.tracked
    );
    if let Some(p) = &timed.profile {
        profile::print(p, timed.perf.as_ref().map_or(0, |p| p.completed), 20);
    }
    Ok(())
}

/// Prints a window's kernel time per program; returns all programs' time per completed query.
fn print_programs(label: &str, w: &OnWindow) -> f64 {
    let completed = w.perf.as_ref().map_or(0, |p| p.completed).max(1) as f64;
    let mut per_query = 0.0;
    for (name, runs, ns) in w.programs.iter().filter(|p| p.1 > 0) {
        let avg = *ns as f64 / (*runs).max(1) as f64;
        per_query += *ns as f64 / completed;
        println!(
            "  {label:<15} {name:<14} {runs:>10} runs {avg:>8.1} ns/run {:>6.2} runs/query",
            *runs as f64 / completed
        );
    }
    per_query
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over three rounds every kind of window runs once in every position, and each round
    /// runs each kind once.
    #[test]
    fn rounds_turn_the_order() {
        for kind in [Kind::Off, Kind::Empty, Kind::On] {
            let positions: Vec<usize> = (0..3)
                .map(|i| round_order(i).iter().position(|k| *k == kind).unwrap_or(9))
                .collect();
            let mut sorted = positions.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2], "{kind:?} at {positions:?}");
        }
        assert_eq!(round_order(0), [Kind::Off, Kind::Empty, Kind::On]);
        assert_eq!(round_order(3), round_order(0));
    }
}
