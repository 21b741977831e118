//! `cargo xtask demo`: the tracer against the lab, walking through the failure catalogue and
//! printing each verdict the way an on-call engineer would read it.

#![allow(
    clippy::indexing_slicing,
    reason = "serde_json::Value indexed by key yields Null when absent; it never panics"
)]

use std::{
    io::IsTerminal as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::{
    apiserver::ApiServer,
    lab::{self, Failure, Pin},
    tracer::TracerProcess,
};

/// What a scenario does to provoke its verdict.
enum Action {
    Dig {
        pod: (&'static str, &'static str),
        args: &'static [&'static str],
    },
    Connect {
        pod: (&'static str, &'static str),
    },
}

struct Scenario {
    row: u8,
    title: &'static str,
    pin: Pin,
    failures: &'static [Failure],
    actions: &'static [Action],
}

const NAME: &str = "kubernetes.default.svc.cluster.local";

fn scenarios() -> Vec<Scenario> {
    use Action::*;
    const CLIENT: (&str, &str) = ("default", "client");
    const SG: (&str, &str) = ("default", "sg-client");
    vec![
        Scenario {
            row: 1,
            title: "Healthy: local CoreDNS replica",
            pin: Pin::A,
            failures: &[],
            actions: &[Dig {
                pod: CLIENT,
                args: &[NAME],
            }],
        },
        Scenario {
            row: 1,
            title: "Healthy: replica on node B",
            pin: Pin::B,
            failures: &[],
            actions: &[Dig {
                pod: CLIENT,
                args: &["web.shop.svc.cluster.local"],
            }],
        },
        Scenario {
            row: 2,
            title: "Node security group allows only TCP between nodes",
            pin: Pin::B,
            failures: &[Failure::NodeSgTcpOnly],
            actions: &[
                Dig {
                    pod: CLIENT,
                    args: &["+tcp", "whoami.lab.tracer", "TXT"],
                },
                Dig {
                    pod: CLIENT,
                    args: &[NAME],
                },
            ],
        },
        Scenario {
            row: 3,
            title: "Pod security group (branch ENI) blocks DNS",
            pin: Pin::A,
            failures: &[Failure::PodSgNoDns],
            actions: &[Dig {
                pod: SG,
                args: &[NAME],
            }],
        },
        Scenario {
            row: 4,
            title: "NACL drops the return path",
            pin: Pin::B,
            failures: &[Failure::NaclReturn],
            actions: &[Dig {
                pod: CLIENT,
                args: &[NAME],
            }],
        },
        Scenario {
            row: 5,
            title: "NetworkPolicy / iptables drops DNS on node A",
            pin: Pin::Both,
            failures: &[Failure::NetpolDropDns],
            actions: &[Dig {
                pod: CLIENT,
                args: &[NAME],
            }],
        },
        Scenario {
            row: 6,
            title: "CoreDNS replica down (port closed)",
            pin: Pin::A,
            failures: &[Failure::ReplicaDownA],
            actions: &[Dig {
                pod: CLIENT,
                args: &[NAME],
            }],
        },
        Scenario {
            row: 7,
            title: "CoreDNS replica alive but silent",
            pin: Pin::A,
            failures: &[Failure::ReplicaSilentA],
            actions: &[Dig {
                pod: CLIENT,
                args: &[NAME],
            }],
        },
        Scenario {
            row: 8,
            title: "Pod egress with no NAT",
            pin: Pin::Both,
            failures: &[Failure::EgressNoNat],
            actions: &[Connect { pod: CLIENT }],
        },
        Scenario {
            row: 8,
            title: "Pod egress with no route",
            pin: Pin::Both,
            failures: &[Failure::EgressNoRoute],
            actions: &[Connect { pod: CLIENT }],
        },
        Scenario {
            row: 9,
            title: "rp_filter drops the reply (asymmetric routing)",
            pin: Pin::B,
            failures: &[Failure::RpFilter],
            actions: &[Dig {
                pod: CLIENT,
                args: &[NAME],
            }],
        },
        Scenario {
            row: 10,
            title: "NXDOMAIN is an answer, not a network failure",
            pin: Pin::Both,
            failures: &[],
            actions: &[Dig {
                pod: CLIENT,
                args: &["nosuch.default.svc.cluster.local"],
            }],
        },
    ]
}

