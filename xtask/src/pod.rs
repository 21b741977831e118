//! Running the image with podman the way `deploy/daemonset.yaml` runs it.
//!
//! [`ContainerSpec::from_daemonset`] reads the DaemonSet's tracer container (arguments,
//! environment, security context, mounts, limits, readiness probe, grace period) and
//! translates it into `podman run` flags, with a network namespace standing in for the node's
//! host network. The image test runs the image that way in the lab's node A, so a change to the
//! manifest (a capability removed, a mount added) is exercised by the test without editing it.
//!
//! podman runs with `--runtime runc` (crun, podman's default, fails on hosts with a hybrid
//! cgroup layout) and explicit `--ulimit`s (raising rlimits is not permitted everywhere).
//! `seccompProfile: RuntimeDefault` becomes podman's default profile with the `bpf` and
//! `perf_event_open` grants containerd's default profile has (see [`runtime_default_seccomp`]).

#![allow(
    clippy::indexing_slicing,
    reason = "serde_json::Value indexed by key yields Null when absent; it never panics"
)]

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use crate::tracer::collect_stderr;

/// Global podman flags used for every podman call here: runc as the runtime (crun, podman's
/// default, fails with "cgroups in hybrid mode not supported"; no system configuration is
/// changed for this).
pub const PODMAN_GLOBAL: [&str; 2] = ["--runtime", "runc"];

/// rlimits passed explicitly (podman would otherwise try to raise them, which unprivileged
/// sandboxes refuse).
pub const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// podman's default seccomp profile (containers-common).
pub const PODMAN_SECCOMP: &str = "/usr/share/containers/seccomp.json";

/// Writes `src` (podman's default seccomp profile) to `dest` with `bpf` allowed to a container
/// holding CAP_BPF and `perf_event_open` to one holding CAP_PERFMON, as containerd's default
/// profile does: that is what `seccompProfile: RuntimeDefault` means on EKS nodes. Older
/// containers-common profiles (Debian 12's 0.50) allow both to CAP_SYS_ADMIN only, which the
/// DaemonSet does not have. Returns false (nothing written) when `src` does not exist.
pub fn runtime_default_seccomp(src: &Path, dest: &Path) -> Result<bool> {
    let text = match std::fs::read_to_string(src) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("reading {}", src.display())),
    };
    let mut profile: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", src.display()))?;
    allow_bpf_capabilities(&mut profile)?;
    let out = serde_json::to_string(&profile).context("serializing the seccomp profile")?;
    std::fs::write(dest, out).with_context(|| format!("writing {}", dest.display()))?;
    Ok(true)
}

/// The edit [`runtime_default_seccomp`] makes: drops `bpf` and `perf_event_open` from
/// unconditional errno rules (the default action still refuses them to everyone else) and adds
/// one allow rule for each, conditional on its capability.
fn allow_bpf_capabilities(profile: &mut Value) -> Result<()> {
    const GRANTS: [(&str, &str); 2] = [("bpf", "CAP_BPF"), ("perf_event_open", "CAP_PERFMON")];
    let rules = profile["syscalls"]
        .as_array_mut()
        .context("seccomp profile without syscalls")?;
    for rule in rules.iter_mut() {
        let unconditional = rule["args"].as_array().is_none_or(Vec::is_empty);
        if rule["action"] == "SCMP_ACT_ERRNO"
            && unconditional
            && let Some(names) = rule["names"].as_array_mut()
        {
            names.retain(|n| !GRANTS.iter().any(|(syscall, _)| n == syscall));
        }
    }
    rules.retain(|r| r["names"].as_array().is_none_or(|n| !n.is_empty()));
    for (syscall, cap) in GRANTS {
        rules.push(serde_json::json!({
            "names": [syscall],
            "action": "SCMP_ACT_ALLOW",
            "args": [],
            "includes": { "caps": [cap] },
            "excludes": {},
        }));
    }
    Ok(())
}

/// An HTTP readiness probe (`httpGet`), port resolved to a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    /// Request path, e.g. `/readyz`.
    pub path: String,
    /// TCP port.
    pub port: u16,
}

