//! tracer: per-flow verdicts for DNS and pod egress on Kubernetes nodes.

mod attach;
mod bench;
mod capture;
mod cli;
mod decode;
mod dns;
mod event;
mod iface;
mod kernel;
#[cfg(test)]
mod kernel_tests;
mod metrics;
mod netns;
mod observe;
mod packets;
mod run;
mod verdict;

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TRACER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Run(args) => run::main(args),
        cli::Command::Observe(args) => observe::client::main(args),
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
