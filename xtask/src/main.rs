//! `cargo xtask`: lab, test, demo and bench orchestration for tracer.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "tracer's privileged orchestration")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build, inspect, break and tear down the simulated EKS node lab.
    #[command(subcommand)]
    Lab(xtask::lab::LabCommand),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Lab(cmd) => xtask::lab::run(cmd),
    }
}
