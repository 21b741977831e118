//! Running the real `tracer` binary inside a lab namespace, for the demo, tests and benchmarks.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::PathBuf,
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// Everything `child` writes to stderr, collected by a thread as it arrives (the pipe never fills).
pub(crate) fn collect_stderr(child: &mut Child) -> Arc<Mutex<String>> {
    let stderr = Arc::new(Mutex::new(String::new()));
    if let Some(mut err) = child.stderr.take() {
        let stderr = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let (Ok(mut s), Some(chunk)) = (stderr.lock(), buf.get(..n)) {
                    s.push_str(&String::from_utf8_lossy(chunk));
                }
            }
        });
    }
    stderr
}

/// The tracer's programs loaded in the kernel now, as `bpftool -j prog show` lists them
/// (recognised by name: this version's and earlier ones').
pub fn our_programs() -> Result<Vec<Value>> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .context("running bpftool prog show")?;
    let all: Vec<Value> =
        serde_json::from_slice(&out.stdout).context("bpftool prog show: not JSON")?;
    Ok(all
        .into_iter()
        .filter(|p| {
            p.get("name").and_then(Value::as_str).is_some_and(|n| {
                n == tracer_common::programs::KFREE_SKB || tracer_common::programs::TC.contains(&n)
            })
        })
        .collect())
}

/// Path of the tracer binary: `$TRACER_BIN`, else `target/debug/tracer` of this workspace.
pub fn tracer_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TRACER_BIN") {
        return PathBuf::from(p);
    }
    workspace_root().join("target/debug/tracer")
}

/// The workspace root (parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// A `tracer run` process inside a network namespace, with its stdout parsed as JSON lines.
pub struct TracerProcess {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    raw_lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    ready_file: PathBuf,
}

impl TracerProcess {
    /// Starts `tracer run --ready-file … <args>` in `ns` and waits until it is attached.
    pub fn start(ns: &str, args: &[&str]) -> Result<Self> {
        let bin = tracer_bin();
        if !bin.exists() {
            bail!(
                "{} not found: build it first (cargo build -p tracer)",
                bin.display()
            );
        }
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let ready_file = std::env::temp_dir().join(format!(
            "tracer-ready-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&ready_file);
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(&bin)
            .arg("run")
            .arg("--ready-file")
            .arg(&ready_file)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let raw_lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            let lines = Arc::clone(&lines);
            let raw = Arc::clone(&raw_lines);
            thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        lines.lock().map(|mut l| l.push(v)).ok();
                    }
                    raw.lock().map(|mut l| l.push(line)).ok();
                }
            });
        }
        let stderr = collect_stderr(&mut child);
        let mut me = Self {
            child,
            lines,
            raw_lines,
            stderr,
            ready_file,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !me.ready_file.exists() {
            if let Some(status) = me.child.try_wait()? {
                thread::sleep(Duration::from_millis(200));
                bail!(
                    "tracer exited before it was ready ({status}):\n{}",
                    me.stderr()
                );
            }
            if Instant::now() > deadline {
                bail!("tracer not ready after 60 s:\n{}", me.stderr());
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(me)
    }

    /// Process id of the tracer.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// JSON lines printed so far.
    pub fn lines(&self) -> Vec<Value> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Number of JSON lines so far.
    pub fn line_count(&self) -> usize {
        self.lines.lock().map(|l| l.len()).unwrap_or_default()
    }

    /// Raw stdout lines so far (including any that were not JSON).
    pub fn raw_lines(&self) -> Vec<String> {
        self.raw_lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until a line matches `pred`, up to `timeout`.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        self.wait_for_from(0, timeout, pred)
    }

    /// Like [`TracerProcess::wait_for`], looking only at lines from index `from` on (see
    /// [`TracerProcess::line_count`]), to skip what earlier steps of a test produced.
    pub fn wait_for_from(
        &self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.lines().into_iter().skip(from).find(|v| pred(v)) {
                return Some(v);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the tracer with SIGKILL (no clean-up runs) and waits for it.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill().context("SIGKILL")?;
        self.child.wait().context("waiting for the killed tracer")?;
        Ok(())
    }

    /// Stops the tracer with SIGINT (as Ctrl-C would) and waits for it; returns its exit status.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                thread::sleep(Duration::from_millis(100));
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!(
                    "tracer did not exit within 10 s of SIGINT:\n{}",
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TracerProcess {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("{e:#}");
        }
        let _ = std::fs::remove_file(&self.ready_file);
    }
}
