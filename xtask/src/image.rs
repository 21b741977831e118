//! `cargo xtask image`: tracer's OCI image, `FROM scratch` around one static (musl) binary.
//!
//! [`build`] compiles `tracer` for `<arch>-unknown-linux-musl` in release mode (tracer/build.rs
//! still runs on the host and embeds the eBPF object), checks that the result is a static
//! executable for the right machine, strips a copy into `target/image/<arch>/` and builds
//! `deploy/Containerfile` there with buildah. The image carries the
//! `org.opencontainers.image.{version,revision,source,created}` labels and manifest
//! annotations, plus [`INPUTS_LABEL`]: a digest of everything that went in (binary,
//! Containerfile, architecture, version, revision, source). When the image under the tag already
//! has the same digest, buildah is not run again, so callers (the image test) can call
//! [`build`] every time and pay only for cargo's up-to-date check.
//!
//! Needs buildah and podman (`scripts/setup.sh` installs them); as root, both use the system's
//! containers-storage, where podman finds the image.

use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::tracer::workspace_root;

/// Largest image [`build`] accepts (uncompressed, as podman reports it).
pub const MAX_IMAGE_BYTES: u64 = 50 * 1024 * 1024;

/// Label holding the sha256 of the build inputs; [`build`] skips buildah when it matches.
pub const INPUTS_LABEL: &str = "dev.tracer.image.inputs";

/// Containerfile built by [`build`], relative to the workspace root.
pub const CONTAINERFILE: &str = "deploy/Containerfile";

/// CPU architecture of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// x86-64 (EC2 Intel and AMD instances).
    Amd64,
    /// 64-bit ARM (EC2 Graviton instances). Cross-compiled; cannot run on an x86-64 host.
    Arm64,
}

impl Arch {
    /// The OCI / Kubernetes name (`kubernetes.io/arch`): `amd64` or `arm64`.
    pub fn oci(self) -> &'static str {
        match self {
            Self::Amd64 => "amd64",
            Self::Arm64 => "arm64",
        }
    }

    /// The Rust target the static binary is built for.
    pub fn rust_target(self) -> &'static str {
        match self {
            Self::Amd64 => "x86_64-unknown-linux-musl",
            Self::Arm64 => "aarch64-unknown-linux-musl",
        }
    }

    /// The tag [`build`] uses unless told otherwise.
    pub fn default_tag(self) -> &'static str {
        match self {
            Self::Amd64 => "localhost/tracer:dev",
            Self::Arm64 => "localhost/tracer:dev-arm64",
        }
    }

    /// ELF `e_machine` of binaries for this architecture.
    fn elf_machine(self) -> u16 {
        match self {
            Self::Amd64 => 62,  // EM_X86_64
            Self::Arm64 => 183, // EM_AARCH64
        }
    }

    /// C compiler (for ring), archiver and linker for the target, from Debian's musl-tools
    /// and gcc-aarch64-linux-gnu. Each is set only when the caller's environment has not set it.
    fn toolchain_env(self) -> Vec<(String, &'static str)> {
        let t = self.rust_target().replace('-', "_");
        match self {
            // The host's linker (cc) links musl's self-contained start files and libc.a.
            Self::Amd64 => vec![(format!("CC_{t}"), "musl-gcc")],
            Self::Arm64 => vec![
                (format!("CC_{t}"), "aarch64-linux-gnu-gcc"),
                (format!("AR_{t}"), "aarch64-linux-gnu-ar"),
                (
                    format!("CARGO_TARGET_{}_LINKER", t.to_uppercase()),
                    "aarch64-linux-gnu-gcc",
                ),
            ],
        }
    }

    /// binutils' strip for the target.
    fn strip(self) -> &'static str {
        match self {
            Self::Amd64 => "x86_64-linux-gnu-strip",
            Self::Arm64 => "aarch64-linux-gnu-strip",
        }
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct Options {
    /// Target architecture.
    pub arch: Arch,
    /// Tag; [`Arch::default_tag`] when `None`.
    pub tag: Option<String>,
    /// Also write the image to this OCI archive (one image, for `skopeo copy` or `podman load`).
    pub oci_archive: Option<PathBuf>,
    /// `org.opencontainers.image.source`; when `None`, the git remote `origin`, else a
    /// `file://` URL of the workspace.
    pub source: Option<String>,
    /// Run buildah even if the image is up to date.
    pub force: bool,
}

impl Options {
    /// Defaults for `arch`: default tag, no archive, source from git, no forced rebuild.
    pub fn new(arch: Arch) -> Self {
        Self {
            arch,
            tag: None,
            oci_archive: None,
            source: None,
            force: false,
        }
    }
}

