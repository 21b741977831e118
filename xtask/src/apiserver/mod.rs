//! A real Kubernetes API server for tests: etcd plus kube-apiserver v1.20.2, on free ports, in a
//! temporary directory, killed on drop.
//!
//! The binary comes from `scripts/build-kube-apiserver.sh` (built offline from Debian 12's
//! `kubernetes` source package, cached under `$HOME/.cache/tracer/`), or from
//! `$TRACER_KUBE_APISERVER`. etcd is Debian's `etcd-server`. No kubelet, scheduler or controller
//! manager runs: [`ApiServer::seed_lab`] writes the objects a real cluster would hold for the lab
//! (nodes with InternalIPs, pods with status patched through the status subresource, the
//! kube-dns Service, EndpointSlices) directly.
//!
//! By default both processes listen on 127.0.0.1 in the caller's network namespace. A tracer
//! running inside a lab namespace cannot reach that loopback: start the server with
//! [`ApiServerOptions::netns`] (e.g. the VPC namespace and the router's address facing node A)
//! so node A reaches it over the lab's routes.
//!
//! The seeding of objects ([`ApiServer::seed_lab`] and friends) is in `apiserver/seed.rs`.

use std::{
    fs,
    io::Write as _,
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::{Value, json};

mod seed;

pub use seed::pod_template_hash;

/// kube-apiserver version the build script produces.
pub const APISERVER_VERSION: &str = "v1.20.2";
/// Environment variable naming a kube-apiserver binary to use instead of the cached build.
pub const APISERVER_ENV: &str = "TRACER_KUBE_APISERVER";
/// Bearer token of the cluster-admin user (group `system:masters`) in [`ApiServer::kubeconfig`].
pub const ADMIN_TOKEN: &str = "tracer-test-admin-token";
/// Bearer token of the least-privileged `tracer` user in [`ApiServer::tracer_kubeconfig`].
pub const TRACER_TOKEN: &str = "tracer-test-tracer-token";
/// User name the tracer's token authenticates as.
pub const TRACER_USER: &str = "tracer";
/// The Service CIDR the server is started with (the lab's; kube-dns is 198.19.0.10 in it).
pub const SERVICE_CIDR: &str = "198.19.0.0/16";

/// The RBAC rules the tracer needs (what the DaemonSet's ClusterRole must grant): read-only
/// get/list/watch on pods, services, nodes and EndpointSlices.
pub fn tracer_cluster_role() -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": { "name": "tracer" },
        "rules": [
            { "apiGroups": [""], "resources": ["pods", "services", "nodes"],
              "verbs": ["get", "list", "watch"] },
            { "apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
              "verbs": ["get", "list", "watch"] },
        ],
    })
}

/// Path of the kube-apiserver binary: `$TRACER_KUBE_APISERVER`, else the build script's cache.
/// Fails with a message naming the build script when neither exists.
pub fn apiserver_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(APISERVER_ENV) {
        let p = PathBuf::from(p);
        ensure!(
            p.is_file(),
            "{APISERVER_ENV}={} does not name a file",
            p.display()
        );
        return Ok(p);
    }
    let cached = cached_apiserver_path();
    ensure!(
        cached.is_file(),
        "kube-apiserver not found at {} (and {APISERVER_ENV} is unset): run \
         scripts/build-kube-apiserver.sh (a few minutes, offline from Debian's kubernetes source \
         package) or point {APISERVER_ENV} at a kube-apiserver binary",
        cached.display()
    );
    Ok(cached)
}

/// Where `scripts/build-kube-apiserver.sh` caches the binary (`$TRACER_CACHE_DIR`, else
/// `$HOME/.cache/tracer`).
pub fn cached_apiserver_path() -> PathBuf {
    let dir = std::env::var_os("TRACER_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/root"))
                .join(".cache/tracer")
        });
    dir.join(format!("kube-apiserver-{APISERVER_VERSION}"))
}

