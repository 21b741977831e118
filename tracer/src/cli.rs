//! Command line.

use std::{
    net::{SocketAddr, ToSocketAddrs as _},
    path::PathBuf,
    time::Duration,
};

use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

/// `tracer --version`: the crate version, the git commit and the build date (from build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TRACER_GIT_COMMIT"),
    ", built ",
    env!("TRACER_BUILD_DATE"),
    ")"
);

/// Per-flow verdicts for DNS and pod egress on Kubernetes nodes: where did the packet die?
#[derive(Debug, Parser)]
#[command(name = "tracer", version = VERSION, about)]
pub struct Cli {
    /// Log level on stderr: error, warn, info (default), debug (adds the verifier log of a
    /// program the kernel refused), trace. TRACER_LOG takes filter directives instead.
    #[arg(long, global = true, value_name = "LEVEL",
          value_parser = ["error", "warn", "info", "debug", "trace"])]
    pub log_level: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Parses the command line (exiting with clap's message on an error), including what clap
/// derive cannot express: `tracer observe --not <filter flag>`.
pub fn parse() -> Cli {
    let mut command = Cli::command();
    let matches = command.get_matches_mut();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut command).exit());
    if let (Command::Observe(args), Some(("observe", sub))) =
        (&mut cli.command, matches.subcommand())
        && let Err(msg) = args.take_negations(sub)
    {
        let mut observe = command
            .find_subcommand_mut("observe")
            .cloned()
            .unwrap_or(command);
        observe
            .error(clap::error::ErrorKind::ArgumentConflict, msg)
            .exit();
    }
    cli
}

/// Parses a listen address: `HOST:PORT` with an IP or a name (`localhost:9090`, resolved now),
/// `[::]:9090`, or `:9090` for every interface.
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    let hint = "expected HOST:PORT, e.g. 0.0.0.0:9090 (every interface), 127.0.0.1:9090, \
                localhost:9090 or [::]:9090";
    if let Ok(addr) = t.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if t.contains("://") {
        return Err(format!("{t:?}: give HOST:PORT without a scheme; {hint}"));
    }
    if let Some(port) = t.strip_prefix(':') {
        return port
            .parse::<u16>()
            .map(|p| SocketAddr::from(([0, 0, 0, 0], p)))
            .map_err(|_| format!("bad port in {t:?}: {hint}"));
    }
    if t.parse::<u16>().is_ok() {
        return Err(format!(
            "{t:?} has no host: {hint} (0.0.0.0:{t} listens on every interface)"
        ));
    }
    // A bare IPv6 address and a port, as `$(HOST_IP):9966` expands on an IPv6 node.
    if let Some((host, port)) = t.rsplit_once(':')
        && let (Ok(ip), Ok(port)) = (host.parse::<std::net::Ipv6Addr>(), port.parse::<u16>())
        && host.contains("::")
    {
        return Ok(SocketAddr::from((ip, port)));
    }
    match t.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => t
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host:?}: {e}; {hint}"))?
            .next()
            .ok_or_else(|| format!("{host:?} resolves to no address; {hint}")),
        _ => Err(format!("{t:?} is not an address: {hint}")),
    }
}

/// Subcommands.
// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to this node's interfaces and print one JSON line per verdict (and per packet with
    /// --events) on stdout. Needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (plus CAP_SYSLOG for
    /// symbolized drop locations); see deploy/daemonset.yaml.
    Run(RunArgs),
    /// Stream this node's verdicts from the running `tracer run`, filtered, as a table or JSON
    /// (root only: reads its Unix socket). E.g. `tracer observe --verdict dropped,lost_beyond_node
    /// -n shop` or `tracer observe --last 100 --no-follow -o json`.
    Observe(Box<crate::observe::client::ObserveArgs>),
    /// Make the CA and certificate for cross-node verdicts (`tracer run --peer-tls`), and
    /// optionally print them as a Kubernetes Secret: `tracer certs --out ./peer-tls --secret
    /// tracer-peer-tls | kubectl apply -f -`.
    Certs(crate::peer::certs::CertsArgs),
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

    /// How often attachments are checked against the kernel (re-attaching what another tool
    /// removed). At most 30s.
    #[arg(long, default_value = "30s", value_parser = parse_duration, hide = true)]
    pub reconcile_interval: Duration,

    /// Interval between counter log lines on stderr.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub stats_interval: Duration,

    /// Serve Prometheus metrics (/metrics), /healthz and /readyz on HOST:PORT, e.g.
    /// 0.0.0.0:9090 (every interface), 127.0.0.1:9090, localhost:9090, or :9090. Not served
    /// when not given.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_listen_addr)]
    pub metrics_addr: Option<SocketAddr>,

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

    /// Cross-node verdicts: serve the peer service on HOST:PORT (mutual TLS, --peer-tls) and
    /// ask the tracers of other nodes, on the same port, about queries lost beyond this node.
    /// deploy/ listens on the node IP, port 9966. Off when not given.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_listen_addr, requires = "peer_tls")]
    pub peer_listen: Option<SocketAddr>,

    /// Directory with the peer service's TLS material: ca.crt, tls.crt, tls.key (made by
    /// `tracer certs`).
    #[arg(long, value_name = "DIR", requires = "peer_listen")]
    pub peer_tls: Option<PathBuf>,

    /// Namespace of the tracer's own pods (peers are found by label
    /// app.kubernetes.io/name=tracer there).
    #[arg(long, env = "POD_NAMESPACE", default_value = "tracer-system")]
    pub peer_namespace: String,

    /// Longest a lost verdict waits for its peer's answer (at most 1s).
    #[arg(long, default_value = "1s", value_parser = parse_peer_wait, hide = true)]
    pub peer_wait: Duration,
}

/// A peer wait: at most 1 s.
fn parse_peer_wait(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > crate::peer::MAX_WAIT {
        return Err(format!("peer wait {s:?} is longer than 1s"));
    }
    Ok(d)
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

    #[test]
    fn listen_addresses() {
        let ok = |s: &str| parse_listen_addr(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(ok("0.0.0.0:9090"), SocketAddr::from(([0, 0, 0, 0], 9090)));
        assert_eq!(ok("[::]:9090").port(), 9090);
        assert_eq!(ok(":9464"), SocketAddr::from(([0, 0, 0, 0], 9464)));
        // `$(HOST_IP):9966` on an IPv6 node.
        assert_eq!(
            ok("fd00:ec2::23:9966"),
            "[fd00:ec2::23]:9966".parse().expect("addr")
        );
        assert!(ok("localhost:9090").ip().is_loopback());
        for (bad, needle) in [
            ("9090", "has no host"),
            ("localhost", "is not an address"),
            ("localhost:99999", "is not an address"),
            (":x", "bad port"),
            ("http://0.0.0.0:9090", "without a scheme"),
            ("", "is not an address"),
        ] {
            let e = parse_listen_addr(bad).expect_err(bad);
            assert!(e.contains(needle), "{bad}: {e}");
            assert!(e.contains("e.g. 0.0.0.0:9090"), "{bad}: {e}");
        }
    }

    #[test]
    fn version_names_commit_and_date() {
        assert!(VERSION.starts_with(env!("CARGO_PKG_VERSION")));
        assert!(VERSION.contains("(commit ") && VERSION.contains(", built "));
    }
}
