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
    match t.rsplit_once(':') {
        // An IPv6 address without brackets, as the downward API's status.hostIP gives it
        // (`--metrics-addr $(HOST_IP):9090` on an IPv6 node).
        Some((host, port)) if host.contains(':') => match (host.parse(), port.parse()) {
            (Ok(ip), Ok(port)) => Ok(SocketAddr::new(std::net::IpAddr::V6(ip), port)),
            _ => Err(format!("{t:?} is not an address: {hint}")),
        },
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
    Run(Box<RunArgs>),
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

    /// Attach the empty tc program at every hook instead (benchmark baseline).
    #[cfg(feature = "devtools")]
    #[arg(long, hide = true)]
    pub empty_programs: bool,

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
    #[arg(long, value_enum, default_value_t = crate::daemon::pipeline::HealthyMode::Summary)]
    pub answered: crate::daemon::pipeline::HealthyMode,

    /// What established egress connections produce: one summary line per client pod,
    /// destination ip:port, transport and exit interface per --summary-interval, with handshake
    /// latency quantiles (default), one verdict line per connection (`flows`), or nothing but
    /// metrics (`off`). A connection that needed a SYN retransmission, or whose evidence is
    /// incomplete, always gets its own line, as does every failed one.
    #[arg(long, value_enum, default_value_t = crate::daemon::pipeline::HealthyMode::Summary)]
    pub established: crate::daemon::pipeline::HealthyMode,

    /// Interval of the summaries of answers and connections (at most 10s; flushed on exit too).
    #[arg(long, default_value = "10s", value_parser = parse_summary_interval)]
    pub summary_interval: Duration,

    /// Memory budget the table sizes are derived from (e.g. 256Mi). Default: the container's
    /// memory limit (cgroup), else 256Mi.
    #[arg(long, value_name = "SIZE", value_parser = crate::daemon::budget::parse_size)]
    pub memory_budget: Option<u64>,

    /// Size of the ring buffer the kernel hands records over in (a power of two, at least a
    /// page). Hidden: for tests that overload the ring on purpose.
    #[arg(long, value_name = "SIZE", value_parser = parse_ring_bytes, hide = true)]
    pub ring_bytes: Option<u32>,

    /// How often attachments are checked against the kernel (re-attaching what another tool
    /// removed). At most 30s.
    #[arg(long, default_value = "30s", value_parser = parse_duration, hide = true)]
    pub reconcile_interval: Duration,

    /// Interval between counter log lines on stderr (1s to 1h).
    #[arg(long, default_value = "30s", value_parser = parse_stats_interval)]
    pub stats_interval: Duration,

    /// Serve Prometheus metrics (/metrics), /healthz and /readyz on HOST:PORT, e.g.
    /// 0.0.0.0:9090 (every interface), 127.0.0.1:9090, localhost:9090, or :9090. Not served
    /// when not given.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_listen_addr)]
    pub metrics_addr: Option<SocketAddr>,

    /// Serve /healthz and /readyz (the kubelet's probes) on a listener of their own at
    /// HOST:PORT, which metrics clients cannot starve. Default: the --metrics-addr host with the
    /// next port (9091 beside 9090); nothing when neither is given.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_listen_addr)]
    pub health_addr: Option<SocketAddr>,

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

impl RunArgs {
    /// Where /healthz and /readyz get their own listener: `--health-addr`, else the
    /// `--metrics-addr` host with the next port, else nowhere.
    pub fn health_listen_addr(&self) -> Result<Option<SocketAddr>, String> {
        let addr = match (self.health_addr, self.metrics_addr) {
            (Some(health), _) => health,
            (None, None) => return Ok(None),
            // An ephemeral metrics port (tests): an ephemeral health port too.
            (None, Some(m)) if m.port() == 0 => m,
            (None, Some(m)) => {
                let port = m.port().checked_add(1).ok_or_else(|| {
                    format!(
                        "--metrics-addr {m} leaves no next port for the health endpoint: give \
                         --health-addr"
                    )
                })?;
                SocketAddr::new(m.ip(), port)
            }
        };
        if Some(addr) == self.metrics_addr && addr.port() != 0 {
            return Err(format!(
                "--health-addr {addr} is the metrics address: give the health endpoint a port \
                 of its own"
            ));
        }
        Ok(Some(addr))
    }
}

/// A ring buffer size: a power of two from 4 KiB to 1 GiB.
fn parse_ring_bytes(s: &str) -> Result<u32, String> {
    let n = crate::daemon::budget::parse_bytes(s)?;
    match u32::try_from(n) {
        Ok(n) if n.is_power_of_two() && (4096..=1 << 30).contains(&n) => Ok(n),
        _ => Err(format!("ring size {s:?}: a power of two from 4Ki to 1Gi")),
    }
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
    let d = Duration::from_secs_f64(secs);
    if d < MIN_DURATION {
        return Err(format!(
            "duration {s:?} rounds to zero: the shortest is 1ms"
        ));
    }
    Ok(d)
}

/// The shortest duration any flag takes: below it a value rounds to zero (a timer of period
/// zero, a window nothing fits in).
pub const MIN_DURATION: Duration = Duration::from_millis(1);

/// A stats interval: one counter log line per interval, so at least 1 s (and at most 1 h).
fn parse_stats_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!(
            "stats interval {s:?} out of range [1s, 1h]: it is the period of a log line"
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's text from the heading that starts with `heading` to the next heading of
    /// the same or a higher level.
    fn readme_section(readme: &str, heading: &str) -> String {
        let mut lines = readme.lines().skip_while(|l| !l.starts_with(heading));
        let Some(first) = lines.next() else {
            panic!("README has no section {heading:?}");
        };
        let level = first.chars().take_while(|c| *c == '#').count();
        let mut out = String::from(first);
        let mut fenced = false;
        for l in lines {
            // A `# comment` in a shell example is not a heading.
            fenced ^= l.starts_with("```");
            let hashes = l.chars().take_while(|c| *c == '#').count();
            if !fenced && hashes > 0 && hashes <= level && l.chars().nth(hashes) == Some(' ') {
                break;
            }
            out.push('\n');
            out.push_str(l);
        }
        out
    }

    /// Every flag a user can pass to `tracer run`, `tracer observe` and `tracer certs` is
    /// documented in the README section about that command (a flag added to the code and
    /// not to the reference, or documented under the wrong command, fails here).
    #[test]
    fn readme_documents_every_flag_where_its_command_is_described() {
        let readme = include_str!("../../README.md");
        let cmd = Cli::command();
        for (sub, heading) in [
            ("run", "## `tracer run` reference"),
            ("observe", "## Live stream: `tracer observe`"),
            ("certs", "### Cross-node verdicts"),
        ] {
            let section = readme_section(readme, heading);
            let Some(sc) = cmd.find_subcommand(sub) else {
                panic!("no subcommand {sub}");
            };
            let missing: Vec<String> = sc
                .get_arguments()
                .filter(|a| !a.is_hide_set())
                .filter_map(|a| a.get_long())
                .filter(|long| *long != "help")
                .filter(|long| {
                    let flag = format!("--{long}");
                    // The flag as a word: `--last` must not be found inside `--last-x`.
                    !section.match_indices(&flag).any(|(i, _)| {
                        let after = section[i + flag.len()..].chars().next();
                        !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
                    })
                })
                .map(|long| format!("--{long}"))
                .collect();
            assert!(
                missing.is_empty(),
                "README section {heading:?} does not document `tracer {sub}` {missing:?}"
            );
        }
        // The peer flags belong to `tracer run`, not to observe's tables.
        let observe = readme_section(readme, "## Live stream: `tracer observe`");
        assert!(
            !observe.contains("`--peer-listen"),
            "peer flags under observe"
        );
    }

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
    fn durations_that_round_to_zero_are_refused() {
        for s in [
            "0.0000000001s",
            "0.0000001",
            "0.0001ms",
            "0.5ms",
            "0ms",
            "0.000s",
        ] {
            let e = parse_duration(s).expect_err(s);
            assert!(
                e.contains("rounds to zero") || e.contains("out of range"),
                "{s}: {e}"
            );
        }
        assert_eq!(parse_duration("1ms"), Ok(Duration::from_millis(1)));
        assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
    }

    fn run_args(args: &[&str]) -> Result<RunArgs, String> {
        let argv = ["tracer", "run"].iter().chain(args);
        match Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .command
        {
            Command::Run(a) => Ok(*a),
            _ => Err("not run".to_owned()),
        }
    }

    #[test]
    fn every_duration_flag_refuses_zero() {
        for flag in ["--window", "--stats-interval", "--summary-interval"] {
            for bad in ["0", "0s", "0.0000001s", "0.0001ms"] {
                let e = run_args(&[flag, bad]).expect_err(bad);
                assert!(e.contains(flag), "{flag} {bad}: {e}");
            }
        }
        // The stats interval is the period of a log line: at least a second.
        let e = run_args(&["--stats-interval", "500ms"]).expect_err("500ms");
        assert!(e.contains("[1s, 1h]"), "{e}");
        let a = run_args(&["--stats-interval", "1s", "--window", "1ms"]).expect("valid");
        assert_eq!(a.stats_interval, Duration::from_secs(1));
        assert_eq!(a.window, Duration::from_millis(1));
        assert_eq!(
            run_args(&[]).expect("defaults").stats_interval,
            Duration::from_secs(30)
        );
    }

    #[test]
    fn health_listener_address() {
        let health = |args: &[&str]| run_args(args).expect("parses").health_listen_addr();
        assert_eq!(health(&[]), Ok(None), "nothing served without either flag");
        assert_eq!(
            health(&["--metrics-addr", "10.0.1.12:9090"]),
            Ok(Some(SocketAddr::from(([10, 0, 1, 12], 9091)))),
            "default: the metrics host, next port"
        );
        assert_eq!(
            health(&["--metrics-addr", ":9090", "--health-addr", "127.0.0.1:8081"]),
            Ok(Some(SocketAddr::from(([127, 0, 0, 1], 8081))))
        );
        assert_eq!(
            health(&["--health-addr", "127.0.0.1:8081"]),
            Ok(Some(SocketAddr::from(([127, 0, 0, 1], 8081)))),
            "probes without metrics"
        );
        let e = health(&["--metrics-addr", "0.0.0.0:65535"]).expect_err("no next port");
        assert!(e.contains("--health-addr"), "{e}");
        let e = health(&["--metrics-addr", ":9090", "--health-addr", "0.0.0.0:9090"])
            .expect_err("same address");
        assert!(e.contains("a port of its own"), "{e}");
        // Tests bind port 0: both get an ephemeral port.
        assert_eq!(
            health(&["--metrics-addr", "127.0.0.1:0"]),
            Ok(Some(SocketAddr::from(([127, 0, 0, 1], 0))))
        );
    }

    /// The args of the DaemonSet's container, `$(HOST_IP)` expanded as the kubelet does.
    fn daemonset_args(yaml: &str, host_ip: &str) -> Vec<String> {
        let mut lines = yaml.lines().skip_while(|l| l.trim() != "args:").skip(1);
        let mut out = Vec::new();
        for line in lines.by_ref() {
            let t = line.trim();
            if t.starts_with('#') {
                continue;
            }
            let Some(arg) = t.strip_prefix("- ") else {
                break;
            };
            out.push(arg.trim_matches('"').replace("$(HOST_IP)", host_ip));
        }
        out
    }

    #[test]
    fn daemonset_binds_the_node_ip_and_probes_the_health_listener() {
        let yaml = include_str!("../../deploy/daemonset.yaml");
        let compact: String = yaml.split_whitespace().collect::<Vec<_>>().join(" ");
        // HOST_IP comes from the downward API.
        assert!(
            compact.contains("- name: HOST_IP valueFrom: fieldRef: fieldPath: status.hostIP"),
            "HOST_IP from status.hostIP"
        );
        for host_ip in ["10.0.1.12", "2600:1f14:abc:1200::7"] {
            let args = daemonset_args(yaml, host_ip);
            assert_eq!(args.first().map(String::as_str), Some("run"), "{args:?}");
            assert!(!args.iter().any(|a| a.contains("0.0.0.0")), "{args:?}");
            let mut argv = vec!["tracer"];
            argv.extend(args.iter().map(String::as_str));
            let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            let Command::Run(run) = cli.command else {
                panic!("not run: {argv:?}");
            };
            let ip: std::net::IpAddr = host_ip.parse().expect("ip");
            assert_eq!(run.metrics_addr, Some(SocketAddr::new(ip, 9090)));
            let health = run.health_listen_addr().expect("health address");
            assert_eq!(health, Some(SocketAddr::new(ip, 9091)));
        }
        // Both probes go to the port named `health`, which is the health listener's.
        assert!(
            compact.contains("- name: health containerPort: 9091 protocol: TCP"),
            "a port named health on 9091"
        );
        for probe in ["livenessProbe:", "readinessProbe:"] {
            let after = compact
                .split_once(probe)
                .map(|(_, rest)| rest)
                .unwrap_or_else(|| panic!("{probe} present"));
            let port = after
                .split_once("port: ")
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .expect("a probe port");
            assert_eq!(port, "health", "{probe}");
        }
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
        // An IPv6 status.hostIP expanded into `$(HOST_IP):9090`.
        assert_eq!(
            ok("2600:1f14:abc:1200::7:9090"),
            "[2600:1f14:abc:1200::7]:9090".parse().expect("addr")
        );
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
