//! Shared helpers for the privileged integration tests.
//!
//! Every test here runs the real tracer binary (loaded into the real kernel) inside the lab's
//! node A namespace while real DNS servers answer real queries sent with `dig` from pod
//! namespaces. They need root; under CI (`CI=true`) a test that cannot run fails.

use std::time::Duration;

pub use xtask::lab;
pub use xtask::privilege::{ci, privileged};
pub use xtask::tracer::TracerProcess;

/// True when the kube-apiserver binary is available; otherwise skips with a message, or fails
/// under CI (scripts/setup.sh builds it).
pub fn apiserver_available() -> bool {
    match xtask::apiserver::apiserver_bin() {
        Ok(_) => true,
        Err(e) if ci() => panic!("{e:#} (CI=true requires it)"),
        Err(e) => {
            eprintln!("SKIPPED: {e:#}");
            false
        }
    }
}

/// `tracer run` flags for one line per flow, healthy ones included (the default summarises
/// answered queries and established connections): for tests that look at each flow's verdict.
pub const PER_FLOW: [&str; 4] = ["--answered", "flows", "--established", "flows"];

/// Brings the lab up, points kube-dns at `pin`, switches `failures` on and starts the tracer in
/// node A with `args`. Bind the result as `let (guard, tracer) = …`: the tracer is then stopped
/// before the lab is torn down.
pub fn lab_with_tracer(
    pin: lab::Pin,
    failures: &[lab::Failure],
    args: &[&str],
) -> (lab::LabGuard, TracerProcess) {
    let guard = lab_up(pin, failures);
    let tracer = TracerProcess::start(lab::NS_NODE_A, args).expect("tracer starts");
    (guard, tracer)
}

/// Brings the lab up (taking its lock), points kube-dns at `pin` and switches `failures` on,
/// without starting a tracer: for tests that start it another way (the image test runs it
/// with podman). Start the tracer after this and stop it before the guard drops.
pub fn lab_up(pin: lab::Pin, failures: &[lab::Failure]) -> lab::LabGuard {
    let guard = lab::LabGuard::up().expect("lab up");
    lab::pin(pin).expect("pin kube-dns");
    for f in failures {
        lab::set_failure(*f, true).expect("failure on");
    }
    guard
}

/// Runs `dig` inside a pod namespace and returns its stdout.
pub fn dig(ns: &str, args: &[&str]) -> String {
    let mut argv = vec!["dig", "+time=1", "+tries=1"];
    argv.extend_from_slice(args);
    match lab::exec_in(ns, &argv) {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => panic!("dig in {ns} failed to run: {e:#}"),
    }
}

/// Default wait for an expected line.
pub const WAIT: Duration = Duration::from_secs(10);

/// The tracer's programs loaded in the kernel now (`bpftool -j prog show`).
pub fn our_programs() -> Vec<serde_json::Value> {
    xtask::tracer::our_programs().expect("bpftool lists the loaded programs")
}

/// The BPF filters under the clsact qdisc of `dev` in node A (`tc filter show`), both hooks.
pub fn clsact_filters(dev: &str) -> String {
    let mut text = String::new();
    for dir in ["ingress", "egress"] {
        let out = lab::exec_in(lab::NS_NODE_A, &["tc", "filter", "show", "dev", dev, dir])
            .expect("tc runs");
        text.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    text
}
