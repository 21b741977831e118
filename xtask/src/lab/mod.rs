//! The network lab: a miniature EKS VPC built from network namespaces on one machine.
//!
//! Shape (see the README, "The lab", and [`topology()`]): a VPC router namespace (`trl-vpc`) that
//! routes per-ENI and holds security-group / NACL stand-ins; node A (`trl-node-a`, where the
//! tracer runs) with VPC-CNI-style pods (veth names from sha1, 169.254.1.1 gateway, a strict-mode
//! branch-ENI pod with policy routing), kube-proxy-shaped DNAT of the kube-dns ClusterIP and VPC
//! CNI SNAT; node B (`trl-node-b`) with a second CoreDNS replica; an "internet" namespace.
//! CoreDNS replicas are unbound instances answering local zones only (never recursing).
//!
//! Nothing is linked to the host's root namespace: every veth is created directly between two lab
//! namespaces, and all addresses are in 198.18.0.0/15 and 203.0.113.0/24.
//!
//! All functions here need root. Processes that share the lab serialize with [`LabLock`]
//! (or [`LabGuard`], which also builds the lab and tears it down on drop); the library functions
//! themselves do not lock.

mod builder;
mod cmd;
mod daemon;
mod failure;
mod topology;

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Subcommand;
use serde::Serialize;

pub use cmd::command_in;
pub use daemon::{Replica, wait_udp_listening};
pub use failure::{Failure, Pin, current_pin, failures_on, is_on, pin, set_failure};
pub use topology::*;

use daemon::{ProcState, inet_daemons, is_gone, signal};

/// `println!` that ignores a closed stdout (`cargo xtask lab status | head`) instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `cargo xtask lab ...`
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build the lab (tearing down any previous one first) and check that DNS works.
    Up,
    /// Kill every lab process, delete all trl-* namespaces and the state directory.
    Down,
    /// Show whether the lab is up, which failures are on and where kube-dns is pinned.
    Status {
        /// Print JSON: the state plus the full topology.
        #[arg(long)]
        json: bool,
    },
    /// Switch a failure of the catalogue on or off.
    Fail {
        /// Which failure.
        failure: Failure,
        /// on or off.
        state: Switch,
    },
    /// Point the kube-dns ClusterIP on node A at one CoreDNS replica or both.
    Pin {
        /// a, b or both.
        target: Pin,
    },
}

/// `on` / `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    /// Switch the failure on.
    On,
    /// Switch the failure off.
    Off,
}

/// Runs a `cargo xtask lab` subcommand.
pub fn run(cmd: LabCommand) -> Result<()> {
    match cmd {
        LabCommand::Up => {
            let _lock = LabLock::acquire()?;
            let start = Instant::now();
            let (topology, checks) = up_checked()?;
            print_summary(&topology, &checks, start.elapsed());
        }
        LabCommand::Down => {
            let _lock = LabLock::acquire()?;
            down()?;
            out!("lab down");
        }
        LabCommand::Status { json } => {
            let st = status()?;
            if json {
                let out = StatusJson {
                    status: &st,
                    topology: topology(),
                };
                out!(
                    "{}",
                    serde_json::to_string_pretty(&out).context("serializing status")?
                );
            } else {
                print_status(&st);
            }
        }
        LabCommand::Fail { failure, state } => {
            let _lock = LabLock::acquire()?;
            ensure_up()?;
            let on = state == Switch::On;
            set_failure(failure, on)?;
            out!(
                "failure #{} {failure}: {}",
                failure.catalogue_number(),
                if on { "on" } else { "off" }
            );
        }
        LabCommand::Pin { target } => {
            let _lock = LabLock::acquire()?;
            ensure_up()?;
            pin(target)?;
            out!("kube-dns {KUBE_DNS_IP} pinned to {target}");
        }
    }
    Ok(())
}

fn ensure_up() -> Result<()> {
    ensure!(status()?.up, "the lab is not up (run `cargo xtask lab up`)");
    Ok(())
}

/// Exclusive lock on [`LOCK_FILE`], so that separate processes using the lab serialize.
/// Released when dropped.
///
/// A process started under a lock its parent already holds (e.g. `flock /run/tracer-lab.lock
/// env TRACER_LAB_LOCK_HELD=1 cargo xtask lab up`, for a manual session that spans several
/// commands) sets [`LOCK_HELD_ENV`] and does not lock again.
#[derive(Debug)]
pub struct LabLock {
    _file: Option<fs::File>,
}

