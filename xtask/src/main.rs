//! `cargo xtask`: lab, test, demo, bench, fuzz and image orchestration for tracer.

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
    /// Static checks, build the tracer, then run every test: unit tests and the privileged lab
    /// tests (root).
    Test {
        /// Skip the static checks (rustfmt, clippy) that run first.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Benchmarks (root): per-packet cost of the kernel programs via BPF_PROG_TEST_RUN, as
    /// figures and as ratios to an empty program measured in the same run.
    Bench {
        /// Packets per case (kernel programs).
        #[arg(long, default_value_t = 1_000_000)]
        packets: u32,
        /// Also run the DNS load benchmark through the lab: rounds of tracer-off, empty-programs
        /// and tracer-on windows of this many seconds, the order turning each round, with
        /// dnsperf and the replica pinned to CPUs of their own.
        #[arg(long, value_name = "SECONDS")]
        load: Option<u32>,
        /// Also run the pod egress benchmark through the lab: rounds of tracer-off and
        /// tracer-on windows of this many seconds, the order turning each round, with one pod
        /// opening TCP connections as fast as it can.
        #[arg(long, value_name = "SECONDS")]
        egress: Option<u32>,
        /// Rounds (off/empty/on, or off/on for --egress) of the load benchmarks.
        #[arg(long, default_value_t = 4)]
        pairs: u32,
        /// Skip the per-packet benchmark (BPF_PROG_TEST_RUN).
        #[arg(long)]
        no_packets: bool,
        /// With --load: also break the tracer's kernel time under load down by source line
        /// (perf samples of every CPU mapped through the programs' line tables).
        #[arg(long, requires = "load")]
        profile: bool,
    },
    /// Property/fuzz tests of every parser of kernel, network and API data (the tracer's
    /// `fuzz_*` tests) with many cases each, built with overflow checks (profile `fuzz`);
    /// prints cases and time per target. Failures are saved under tracer/proptest-regressions.
    Fuzz {
        /// Cases per target (the target over the real kernel's 5.5 MB BTF runs a thousandth).
        #[arg(long, default_value_t = 1_000_000)]
        cases: u32,
        /// Only the targets whose name contains this (e.g. `dns`).
        target: Option<String>,
    },
    /// Static checks: rustfmt, clippy on userspace crates, clippy on the eBPF crate.
    Lint,
    /// Build the tracer and walk through the failure catalogue in the lab, printing verdicts.
    Demo,
    /// Build the OCI image with buildah: `FROM scratch` around a static (musl) tracer, tagged
    /// localhost/tracer:dev (localhost/tracer:dev-arm64 for arm64). Root. Skips buildah when the
    /// image under the tag already has the same binary and metadata.
    Image {
        /// Target architecture (arm64: EC2 Graviton; cross-compiled, not runnable on x86-64).
        #[arg(long, value_enum, default_value_t = xtask::image::Arch::Amd64)]
        arch: xtask::image::Arch,
        /// Tag instead of localhost/tracer:dev / localhost/tracer:dev-arm64.
        #[arg(long)]
        tag: Option<String>,
        /// Also write the image to this OCI archive, for a registry push from elsewhere
        /// (`skopeo copy oci-archive:PATH docker://REGISTRY/tracer:TAG`) or `podman load -i`.
        #[arg(long, value_name = "PATH")]
        oci_archive: Option<std::path::PathBuf>,
        /// org.opencontainers.image.source (default: the git remote origin's URL).
        #[arg(long, value_name = "URL", env = "TRACER_IMAGE_SOURCE")]
        source: Option<String>,
        /// Run buildah even when the image is up to date.
        #[arg(long)]
        force: bool,
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

/// Runs `cargo test`, echoing its output, and closes with one summary line over every test
/// binary (`N passed, N failed, N skipped`): cargo's own last line belongs to the last binary
/// only, often a doc-test run with nothing in it.
fn cargo_test(args: &[&str]) -> Result<()> {
    use std::io::{BufRead as _, BufReader};
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Process::new(&cargo)
        .args(args)
        .current_dir(xtask::tracer::workspace_root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cargo} {}", args.join(" ")))?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.context("reading cargo test output")?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                for part in rest.split(';') {
                    let mut words = part
                        .split_whitespace()
                        .filter(|w| *w != "ok." && *w != "FAILED.");
                    if let (Some(n), Some(what)) = (words.next(), words.next()) {
                        let n: u64 = n.parse().unwrap_or(0);
                        match what {
                            "passed" => passed += n,
                            "failed" => failed += n,
                            "ignored" => ignored += n,
                            _ => {}
                        }
                    }
                }
            }
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!("\ntest summary over all test binaries:");
    println!("{passed} passed, {failed} failed, {ignored} skipped");
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

/// rustfmt, clippy on the userspace crates, clippy on the eBPF crate.
fn lint() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "tracer-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    cargo(&[
        "clippy",
        "-p",
        "tracer",
        "--features",
        "devtools",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    lint_ebpf()
}

/// One target's figures, from the line each fuzz test prints.
struct FuzzFigures {
    target: String,
    line: String,
}

/// The figures in a line of `cargo test` output: a fuzz target prints `fuzz: <target>: <figures>`,
/// which libtest puts after its own `test <path> ... ` when tests run one at a time.
fn fuzz_figures(line: &str) -> Option<FuzzFigures> {
    let at = line.find("fuzz: fuzz_")?;
    let (target, figs) = line.get(at + "fuzz: ".len()..)?.split_once(": ")?;
    Some(FuzzFigures {
        target: target.to_owned(),
        line: figs.to_owned(),
    })
}

