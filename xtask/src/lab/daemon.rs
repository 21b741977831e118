//! The lab's long-running processes (two unbound CoreDNS stand-ins, two socat servers): config,
//! start, readiness, stop, pause.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::cmd::command_in;
use super::topology::{
    COREDNS_A_IP, COREDNS_B_IP, INET_HTTP_PORT, INET_SERVER_IP, INET_UDP_ECHO_PORT, LAB_CIDR,
    NS_A_COREDNS, NS_B_COREDNS, NS_INET, STATE_DIR,
};

/// Which CoreDNS replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replica {
    /// kube-system/coredns-a on node A.
    A,
    /// kube-system/coredns-b on node B.
    B,
}

impl Replica {
    /// Both replicas.
    pub const ALL: [Replica; 2] = [Replica::A, Replica::B];

    /// Pod name, also the TXT of `whoami.lab.tracer.` and the daemon name.
    pub fn name(self) -> &'static str {
        match self {
            Replica::A => "coredns-a",
            Replica::B => "coredns-b",
        }
    }

    /// Pod namespace.
    pub fn netns(self) -> &'static str {
        match self {
            Replica::A => NS_A_COREDNS,
            Replica::B => NS_B_COREDNS,
        }
    }

    /// Pod IP (unbound listens here).
    pub fn ip(self) -> std::net::Ipv4Addr {
        match self {
            Replica::A => COREDNS_A_IP,
            Replica::B => COREDNS_B_IP,
        }
    }

    pub(crate) fn daemon(self) -> Daemon {
        let conf = state_path(&format!("{}.unbound.conf", self.name()));
        Daemon {
            name: self.name(),
            netns: self.netns(),
            argv: vec![
                "unbound".to_owned(),
                "-d".to_owned(),
                "-c".to_owned(),
                conf.display().to_string(),
            ],
            comm: "unbound",
            listens: vec![(Proto::Udp, 53), (Proto::Tcp, 53)],
        }
    }
}

pub(crate) fn state_path(file: &str) -> PathBuf {
    PathBuf::from(STATE_DIR).join(file)
}

/// The unbound configuration of one replica: local data only, never recursing or forwarding.
pub(crate) fn unbound_conf(replica: Replica) -> String {
    let name = replica.name();
    let ip = replica.ip();
    let log = state_path(&format!("{name}.unbound.log"));
    let log = log.display();
    let dir = STATE_DIR;
    format!(
        r#"# tracer lab: CoreDNS replica {name}. Answers local zones only; never recurses or forwards.
server:
    verbosity: 1
    username: ""
    chroot: ""
    directory: "{dir}"
    pidfile: ""
    logfile: "{log}"
    use-syslog: no
    log-time-ascii: yes
    do-daemonize: no
    num-threads: 1
    so-reuseport: no
    interface: {ip}
    port: 53
    interface-automatic: no
    do-ip4: yes
    do-ip6: no
    do-udp: yes
    do-tcp: yes
    access-control: 127.0.0.0/8 allow
    access-control: {lab} allow
    # No upstream traffic, whatever happens: every address is off limits for queries.
    do-not-query-address: 0.0.0.0/0
    do-not-query-address: ::/0
    do-not-query-localhost: yes
    module-config: "iterator"
    qname-minimisation: no
    prefetch: no
    minimal-responses: yes
    msg-cache-size: 4m
    rrset-cache-size: 4m
    key-cache-size: 1m
    neg-cache-size: 1m
    statistics-interval: 0
    # Everything not below is NXDOMAIN, answered locally.
    local-zone: "." static
    local-zone: "cluster.local." static
    local-data: "cluster.local. 30 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 30"
    local-data: "kubernetes.default.svc.cluster.local. 5 IN A 198.19.0.1"
    local-data: "kube-dns.kube-system.svc.cluster.local. 5 IN A 198.19.0.10"
    local-data: "web.shop.svc.cluster.local. 5 IN A 198.19.0.80"
    local-zone: "lab.tracer." static
    local-data: "lab.tracer. 30 IN SOA ns.lab.tracer. hostmaster.lab.tracer. 1 7200 1800 86400 30"
    local-data: 'whoami.lab.tracer. 0 IN TXT "{name}"'
    local-data: "example.lab.tracer. 5 IN A {server}"
    local-zone: "refused.lab.tracer." refuse

remote-control:
    control-enable: no
"#,
        lab = LAB_CIDR,
        server = INET_SERVER_IP,
    )
}

/// True when every `(proto, port)` has a socket bound in namespace `ns` (IPv4).
pub(crate) fn listening(ns: &str, listens: &[(Proto, u16)]) -> Result<bool> {
    let out = command_in(ns, &["cat", "/proc/net/udp", "/proc/net/tcp"])
        .output()
        .with_context(|| format!("reading sockets of {ns}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(listens.iter().all(|&(proto, port)| {
        let needle = format!(":{port:04X} ");
        text.lines().any(|l| {
            let mut f = l.split_whitespace();
            let local = f.nth(1).unwrap_or("");
            let state = f.nth(1).unwrap_or("");
            // UDP sockets show state 07 (unconnected), TCP listeners 0A.
            let want = match proto {
                Proto::Udp => "07",
                Proto::Tcp => "0A",
            };
            format!("{local} ").ends_with(&needle) && state == want
        })
    }))
}