/// Environment variable saying the caller already holds [`LOCK_FILE`].
pub const LOCK_HELD_ENV: &str = "TRACER_LAB_LOCK_HELD";

impl LabLock {
    /// Takes the lock, blocking until no other holder is left.
    pub fn acquire() -> Result<Self> {
        if std::env::var_os(LOCK_HELD_ENV).is_some_and(|v| !v.is_empty() && v != "0") {
            return Ok(Self { _file: None });
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(LOCK_FILE)
            .with_context(|| format!("opening {LOCK_FILE}"))?;
        file.lock()
            .with_context(|| format!("locking {LOCK_FILE}"))?;
        Ok(Self { _file: Some(file) })
    }
}

/// Holds [`LabLock`], has brought the lab up, and tears it down when dropped.
#[derive(Debug)]
pub struct LabGuard {
    topology: Topology,
    _lock: LabLock,
}

impl LabGuard {
    /// Takes the lab lock (blocking), then builds the lab (see [`up`]).
    pub fn up() -> Result<Self> {
        let lock = LabLock::acquire()?;
        let topology = up()?;
        Ok(Self {
            topology,
            _lock: lock,
        })
    }

    /// The lab's topology.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        // The lock (a field) is released only after this, so nobody sees a half-torn-down lab.
        if let Err(e) = down() {
            eprintln!("tracer lab: tearing down failed: {e:#}");
        }
    }
}

/// Builds the lab: tears down whatever a previous lab left, builds everything, checks that
/// kube-dns answers through each replica (then pins both) and that the DNS servers never send
/// anything upstream, and writes `/run/tracer-lab/topology.json`.
///
/// On failure the partial lab is torn down, unless `TRACER_LAB_KEEP_ON_ERROR` is set.
pub fn up() -> Result<Topology> {
    up_checked().map(|(t, _)| t)
}

fn up_checked() -> Result<(Topology, Vec<String>)> {
    preflight()?;
    down().context("cleaning up a previous lab")?;
    let built = builder::build()
        .context("building the lab")
        .and_then(|()| write_topology())
        .and_then(|()| self_check().context("lab self-check"));
    match built {
        Ok(checks) => Ok((topology(), checks)),
        Err(e) => {
            if std::env::var_os("TRACER_LAB_KEEP_ON_ERROR").is_none()
                && let Err(d) = down()
            {
                eprintln!("tracer lab: cleaning up after the failed build failed too: {d:#}");
            }
            Err(e)
        }
    }
}

fn write_topology() -> Result<()> {
    let path = Path::new(STATE_DIR).join(TOPOLOGY_FILE);
    let json = serde_json::to_string_pretty(&topology()).context("serializing topology")?;
    fs::write(&path, json + "\n").with_context(|| format!("writing {}", path.display()))
}

fn preflight() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    ensure!(
        euid == 0,
        "the lab needs root (network namespaces, iptables)"
    );
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = [
        "ip",
        "iptables",
        "iptables-restore",
        "sysctl",
        "unbound",
        "socat",
        "dig",
        "cat",
    ]
    .into_iter()
    .filter(|tool| !std::env::split_paths(&path).any(|d| d.join(tool).is_file()))
    .collect();
    ensure!(
        missing.is_empty(),
        "missing tools in PATH: {} (run scripts/setup.sh; /usr/sbin must be in PATH)",
        missing.join(", ")
    );
    Ok(())
}

/// Lab namespaces that currently exist (names under /run/netns starting with `trl-`).
pub fn lab_namespaces() -> Result<Vec<String>> {
    let dir = Path::new("/run/netns");
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).context("listing /run/netns"),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.context("listing /run/netns")?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(NS_PREFIX) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Tears the lab down: SIGCONT + SIGKILL every process in a lab namespace (and the lab's own
/// daemons) until all are gone, deletes every `trl-*` namespace, the pods' /etc/netns/trl-*
/// resolv.conf directories and [`STATE_DIR`].
/// Idempotent; succeeds when nothing exists.
pub fn down() -> Result<()> {
    let namespaces = lab_namespaces()?;
    kill_lab_processes(&namespaces)?;
    for ns in &namespaces {
        cmd::run(&["ip", "netns", "del", ns])?;
    }
    for ns in ALL_NAMESPACES {
        let dir = netns_etc_dir(ns);
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
        }
    }
    // Only succeeds when empty, i.e. when the lab created it.
    let _ = fs::remove_dir("/etc/netns");
    match fs::remove_dir_all(STATE_DIR) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {STATE_DIR}")),
    }
}

