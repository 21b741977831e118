//! The shipped image, run as the DaemonSet runs it: `cargo xtask image` builds it (or finds it
//! up to date), podman starts it in the lab's node A with everything deploy/daemonset.yaml says
//! (node A's network namespace as the host network, read-only root, capabilities dropped but
//! BPF, PERFMON, NET_ADMIN and SYSLOG, the same mounts, environment and limits), a pod queries
//! kube-dns, and the container must print an answered verdict and exit 0 on SIGTERM.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;
use tracer_tests::{ci, dig, lab, lab_up, privileged};
use xtask::{
    image::{self, Arch},
    pod::{Container, ContainerSpec},
};

/// True when podman and buildah are installed; otherwise skips with a message, or fails under CI
/// (scripts/setup.sh installs them).
fn container_tools() -> bool {
    let missing: Vec<&str> = ["podman", "buildah"]
        .into_iter()
        .filter(|t| !image::which(t))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{} not installed (scripts/setup.sh installs them)",
        missing.join(" and ")
    );
    if ci() {
        panic!("image test cannot run: {msg} (CI=true requires it to run)");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

/// A stdout line that says a DNS query was answered: a per-flow verdict, or a summary line
/// (`"verdict":"answered"` with a `count`) where healthy answers are summarised.
fn answered(line: &str) -> bool {
    serde_json::from_str::<Value>(line).is_ok_and(|v| v["verdict"] == "answered")
}

/// Polls the readiness probe from inside the node's network namespace until it answers 200.
fn wait_ready(container: &mut Container, url: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let ok = lab::exec_in(
            lab::NS_NODE_A,
            &["curl", "--silent", "--fail", "--max-time", "2", url],
        )
        .is_ok_and(|out| out.status.success());
        if ok {
            return;
        }
        if let Ok(Some(status)) = container.try_wait() {
            panic!(
                "container exited before it was ready ({status}):\n{}",
                container.stderr()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{url} not ready after {} s:\n{}",
            timeout.as_secs(),
            container.stderr()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn image_runs_as_the_daemonset_and_answers() {
    if !privileged() || !container_tools() {
        return;
    }
    // Built before taking the lab lock: a cold build takes minutes, an up-to-date one seconds.
    let img = image::build(&image::Options::new(Arch::Amd64)).expect("cargo xtask image");
    assert!(img.size <= image::MAX_IMAGE_BYTES, "{img:?}");
    let inspected = image::inspect(&img.tag)
        .expect("podman image inspect")
        .expect("image exists");
    for (key, value) in img.meta.pairs() {
        assert_eq!(image::label(&inspected, key), Some(value), "label {key}");
        assert_eq!(
            inspected["Annotations"][key].as_str(),
            Some(value),
            "annotation {key}: {inspected:#}"
        );
    }
    assert_eq!(
        inspected["Config"]["Entrypoint"][0],
        "/usr/local/bin/tracer"
    );

    let root = xtask::tracer::workspace_root();
    let yaml = std::fs::read_to_string(root.join("deploy/daemonset.yaml")).expect("daemonset");
    let netns = Path::new("/run/netns").join(lab::NS_NODE_A);
    let spec = ContainerSpec::from_daemonset(
        &yaml,
        "tracer",
        &netns,
        lab::NODE_A_NAME,
        &lab::NODE_A_IP.to_string(),
    )
    .expect("the DaemonSet translates to podman flags");
    let probe = spec
        .readiness
        .clone()
        .expect("the DaemonSet has an httpGet readiness probe");

    let guard = lab_up(lab::Pin::A, &[]);
    let client = guard
        .topology()
        .pod("default", "client")
        .expect("client pod")
        .clone();
    let mut container =
        Container::start(&img.tag, &spec, "tracer-image-test").expect("podman run starts");
    // The DaemonSet binds its listeners to the node's IP (HOST_IP), as the kubelet probes it.
    let url = format!("http://{}:{}{}", lab::NODE_A_IP, probe.port, probe.path);
    wait_ready(&mut container, &url, Duration::from_secs(60));

    let name = "kubernetes.default.svc.cluster.local";
    let answer = dig(&client.netns, &["@198.19.0.10", name]);
    assert!(answer.contains("198.19.0.1"), "dig: {answer}");
    // A per-flow verdict comes at once; a summary within its flush interval (or on SIGTERM).
    let _ = container.wait_for(Duration::from_secs(12), answered);
    // `kubectl exec … -- tracer observe` (README): the binary is on PATH and the observe
    // socket in the DaemonSet's emptyDir answers (what it lists depends on how healthy
    // answers are reported, so only the exit status is required).
    let observe = container
        .exec(&[
            "tracer",
            "observe",
            "--last",
            "100",
            "--no-follow",
            "-o",
            "json",
        ])
        .expect("podman exec");
    let observed = String::from_utf8_lossy(&observe.stdout);
    assert!(
        observe.status.success(),
        "tracer observe in the container ({}): {observed}\n{}",
        observe.status,
        String::from_utf8_lossy(&observe.stderr)
    );
    eprintln!(
        "tracer observe in the container: {} lines",
        observed.lines().count()
    );

    let status = container.terminate(spec.grace).expect("container stops");
    let lines = container.lines();
    let stderr = container.stderr();
    assert!(
        status.success(),
        "exit status {status} after SIGTERM (want 0):\n{stderr}"
    );
    let line = lines.iter().find(|l| answered(l)).unwrap_or_else(|| {
        panic!("no \"verdict\":\"answered\" line on stdout:\n{lines:#?}\nstderr:\n{stderr}")
    });
    eprintln!("answered: {line}\nexit after SIGTERM: {status}");
    let v: Value = serde_json::from_str(line).expect("JSON");
    if v["schema"] == "tracer.flow/v1" {
        // NODE_NAME came through from the manifest's downward-API entry.
        assert_eq!(v["node"], lab::NODE_A_NAME, "{v:#}");
        assert_eq!(v["client"]["ip"], client.ip.to_string(), "{v:#}");
    }
    drop(container);
    drop(guard);
}