/// `cargo xtask fuzz`: runs the `fuzz_*` tests one at a time with `cases` cases each and
/// prints a table of their figures.
fn fuzz(cases: u32, target: Option<&str>) -> Result<()> {
    use std::io::{BufRead as _, BufReader};
    let filter = match target {
        Some(t) if t.starts_with("fuzz_") => t.to_owned(),
        Some(t) => format!("fuzz_{t}"),
        None => "fuzz_".to_owned(),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let args = [
        "test",
        "-p",
        "tracer",
        "--profile",
        "fuzz",
        &filter,
        "--",
        "--nocapture",
        "--test-threads",
        "1",
    ];
    println!("TRACER_FUZZ_CASES={cases} {cargo} {}", args.join(" "));
    let start = std::time::Instant::now();
    let mut child = Process::new(&cargo)
        .args(args)
        .env("TRACER_FUZZ_CASES", cases.to_string())
        .current_dir(xtask::tracer::workspace_root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cargo} {}", args.join(" ")))?;
    let mut figures = Vec::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.context("reading cargo test output")?;
            println!("{line}");
            if let Some(f) = fuzz_figures(&line) {
                figures.push(f);
            }
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!("\nfuzz figures ({cases} cases requested per target):");
    for f in &figures {
        println!("  {:<34} {}", f.target, f.line);
    }
    println!(
        "{} targets in {:.0} s (build included)",
        figures.len(),
        start.elapsed().as_secs_f64()
    );
    if figures.is_empty() {
        bail!("no fuzz target matched {filter:?}");
    }
    if !status.success() {
        bail!(
            "a fuzz target failed ({status}); its input is saved under tracer/proptest-regressions/fuzz"
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Lab(cmd) => xtask::lab::run(cmd),
        Command::Test { no_lint, args } => {
            if !no_lint {
                lint()?;
            }
            // With the developer tools: the transparency tests use `tracer stub-policy`.
            cargo(&["build", "-p", "tracer", "--features", "devtools"])?;
            let mut test = vec!["test", "--workspace", "--exclude", "tracer-ebpf"];
            test.extend(args.iter().map(String::as_str));
            cargo_test(&test)
        }
        Command::Bench {
            packets,
            load,
            egress,
            pairs,
            no_packets,
            profile,
        } => {
            cargo(&[
                "build",
                "--release",
                "-p",
                "tracer",
                "--features",
                "devtools",
            ])?;
            let bin = xtask::tracer::workspace_root().join("target/release/tracer");
            if !no_packets {
                let status = Process::new(&bin)
                    .args(["bench", "--packets", &packets.to_string()])
                    .status()
                    .with_context(|| format!("running {}", bin.display()))?;
                if !status.success() {
                    bail!("benchmark failed ({status})");
                }
            }
            if load.is_some() || egress.is_some() {
                // SAFETY: plain setenv before any thread is spawned by this process.
                unsafe { std::env::set_var("TRACER_BIN", &bin) };
            }
            if let Some(seconds) = load {
                xtask::bench::run(seconds, pairs, profile)?;
            }
            if let Some(seconds) = egress {
                xtask::egress_load::run(seconds, pairs)?;
            }
            Ok(())
        }
        Command::Demo => {
            cargo(&["build", "-p", "tracer"])?;
            xtask::demo::run()
        }
        Command::Fuzz { cases, target } => fuzz(cases, target.as_deref()),
        Command::Lint => lint(),
        Command::Image {
            arch,
            tag,
            oci_archive,
            source,
            force,
        } => {
            let start = std::time::Instant::now();
            let opts = xtask::image::Options {
                tag,
                oci_archive,
                source,
                force,
                ..xtask::image::Options::new(arch)
            };
            let image = xtask::image::build(&opts)?;
            print_image(&image, start.elapsed());
            Ok(())
        }
    }
}

/// What `cargo xtask image` built, on stdout.
fn print_image(image: &xtask::image::Image, took: std::time::Duration) {
    use xtask::image::mib;
    let state = if image.rebuilt { "built" } else { "up to date" };
    println!("{} ({state}, {:.1} s)", image.tag, took.as_secs_f64());
    println!("  {:<33} {}", "id", image.id);
    println!(
        "  {:<33} {:.1} MiB (binary {:.1} MiB: {})",
        "size",
        mib(image.size),
        mib(image.binary_size),
        image.binary.display()
    );
    for (key, value) in image.meta.pairs() {
        println!("  {key:<33} {value}");
    }
    if let Some((path, size)) = &image.oci_archive {
        println!(
            "  {:<33} {} ({:.1} MiB)",
            "OCI archive",
            path.display(),
            mib(*size)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::fuzz_figures;

    #[test]
    fn fuzz_figures_are_read_after_libtests_own_prefix() {
        let line = "test devtools::fuzz::signals::fuzz_conntrack_tables ... fuzz: \
                    fuzz_conntrack_tables: 1000000 cases in 37.03 s (37.0 us/case)";
        let f = fuzz_figures(line).expect("figures");
        assert_eq!(f.target, "fuzz_conntrack_tables");
        assert_eq!(f.line, "1000000 cases in 37.03 s (37.0 us/case)");
        let alone = "fuzz: fuzz_qname_globs: 256 cases in 0.01 s";
        assert_eq!(
            fuzz_figures(alone).map(|f| f.target).as_deref(),
            Some("fuzz_qname_globs")
        );
        assert!(fuzz_figures("test devtools::fuzz::dns::fuzz_dns_random_bytes ... ok").is_none());
    }
}