fn lab_pids(namespaces: &[String]) -> Vec<i32> {
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let mut pids = Vec::new();
    for ns in namespaces {
        // A stale entry may fail here; `ip netns del` below will report real problems.
        if let Ok(out) = cmd::run(&["ip", "netns", "pids", ns]) {
            pids.extend(out.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
    }
    let mut daemons: Vec<_> = Replica::ALL.iter().map(|r| r.daemon()).collect();
    daemons.extend(inet_daemons());
    for d in &daemons {
        if let ProcState::Running(pid) | ProcState::Stopped(pid) = d.state() {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids.retain(|&p| p != me && p > 1 && !is_gone(p));
    pids
}

fn kill_lab_processes(namespaces: &[String]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = lab_pids(namespaces);
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("lab processes still alive after SIGKILL: {pids:?}");
        }
        for &pid in &pids {
            signal(pid, libc::SIGCONT)?;
            signal(pid, libc::SIGKILL)?;
        }
        sleep(Duration::from_millis(10));
    }
}

/// What `status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct LabStatus {
    /// All lab namespaces exist.
    pub up: bool,
    /// Lab namespaces that exist.
    pub namespaces: Vec<String>,
    /// Where kube-dns points (None when down or unrecognized).
    pub pin: Option<Pin>,
    /// Failures switched on.
    pub failures: Vec<Failure>,
    /// Replica name → `running`, `stopped` (SIGSTOP) or `down`.
    pub replicas: std::collections::BTreeMap<String, String>,
}

#[derive(Serialize)]
struct StatusJson<'a> {
    #[serde(flatten)]
    status: &'a LabStatus,
    topology: Topology,
}

/// Reads the lab's state from the system.
pub fn status() -> Result<LabStatus> {
    let namespaces = lab_namespaces()?;
    let up = ALL_NAMESPACES
        .iter()
        .all(|ns| namespaces.iter().any(|n| n == ns));
    let mut st = LabStatus {
        up,
        namespaces,
        pin: None,
        failures: Vec::new(),
        replicas: Default::default(),
    };
    if up {
        st.pin = current_pin()?;
        st.failures = failures_on()?;
        for r in Replica::ALL {
            let s = match r.daemon().state() {
                ProcState::Running(_) => "running",
                ProcState::Stopped(_) => "stopped",
                ProcState::Gone => "down",
            };
            st.replicas.insert(r.name().to_owned(), s.to_owned());
        }
    }
    Ok(st)
}

/// Restricts replica `r`'s DNS server to CPU `cpu` (`None`: every online CPU again).
pub fn pin_replica_cpu(r: Replica, cpu: Option<usize>) -> Result<()> {
    r.daemon().pin_cpu(cpu)
}

/// Runs `argv` inside network namespace `ns` (`ip netns exec`) and returns its output whatever
/// the exit status (check `status` yourself). Stdin is /dev/null.
pub fn exec_in(ns: &str, argv: &[&str]) -> Result<Output> {
    command_in(ns, argv)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `{}` in {ns}", cmd::show(argv)))
}