/// Waits until a UDP socket is bound to `port` in namespace `ns` (a server a test started).
pub fn wait_udp_listening(ns: &str, port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !listening(ns, &[(Proto::Udp, port)])? {
        if Instant::now() > deadline {
            bail!("nothing listens on UDP {port} in {ns} after {timeout:?}");
        }
        sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Transport of a listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proto {
    Udp,
    Tcp,
}

/// A lab process, started with `ip netns exec` in its own process group, pid in the state dir.
pub(crate) struct Daemon {
    pub name: &'static str,
    pub netns: &'static str,
    pub argv: Vec<String>,
    /// Expected /proc/<pid>/comm, to not mistake a recycled pid for the daemon.
    pub comm: &'static str,
    /// Sockets that must be listening before the daemon counts as ready.
    pub listens: Vec<(Proto, u16)>,
}

/// The internet's socat servers.
pub(crate) fn inet_daemons() -> [Daemon; 2] {
    [
        Daemon {
            name: "inet-http",
            netns: NS_INET,
            argv: vec![
                "socat".to_owned(),
                format!("TCP4-LISTEN:{INET_HTTP_PORT},bind={INET_SERVER_IP},fork,reuseaddr"),
                "SYSTEM:echo hello".to_owned(),
            ],
            comm: "socat",
            listens: vec![(Proto::Tcp, INET_HTTP_PORT)],
        },
        Daemon {
            name: "inet-echo",
            netns: NS_INET,
            argv: vec![
                "socat".to_owned(),
                "-T1".to_owned(),
                format!("UDP4-RECVFROM:{INET_UDP_ECHO_PORT},bind={INET_SERVER_IP},fork"),
                "PIPE".to_owned(),
            ],
            comm: "socat",
            listens: vec![(Proto::Udp, INET_UDP_ECHO_PORT)],
        },
    ]
}

/// State of a lab process as seen in /proc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProcState {
    /// Not running (no pid file, or the pid is gone or someone else).
    Gone,
    /// Running.
    Running(i32),
    /// Stopped by SIGSTOP.
    Stopped(i32),
}

impl Daemon {
    fn pid_file(&self) -> PathBuf {
        state_path(&format!("{}.pid", self.name))
    }

    fn log_file(&self) -> PathBuf {
        state_path(&format!("{}.out", self.name))
    }

    /// Starts the daemon (no readiness wait).
    pub fn start(&self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())
            .with_context(|| format!("opening {}", self.log_file().display()))?;
        let log2 = log
            .try_clone()
            .with_context(|| format!("duplicating {}", self.log_file().display()))?;
        let argv: Vec<&str> = self.argv.iter().map(String::as_str).collect();
        let child = command_in(self.netns, &argv)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Own process group: a Ctrl-C meant for the caller must not kill the lab's servers.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {} in {}", self.name, self.netns))?;
        // `ip netns exec` execs the program in place, so the child's pid is the daemon's.
        let pid = child.id();
        fs::write(self.pid_file(), format!("{pid}\n"))
            .with_context(|| format!("writing {}", self.pid_file().display()))?;
        Ok(())
    }

    fn pid(&self) -> Option<i32> {
        fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Current state, from the pid file and /proc.
    pub fn state(&self) -> ProcState {
        let Some(pid) = self.pid() else {
            return ProcState::Gone;
        };
        reap(pid);
        match proc_state(pid) {
            Some((comm, state)) if comm == self.comm || comm == "ip" => match state {
                'Z' | 'X' => ProcState::Gone,
                'T' | 't' => ProcState::Stopped(pid),
                _ => ProcState::Running(pid),
            },
            _ => ProcState::Gone,
        }
    }

    /// Waits until every socket in `listens` is bound in the daemon's namespace.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.state() == ProcState::Gone {
                bail!(
                    "{} exited during start-up; its output:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if self.listening()? {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not listen within {:?}; its output:\n{}",
                    self.name,
                    timeout,
                    self.log_tail()
                );
            }
            sleep(Duration::from_millis(10));
        }
    }

    fn listening(&self) -> Result<bool> {
        listening(self.netns, &self.listens)
    }

    fn log_tail(&self) -> String {
        let mut text = fs::read_to_string(self.log_file()).unwrap_or_default();
        if let Some(conf) = self.argv.iter().find(|a| a.ends_with(".conf")) {
            let log = conf.replace(".conf", ".log");
            text.push_str(&fs::read_to_string(log).unwrap_or_default());
        }
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(20);
        lines.get(start..).unwrap_or_default().join("\n")
    }

    /// Stops the daemon (SIGCONT, then SIGTERM, then SIGKILL after a second) and waits until gone.
    pub fn stop(&self) -> Result<()> {
        let pid = match self.state() {
            ProcState::Gone => return Ok(()),
            ProcState::Running(pid) | ProcState::Stopped(pid) => pid,
        };
        signal(pid, libc::SIGCONT)?;
        signal(pid, libc::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.state() != ProcState::Gone {
            if Instant::now() > deadline {
                signal(pid, libc::SIGKILL)?;
            }
            if Instant::now() > deadline + Duration::from_secs(4) {
                bail!("{} (pid {pid}) did not exit after SIGKILL", self.name);
            }
            sleep(Duration::from_millis(5));
        }
        let _ = fs::remove_file(self.pid_file());
        Ok(())
    }

    /// Restricts every thread of the running daemon to CPU `cpu`, or lets it run on every
    /// online CPU again (`None`).
    pub fn pin_cpu(&self, cpu: Option<usize>) -> Result<()> {
        let pid = match self.state() {
            ProcState::Gone => bail!("{} is not running", self.name),
            ProcState::Running(pid) | ProcState::Stopped(pid) => pid,
        };
        // SAFETY: sysconf has no preconditions.
        let online = usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) })
            .unwrap_or(1)
            .max(1);
        // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET only writes inside it.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for c in cpu.map_or(0..online, |c| c..c + 1) {
            // SAFETY: as above (CPU_SET ignores numbers beyond the set's size).
            unsafe { libc::CPU_SET(c, &mut set) };
        }
        let tasks = fs::read_dir(format!("/proc/{pid}/task"))
            .with_context(|| format!("listing the threads of {} (pid {pid})", self.name))?;
        for task in tasks.flatten() {
            let Some(tid) = task
                .file_name()
                .to_str()
                .and_then(|t| t.parse::<i32>().ok())
            else {
                continue;
            };
            // SAFETY: `set` is a valid cpu_set_t of the size passed.
            let rc = unsafe {
                libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &raw const set)
            };
            if rc != 0 {
                bail!(
                    "pinning {} (thread {tid}) to CPU {cpu:?}: {}",
                    self.name,
                    std::io::Error::last_os_error()
                );
            }
        }
        Ok(())
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`).
    pub fn pause(&self, stop: bool) -> Result<()> {
        let pid = match self.state() {
            ProcState::Gone => bail!("{} is not running", self.name),
            ProcState::Running(pid) | ProcState::Stopped(pid) => pid,
        };
        signal(pid, if stop { libc::SIGSTOP } else { libc::SIGCONT })?;
        let want_stopped = stop;
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let st = self.state();
            if matches!(st, ProcState::Stopped(_)) == want_stopped {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} (pid {pid}) is {st:?} after signal", self.name);
            }
            sleep(Duration::from_millis(2));
        }
    }
}

/// `(comm, state char)` of a process, from /proc/<pid>/stat.
pub(crate) fn proc_state(pid: i32) -> Option<(String, char)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let state = stat.get(close + 1..)?.trim_start().chars().next()?;
    Some((comm, state))
}

/// Whether `pid` is gone (or a zombie, which holds no namespace any more). Does not reap: the
/// process may be a child whose `Child` handle a caller still waits on.
pub(crate) fn is_gone(pid: i32) -> bool {
    !matches!(proc_state(pid), Some((_, s)) if s != 'Z' && s != 'X')
}

/// Reaps `pid` if it is an exited child of this process (harmless otherwise). Only used for the
/// lab's own daemons, whose `Child` handles are dropped at start.
fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: waitpid with WNOHANG only inspects/reaps the given pid; a pid that is not our child
    // gives ECHILD and changes nothing.
    unsafe {
        libc::waitpid(pid, &mut status, libc::WNOHANG);
    }
}

/// Sends `sig` to `pid`; a process already gone is not an error.
pub(crate) fn signal(pid: i32, sig: i32) -> Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(err).with_context(|| format!("kill({pid}, {sig})"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unbound_conf_is_local_only() {
        let conf = unbound_conf(Replica::B);
        for needle in [
            "local-zone: \".\" static",
            "interface: 198.18.2.30",
            "do-daemonize: no",
            "username: \"\"",
            "chroot: \"\"",
            "num-threads: 1",
            "so-reuseport: no",
            "do-ip6: no",
            "control-enable: no",
            "do-not-query-address: 0.0.0.0/0",
            "local-data: 'whoami.lab.tracer. 0 IN TXT \"coredns-b\"'",
            "local-zone: \"refused.lab.tracer.\" refuse",
        ] {
            assert!(conf.contains(needle), "missing {needle}");
        }
        for banned in ["forward-zone", "stub-zone", "root-hints", "trust-anchor"] {
            assert!(!conf.contains(banned), "has {banned}");
        }
    }

    #[test]
    fn parses_proc_stat() {
        let me = i32::try_from(std::process::id()).unwrap_or(0);
        let st = proc_state(me);
        assert!(matches!(st, Some((_, 'R' | 'S'))), "{st:?}");
    }
}
