//! tracer: per-flow verdicts for DNS and pod egress on Kubernetes nodes.

mod annotate;
mod attach;
mod bench;
mod capture;
mod cli;
mod decode;
mod dns;
mod enrich;
mod ethtool;
mod event;
mod iface;
mod kernel;
#[cfg(test)]
mod kernel_tests;
mod metrics;
mod netns;
mod nodestats;
mod observe;
mod packets;
mod run;
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
        cli::Command::Run(args) => run::main(args),
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
        cli::Command::Bench { packets } => bench::main(packets),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tracer: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
