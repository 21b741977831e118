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
    /// Benchmarks (root): per-packet cost of the kernel programs via BPF_PROG_TEST_RUN, as
    /// figures and as ratios to an empty program measured in the same run.
    Bench {
        /// Packets per case.
        #[arg(long, default_value_t = 1_000_000)]
        packets: u32,
    },
    /// Static checks: rustfmt, clippy on userspace crates, clippy on the eBPF crate.
    Lint,
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

/// Clippy on the eBPF crate alone, for the BPF target (feature unification with userspace
/// crates would otherwise drag std dependencies in).
fn lint_ebpf() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Process::new(&cargo)
        .args([
            "clippy",
            "-p",
            "tracer-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--bins",
            "--",
            "-D",
            "warnings",
        ])
        .env("RUSTC_BOOTSTRAP", "1")
        .current_dir(xtask::tracer::workspace_root())
        .status()
        .context("running clippy on tracer-ebpf")?;
    if !status.success() {
        bail!("clippy on tracer-ebpf failed ({status})");
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Lab(cmd) => xtask::lab::run(cmd),
        Command::Test { args } => {
            cargo(&["build", "-p", "tracer"])?;
            let mut test = vec!["test", "--workspace", "--exclude", "tracer-ebpf"];
            test.extend(args.iter().map(String::as_str));
            cargo(&test)
        }
        Command::Bench { packets } => {
            cargo(&["build", "--release", "-p", "tracer"])?;
            let bin = xtask::tracer::workspace_root().join("target/release/tracer");
            let status = Process::new(&bin)
                .args(["bench", "--packets", &packets.to_string()])
                .status()
                .with_context(|| format!("running {}", bin.display()))?;
            if !status.success() {
                bail!("benchmark failed ({status})");
            }
            Ok(())
        }
        Command::Lint => {
            cargo(&["fmt", "--all", "--", "--check"])?;
            cargo(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])?;
            lint_ebpf()
        }
    }
}