/// A built (or found up-to-date) image.
#[derive(Debug, Clone)]
pub struct Image {
    /// The tag, e.g. `localhost/tracer:dev`.
    pub tag: String,
    /// Image id (sha256 of the config).
    pub id: String,
    /// Uncompressed size as podman reports it, bytes.
    pub size: u64,
    /// The stripped binary that went into the image.
    pub binary: PathBuf,
    /// Its size in bytes.
    pub binary_size: u64,
    /// False when the image under the tag was already up to date (buildah not run).
    pub rebuilt: bool,
    /// The OCI archive written, if asked for, and its size in bytes.
    pub oci_archive: Option<(PathBuf, u64)>,
    /// OCI metadata put on the image.
    pub meta: Metadata,
}

/// The `org.opencontainers.image.*` values of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// tracer's crate version (tracer/Cargo.toml).
    pub version: String,
    /// `git rev-parse HEAD`, with `-dirty` when tracked files have uncommitted changes.
    pub revision: String,
    /// Where the source is.
    pub source: String,
    /// Build time, RFC 3339 UTC.
    pub created: String,
}

impl Metadata {
    /// The key/value pairs set as labels and as manifest annotations.
    pub fn pairs(&self) -> [(&'static str, &str); 4] {
        [
            ("org.opencontainers.image.version", &self.version),
            ("org.opencontainers.image.revision", &self.revision),
            ("org.opencontainers.image.source", &self.source),
            ("org.opencontainers.image.created", &self.created),
        ]
    }
}

/// Builds the static binary and the image (see the module docs). Prints progress on stderr.
pub fn build(opts: &Options) -> Result<Image> {
    let arch = opts.arch;
    let root = workspace_root();
    for tool in ["buildah", "podman", arch.strip()] {
        ensure!(
            which(tool),
            "{tool} not found: run scripts/setup.sh (installs podman, buildah, musl-tools and \
             gcc-aarch64-linux-gnu)"
        );
    }
    let tag = opts
        .tag
        .clone()
        .unwrap_or_else(|| arch.default_tag().to_owned());

    let bin = cargo_build(&root, arch)?;
    check_static(&bin, arch)?;
    let staged = stage(&root, &bin, arch)?;
    let binary_size = fs::metadata(&staged)
        .with_context(|| format!("stat {}", staged.display()))?
        .len();

    let meta = metadata(&root, opts.source.as_deref())?;
    let containerfile = root.join(CONTAINERFILE);
    let inputs = inputs_digest(&staged, &containerfile, arch, &meta)?;

    let old = inspect(&tag)?;
    let up_to_date = old
        .as_ref()
        .is_some_and(|v| label(v, INPUTS_LABEL) == Some(inputs.as_str()));
    let image_id = |v: &Value| v.get("Id").and_then(Value::as_str).map(str::to_owned);
    let rebuilt = opts.force || !up_to_date;
    if rebuilt {
        let start = Instant::now();
        buildah_build(&containerfile, &staged, arch, &tag, &meta, &inputs)?;
        eprintln!(
            "[image] buildah built {tag} in {:.1} s",
            start.elapsed().as_secs_f64()
        );
        // The previous image under this tag is now untagged: remove it unless something
        // (another tag, a container) still uses it.
        if let Some(old_id) = old.as_ref().and_then(image_id) {
            let new = inspect(&tag)?;
            if new.as_ref().and_then(image_id).as_ref() != Some(&old_id) {
                let _ = Command::new("buildah")
                    .args(["rmi", &old_id])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    } else {
        eprintln!("[image] {tag} is up to date ({INPUTS_LABEL}={inputs})");
    }

    let info = inspect(&tag)?.with_context(|| format!("{tag} not found after building it"))?;
    let id = image_id(&info).unwrap_or_default();
    let size = info
        .get("Size")
        .and_then(Value::as_u64)
        .with_context(|| format!("podman image inspect {tag}: no Size"))?;
    let image_arch = info.get("Architecture").and_then(Value::as_str);
    ensure!(
        image_arch == Some(arch.oci()),
        "{tag} has architecture {image_arch:?}, expected {}",
        arch.oci()
    );
    ensure!(
        size <= MAX_IMAGE_BYTES,
        "{tag} is {:.1} MiB, more than the {} MiB allowed",
        mib(size),
        MAX_IMAGE_BYTES / (1024 * 1024)
    );

    let oci_archive = match &opts.oci_archive {
        Some(path) => Some((path.clone(), write_oci_archive(&tag, path)?)),
        None => None,
    };
    // When the image was up to date, its labels (created in particular) are the original ones.
    let meta = Metadata {
        created: label(&info, "org.opencontainers.image.created")
            .unwrap_or(&meta.created)
            .to_owned(),
        ..meta
    };
    Ok(Image {
        tag,
        id,
        size,
        binary: staged,
        binary_size,
        rebuilt,
        oci_archive,
        meta,
    })
}

/// Bytes as MiB, for messages.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// True when `tool` is an executable in `$PATH`.
pub fn which(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            fs::metadata(dir.join(tool)).is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt as _;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        })
    })
}