/// A DaemonSet container in podman terms.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// `podman run` flags: network, security, environment, mounts, limits.
    pub flags: Vec<String>,
    /// Arguments after the image (the container's `args`).
    pub args: Vec<String>,
    /// The readiness probe, if it is an `httpGet`.
    pub readiness: Option<HttpProbe>,
    /// `terminationGracePeriodSeconds` (Kubernetes' default, 30 s, when absent).
    pub grace: Duration,
    /// `hostPath` directories of type `DirectoryOrCreate`: [`ContainerSpec::prepare`] creates
    /// them.
    pub create_dirs: Vec<PathBuf>,
    /// `hostPath` directories of type `Directory`: [`ContainerSpec::prepare`] checks them.
    pub require_dirs: Vec<PathBuf>,
    /// Where [`ContainerSpec::prepare`] writes the `RuntimeDefault` seccomp profile that
    /// `flags` names (see [`runtime_default_seccomp`]).
    pub seccomp_profile: Option<PathBuf>,
}

impl ContainerSpec {
    /// Reads container `container` of the DaemonSet in `yaml` and translates it, with
    /// `host_netns` (a network namespace file, e.g. `/run/netns/trl-node-a`) as the host network,
    /// `node_name` as `spec.nodeName` and `host_ip` as `status.hostIP` (and `status.podIP`: host
    /// network). `$(VAR)` in the arguments is expanded from the container's environment, as the
    /// kubelet does.
    ///
    /// Fails on what it cannot translate faithfully (a volume type other than `hostPath`,
    /// `emptyDir` or an optional Secret, a `fieldRef` other than those above and
    /// `metadata.namespace`, no `hostNetwork`). An optional Secret is mounted as Kubernetes mounts
    /// a Secret that does not exist: an empty read-only directory.
    pub fn from_daemonset(
        yaml: &str,
        container: &str,
        host_netns: &Path,
        node_name: &str,
        host_ip: &str,
    ) -> Result<Self> {
        let ds: Value = serde_saphyr::from_str(yaml).context("parsing the DaemonSet YAML")?;
        ensure!(ds["kind"] == "DaemonSet", "not a DaemonSet: {}", ds["kind"]);
        let pod = &ds["spec"]["template"]["spec"];
        let c = pod["containers"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == container))
            .with_context(|| format!("no container {container:?} in the DaemonSet"))?;
        let mut flags: Vec<String> = Vec::new();
        let flag = |flags: &mut Vec<String>, k: &str, v: String| {
            flags.push(k.to_owned());
            flags.push(v);
        };

        // Pod level: the node's network namespace, PID namespace, seccomp.
        ensure!(
            pod["hostNetwork"] == true,
            "the DaemonSet does not use hostNetwork: cannot stand a namespace in for it"
        );
        flag(
            &mut flags,
            "--network",
            format!("ns:{}", host_netns.display()),
        );
        if pod["hostPID"] == true {
            flag(&mut flags, "--pid", "host".into());
        }
        let seccomp = pod["securityContext"]["seccompProfile"]["type"]
            .as_str()
            .or(c["securityContext"]["seccompProfile"]["type"].as_str());
        let mut seccomp_profile = None;
        match seccomp {
            None => {}
            // Without podman's profile file, podman's built-in copy of it applies.
            Some("RuntimeDefault") if Path::new(PODMAN_SECCOMP).exists() => {
                // SAFETY: geteuid has no preconditions.
                let uid = unsafe { libc::geteuid() };
                let profile =
                    std::env::temp_dir().join(format!("tracer-seccomp-runtime-default-{uid}.json"));
                flag(
                    &mut flags,
                    "--security-opt",
                    format!("seccomp={}", profile.display()),
                );
                seccomp_profile = Some(profile);
            }
            Some("RuntimeDefault") => {}
            Some("Unconfined") => flag(&mut flags, "--security-opt", "seccomp=unconfined".into()),
            Some(other) => bail!("seccompProfile {other} not supported here"),
        }