/// Starts `argv` inside network namespace `ns` (`ip netns exec`), stdin /dev/null, stdout and
/// stderr piped. Read or drop the pipes; a full pipe blocks the child.
pub fn spawn_in(ns: &str, argv: &[&str]) -> Result<Child> {
    command_in(ns, argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{}` in {ns}", cmd::show(argv)))
}

/// Path of the topology file written by [`up`].
pub fn topology_path() -> PathBuf {
    Path::new(STATE_DIR).join(TOPOLOGY_FILE)
}

fn dig(ns: &str, args: &[&str]) -> Result<String> {
    let mut argv = vec!["dig", "+time=1", "+tries=1"];
    argv.extend_from_slice(args);
    let out = exec_in(ns, &argv)?;
    ensure!(
        out.status.success(),
        "`{}` in {ns} failed ({}): {}{}",
        cmd::show(&argv),
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `Ip: OutRequests` of a namespace (IP packets it sent itself).
fn ip_out_requests(ns: &str) -> Result<u64> {
    let snmp = cmd::netns_exec(ns, &["cat", "/proc/net/snmp"])?;
    let mut ip_lines = snmp.lines().filter(|l| l.starts_with("Ip: "));
    let (Some(header), Some(values)) = (ip_lines.next(), ip_lines.next()) else {
        bail!("no Ip: lines in /proc/net/snmp of {ns}");
    };
    header
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(h, _)| *h == "OutRequests")
        .and_then(|(_, v)| v.parse().ok())
        .with_context(|| format!("no Ip OutRequests in /proc/net/snmp of {ns}"))
}

fn self_check() -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let whoami_via = |p: Pin, r: Replica| -> Result<String> {
        pin(p)?;
        let t = Instant::now();
        let server = format!("@{KUBE_DNS_IP}");
        let out = dig(
            NS_A_CLIENT,
            &["+short", &server, "whoami.lab.tracer", "TXT"],
        )?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let want = format!("\"{}\"", r.name());
        ensure!(
            out.trim() == want,
            "kube-dns pinned to {p}: whoami.lab.tracer TXT answered {:?}, expected {want}",
            out.trim()
        );
        Ok(format!(
            "client -> kube-dns {KUBE_DNS_IP} pinned {p}: whoami = {want} ({ms:.1} ms incl. process start)"
        ))
    };
    let checked = whoami_via(Pin::A, Replica::A).and_then(|a| {
        whoami_via(Pin::B, Replica::B).map(|b| {
            lines.push(a);
            lines.push(b);
        })
    });
    pin(Pin::Both)?;
    checked?;

    for r in Replica::ALL {
        let before = ip_out_requests(r.netns())?;
        let server = format!("@{}", r.ip());
        let out = dig(
            NS_A_CLIENT,
            &["+noall", "+comments", &server, "example.com", "A"],
        )?;
        let after = ip_out_requests(r.netns())?;
        ensure!(
            out.contains("status: NXDOMAIN"),
            "{} did not answer NXDOMAIN for example.com:\n{out}",
            r.name()
        );
        let sent = after.saturating_sub(before);
        ensure!(
            sent == 1,
            "{} sent {sent} IP packets for one query for example.com (expected only the answer): \
             it must never recurse",
            r.name()
        );
        lines.push(format!(
            "{} answers example.com NXDOMAIN locally (1 packet sent: the answer)",
            r.name()
        ));
    }

    let target = format!("TCP:{INET_SERVER_IP}:{INET_HTTP_PORT}");
    let out = exec_in(NS_A_CLIENT, &["socat", "-T2", "-", &target])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && text.trim() == "hello",
        "egress from client to {target} failed ({}): {}{}",
        out.status,
        text.trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    lines.push(format!(
        "client -> {INET_SERVER_IP}:{INET_HTTP_PORT} (SNAT {NODE_A_IP}): hello"
    ));
    Ok(lines)
}

fn print_summary(t: &Topology, checks: &[String], took: Duration) {
    out!(
        "lab up in {:.2} s (state in {STATE_DIR}, topology in {})",
        took.as_secs_f64(),
        topology_path().display()
    );
    out!("  vpc       {}: {}", t.vpc.netns, {
        let l: Vec<String> = t
            .vpc
            .links
            .iter()
            .map(|l| format!("{} {}", l.name, l.router_ip))
            .collect();
        l.join(", ")
    });
    for n in &t.nodes {
        let ifs: Vec<String> = n
            .interfaces
            .iter()
            .filter(|i| i.kind != InterfaceKind::PodVeth)
            .map(|i| match (i.ip, &i.vlan_id) {
                (Some(ip), _) => format!("{} {ip}", i.name),
                (None, Some(v)) => format!(
                    "{} ({} vlan {v})",
                    i.name,
                    i.eni_id.as_deref().unwrap_or("")
                ),
                (None, None) => i.name.clone(),
            })
            .collect();
        out!("  node      {} {}: {}", n.netns, n.name, ifs.join(", "));
    }
    for p in &t.pods {
        out!(
            "  pod       {:<14} {}/{} {} veth {} on {}",
            p.netns,
            p.namespace,
            p.name,
            p.ip,
            p.host_veth,
            p.node_netns
        );
    }
    for s in &t.services {
        let eps: Vec<String> = s.endpoints.iter().map(|e| e.ip.to_string()).collect();
        out!(
            "  service   {}/{} {} -> {} (pin both)",
            s.namespace,
            s.name,
            s.cluster_ip,
            eps.join(", ")
        );
    }
    out!(
        "  internet  {}: {} tcp/{} says hello, udp/{} echoes",
        t.internet.netns,
        t.internet.server_ip,
        t.internet.http_port,
        t.internet.udp_echo_port
    );
    out!("checks:");
    for c in checks {
        out!("  ok  {c}");
    }
}

fn print_status(st: &LabStatus) {
    if !st.up {
        if st.namespaces.is_empty() {
            out!("lab: down");
        } else {
            out!(
                "lab: partially present ({}); run `cargo xtask lab down`",
                st.namespaces.join(", ")
            );
        }
        return;
    }
    out!("lab: up ({} namespaces)", st.namespaces.len());
    out!(
        "pin: {}",
        st.pin
            .map_or_else(|| "unknown".to_owned(), |p| p.to_string())
    );
    let replicas: Vec<String> = st
        .replicas
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    out!("replicas: {}", replicas.join(", "));
    if st.failures.is_empty() {
        out!("failures on: none");
    } else {
        out!("failures on:");
        for f in &st.failures {
            out!("  #{} {f}", f.catalogue_number());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dig_in(ns: &str, args: &[&str]) -> Output {
        let mut argv = vec!["dig", "+time=1", "+tries=1", "+short"];
        argv.extend_from_slice(args);
        exec_in(ns, &argv).expect("running dig")
    }

    /// Builds the real lab (root), switches every failure on and off, checks one failure's
    /// effect end to end and that tearing down kills what runs in the lab.
    #[test]
    fn lab_round_trip() {
        if !crate::privilege::privileged() {
            return;
        }
        let guard = LabGuard::up().expect("lab up");
        assert_eq!(guard.topology().pods.len(), 4);
        let st = status().expect("status");
        assert!(st.up && st.failures.is_empty() && st.pin == Some(Pin::Both));
        assert!(topology_path().is_file());

        let out = dig_in(
            NS_A_CLIENT,
            &["@198.19.0.10", "kube-dns.kube-system.svc.cluster.local"],
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "198.19.0.10");

        for f in Failure::ALL {
            for _ in 0..2 {
                set_failure(f, true).expect("failure on");
            }
            assert_eq!(failures_on().expect("probe"), vec![f], "{f} on");
            for _ in 0..2 {
                set_failure(f, false).expect("failure off");
            }
            assert!(failures_on().expect("probe").is_empty(), "{f} off");
        }

        // One end-to-end effect: UDP to node B dies in the VPC, TCP to it passes.
        pin(Pin::B).expect("pin b");
        set_failure(Failure::NodeSgTcpOnly, true).expect("on");
        let q = ["@198.19.0.10", "whoami.lab.tracer", "TXT"];
        assert!(
            !dig_in(NS_A_CLIENT, &q).status.success(),
            "UDP must time out"
        );
        let tcp = dig_in(
            NS_A_CLIENT,
            &["+tcp", "@198.19.0.10", "whoami.lab.tracer", "TXT"],
        );
        assert_eq!(String::from_utf8_lossy(&tcp.stdout).trim(), "\"coredns-b\"");
        set_failure(Failure::NodeSgTcpOnly, false).expect("off");
        pin(Pin::Both).expect("pin both");

        // `down` kills whatever runs in lab namespaces, including processes of this one.
        let mut sleeper = spawn_in(NS_NODE_A, &["sleep", "60"]).expect("spawn");
        drop(guard);
        let exit = sleeper.wait().expect("sleeper reaped by us, not by down");
        assert!(!exit.success());
        assert!(lab_namespaces().expect("list").is_empty());
        assert!(!Path::new(STATE_DIR).exists());
    }
}