struct Style {
    color: bool,
}

impl Style {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }
    fn verdict(&self, v: &str) -> String {
        let code = match v {
            "answered" | "established" => "1;32",
            "dropped" | "rejected" => "1;31",
            "lost_beyond_node" | "unanswered" => "1;33",
            _ => "1;35",
        };
        self.paint(code, &v.to_uppercase())
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Prints one verdict readably.
fn print_verdict(style: &Style, v: &Value) {
    let who = match (
        v["client"]["namespace"].as_str(),
        v["client"]["pod"].as_str(),
    ) {
        (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
        _ => s(&v["client"]["ip"]),
    };
    let what = if v["kind"] == "dns" {
        format!("{} {}", s(&v["dns"]["qname"]), s(&v["dns"]["qtype"]))
    } else {
        format!("{}:{}", s(&v["server"]["ip"]), s(&v["server"]["port"]))
    };
    let server = match v["server"]["pod"].as_str() {
        Some(pod) => format!("{} ({})", pod, s(&v["server"]["ip"])),
        None => s(&v["server"]["ip"]),
    };
    println!(
        "   {}  {} {} → {}  [{}]",
        style.verdict(&s(&v["verdict"])),
        who,
        what,
        server,
        s(&v["kind"])
    );
    let mut detail = format!(
        "where: {} ({}, {})",
        s(&v["where"]["interface"]),
        s(&v["where"]["interface_kind"]),
        s(&v["where"]["direction"])
    );
    if v["drop"].is_object() {
        detail.push_str(&format!(
            "   drop: {} at {}",
            s(&v["drop"]["reason"]),
            s(&v["drop"]["location"])
        ));
    }
    if v["dns"]["rcode"].is_string() {
        detail.push_str(&format!("   rcode: {}", s(&v["dns"]["rcode"])));
        // No latency when the answer never reached the client (dropped on the way back).
        if let Some(ms) = v["dns"]["latency_ms"].as_f64() {
            detail.push_str(&format!("  latency: {ms} ms"));
        }
    }
    // Which way a query lost beyond the node died, as the server's node saw it.
    if let Some(finding) = v["peer"]["finding"].as_str() {
        let who = if v["peer"]["node"] == v["node"] {
            "this node".to_owned()
        } else {
            format!("node {}", s(&v["peer"]["node"]))
        };
        match v["peer"]["reason"].as_str() {
            Some(r) => detail.push_str(&format!("   {who}: {finding} ({r})")),
            None => detail.push_str(&format!("   {who}: {finding}")),
        }
    }
    println!("   {}", style.paint("2", &detail));
    if let Some(path) = v["path"].as_array() {
        let hops: Vec<String> = path
            .iter()
            .map(|p| {
                let note = p["note"].as_str().unwrap_or_default();
                match p["interface"].as_str() {
                    // A TCP connection's last segment freed with its closing socket: no loss.
                    _ if note.contains("freed as the socket closed") => "(socket closed)".into(),
                    Some(i) => format!("{i}:{}", s(&p["hook"])),
                    None => format!("(no device):{}", s(&p["hook"])),
                }
            })
            .collect();
        println!(
            "   {}",
            style.paint("2", &format!("path: {}", hops.join(" → ")))
        );
    }
    println!("   hint: {}", s(&v["hint"]));
}

/// Namespace of the tracer pods the demo's API server knows (peers are found there).
const TRACER_NS: &str = "tracer-system";
/// Port of the peer service in both lab nodes.
const PEER_PORT: u16 = 9966;

/// The verdicts one scenario printed.
#[derive(Debug, Clone)]
pub struct Shown {
    /// Catalogue row.
    pub row: u8,
    /// Scenario title.
    pub title: &'static str,
    /// Its verdicts, as the tracer in node A printed them.
    pub verdicts: Vec<Value>,
}

/// The lab's API server and node B's tracer: names from a real kube-apiserver and cross-node
/// verdicts. Fields drop in order: node B's tracer first, then the API server, then the TLS
/// material.
struct Cluster {
    node_b: TracerProcess,
    api: ApiServer,
    tls: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.node_b.stop();
        let _ = std::fs::remove_dir_all(&self.tls);
    }
}

/// `tracer run` flags for the peer service of the tracer in lab node `node` at `ip`.
fn peer_args(node: &str, ip: &str, kubeconfig: &str, tls: &str, socket: &str) -> Vec<String> {
    [
        "--kubeconfig",
        kubeconfig,
        "--node-name",
        node,
        "--peer-listen",
        &format!("{ip}:{PEER_PORT}"),
        "--peer-tls",
        tls,
        "--peer-namespace",
        TRACER_NS,
        "--socket",
        socket,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Starts the lab's kube-apiserver (seeded with the lab's pods, Services and one tracer pod per
/// node), makes the peer certificates and starts the tracer in node B.
fn start_cluster(topo: &lab::Topology) -> Result<Cluster> {
    crate::apiserver::apiserver_bin()?;
    let api = ApiServer::start_with(crate::apiserver::lab_vpc_options())?;
    api.seed_lab(topo)?;
    api.seed_tracer_pods(
        TRACER_NS,
        &[
            (lab::NODE_A_NAME, lab::NODE_A_IP),
            (lab::NODE_B_NAME, lab::NODE_B_IP),
        ],
    )?;
    let tls = std::env::temp_dir().join(format!("tracer-demo-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tls);
    let out = std::process::Command::new(crate::tracer::tracer_bin())
        .args(["certs", "--out"])
        .arg(&tls)
        .output()
        .context("running tracer certs")?;
    anyhow::ensure!(
        out.status.success(),
        "tracer certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kubeconfig = api.tracer_kubeconfig().to_string_lossy().into_owned();
    let args = peer_args(
        lab::NODE_B_NAME,
        &lab::NODE_B_IP.to_string(),
        &kubeconfig,
        &tls.to_string_lossy(),
        "/run/tracer-demo-node-b.sock",
    );
    let mut argv: Vec<&str> = vec!["--window", "2s", "--answered", "off"];
    argv.extend(args.iter().map(String::as_str));
    let node_b =
        TracerProcess::start(lab::NS_NODE_B, &argv).context("starting the tracer in node B")?;
    Ok(Cluster { node_b, api, tls })
}

/// Waits until node A's tracer names a replica on node B (its watches have synced): a few
/// queries, not shown.
fn until_named(tracer: &TracerProcess, topo: &lab::Topology) -> Result<()> {
    let client = topo.pod("default", "client").context("client pod")?;
    lab::pin(Pin::B)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let from = tracer.line_count();
        lab::exec_in(
            &client.netns,
            &[
                "dig",
                "+time=1",
                "+tries=1",
                "@198.19.0.10",
                "whoami.lab.tracer",
                "TXT",
            ],
        )?;
        if tracer
            .wait_for_from(from, Duration::from_secs(5), |v| {
                v["schema"] == "tracer.flow/v1"
                    && v["enrichment"] == "ready"
                    && v["server"]["node"] == lab::NODE_B_NAME
            })
            .is_some()
        {
            return Ok(());
        }
    }
    let err = tracer.stderr();
    let mut tail: Vec<&str> = err.lines().rev().take(5).collect();
    tail.reverse();
    anyhow::bail!(
        "node A's tracer did not learn the cluster's names within 30 s; its last log lines:\n{}",
        tail.join("\n")
    )
}

/// Runs the demo and prints it. The lab is torn down at the end (or on error).
pub fn run() -> Result<()> {
    run_shown().map(drop)
}

/// Runs the demo, prints it and returns what each scenario showed. With the lab's
/// kube-apiserver available (scripts/build-kube-apiserver.sh) names come from it and a second
/// tracer in node B answers node A's cross-node questions; without it, names come from the
/// lab's topology file and rows 2 and 4 cannot say which way the query died.
pub fn run_shown() -> Result<Vec<Shown>> {
    let style = Style {
        color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    println!("Building the lab (simulated EKS node A, VPC, node B, internet)…");
    let guard = lab::LabGuard::up().context("bringing the lab up")?;
    let topo = guard.topology().clone();
    let cluster = match start_cluster(&topo) {
        Ok(c) => Some(c),
        Err(e) => {
            println!(
                "(no cluster: {e:#}; names come from the lab's topology file and node B runs no tracer, so rows 2 and 4 cannot say which way a query died)"
            );
            None
        }
    };
    // Names come from the lab's API server, or its topology file.
    let topology_file = lab::topology_path().to_string_lossy().into_owned();
    let mut args: Vec<String> = ["--window", "2s", "--answered", "flows"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    match &cluster {
        Some(c) => args.extend(peer_args(
            lab::NODE_A_NAME,
            &lab::NODE_A_IP.to_string(),
            &c.api.tracer_kubeconfig().to_string_lossy(),
            &c.tls.to_string_lossy(),
            "/run/tracer.sock",
        )),
        None => args.extend(
            [
                "--node-name",
                lab::NODE_A_NAME,
                "--lab-metadata",
                &topology_file,
            ]
            .iter()
            .map(|s| (*s).to_owned()),
        ),
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut tracer =
        TracerProcess::start(lab::NS_NODE_A, &argv).context("starting the tracer in node A")?;
    match &cluster {
        Some(_) => {
            if let Err(e) = until_named(&tracer, &topo) {
                println!("(names not ready, verdicts may lack them: {e:#})");
            }
            println!(
                "tracer running in {} and {} (verdict window 2 s; names from the lab's kube-apiserver; node B answers node A's cross-node questions)\n",
                lab::NS_NODE_A,
                lab::NS_NODE_B
            );
        }
        None => println!(
            "tracer running in {} (verdict window 2 s)\n",
            lab::NS_NODE_A
        ),
    }
    let mut seen = verdicts(&tracer).len();
    let mut shown = Vec::new();
    for sc in scenarios() {
        println!(
            "{}",
            style.paint("1", &format!("── {}. {} ──", sc.row, sc.title))
        );
        lab::pin(sc.pin)?;
        for f in sc.failures {
            lab::set_failure(*f, true)?;
        }
        for action in sc.actions {
            match action {
                Action::Dig { pod, args } => {
                    let p = topo.pod(pod.0, pod.1).context("pod in topology")?;
                    let mut argv = vec!["dig", "+time=1", "+tries=1", "@198.19.0.10"];
                    argv.extend_from_slice(args);
                    println!("   $ {} # in pod {}/{}", argv.join(" "), pod.0, pod.1);
                    lab::exec_in(&p.netns, &argv)?;
                }
                Action::Connect { pod } => {
                    let p = topo.pod(pod.0, pod.1).context("pod in topology")?;
                    println!("   $ connect 203.0.113.80:80 # in pod {}/{}", pod.0, pod.1);
                    lab::exec_in(
                        &p.netns,
                        &["socat", "-T2", "-", "TCP:203.0.113.80:80,connect-timeout=2"],
                    )?;
                }
            }
        }
        // Wait for this scenario's verdicts: one per action, within the window plus slack (and
        // the peer's answer, at most 1 s).
        let deadline = Instant::now() + Duration::from_secs(7);
        let want = seen + sc.actions.len();
        while verdicts(&tracer).len() < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let all = verdicts(&tracer);
        let mine: Vec<Value> = all.iter().skip(seen).cloned().collect();
        for v in &mine {
            print_verdict(&style, v);
        }
        seen = all.len();
        for f in sc.failures {
            lab::set_failure(*f, false)?;
        }
        shown.push(Shown {
            row: sc.row,
            title: sc.title,
            verdicts: mine,
        });
        println!();
    }
    tracer.stop()?;
    let n: usize = shown.iter().map(|s| s.verdicts.len()).sum();
    println!("{n} verdicts. Tearing the lab down.");
    drop(cluster);
    drop(guard);
    Ok(shown)
}

fn verdicts(tracer: &TracerProcess) -> Vec<Value> {
    tracer
        .lines()
        .into_iter()
        .filter(|v| v["schema"] == "tracer.flow/v1")
        .collect()
}