/// `cargo build --release --locked -p tracer --target <arch>-unknown-linux-musl`; returns the
/// binary's path.
fn cargo_build(root: &Path, arch: Arch) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = arch.rust_target();
    let mut cmd = Command::new(&cargo);
    cmd.args([
        "build",
        "--release",
        "--locked",
        "-p",
        "tracer",
        "--target",
        target,
    ])
    .current_dir(root);
    // Variables cargo sets for the crate that runs us (xtask under `cargo run`, a test under
    // `cargo test`) would leak into the build and differ between the two callers; build
    // scripts that watch them (ring watches CARGO_MANIFEST_DIR) would then rerun each time
    // the other caller builds, and everything above them be recompiled.
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(inherited_crate_var) {
            cmd.env_remove(key);
        }
    }
    for (key, value) in arch.toolchain_env() {
        if std::env::var_os(&key).is_none() {
            cmd.env(key, value);
        }
    }
    eprintln!("[image] cargo build --release -p tracer --target {target}");
    let start = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("running {cargo} build"))?;
    ensure!(
        status.success(),
        "cargo build for {target} failed ({status}); is the target installed? \
         (scripts/setup.sh: rustup target add {target})"
    );
    eprintln!(
        "[image] cargo build finished in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(target_dir(root).join(target).join("release/tracer"))
}