/// Path of etcd (Debian's `etcd-server`): `$TRACER_ETCD`, else `etcd` on PATH.
fn etcd_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("TRACER_ETCD") {
        return Ok(PathBuf::from(p));
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
    {
        let p = dir.join("etcd");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("etcd not found: run scripts/build-kube-apiserver.sh (installs Debian's etcd-server)")
}

/// Where and how to run the server.
#[derive(Debug, Clone)]
pub struct ApiServerOptions {
    /// Network namespace to run etcd and kube-apiserver in (`ip netns exec`); `None` = the
    /// caller's. kubectl runs there too.
    pub netns: Option<String>,
    /// Address both listen on and the kubeconfig points at; must exist in that namespace.
    pub address: Ipv4Addr,
}

impl Default for ApiServerOptions {
    fn default() -> Self {
        Self {
            netns: None,
            address: Ipv4Addr::LOCALHOST,
        }
    }
}

/// etcd + kube-apiserver, started by [`ApiServer::start`], both killed on drop.
#[derive(Debug)]
pub struct ApiServer {
    opts: ApiServerOptions,
    dir: PathBuf,
    bin: PathBuf,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    etcd_port: u16,
    etcd_peer_port: u16,
    secure_port: u16,
    kubeconfig: PathBuf,
    tracer_kubeconfig: PathBuf,
}

/// A port nobody listens on right now (bound then released; a small race is accepted).
fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a free port")?;
    Ok(l.local_addr()?.port())
}

fn unique_dir() -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "tracer-apiserver-{}-{nanos:09}",
        std::process::id()
    ));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all.get(all.len().saturating_sub(lines)..)
        .unwrap_or_default()
        .join("\n")
}