        // Container security context.
        let sc = &c["securityContext"];
        if sc["privileged"] == true {
            flags.push("--privileged".into());
        }
        if sc["allowPrivilegeEscalation"] == false {
            flags.push("--security-opt".into());
            flags.push("no-new-privileges".into());
        }
        if sc["readOnlyRootFilesystem"] == true {
            // Kubernetes mounts nothing writable that the manifest does not list.
            flags.push("--read-only".into());
            flags.push("--read-only-tmpfs=false".into());
        }
        if let Some(uid) = sc["runAsUser"].as_u64() {
            let gid = sc["runAsGroup"].as_u64().unwrap_or(0);
            flags.push("--user".into());
            flags.push(format!("{uid}:{gid}"));
        }
        for cap in strings(&sc["capabilities"]["drop"]) {
            flags.push("--cap-drop".into());
            flags.push(cap);
        }
        for cap in strings(&sc["capabilities"]["add"]) {
            flags.push("--cap-add".into());
            flags.push(cap);
        }

        // Environment.
        let namespace = ds["metadata"]["namespace"].as_str().unwrap_or("default");
        let mut env: Vec<(String, String)> = Vec::new();
        for e in c["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().context("env entry without name")?;
            let value = if let Some(v) = e["value"].as_str() {
                v.to_owned()
            } else {
                match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("spec.nodeName") => node_name.to_owned(),
                    Some("status.hostIP" | "status.podIP") => host_ip.to_owned(),
                    Some("metadata.namespace") => namespace.to_owned(),
                    _ => bail!(
                        "env {name}: only value and fieldRef spec.nodeName, status.hostIP, \
                         status.podIP and metadata.namespace are supported"
                    ),
                }
            };
            flags.push("--env".into());
            flags.push(format!("{name}={value}"));
            env.push((name.to_owned(), value));
        }

        // Mounts.
        let (mut create_dirs, mut require_dirs) = (Vec::new(), Vec::new());
        let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let name = m["name"].as_str().context("volumeMount without name")?;
            let dest = m["mountPath"]
                .as_str()
                .context("volumeMount without mountPath")?;
            let v = volumes
                .iter()
                .find(|v| v["name"] == name)
                .with_context(|| format!("volumeMount {name}: no such volume"))?;
            if let Some(host) = v["hostPath"]["path"].as_str() {
                match v["hostPath"]["type"].as_str() {
                    Some("DirectoryOrCreate") => create_dirs.push(PathBuf::from(host)),
                    Some("Directory") => require_dirs.push(PathBuf::from(host)),
                    _ => {}
                }
                let mut opts = vec![if m["readOnly"] == true { "ro" } else { "rw" }];
                match m["mountPropagation"].as_str() {
                    None | Some("None") => {}
                    Some("HostToContainer") => opts.push("rslave"),
                    Some("Bidirectional") => opts.push("rshared"),
                    Some(other) => bail!("volumeMount {name}: mountPropagation {other}?"),
                }
                flag(
                    &mut flags,
                    "--volume",
                    format!("{host}:{dest}:{}", opts.join(",")),
                );
            } else if v.get("emptyDir").is_some() {
                // Memory-backed or not, a tmpfs is the closest local equivalent.
                let mut spec = format!("type=tmpfs,destination={dest}");
                if let Some(limit) = v["emptyDir"]["sizeLimit"].as_str() {
                    spec.push_str(&format!(",tmpfs-size={}", quantity_bytes(limit)?));
                }
                if m["readOnly"] == true {
                    spec.push_str(",ro=true");
                }
                flag(&mut flags, "--mount", spec);
            } else if v.get("secret").is_some() && v["secret"]["optional"] == true {
                flag(
                    &mut flags,
                    "--mount",
                    format!("type=tmpfs,destination={dest},tmpfs-size=65536,ro=true"),
                );
            } else {
                bail!("volume {name}: only hostPath, emptyDir and optional Secrets are supported");
            }
        }

        // Limits (requests only affect scheduling and CPU weight).
        let limits = &c["resources"]["limits"];
        if let Some(mem) = limits["memory"].as_str() {
            flag(&mut flags, "--memory", quantity_bytes(mem)?.to_string());
        }
        if let Some(cpu) = limits["cpu"].as_str() {
            flag(&mut flags, "--cpus", cpu_cores(cpu)?);
        }

        if c.get("command").is_some() {
            let cmd = serde_json::to_string(&c["command"]).context("command")?;
            flag(&mut flags, "--entrypoint", cmd);
        }
        let args = strings(&c["args"])
            .iter()
            .map(|a| expand(a, &env))
            .collect();
        let readiness = match &c["readinessProbe"]["httpGet"] {
            Value::Null => None,
            get => Some(HttpProbe {
                path: get["path"].as_str().unwrap_or("/").to_owned(),
                port: port_of(c, &get["port"])?,
            }),
        };
        let grace =
            Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30));
        Ok(Self {
            flags,
            args,
            readiness,
            grace,
            create_dirs,
            require_dirs,
            seccomp_profile,
        })
    }

    /// What must exist on the host before `podman run`: creates the `DirectoryOrCreate`
    /// directories, checks the `Directory` ones, writes the seccomp profile.
    pub fn prepare(&self) -> Result<()> {
        for dir in &self.create_dirs {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating hostPath {}", dir.display()))?;
        }
        for dir in &self.require_dirs {
            ensure!(
                dir.is_dir(),
                "hostPath {} (type Directory) is not a directory here",
                dir.display()
            );
        }
        if let Some(profile) = &self.seccomp_profile {
            runtime_default_seccomp(Path::new(PODMAN_SECCOMP), profile)?;
        }
        Ok(())
    }
}

