//! `cargo xtask demo`: the tracer against the lab, walking through the failure catalogue and
//! printing each verdict the way an on-call engineer would read it.

#![allow(
    clippy::indexing_slicing,
    reason = "serde_json::Value indexed by key yields Null when absent; it never panics"
)]

use std::{
    io::IsTerminal as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::{
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

/// Runs the demo. The lab is torn down at the end (or on error).
pub fn run() -> Result<()> {
    let style = Style {
        color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    println!("Building the lab (simulated EKS node A, VPC, node B, internet)…");
    let guard = lab::LabGuard::up().context("bringing the lab up")?;
    let topo = guard.topology().clone();
    // Names come from the lab's topology file (a cluster would use the API server).
    let topology_file = lab::topology_path();
    let topology_file = topology_file.to_string_lossy();
    let mut tracer = TracerProcess::start(
        lab::NS_NODE_A,
        &[
            "--window",
            "2s",
            "--answered",
            "flows",
            "--node-name",
            lab::NODE_A_NAME,
            "--lab-metadata",
            &topology_file,
        ],
    )
    .context("starting the tracer in node A")?;
    println!(
        "tracer running in {} (verdict window 2 s)\n",
        lab::NS_NODE_A
    );
    let mut seen = 0usize;
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
        // Wait for this scenario's verdicts: one per action, within the window plus slack.
        let deadline = Instant::now() + Duration::from_secs(6);
        let want = seen + sc.actions.len();
        while verdicts(&tracer).len() < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let all = verdicts(&tracer);
        for v in all.iter().skip(seen) {
            print_verdict(&style, v);
        }
        seen = all.len();
        for f in sc.failures {
            lab::set_failure(*f, false)?;
        }
        println!();
    }
    tracer.stop()?;
    println!("{} verdicts. Tearing the lab down.", seen);
    drop(guard);
    Ok(())
}

fn verdicts(tracer: &TracerProcess) -> Vec<Value> {
    tracer
        .lines()
        .into_iter()
        .filter(|v| v["schema"] == "tracer.flow/v1")
        .collect()
}