/// SIGTERM, wait up to 5 s, then SIGKILL; reaps the child.
fn terminate(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl ApiServer {
    /// Starts etcd and kube-apiserver on 127.0.0.1 in this network namespace and waits until
    /// `/readyz` answers ok (about 4 s).
    pub fn start() -> Result<Self> {
        Self::start_with(ApiServerOptions::default())
    }

    /// Starts etcd and kube-apiserver as `opts` says and waits until `/readyz` answers ok.
    pub fn start_with(opts: ApiServerOptions) -> Result<Self> {
        let bin = apiserver_bin()?;
        let dir = unique_dir()?;
        let kubeconfig = dir.join("kubeconfig");
        let tracer_kubeconfig = dir.join("tracer.kubeconfig");
        let mut me = Self {
            opts,
            dir,
            bin,
            etcd: None,
            apiserver: None,
            etcd_port: free_port()?,
            etcd_peer_port: free_port()?,
            secure_port: free_port()?,
            kubeconfig,
            tracer_kubeconfig,
        };
        me.write_files()?;
        me.start_etcd()?;
        me.start_apiserver()?;
        me.kubectl_apply(&json!({
            "apiVersion": "v1", "kind": "List",
            "items": [
                tracer_cluster_role(),
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": { "name": "tracer" },
                    "roleRef": { "apiGroup": "rbac.authorization.k8s.io",
                                 "kind": "ClusterRole", "name": "tracer" },
                    "subjects": [{ "apiGroup": "rbac.authorization.k8s.io",
                                   "kind": "User", "name": TRACER_USER }],
                },
            ],
        }))
        .context("creating the tracer's ClusterRole and binding")?;
        Ok(me)
    }

    /// `https://<address>:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}:{}", self.opts.address, self.secure_port)
    }

    /// Kubeconfig of the cluster admin (token auth, `insecure-skip-tls-verify`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Kubeconfig of the `tracer` user, bound to [`tracer_cluster_role`] only: what the
    /// DaemonSet's service account may do.
    pub fn tracer_kubeconfig(&self) -> &Path {
        &self.tracer_kubeconfig
    }

    /// Directory holding logs, keys, certificates and etcd data.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last lines of kube-apiserver's log, for failure messages.
    pub fn apiserver_log(&self) -> String {
        log_tail(&self.dir.join("kube-apiserver.log"), 30)
    }

    fn kubeconfig_text(&self, user: &str, token: &str) -> String {
        // kubectl and kube-rs read JSON kubeconfigs as well as YAML.
        json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "lab", "cluster": {
                "server": self.url(), "insecure-skip-tls-verify": true } }],
            "users": [{ "name": user, "user": { "token": token } }],
            "contexts": [{ "name": "lab", "context": { "cluster": "lab", "user": user } }],
            "current-context": "lab",
        })
        .to_string()
    }

    fn write_files(&self) -> Result<()> {
        let d = &self.dir;
        fs::write(
            d.join("tokens.csv"),
            format!(
                "{ADMIN_TOKEN},admin,admin-uid,\"system:masters\"\n\
                 {TRACER_TOKEN},{TRACER_USER},tracer-uid\n"
            ),
        )?;
        fs::write(&self.kubeconfig, self.kubeconfig_text("admin", ADMIN_TOKEN))?;
        fs::write(
            &self.tracer_kubeconfig,
            self.kubeconfig_text(TRACER_USER, TRACER_TOKEN),
        )?;
        let key = d.join("sa.key");
        let out = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&key)
            .arg("2048")
            .stdin(Stdio::null())
            .output()
            .context("running openssl genrsa (Debian package openssl)")?;
        ensure!(
            out.status.success(),
            "openssl genrsa failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    fn command(&self, prog: &Path) -> Command {
        match &self.opts.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(prog);
                c
            }
            None => Command::new(prog),
        }
    }

    fn log_file(&self, name: &str) -> Result<fs::File> {
        let p = self.dir.join(name);
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .with_context(|| format!("opening {}", p.display()))
    }

    fn start_etcd(&mut self) -> Result<()> {
        let etcd = etcd_bin()?;
        let a = self.opts.address;
        let client = format!("http://{a}:{}", self.etcd_port);
        let peer = format!("http://{a}:{}", self.etcd_peer_port);
        let log = self.log_file("etcd.log")?;
        let child = self
            .command(&etcd)
            .arg("--name=tracer-test")
            .arg(format!("--data-dir={}", self.dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=tracer-test={peer}"))
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", etcd.display()))?;
        self.etcd = Some(child);
        Ok(())
    }

    /// Starts kube-apiserver (same ports, same etcd) and waits for `/readyz`. Use after
    /// [`ApiServer::kill_apiserver`] to end a simulated outage.
    pub fn start_apiserver(&mut self) -> Result<()> {
        if let Some(c) = self.apiserver.as_mut()
            && matches!(c.try_wait(), Ok(None))
        {
            bail!("kube-apiserver is already running");
        }
        let d = self.dir.clone();
        let a = self.opts.address;
        let log = self.log_file("kube-apiserver.log")?;
        let child = self
            .command(&self.bin)
            .arg(format!("--etcd-servers=http://{a}:{}", self.etcd_port))
            .arg(format!("--bind-address={a}"))
            .arg(format!("--advertise-address={a}"))
            .arg(format!("--secure-port={}", self.secure_port))
            .arg("--insecure-port=0")
            .arg(format!("--cert-dir={}", d.join("certs").display()))
            .arg(format!(
                "--token-auth-file={}",
                d.join("tokens.csv").display()
            ))
            .arg("--authorization-mode=RBAC")
            .arg(format!(
                "--service-account-key-file={}",
                d.join("sa.key").display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                d.join("sa.key").display()
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
            .arg("--endpoint-reconciler-type=none")
            // No controller manager creates service accounts or their tokens: without this,
            // pod creation waits for a token that never comes.
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--v=1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.apiserver = Some(child);
        self.wait_ready(Duration::from_secs(60))
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            for (name, child) in [
                ("etcd", &mut self.etcd),
                ("kube-apiserver", &mut self.apiserver),
            ] {
                if let Some(c) = child
                    && let Ok(Some(status)) = c.try_wait()
                {
                    let log = if name == "etcd" {
                        log_tail(&self.dir.join("etcd.log"), 30)
                    } else {
                        log_tail(&self.dir.join("kube-apiserver.log"), 30)
                    };
                    bail!("{name} exited ({status}) before the API server was ready:\n{log}");
                }
            }
            if let Ok(out) = self.kubectl(&["get", "--raw", "/readyz", "--request-timeout=2s"])
                && out.status.success()
                && String::from_utf8_lossy(&out.stdout).trim() == "ok"
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "kube-apiserver not ready after {timeout:?}:\n{}",
                    self.apiserver_log()
                );
            }
            sleep(Duration::from_millis(200));
        }
    }

    /// Kills kube-apiserver (SIGTERM, then SIGKILL after 5 s); etcd keeps running, so a later
    /// [`ApiServer::start_apiserver`] serves the same data on the same port.
    pub fn kill_apiserver(&mut self) {
        if let Some(mut c) = self.apiserver.take() {
            terminate(&mut c);
        }
    }

    /// Kills kube-apiserver and starts it again on the same port (an API outage and its end).
    pub fn restart_apiserver(&mut self) -> Result<()> {
        self.kill_apiserver();
        self.start_apiserver()
    }

    /// Kills kube-apiserver and etcd. Also done on drop.
    pub fn stop(&mut self) {
        self.kill_apiserver();
        if let Some(mut c) = self.etcd.take() {
            terminate(&mut c);
        }
    }

    /// Runs `kubectl --kubeconfig <admin> <args>` (inside the server's namespace when it has
    /// one) and returns its output whatever the exit status.
    pub fn kubectl(&self, args: &[&str]) -> Result<Output> {
        self.command(Path::new("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running kubectl {}", args.join(" ")))
    }

    /// Like [`ApiServer::kubectl`], failing unless kubectl exits 0; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl(args)?;
        ensure!(
            out.status.success(),
            "kubectl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl apply -f -` of one manifest (an object or a `List`).
    pub fn kubectl_apply(&self, manifest: &Value) -> Result<()> {
        let text = manifest.to_string();
        let mut child = self
            .command(Path::new("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running kubectl apply")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(text.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "kubectl apply failed ({}): {}\nmanifest: {text}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    /// Merge-patches the status subresource of an object (no kubelet or node controller runs
    /// here to do it).
    pub fn patch_status(
        &self,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        status: &Value,
    ) -> Result<()> {
        let patch = json!({ "status": status }).to_string();
        let mut args = vec![
            "patch",
            kind,
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
        ];
        args.push(&patch);
        if let Some(ns) = namespace {
            args.extend(["-n", ns]);
        }
        self.kubectl_ok(&args).map(drop)
    }

    /// Whether the server serves `group/version` (e.g. `discovery.k8s.io/v1`).
    pub fn serves(&self, group_version: &str) -> Result<bool> {
        let out = self.kubectl_ok(&["api-versions"])?;
        Ok(out.lines().any(|l| l.trim() == group_version))
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os("TRACER_APISERVER_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("kept API server files in {}", self.dir.display());
        }
    }
}

/// The address a lab node reaches the API server at when it runs in the VPC namespace
/// (the VPC router on node A's subnet).
pub fn lab_vpc_options() -> ApiServerOptions {
    ApiServerOptions {
        netns: Some(crate::lab::NS_VPC.to_owned()),
        address: crate::lab::ROUTER_A_IP,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_hash_is_stable_and_safe() {
        let h = pod_template_hash("kube-system", "coredns");
        assert_eq!(h.len(), 10);
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        assert_eq!(h, pod_template_hash("kube-system", "coredns"));
        assert_ne!(h, pod_template_hash("default", "client"));
    }

    #[test]
    fn missing_binary_names_the_build_script() {
        if std::env::var_os(APISERVER_ENV).is_some() || cached_apiserver_path().is_file() {
            return;
        }
        let err = apiserver_bin().map(drop).err().map(|e| format!("{e:#}"));
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("scripts/build-kube-apiserver.sh")),
            "{err:?}"
        );
    }
}
