//! Command line.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

/// Per-flow verdicts for DNS and pod egress on Kubernetes nodes: where did the packet die?
#[derive(Debug, Parser)]
#[command(name = "tracer", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to this node's interfaces and print one JSON line per verdict (and per packet with
    /// --events) on stdout. Needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (plus CAP_SYSLOG for
    /// symbolized drop locations); see deploy/daemonset.yaml.
    Run(RunArgs),
    /// Stream this node's verdicts from the running `tracer run`, filtered, as a table or JSON
    /// (root only: reads its Unix socket). E.g. `tracer observe --verdict dropped,lost_beyond_node
    /// -n shop` or `tracer observe --last 100 --no-follow -o json`.
    Observe(crate::observe::client::ObserveArgs),
    /// Start the Kubernetes metadata cache, wait until it is ready, print it as JSON and exit.
    #[command(hide = true)]
    MetaDump(MetaDumpArgs),
    /// Fill the metadata cache with synthetic pods, nodes and services; print memory use.
    #[command(hide = true)]
    MetaBench {
        /// Pods on this node.
        #[arg(long, default_value_t = 500)]
        pods: usize,
        /// Nodes in the cluster.
        #[arg(long, default_value_t = 50)]
        nodes: usize,
    },
    /// Measure the kernel programs' cost per packet with BPF_PROG_TEST_RUN (needs root).
    #[cfg(feature = "devtools")]
    #[command(hide = true)]
    Bench {
        /// Packets per case.
        #[arg(long, default_value_t = 1_000_000)]
        packets: u32,
    },
    /// Attach a stand-in for another tool's tc program (drops DNS, passes the rest with
    /// TC_ACT_OK) to an interface until SIGTERM: the transparency tests' "other tool".
    #[cfg(feature = "devtools")]
    #[command(hide = true)]
    StubPolicy(crate::devtools::stub::StubArgs),
}

/// Options of `tracer meta-dump`.
#[derive(Debug, Args)]
pub struct MetaDumpArgs {
    /// Kubeconfig to use (default: in-cluster config, then $KUBECONFIG).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Node whose pods to watch (defaults to NODE_NAME; all pods when unset).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// VPC CNI host veth prefix.
    #[arg(long, env = "AWS_VPC_K8S_CNI_VETHPREFIX", default_value = "eni")]
    pub veth_prefix: String,
    /// How long to wait for the cache to be ready (e.g. 30s).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Options of `tracer run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Create this file once every program is attached (for scripts and tests to wait on).
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,

    /// Override the classification of an interface: NAME=KIND, KIND one of pod_veth, uplink,
    /// trunk, branch_eni, other, ignore. Repeatable.
    #[arg(long = "iface", value_name = "NAME=KIND")]
    pub iface_overrides: Vec<String>,

    /// Also print every packet event the kernel reported (JSON lines with "type":"packet").
    #[arg(long)]
    pub events: bool,

    /// How tc programs are attached: tcx links (Linux ≥ 6.6), netlink clsact filters, or auto.
    #[arg(long, value_enum, default_value_t = crate::capture::TcMode::Auto)]
    pub tc_attach: crate::capture::TcMode,

    /// Do not load the skb:kfree_skb drop program.
    #[arg(long)]
    pub no_drops: bool,

    /// How long a query or connection may stay open before its verdict is decided
    /// (e.g. 5s, 1500ms). The default matches the usual resolver timeout.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub window: Duration,

    /// Node name reported in verdicts (defaults to NODE_NAME, then the host name).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Kubeconfig for Kubernetes names (default: in-cluster config, then $KUBECONFIG; without
    /// any, verdicts carry IPs only).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// VPC CNI host veth prefix (AWS_VPC_K8S_CNI_VETHPREFIX).
    #[arg(long, env = "AWS_VPC_K8S_CNI_VETHPREFIX", default_value = "eni")]
    pub veth_prefix: String,

    /// Take Kubernetes names from the built-in lab's topology file instead of an API server
    /// (`cargo xtask lab up` writes /run/tracer-lab/topology.json).
    #[arg(long, value_name = "PATH", conflicts_with = "kubeconfig")]
    pub lab_metadata: Option<PathBuf>,

    /// What healthy DNS answers produce: one summary line per client, replica, query type and
    /// response code per --summary-interval (default), one verdict line per query (`flows`,
    /// costly at high rates), or nothing but metrics (`off`). Every other verdict is always one
    /// line per query or connection.
    #[arg(long, value_enum, default_value_t = crate::daemon::pipeline::AnsweredMode::Summary)]
    pub answered: crate::daemon::pipeline::AnsweredMode,

    /// Interval of the answer summaries (at most 10s; flushed on exit too).
    #[arg(long, default_value = "10s", value_parser = parse_summary_interval)]
    pub summary_interval: Duration,

    /// Memory budget the table sizes are derived from (e.g. 256Mi). Default: the container's
    /// memory limit (cgroup), else 256Mi.
    #[arg(long, value_name = "SIZE", value_parser = crate::daemon::budget::parse_size)]
    pub memory_budget: Option<u64>,

    /// Interval between counter log lines on stderr.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub stats_interval: Duration,

    /// Serve Prometheus metrics (/metrics), /healthz and /readyz on this address, e.g.
    /// 0.0.0.0:9090. Not served when not given.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Unix socket for `tracer observe` (created mode 0600: root only).
    #[arg(long, value_name = "PATH", default_value = crate::sinks::stream::DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// Do not serve the `tracer observe` socket.
    #[arg(long)]
    pub no_socket: bool,

    /// What stdout carries: tracer.flow/v1 verdicts, or OCSF 1.2 events for a SIEM.
    #[arg(long, value_enum, default_value_t = crate::sinks::StdoutFormat::Flow)]
    pub format: crate::sinks::StdoutFormat,

    /// Redact DNS query names on stdout: `hash` (sha256:<16 hex>, still groupable) or `drop`.
    /// `tracer observe` still shows them.
    #[arg(long, value_enum, value_name = "MODE")]
    pub redact_qname: Option<crate::sinks::ocsf::RedactMode>,
}

/// A summary interval: a duration of at most 10 s.
fn parse_summary_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > Duration::from_secs(10) || d < Duration::from_millis(100) {
        return Err(format!("summary interval {s:?} out of range [100ms, 10s]"));
    }
    Ok(d)
}

/// Parses `1500ms`, `5s`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?}: expected e.g. 5s or 1500ms"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?}: use ms, s or m")),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 3600.0 {
        return Err(format!("duration {s:?} out of range (0, 1h]"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("").is_err());
    }
}
