//! `cargo xtask`: lab, test, demo and bench orchestration for tracer.

use std::process::Command as Process;

use anyhow::{Context as _, Result, bail};
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
    /// Build the tracer, then run every test: unit tests and the privileged lab tests (root).
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Process::new(&cargo)
        .args(args)
        .current_dir(xtask::tracer::workspace_root())
        .status()
        .with_context(|| format!("running {cargo} {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Lab(cmd) => xtask::lab::run(cmd),
        Command::Test { args } => {
            cargo(&["build", "-p", "tracer"])?;
            let mut test = vec!["test", "--workspace"];
            test.extend(args.iter().map(String::as_str));
            cargo(&test)
        }
    }
}
