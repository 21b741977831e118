//! tracer: per-flow verdicts for DNS and pod egress on Kubernetes nodes.

mod capture;
mod cli;
mod daemon;
mod decode;
#[cfg(any(test, feature = "devtools"))]
mod devtools;
mod enrich;
mod observe;
mod peer;
mod sinks;
mod verdict;

/// Log filter unless `--log-level` or TRACER_LOG says otherwise. kube-client logs an error on
/// every retry while the API is down; the metadata cache logs one warning per outage instead.
const DEFAULT_LOG: &str = "info,kube_client::client::builder=off";

/// The log filter: `--log-level` (one level for everything, the kube-client retry noise still
/// off below debug), else TRACER_LOG's directives, else [`DEFAULT_LOG`].
fn log_filter(level: Option<&str>) -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::EnvFilter;
    match level {
        Some(l @ ("debug" | "trace")) => EnvFilter::new(l),
        Some(l) => EnvFilter::new(format!("{l},kube_client::client::builder=off")),
        None => {
            EnvFilter::try_from_env("TRACER_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG))
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(log_filter(cli.log_level.as_deref()))
        .init();
    let result = match cli.command {
        cli::Command::Run(args) => daemon::main(*args),
        cli::Command::Observe(args) => observe::client::main(*args),
        cli::Command::Certs(args) => peer::certs::main(&args),
        cli::Command::MetaDump(a) => enrich::dump_main(
            enrich::EnrichConfig {
                kubeconfig: a.kubeconfig,
                node_name: a.node_name,
                veth_prefix: a.veth_prefix,
                ..Default::default()
            },
            a.timeout,
        ),
        cli::Command::MetaBench { pods, nodes } => enrich::bench_main(pods, nodes),
        #[cfg(feature = "devtools")]
        cli::Command::Bench { packets } => devtools::bench::main(packets),
        #[cfg(feature = "devtools")]
        cli::Command::StubPolicy(args) => devtools::stub::main(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // One line: each cause once (many errors repeat their source in their message), a
            // verifier log only at --log-level debug.
            let (line, logs) = daemon::preflight::error_line(err.chain());
            for log in logs {
                tracing::debug!("verifier log:\n{log}");
            }
            eprintln!("tracer: {line}");
            std::process::ExitCode::FAILURE
        }
    }
}
