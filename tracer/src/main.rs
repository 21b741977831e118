//! tracer: per-flow verdicts for DNS and pod egress on Kubernetes nodes.

mod capture;
mod cli;
mod daemon;
mod decode;
#[cfg(any(test, feature = "devtools"))]
mod devtools;
mod enrich;
mod observe;
mod sinks;
mod verdict;

use clap::Parser as _;

/// Log filter unless TRACER_LOG says otherwise. kube-client logs an error on every retry while
/// the API is down; the metadata cache logs one warning per outage instead.
const DEFAULT_LOG: &str = "info,kube_client::client::builder=off";

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TRACER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG)),
        )
        .init();
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Run(args) => daemon::main(args),
        cli::Command::Observe(args) => observe::client::main(args),
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
            eprintln!("tracer: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
