//! Builds the eBPF object with aya-build (pinned toolchain, `-Z build-std=core` through
//! RUSTC_BOOTSTRAP) and leaves it in OUT_DIR for `include_bytes_aligned!`; sets
//! TRACER_GIT_COMMIT and TRACER_BUILD_DATE for `tracer --version`.

use std::process::Command;

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Output of a git command run in the crate directory, trimmed; `None` when git is missing or
/// this is not a checkout (a source tarball, a container build without .git).
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_owned())
}

/// Civil date (UTC) of a Unix time, `YYYY-MM-DD`.
fn utc_date(secs: i64) -> String {
    let (year, month, day) = tracer_common::civil_from_days(secs.div_euclid(86_400));
    format!("{year:04}-{month:02}-{day:02}")
}

/// `tracer --version`: the commit (TRACER_GIT_COMMIT wins, for builds without .git, e.g.
/// `--build-arg`), and the build date (SOURCE_DATE_EPOCH wins, for reproducible builds).
fn version_env() {
    println!("cargo::rerun-if-env-changed=TRACER_GIT_COMMIT");
    println!("cargo::rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let commit = std::env::var("TRACER_GIT_COMMIT")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    // Rebuild the version when HEAD moves (a worktree's HEAD lives in its own git dir, the
    // branch refs in the common one).
    // Only files that exist: cargo reruns a build script always when one is missing.
    let watch = |path: String| {
        if std::path::Path::new(&path).exists() {
            println!("cargo::rerun-if-changed={path}");
        }
    };
    for (what, file) in [("--git-dir", "HEAD"), ("--git-common-dir", "packed-refs")] {
        if let Some(dir) = git(&["rev-parse", "--path-format=absolute", what]) {
            watch(format!("{dir}/{file}"));
        }
    }
    if let Some(branch_ref) = git(&["symbolic-ref", "-q", "HEAD"])
        && let Some(common) = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"])
    {
        watch(format!("{common}/{branch_ref}"));
    }
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
                .unwrap_or(0)
        });
    println!("cargo::rustc-env=TRACER_GIT_COMMIT={commit}");
    println!("cargo::rustc-env=TRACER_BUILD_DATE={}", utc_date(secs));
}

fn main() -> anyhow::Result<()> {
    version_env();
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "tracer-ebpf")
        .ok_or_else(|| anyhow!("tracer-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?
        .as_str()
        .to_owned();
    // The eBPF crate needs -Z build-std=core. The pinned toolchain is a stable release, so
    // aya-build is told to use unstable flags through RUSTC_BOOTSTRAP.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    // aya-build repeats every line the inner cargo writes to stderr as a cargo warning: a
    // first build printed ~30 "warning: Compiling …" lines. Quiet, the inner cargo writes
    // only what matters (its errors; compiler diagnostics come through its JSON output).
    // SAFETY: as above.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    let toolchain = std::env::var("TRACER_EBPF_TOOLCHAIN").unwrap_or_else(|_| "1.98.0".into());
    println!("cargo::rerun-if-env-changed=TRACER_EBPF_TOOLCHAIN");
    aya_build::build_ebpf(
        [Package {
            name: "tracer-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
}