/// The strings of a YAML sequence (nothing for anything else).
/// `$(NAME)` replaced by the value of `NAME` in `env`, as the kubelet expands arguments;
/// unknown names stay as written.
fn expand(arg: &str, env: &[(String, String)]) -> String {
    let mut out = arg.to_owned();
    for (name, value) in env {
        out = out.replace(&format!("$({name})"), value);
    }
    out
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| match s {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .collect()
}

/// A probe port: a number, or the name of one of the container's ports.
fn port_of(container: &Value, port: &Value) -> Result<u16> {
    if let Some(n) = port.as_u64() {
        return u16::try_from(n).context("probe port out of range");
    }
    let name = port
        .as_str()
        .context("probe port is neither number nor name")?;
    let p = container["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .with_context(|| format!("probe port {name:?}: no such container port"))?;
    u16::try_from(p["containerPort"].as_u64().context("containerPort")?)
        .context("containerPort out of range")
}

/// A Kubernetes memory quantity (`256Mi`, `1G`, `1048576`) in bytes.
pub fn quantity_bytes(q: &str) -> Result<u64> {
    const UNITS: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let (num, mult) = UNITS
        .iter()
        .find_map(|(suffix, mult)| q.strip_suffix(suffix).map(|n| (n, *mult)))
        .unwrap_or((q, 1));
    let n: u64 = num
        .parse()
        .with_context(|| format!("quantity {q:?}: expected an integer with an optional unit"))?;
    n.checked_mul(mult)
        .with_context(|| format!("quantity {q:?} too large"))
}

/// A Kubernetes CPU quantity (`500m`, `2`) as podman's `--cpus` value.
pub fn cpu_cores(q: &str) -> Result<String> {
    let millis: u64 = match q.strip_suffix('m') {
        Some(m) => m.parse(),
        None => q.parse::<u64>().map(|c| c * 1000),
    }
    .with_context(|| format!("cpu quantity {q:?}"))?;
    Ok(format!("{}.{:03}", millis / 1000, millis % 1000))
}

/// A container started with `podman run` (attached), its stdout collected line by line.
pub struct Container {
    name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Container {
    /// `podman run --rm --name <name> --pull never <ULIMITS> <spec.flags> <image> <spec.args>`.
    /// Runs [`ContainerSpec::prepare`] first.
    pub fn start(image: &str, spec: &ContainerSpec, name: &str) -> Result<Self> {
        spec.prepare()?;
        // A container left over from an interrupted run would hold the name.
        let _ = Command::new("podman")
            .args(PODMAN_GLOBAL)
            .args(["rm", "--force", "--time", "0", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let mut child = Command::new("podman")
            .args(PODMAN_GLOBAL)
            .args(["run", "--rm", "--name", name, "--pull", "never"])
            .args(ULIMITS)
            .args(&spec.flags)
            .arg(image)
            .args(&spec.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning podman run")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            let lines = Arc::clone(&lines);
            thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().map(|mut l| l.push(line)).ok();
                }
            });
        }
        let stderr = collect_stderr(&mut child);
        Ok(Self {
            name: name.to_owned(),
            child,
            lines,
            stderr,
        })
    }

    /// The container's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// stdout lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// stderr so far (the tracer's logs and podman's messages).
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The exit status, if `podman run` has returned.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child.try_wait().context("waiting for podman run")
    }

    /// Waits until a stdout line matches `pred`, up to `timeout`; `None` on timeout or when
    /// the container has exited without such a line.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| pred(l)) {
                return Some(l);
            }
            if Instant::now() > deadline || !matches!(self.try_wait(), Ok(None)) {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM to the container's main process (as the kubelet does) and waits up to
    /// `grace` for `podman run` to return; returns its status, which is the container's.
    /// After `grace`, kills the container and fails.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        let out = Command::new("podman")
            .args(PODMAN_GLOBAL)
            .args(["kill", "--signal", "TERM", &self.name])
            .output()
            .context("running podman kill")?;
        ensure!(
            out.status.success(),
            "podman kill --signal TERM {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = self.try_wait()? {
                // Let the reader threads take the last lines.
                thread::sleep(Duration::from_millis(200));
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.remove();
                bail!(
                    "container {} still running {} s after SIGTERM:\n{}",
                    self.name,
                    grace.as_secs(),
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `podman exec <name> <argv>` (as `kubectl exec` would run it), with its output.
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        Command::new("podman")
            .args(PODMAN_GLOBAL)
            .args(["exec", &self.name])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running podman exec {} {}", self.name, argv.join(" ")))
    }

    /// Removes the container by force and reaps `podman run`.
    fn remove(&mut self) {
        let _ = Command::new("podman")
            .args(PODMAN_GLOBAL)
            .args(["rm", "--force", "--time", "0", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seccomp_grants_bpf_to_its_capability() {
        // The shape of Debian 12's containers-common 0.50 profile.
        let mut p = serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                { "names": ["read", "write"], "action": "SCMP_ACT_ALLOW" },
                { "names": ["bpf", "perf_event_open", "quotactl"], "action": "SCMP_ACT_ALLOW",
                  "includes": { "caps": ["CAP_SYS_ADMIN"] } },
                { "names": ["bpf", "perf_event_open", "quotactl"], "action": "SCMP_ACT_ERRNO",
                  "errnoRet": 1, "excludes": { "caps": ["CAP_SYS_ADMIN"] } },
                { "names": ["bpf"], "action": "SCMP_ACT_ERRNO" }
            ]
        });
        allow_bpf_capabilities(&mut p).expect("patches");
        let rules = p["syscalls"].as_array().expect("rules");
        assert_eq!(rules.len(), 5, "{p:#}");
        assert_eq!(rules[2]["names"], serde_json::json!(["quotactl"]));
        let allowed = |syscall: &str, cap: &str| {
            rules.iter().any(|r| {
                r["action"] == "SCMP_ACT_ALLOW"
                    && r["names"] == serde_json::json!([syscall])
                    && r["includes"]["caps"] == serde_json::json!([cap])
            })
        };
        assert!(allowed("bpf", "CAP_BPF"));
        assert!(allowed("perf_event_open", "CAP_PERFMON"));
        // The CAP_SYS_ADMIN grant stays.
        assert_eq!(rules[1]["names"][0], "bpf");
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity_bytes("256Mi").expect("Mi"), 256 << 20);
        assert_eq!(quantity_bytes("1G").expect("G"), 1_000_000_000);
        assert_eq!(quantity_bytes("4096").expect("plain"), 4096);
        assert!(quantity_bytes("1.5Gi").is_err());
        assert_eq!(cpu_cores("500m").expect("m"), "0.500");
        assert_eq!(cpu_cores("2").expect("cores"), "2.000");
        assert!(cpu_cores("x").is_err());
    }

    /// The repository's DaemonSet translates, and the security-relevant parts come through.
    #[test]
    fn repository_daemonset() {
        let yaml =
            std::fs::read_to_string(crate::tracer::workspace_root().join("deploy/daemonset.yaml"))
                .expect("deploy/daemonset.yaml");
        let spec = ContainerSpec::from_daemonset(
            &yaml,
            "tracer",
            Path::new("/run/netns/trl-node-a"),
            "node-a",
            "198.18.1.10",
        )
        .expect("translates");
        let f = spec.flags.join(" ");
        for want in [
            "--network ns:/run/netns/trl-node-a",
            "--read-only --read-only-tmpfs=false",
            "--security-opt no-new-privileges",
            "--user 0:0",
            "--cap-drop ALL",
            "--cap-add BPF",
            "--cap-add PERFMON",
            "--cap-add NET_ADMIN",
            "--cap-add SYSLOG",
            "--env NODE_NAME=node-a",
            "--env HOST_IP=198.18.1.10",
            "--env POD_NAMESPACE=tracer-system",
            "--mount type=tmpfs,destination=/etc/tracer/peer-tls,tmpfs-size=65536,ro=true",
            "--volume /var/run/netns:/run/netns:ro,rslave",
            "--volume /sys/kernel/btf:/sys/kernel/btf:ro",
            "--mount type=tmpfs,destination=/run/tracer,tmpfs-size=1048576",
        ] {
            assert!(f.contains(want), "{want:?} missing from {f}");
        }
        assert_eq!(spec.args.first().map(String::as_str), Some("run"));
        assert!(
            spec.args.iter().any(|a| a == "198.18.1.10:9966"),
            "$(HOST_IP) expanded: {:?}",
            spec.args
        );
        assert_eq!(
            spec.readiness,
            Some(HttpProbe {
                path: "/readyz".into(),
                port: 9091
            })
        );
        assert_eq!(spec.grace, Duration::from_secs(30));
        assert_eq!(spec.create_dirs, [PathBuf::from("/var/run/netns")]);
        assert_eq!(spec.require_dirs, [PathBuf::from("/sys/kernel/btf")]);
        if let Some(profile) = &spec.seccomp_profile {
            assert!(f.contains(&format!("--security-opt seccomp={}", profile.display())));
        }
    }

    #[test]
    fn refuses_what_it_cannot_translate() {
        let ds = |extra: &str| {
            format!(
                "kind: DaemonSet\nspec:\n  template:\n    spec:\n      hostNetwork: true\n      \
                 containers:\n        - name: c\n          volumeMounts:\n            - name: v\n              \
                 mountPath: /x\n      volumes:\n        - name: v\n{extra}"
            )
        };
        let ns = Path::new("/run/netns/x");
        let ok = ds("          emptyDir: {}\n");
        assert!(ContainerSpec::from_daemonset(&ok, "c", ns, "n", "10.0.0.1").is_ok());
        let cm = ds("          configMap:\n            name: x\n");
        assert!(ContainerSpec::from_daemonset(&cm, "c", ns, "n", "10.0.0.1").is_err());
        let secret = ds("          secret:\n            secretName: x\n");
        assert!(ContainerSpec::from_daemonset(&secret, "c", ns, "n", "10.0.0.1").is_err());
        let optional =
            ds("          secret:\n            secretName: x\n            optional: true\n");
        assert!(ContainerSpec::from_daemonset(&optional, "c", ns, "n", "10.0.0.1").is_ok());
        assert!(ContainerSpec::from_daemonset(&ok, "other", ns, "n", "10.0.0.1").is_err());
        let no_host_net = ok.replace("hostNetwork: true", "hostNetwork: false");
        assert!(ContainerSpec::from_daemonset(&no_host_net, "c", ns, "n", "10.0.0.1").is_err());
    }
}