/// cargo's target directory: `$CARGO_TARGET_DIR` (relative to the workspace root), else
/// `target/`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// True for the variables cargo sets for a crate it compiles or runs (not for cargo itself).
fn inherited_crate_var(key: &str) -> bool {
    const EXACT: [&str; 9] = [
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    EXACT.contains(&key) || key.starts_with("CARGO_PKG_") || key.starts_with("CARGO_BIN_EXE_")
}

/// Fails unless `bin` is a 64-bit little-endian ELF executable for `arch` without a program
/// interpreter (`PT_INTERP`), i.e. statically linked: the image has no libc and no loader.
pub fn check_static(bin: &Path, arch: Arch) -> Result<()> {
    let mut head = Vec::new();
    fs::File::open(bin)
        .with_context(|| format!("opening {}", bin.display()))?
        .take(64 * 1024)
        .read_to_end(&mut head)
        .with_context(|| format!("reading {}", bin.display()))?;
    let elf = Elf64::parse(&head).with_context(|| format!("{}", bin.display()))?;
    ensure!(
        elf.machine == arch.elf_machine(),
        "{} is for ELF machine {}, not {} ({})",
        bin.display(),
        elf.machine,
        arch.elf_machine(),
        arch.oci()
    );
    ensure!(
        !elf.has_interp,
        "{} is dynamically linked (has a PT_INTERP program header)",
        bin.display()
    );
    Ok(())
}

/// The few ELF header facts [`check_static`] needs.
#[derive(Debug, PartialEq, Eq)]
struct Elf64 {
    machine: u16,
    has_interp: bool,
}

impl Elf64 {
    const PT_INTERP: u32 = 3;

    /// Parses the ELF header and program headers (which must lie in `head`).
    fn parse(head: &[u8]) -> Result<Self> {
        let u16_at = |off: usize| -> Result<u16> {
            let b: [u8; 2] = head
                .get(off..off + 2)
                .context("truncated ELF header")?
                .try_into()?;
            Ok(u16::from_le_bytes(b))
        };
        let u32_at = |off: usize| -> Result<u32> {
            let b: [u8; 4] = head
                .get(off..off + 4)
                .context("truncated ELF header")?
                .try_into()?;
            Ok(u32::from_le_bytes(b))
        };
        let u64_at = |off: usize| -> Result<u64> {
            let b: [u8; 8] = head
                .get(off..off + 8)
                .context("truncated ELF header")?
                .try_into()?;
            Ok(u64::from_le_bytes(b))
        };
        ensure!(head.get(..4) == Some(b"\x7fELF"), "not an ELF file");
        ensure!(
            head.get(4..6) == Some(&[2, 1]),
            "not a 64-bit little-endian ELF file"
        );
        let machine = u16_at(18)?;
        let phoff = usize::try_from(u64_at(32)?)?;
        let phentsize = usize::from(u16_at(54)?);
        let phnum = usize::from(u16_at(56)?);
        ensure!(phentsize >= 4, "bad program header size {phentsize}");
        let mut has_interp = false;
        for i in 0..phnum {
            if u32_at(phoff + i * phentsize)? == Self::PT_INTERP {
                has_interp = true;
            }
        }
        Ok(Self {
            machine,
            has_interp,
        })
    }
}

/// Copies `bin` stripped to `target/image/<arch>/tracer` (mode 0755), the build context.
/// Only that file is in the directory, so the context sent to buildah is the binary alone.
fn stage(root: &Path, bin: &Path, arch: Arch) -> Result<PathBuf> {
    let dir = target_dir(root).join("image").join(arch.oci());
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let staged = dir.join("tracer");
    let status = Command::new(arch.strip())
        .arg("--strip-all")
        .arg("-o")
        .arg(&staged)
        .arg(bin)
        .status()
        .with_context(|| format!("running {}", arch.strip()))?;
    ensure!(
        status.success(),
        "{} {} failed",
        arch.strip(),
        bin.display()
    );
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&staged, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", staged.display()))?;
    Ok(staged)
}

/// Version from tracer/Cargo.toml, revision from git, source as given or from git, created now.
fn metadata(root: &Path, source: Option<&str>) -> Result<Metadata> {
    let manifest = root.join("tracer/Cargo.toml");
    let text =
        fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let version = package_version(&text)
        .with_context(|| format!("no [package] version in {}", manifest.display()))?;
    let revision = match git(root, &["rev-parse", "HEAD"]) {
        Some(head) => {
            let dirty = git(root, &["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty { format!("{head}-dirty") } else { head }
        }
        None => "unknown".to_owned(),
    };
    let source = match source {
        Some(s) => s.to_owned(),
        None => git(root, &["remote", "get-url", "origin"])
            .filter(|s| !s.is_empty())
            .map(|remote| source_url(&remote))
            .unwrap_or_else(|| format!("file://{}", root.display())),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("clock before 1970")?
        .as_secs();
    Ok(Metadata {
        version,
        revision,
        source,
        created: rfc3339_utc(now),
    })
}

/// A git remote as a URL: `git@host:org/repo.git` becomes `https://host/org/repo.git`, a local
/// path a `file://` URL; URLs stay as they are.
fn source_url(remote: &str) -> String {
    if remote.contains("://") {
        return remote.to_owned();
    }
    if remote.starts_with('/') {
        return format!("file://{remote}");
    }
    match remote.split_once(':') {
        Some((user_host, path)) if !path.starts_with('/') => {
            let host = user_host.rsplit('@').next().unwrap_or(user_host);
            format!("https://{host}/{path}")
        }
        _ => remote.to_owned(),
    }
}

/// `git <args>` in `root`, trimmed stdout; `None` if git is missing or fails.
fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The `version = "…"` of the `[package]` table of a Cargo.toml.
fn package_version(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package && let Some(rest) = line.strip_prefix("version") {
            let value = rest.trim_start().strip_prefix('=')?.trim();
            return Some(value.trim_matches('"').to_owned());
        }
    }
    None
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
pub fn rfc3339_utc(secs: u64) -> String {
    let rem = secs % 86_400;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let (year, month, day) = tracer_common::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// sha256 over everything that determines the image except its creation time.
fn inputs_digest(
    staged: &Path,
    containerfile: &Path,
    arch: Arch,
    meta: &Metadata,
) -> Result<String> {
    let mut h = Sha256::new();
    for file in [staged, containerfile] {
        let bytes = fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        h.update(Sha256::digest(&bytes));
    }
    for part in [arch.oci(), &meta.version, &meta.revision, &meta.source] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// `buildah build` of the Containerfile with `context` as build context.
fn buildah_build(
    containerfile: &Path,
    context: &Path,
    arch: Arch,
    tag: &str,
    meta: &Metadata,
    inputs: &str,
) -> Result<()> {
    let context_dir = context
        .parent()
        .with_context(|| format!("no directory for {}", context.display()))?;
    let mut cmd = Command::new("buildah");
    cmd.arg("build")
        .arg("--quiet")
        .arg("--file")
        .arg(containerfile)
        .args(["--platform", &format!("linux/{}", arch.oci())])
        .args(["--tag", tag])
        .args(["--label", &format!("{INPUTS_LABEL}={inputs}")]);
    for (key, value) in meta.pairs() {
        cmd.args(["--label", &format!("{key}={value}")]);
        cmd.args(["--annotation", &format!("{key}={value}")]);
    }
    cmd.arg(context_dir);
    let out = cmd.output().context("running buildah build")?;
    if !out.status.success() {
        bail!(
            "buildah build failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `podman image inspect <tag>` (the first element), or `None` when there is no such image.
pub fn inspect(tag: &str) -> Result<Option<Value>> {
    let exists = Command::new("podman")
        .args(["image", "exists", tag])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running podman image exists")?;
    if !exists.success() {
        return Ok(None);
    }
    let out = Command::new("podman")
        .args(["image", "inspect", tag])
        .output()
        .context("running podman image inspect")?;
    ensure!(
        out.status.success(),
        "podman image inspect {tag} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).context("parsing podman image inspect")?;
    Ok(v.get(0).cloned())
}

/// A label of an inspected image.
pub fn label<'a>(image: &'a Value, key: &str) -> Option<&'a str> {
    image.get("Labels")?.get(key)?.as_str()
}

/// `buildah push <tag> oci-archive:<path>:<tag>`; returns the archive's size.
fn write_oci_archive(tag: &str, path: &Path) -> Result<u64> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    let out = Command::new("buildah")
        .args(["push", "--quiet", tag])
        .arg(format!("oci-archive:{}:{tag}", path.display()))
        .output()
        .context("running buildah push")?;
    ensure!(
        out.status.success(),
        "buildah push {tag} to {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_795_999_800), "2026-11-30T00:50:00Z");
        assert_eq!(rfc3339_utc(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn crate_variables_are_not_passed_on() {
        assert!(inherited_crate_var("CARGO_MANIFEST_DIR"));
        assert!(inherited_crate_var("CARGO_PKG_VERSION"));
        assert!(inherited_crate_var("CARGO_BIN_EXE_tracer"));
        assert!(!inherited_crate_var("CARGO_HOME"));
        assert!(!inherited_crate_var("CARGO_TARGET_DIR"));
        assert!(!inherited_crate_var(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER"
        ));
    }

    #[test]
    fn remotes_as_urls() {
        assert_eq!(
            source_url("git@github.com:org/tracer.git"),
            "https://github.com/org/tracer.git"
        );
        assert_eq!(
            source_url("https://github.com/org/tracer"),
            "https://github.com/org/tracer"
        );
        assert_eq!(source_url("/work/tracer"), "file:///work/tracer");
    }

    #[test]
    fn version_from_manifest() {
        let toml = "[package]\nname = \"tracer\"\nversion = \"0.1.0\"\n\n[dependencies]\nversion = \"9\"\n";
        assert_eq!(package_version(toml).as_deref(), Some("0.1.0"));
        assert_eq!(package_version("[dependencies]\nversion = \"1\"\n"), None);
    }

    fn elf(machine: u16, types: &[u32]) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56 * types.len()];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for (i, t) in types.iter().enumerate() {
            b[64 + 56 * i..68 + 56 * i].copy_from_slice(&t.to_le_bytes());
        }
        b
    }

    #[test]
    fn elf_headers() {
        // PT_PHDR, PT_LOAD, PT_DYNAMIC: a static-pie.
        let static_pie = Elf64::parse(&elf(62, &[6, 1, 2])).expect("parses");
        assert_eq!(
            static_pie,
            Elf64 {
                machine: 62,
                has_interp: false
            }
        );
        // PT_PHDR, PT_INTERP, PT_LOAD: dynamically linked.
        assert!(
            Elf64::parse(&elf(183, &[6, 3, 1]))
                .expect("parses")
                .has_interp
        );
        assert!(Elf64::parse(b"#!/bin/sh\n").is_err());
        let mut truncated = elf(62, &[1, 1]);
        truncated.truncate(100);
        assert!(Elf64::parse(&truncated).is_err());
    }

    #[test]
    fn glibc_binaries_are_refused() {
        // This test binary: linked dynamically against glibc, for the host's machine.
        let me = std::env::current_exe().expect("current_exe");
        let (own, other) = if cfg!(target_arch = "aarch64") {
            (Arch::Arm64, Arch::Amd64)
        } else {
            (Arch::Amd64, Arch::Arm64)
        };
        let err = check_static(&me, own).expect_err("a dynamic binary is refused");
        assert!(format!("{err:#}").contains("dynamically linked"), "{err:#}");
        let err = check_static(&me, other).expect_err("the wrong machine is refused");
        assert!(format!("{err:#}").contains("ELF machine"), "{err:#}");
    }
}
