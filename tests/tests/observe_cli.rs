//! What an operator sees on the command line, from the built binary: `--version`, the errors
//! that name the fix (missing capabilities without a verifier dump, a missing kubeconfig on one
//! line, the API server URL in connection errors, address flags with a hint), the start-up
//! line, and `tracer observe` against a daemon in the lab (short node names, warnings for
//! names never seen, label selectors, `--not`, rows in DECIDED order).
//!
//! Daemon runs outside the lab happen in a fresh network namespace (`unshare -n`), so nothing
//! attaches to the host's interfaces. Capabilities are dropped with `setpriv` (util-linux).

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tracer_tests::{dig, lab, lab_with_tracer, privileged};

fn bin() -> PathBuf {
    let bin = xtask::tracer::tracer_bin();
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build -p tracer)",
        bin.display()
    );
    bin
}

/// Runs `argv` (a command and its arguments) to completion within 60 s.
fn run(argv: &[&str]) -> Output {
    let (cmd, args) = argv.split_first().expect("a command");
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd} starts: {e}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{argv:?} did not exit within 60 s");
        }
        thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `tracer <args>` in a fresh network namespace with `lo` up, behind `prefix` (e.g. setpriv,
/// which then runs after `lo` was brought up with root's capabilities).
fn isolated_argv(prefix: &[&str], args: &[&str]) -> Vec<String> {
    let bin = bin();
    let mut argv: Vec<String> = [
        "unshare",
        "--net",
        "--",
        "sh",
        "-c",
        "ip link set lo up && exec \"$@\"",
        "sh",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    argv.extend(prefix.iter().map(|s| (*s).to_owned()));
    argv.push(bin.to_string_lossy().into_owned());
    argv.extend(args.iter().map(|s| (*s).to_owned()));
    argv
}

fn run_isolated(prefix: &[&str], args: &[&str]) -> Output {
    let argv = isolated_argv(prefix, args);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    run(&argv)
}

/// A `tracer run` in its own network namespace, its stderr collected.
struct Daemon {
    child: Child,
    stderr: Arc<Mutex<String>>,
    ready: PathBuf,
}

impl Daemon {
    fn start(prefix: &[&str], args: &[&str]) -> Self {
        let ready = std::env::temp_dir().join(format!(
            "tracer-cli-ready-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        ));
        let _ = std::fs::remove_file(&ready);
        let ready_s = ready.to_string_lossy().into_owned();
        let mut full = vec!["run", "--ready-file", ready_s.as_str()];
        full.extend_from_slice(args);
        let argv = isolated_argv(prefix, &full);
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tracer run starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let pipe = child.stderr.take().expect("stderr piped");
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().expect("lock");
                s.push_str(&line);
                s.push('\n');
            }
        });
        let me = Self {
            child,
            stderr,
            ready,
        };
        me.wait_until(Duration::from_secs(60), "ready", |_| me.ready.exists());
        me
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    fn wait_until(&self, within: Duration, what: &str, ok: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + within;
        while !ok(&self.stderr()) {
            assert!(
                Instant::now() < deadline,
                "{what} not seen within {within:?}:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGINT to unshare's child chain: sh exec'd the tracer, unshare forwards nothing, so
        // signal the whole process group we started.
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.ready);
    }
}

#[test]
fn version_names_commit_and_build_date() {
    let out = run(&[&bin().to_string_lossy(), "--version"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.trim();
    let rest = line
        .strip_prefix(&format!("tracer {} (commit ", env!("CARGO_PKG_VERSION")))
        .unwrap_or_else(|| panic!("{line:?}"));
    let (commit, rest) = rest
        .split_once(", built ")
        .unwrap_or_else(|| panic!("{line:?}"));
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{line:?}"
    );
    let date = rest.strip_suffix(')').unwrap_or_else(|| panic!("{line:?}"));
    assert!(
        date.len() == 10 && date.chars().filter(|c| *c == '-').count() == 2,
        "{line:?}"
    );
}

#[test]
fn address_flags_say_the_expected_form() {
    let bin = bin();
    let bin = bin.to_string_lossy();
    for (addr, needle) in [
        ("9090", "has no host"),
        ("localhost:90x", "is not an address"),
        ("http://0.0.0.0:9090", "without a scheme"),
    ] {
        let out = run(&[&bin, "run", "--metrics-addr", addr]);
        assert_eq!(out.status.code(), Some(2), "{addr}");
        let err = stderr(&out);
        assert!(err.contains(needle), "{addr}: {err}");
        assert!(
            err.contains("expected HOST:PORT, e.g. 0.0.0.0:9090"),
            "{addr}: {err}"
        );
    }
}

#[test]
fn observe_flag_errors() {
    let bin = bin();
    let bin = bin.to_string_lossy();
    for (args, needle) in [
        (
            &["--not", "--no-follow"][..],
            "--not must be directly followed by a filter flag",
        ),
        (&["-o", "columns=pod,colour"], "unknown column \"colour\""),
        (&["-o", "yaml"], "use table, wide, json or columns=LIST"),
        (&["-l", "app in (web"], "bad label selector"),
        (&["--min-latency", "fast"], "expected e.g. 100ms"),
        (&["--since", "3y"], "use s, m, h or d"),
    ] {
        let mut argv = vec![bin.as_ref(), "observe"];
        argv.extend_from_slice(args);
        let out = run(&argv);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn missing_perfmon_is_named_without_a_verifier_dump() {
    if !privileged() {
        return;
    }
    // As root, but without CAP_PERFMON (and CAP_SYS_ADMIN, which would stand in for it): the
    // DaemonSet with a capability forgotten.
    let out = run_isolated(
        &["setpriv", "--bounding-set", "-perfmon,-sys_admin"],
        &["run", "--no-socket"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line:\n{err}");
    assert!(
        err.starts_with("tracer: missing CAP_PERFMON (so the verifier accepts"),
        "{err}"
    );
    assert!(
        err.contains("runs as root but its capability set was reduced"),
        "{err}"
    );
    assert!(err.contains("add BPF, PERFMON, NET_ADMIN and SYSLOG to the container's securityContext.capabilities.add"), "{err}");
    for absent in ["Verifier", "verifier output", "are you root", "COUNTERS"] {
        assert!(!err.contains(absent), "{absent}: {err}");
    }
}

#[test]
fn non_root_is_told_what_is_missing_once() {
    if !privileged() {
        return;
    }
    let out = run_isolated(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        &["run", "--no-socket"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line:\n{err}");
    assert!(
        err.starts_with(
            "tracer: missing CAP_BPF (to create the BPF maps and load the programs), CAP_PERFMON"
        ),
        "{err}"
    );
    assert!(
        err.contains("CAP_NET_ADMIN (to load and attach the tc programs)"),
        "{err}"
    );
    assert!(err.contains("does not run as root"), "{err}");
    assert!(err.contains("`sudo tracer run`"), "{err}");
    assert!(!err.contains("failed to create map"), "{err}");
}

#[test]
fn missing_kubeconfig_is_one_clean_line() {
    if !privileged() {
        return;
    }
    let out = run_isolated(
        &[],
        &[
            "run",
            "--no-socket",
            "--kubeconfig",
            "/nonexistent/kubeconfig",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(
        err.lines().last(),
        Some("tracer: kubeconfig /nonexistent/kubeconfig (--kubeconfig): file not found"),
        "{err}"
    );
    assert_eq!(err.matches("tracer:").count(), 1, "{err}");
    let out = run_isolated(
        &["env", "KUBECONFIG=/nonexistent/kc"],
        &["run", "--no-socket"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).lines().last(),
        Some("tracer: $KUBECONFIG=/nonexistent/kc: file not found"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unreachable_api_server_is_named_with_its_url() {
    if !privileged() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("tracer-cli-kc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let kc = dir.join("kubeconfig");
    std::fs::write(
        &kc,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"https://127.0.0.1:1\", insecure-skip-tls-verify: true}\n\
         contexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\nusers:\n- name: u\n  user: {token: t}\n",
    )
    .expect("kubeconfig");
    let kc_s = kc.to_string_lossy().into_owned();
    let d = Daemon::start(&[], &["--no-socket", "--kubeconfig", &kc_s]);
    d.wait_until(Duration::from_secs(20), "a watch failure", |e| {
        e.contains("Kubernetes watch of pods failing")
    });
    let err = d.stderr();
    let line = err
        .lines()
        .find(|l| l.contains("Kubernetes watch of pods failing"))
        .unwrap_or_default();
    assert!(line.contains("API server https://127.0.0.1:1/"), "{line}");
    assert!(line.contains("Connection refused"), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn start_up_line_names_socket_metrics_and_attach_mode() {
    if !privileged() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("tracer-cli-sock-{}", std::process::id()));
    let sock = dir.join("tracer.sock");
    let sock_s = sock.to_string_lossy().into_owned();
    // Without CAP_SYSLOG: a warning, not an error.
    let d = Daemon::start(
        &["setpriv", "--bounding-set", "-syslog"],
        &[
            "--socket",
            &sock_s,
            "--metrics-addr",
            "localhost:19466",
            "--tc-attach",
            "netlink",
        ],
    );
    d.wait_until(Duration::from_secs(10), "the start-up line", |e| {
        e.contains("tracer running")
    });
    let err = d.stderr();
    assert!(
        err.contains("CAP_SYSLOG missing (to read /proc/kallsyms and symbolize drop locations)"),
        "{err}"
    );
    let line = err
        .lines()
        .find(|l| l.contains("tracer running"))
        .unwrap_or_default();
    assert!(line.contains("attach=\"netlink\""), "{line}");
    assert!(line.contains(&format!("socket={sock_s}")), "{line}");
    assert!(
        line.contains("metrics=http://127.0.0.1:19466/metrics"),
        "{line}"
    );
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

const SOCKET: &str = "/run/tracer-test/observe-cli.sock";

/// `tracer observe --socket SOCKET --no-follow --last 1000 <args>`: exit status, stdout, stderr.
fn observe(args: &[&str]) -> (bool, String, String) {
    let bin = bin();
    let mut argv = vec![
        bin.to_string_lossy().into_owned(),
        "observe".into(),
        "--socket".into(),
        SOCKET.into(),
        "--no-follow".into(),
        "--last".into(),
        "1000".into(),
    ];
    argv.extend(args.iter().map(|s| (*s).to_owned()));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = run(&argv);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr(&out),
    )
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn observe_against_the_lab() {
    if !privileged() {
        return;
    }
    let _ = std::fs::remove_dir_all(Path::new(SOCKET).parent().expect("dir"));
    let topology = lab::topology_path().to_string_lossy().into_owned();
    let (guard, tracer) = lab_with_tracer(
        lab::Pin::Both,
        &[],
        &[
            "--window",
            "2s",
            "--answered",
            "flows",
            "--socket",
            SOCKET,
            "--lab-metadata",
            &topology,
        ],
    );
    let topo = guard.topology().clone();
    let client = topo.pod("default", "client").expect("client pod").clone();
    for i in 0..6 {
        dig(
            &client.netns,
            &["@198.19.0.10", &format!("q{i}.lab.tracer")],
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while tracer
        .lines()
        .iter()
        .filter(|v| v["schema"] == "tracer.flow/v1")
        .count()
        < 6
    {
        assert!(Instant::now() < deadline, "verdicts: {}", tracer.stderr());
        thread::sleep(Duration::from_millis(100));
    }

    // --node with the short name the table shows.
    let (ok, out, err) = observe(&["--node", "ip-198-18-1-10", "-o", "json"]);
    assert!(ok, "{err}");
    let lines = json_lines(&out);
    assert!(lines.len() >= 6, "short node name matches: {out}\n{err}");
    assert!(err.is_empty(), "{err}");

    // A misspelt namespace: an empty result, and a warning that says why.
    let (ok, out, err) = observe(&["-n", "defualt"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "only the header: {out}");
    assert!(
        err.starts_with("tracer observe: warning: --namespace \"defualt\": no verdict since tracer run started ("),
        "{err}"
    );
    assert!(
        err.contains("namespaces seen: default, kube-system"),
        "{err}"
    );

    // A label selector on the pod labels enrichment knows.
    let (ok, out, err) = observe(&["-l", "app=client", "-o", "json"]);
    assert!(ok, "{err}");
    let lines = json_lines(&out);
    assert!(lines.len() >= 6, "{out}");
    assert!(
        lines
            .iter()
            .all(|v| v["client"]["labels"]["app"] == "client"),
        "{out}"
    );

    // --not negates the next filter flag.
    let (ok, out, _) = observe(&["--not", "--verdict", "answered", "-o", "json"]);
    assert!(ok);
    assert!(
        json_lines(&out).iter().all(|v| v["verdict"] != "answered"),
        "{out}"
    );

    // The table, piped: one line per record, nothing cut, rows in DECIDED order.
    let (ok, out, err) = observe(&["--since", "10m"]);
    assert!(ok, "{err}");
    let mut rows = out.lines();
    let header = rows.next().unwrap_or_default();
    assert!(
        header.starts_with("DECIDED       NAMESPACE    POD"),
        "{header}"
    );
    let rows: Vec<&str> = rows.collect();
    assert!(rows.len() >= 6, "{out}");
    assert!(rows.iter().any(|r| r.contains("q5.lab.tracer A")), "{out}");
    assert!(!out.contains('…'), "{out}");
    let decided: Vec<&str> = rows
        .iter()
        .map(|r| r.get(..12).unwrap_or_default())
        .collect();
    let mut sorted = decided.clone();
    sorted.sort_unstable();
    assert_eq!(decided, sorted, "rows in DECIDED order:\n{out}");
    drop(tracer);
    drop(guard);
}
