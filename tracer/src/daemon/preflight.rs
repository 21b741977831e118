//! Start-up checks of `tracer run` that turn the kernel's terse refusals into the fix.
//!
//! [`check`] reads this process's effective capabilities (`CapEff` in `/proc/self/status`)
//! before anything is loaded and names each missing one, why it is needed and how to grant it;
//! without it a missing CAP_PERFMON surfaces as a 200-line verifier dump and a non-root run as
//! "failed to create map". [`load_error`] turns a loader error into one line: every cause once,
//! the verifier log cut out (it is logged in full at `--log-level debug`).

use std::{error::Error, fmt};

/// A capability `tracer run` looks at (numbers from `linux/capability.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    /// CAP_NET_ADMIN (12).
    NetAdmin,
    /// CAP_SYS_ADMIN (21): stands in for BPF and PERFMON (and is the only way before 5.8).
    SysAdmin,
    /// CAP_SYSLOG (34).
    Syslog,
    /// CAP_PERFMON (38, Linux ≥ 5.8).
    Perfmon,
    /// CAP_BPF (39, Linux ≥ 5.8).
    Bpf,
}

impl Capability {
    /// Bit number in the capability sets.
    pub const fn bit(self) -> u32 {
        match self {
            Self::NetAdmin => 12,
            Self::SysAdmin => 21,
            Self::Syslog => 34,
            Self::Perfmon => 38,
            Self::Bpf => 39,
        }
    }

    /// The name Kubernetes' `securityContext.capabilities.add` takes (`PERFMON`).
    pub const fn k8s_name(self) -> &'static str {
        match self {
            Self::NetAdmin => "NET_ADMIN",
            Self::SysAdmin => "SYS_ADMIN",
            Self::Syslog => "SYSLOG",
            Self::Perfmon => "PERFMON",
            Self::Bpf => "BPF",
        }
    }

    /// What the tracer needs it for.
    pub const fn why(self) -> &'static str {
        match self {
            Self::NetAdmin => "to load and attach the tc programs",
            Self::SysAdmin => "to load BPF programs on kernels before 5.8",
            Self::Syslog => "to read /proc/kallsyms and symbolize drop locations",
            Self::Perfmon => {
                "so the verifier accepts the tc programs' packet access and the drop tracepoint"
            }
            Self::Bpf => "to create the BPF maps and load the programs",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CAP_{}", self.k8s_name())
    }
}

/// A capability set as a bit mask (`CapEff`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapSet(pub u64);

impl CapSet {
    /// `CapEff` of a `/proc/<pid>/status` text.
    pub fn effective_from_status(status: &str) -> Option<Self> {
        status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .map(Self)
    }

    /// Whether `cap` is in the set.
    pub fn has(self, cap: Capability) -> bool {
        self.0 & (1u64 << cap.bit()) != 0
    }
}

/// What `tracer run` cannot start without, or could not load.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// Capabilities are missing: nothing would load.
    #[error("{}", missing_message(missing, *root, *has_bpf_cap))]
    MissingCapabilities {
        /// The missing capabilities (required ones only).
        missing: Vec<Capability>,
        /// Whether the process runs as uid 0 (then its capability set was reduced).
        root: bool,
        /// Whether the kernel knows CAP_BPF (Linux ≥ 5.8).
        has_bpf_cap: bool,
    },
    /// `/proc/self/status` could not be read or has no `CapEff` line.
    #[error("cannot tell this process's capabilities: {0}")]
    Status(String),
    /// Loading the kernel programs failed, summarized on one line (see [`load_error`]).
    #[error("loading the kernel programs: {0}")]
    Load(String),
}

fn missing_message(missing: &[Capability], root: bool, has_bpf_cap: bool) -> String {
    let list = missing
        .iter()
        .map(|c| format!("{c} ({})", c.why()))
        .collect::<Vec<_>>()
        .join(", ");
    let needed = if has_bpf_cap {
        "CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (CAP_SYSLOG optional)"
    } else {
        "CAP_SYS_ADMIN and CAP_NET_ADMIN on this kernel (before 5.8; CAP_SYSLOG optional)"
    };
    let add = if has_bpf_cap {
        "BPF, PERFMON, NET_ADMIN and SYSLOG"
    } else {
        "SYS_ADMIN, NET_ADMIN and SYSLOG"
    };
    let who = if root {
        "this process runs as root but its capability set was reduced (container \
         securityContext, capsh/setpriv, systemd CapabilityBoundingSet)"
    } else {
        "this process does not run as root"
    };
    format!(
        "missing {list}. tracer run needs {needed}; {who}. Fix: run it as root with full \
         capabilities (`sudo tracer run`), or in Kubernetes add {add} to the container's \
         securityContext.capabilities.add, as deploy/daemonset.yaml does"
    )
}

/// The required capabilities missing from `eff`, and whether CAP_SYSLOG is missing (a warning:
/// drop locations are then hex). `last_cap` is `/proc/sys/kernel/cap_last_cap`: below 39 the
/// kernel predates CAP_BPF/CAP_PERFMON and only CAP_SYS_ADMIN allows loading. CAP_SYS_ADMIN
/// also stands in for BPF and PERFMON on newer kernels, as the kernel itself allows.
pub fn missing_capabilities(eff: CapSet, last_cap: u32) -> (Vec<Capability>, bool) {
    let mut missing = Vec::new();
    let sys_admin = eff.has(Capability::SysAdmin);
    if last_cap >= Capability::Bpf.bit() {
        for cap in [Capability::Bpf, Capability::Perfmon] {
            if !eff.has(cap) && !sys_admin {
                missing.push(cap);
            }
        }
    } else if !sys_admin {
        missing.push(Capability::SysAdmin);
    }
    if !eff.has(Capability::NetAdmin) {
        missing.push(Capability::NetAdmin);
    }
    (missing, !eff.has(Capability::Syslog))
}

/// Checks this process's capabilities before anything is loaded: an error naming every missing
/// one and the fix, or `Ok` (with a warning logged when only CAP_SYSLOG is missing).
pub fn check() -> Result<(), PreflightError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| PreflightError::Status(format!("/proc/self/status: {e}")))?;
    let eff = CapSet::effective_from_status(&status)
        .ok_or_else(|| PreflightError::Status("no CapEff in /proc/self/status".to_owned()))?;
    // Unknown (very old /proc): assume a kernel with CAP_BPF, the common case.
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(Capability::Bpf.bit());
    let (missing, no_syslog) = missing_capabilities(eff, last_cap);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !missing.is_empty() {
        return Err(PreflightError::MissingCapabilities {
            missing,
            root,
            has_bpf_cap: last_cap >= Capability::Bpf.bit(),
        });
    }
    if no_syslog {
        tracing::warn!(
            "{} missing ({}): drop locations will be hex addresses; add SYSLOG to the \
             capabilities to symbolize them",
            Capability::Syslog,
            Capability::Syslog.why()
        );
    }
    Ok(())
}

/// Marker aya puts between a BPF_PROG_LOAD error and the verifier log.
const VERIFIER_MARKER: &str = "Verifier output:";

/// One line for an error and its causes: each message once (a cause whose text the line
/// already holds is skipped: many errors print their source in their own message), and a
/// verifier log cut out of it. Returns the line and the verifier logs that were cut.
pub fn error_line<'a>(
    chain: impl IntoIterator<Item = &'a (dyn Error + 'static)>,
) -> (String, Vec<String>) {
    let mut line = String::new();
    let mut logs = Vec::new();
    for err in chain {
        let text = err.to_string();
        let text = match text.split_once(VERIFIER_MARKER) {
            Some((head, log)) => {
                logs.push(log.trim().to_owned());
                head.trim_end().trim_end_matches('.').to_owned()
            }
            None => text,
        };
        // Multi-line messages (a log, a dump) are kept to their first line.
        let text = text.lines().next().unwrap_or_default().trim().to_owned();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    (line, logs)
}

/// Iterates an error and its sources.
fn chain<'a>(err: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(err), |&e: &&'a (dyn Error + 'static)| e.source())
}

/// Turns an error of loading the kernel programs into [`PreflightError::Load`]: one line, the
/// verifier log logged at debug level instead, and the likely fix when the kernel said EPERM.
pub fn load_error<E: Error + 'static>(err: E) -> PreflightError {
    let (mut line, logs) = error_line(chain(&err));
    for log in &logs {
        tracing::debug!("verifier log:\n{log}");
    }
    if !logs.is_empty() {
        line.push_str(" (the verifier rejected it; its log is printed with --log-level debug)");
    }
    let eperm = chain(&err).any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EPERM))
    }) || line.contains("Operation not permitted");
    if eperm {
        line.push_str(
            "; the kernel said EPERM: check CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (and on \
             kernels before 5.11 the memlock limit: add SYS_RESOURCE or raise RLIMIT_MEMLOCK)",
        );
    }
    PreflightError::Load(line)
}

/// The attach mode `--tc-attach` resolves to on this kernel, for the start-up log line.
pub fn attach_mode(mode: crate::capture::TcMode) -> &'static str {
    use crate::capture::TcMode;
    match mode {
        TcMode::Tcx => "tcx",
        TcMode::Netlink => "netlink",
        TcMode::Auto => {
            if aya::util::KernelVersion::current()
                .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
            {
                "tcx (auto)"
            } else {
                "netlink (auto)"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(list: &[Capability]) -> CapSet {
        CapSet(list.iter().fold(0, |m, c| m | (1 << c.bit())))
    }

    #[test]
    fn reads_cap_eff() {
        let status = "Name:\ttracer\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n\
                      CapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n";
        let eff = CapSet::effective_from_status(status).expect("CapEff");
        assert!(eff.has(Capability::Bpf) && eff.has(Capability::Syslog));
        assert_eq!(
            CapSet::effective_from_status("CapEff:\t0000000000000000\n"),
            Some(CapSet(0))
        );
        assert_eq!(CapSet::effective_from_status("CapEff:\tzz\n"), None);
        assert_eq!(CapSet::effective_from_status(""), None);
    }

    #[test]
    fn which_are_missing() {
        use Capability::*;
        let all = caps(&[Bpf, Perfmon, NetAdmin, Syslog]);
        assert_eq!(missing_capabilities(all, 40), (vec![], false));
        assert_eq!(
            missing_capabilities(caps(&[Bpf, NetAdmin, Syslog]), 40),
            (vec![Perfmon], false)
        );
        assert_eq!(
            missing_capabilities(caps(&[Bpf, Perfmon, NetAdmin]), 40),
            (vec![], true),
            "SYSLOG missing is only a warning"
        );
        assert_eq!(
            missing_capabilities(CapSet(0), 40),
            (vec![Bpf, Perfmon, NetAdmin], true)
        );
        // SYS_ADMIN stands in for BPF and PERFMON, as in the kernel.
        assert_eq!(
            missing_capabilities(caps(&[SysAdmin, NetAdmin, Syslog]), 40),
            (vec![], false)
        );
        // Before 5.8 (cap_last_cap 37) only SYS_ADMIN loads programs.
        assert_eq!(
            missing_capabilities(caps(&[NetAdmin]), 37),
            (vec![SysAdmin], true)
        );
    }

    #[test]
    fn missing_message_names_the_fix() {
        let e = PreflightError::MissingCapabilities {
            missing: vec![Capability::Perfmon],
            root: true,
            has_bpf_cap: true,
        };
        let msg = e.to_string();
        assert!(
            msg.starts_with("missing CAP_PERFMON (so the verifier"),
            "{msg}"
        );
        assert!(
            msg.contains("runs as root but its capability set was reduced"),
            "{msg}"
        );
        assert!(msg.contains("securityContext.capabilities.add"), "{msg}");
        assert!(!msg.contains('\n'));
        let e = PreflightError::MissingCapabilities {
            missing: vec![Capability::Bpf, Capability::Perfmon, Capability::NetAdmin],
            root: false,
            has_bpf_cap: true,
        };
        assert!(e.to_string().contains("does not run as root"), "{e}");
        assert!(e.to_string().contains("sudo tracer run"), "{e}");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("program tc_in: {source}")]
    struct Outer {
        #[source]
        source: Inner,
    }

    #[derive(Debug, thiserror::Error)]
    #[error(
        "the BPF_PROG_LOAD syscall returned {io}. Verifier output: 0: (bf) r6 = r1\n1: R1 pointer arithmetic prohibited\nprocessed 2 insns"
    )]
    struct Inner {
        #[source]
        io: std::io::Error,
    }

    #[test]
    fn verifier_log_is_cut_and_causes_not_repeated() {
        let err = Outer {
            source: Inner {
                io: std::io::Error::from_raw_os_error(libc::EACCES),
            },
        };
        let (line, logs) = error_line(chain(&err));
        assert_eq!(
            line,
            "program tc_in: the BPF_PROG_LOAD syscall returned Permission denied (os error 13)"
        );
        assert_eq!(logs.len(), 2, "once per message that carried it");
        assert!(logs[0].contains("pointer arithmetic prohibited"));
        let PreflightError::Load(msg) = load_error(err) else {
            panic!("a load error")
        };
        assert!(!msg.contains('\n') && !msg.contains("r6 = r1"), "{msg}");
        assert!(msg.contains("--log-level debug"), "{msg}");
    }

    #[test]
    fn eperm_names_capabilities() {
        #[derive(Debug, thiserror::Error)]
        #[error("failed to create map `COUNTERS`")]
        struct MapErr {
            #[source]
            io: std::io::Error,
        }
        #[derive(Debug, thiserror::Error)]
        #[error("loading the eBPF object: {0}")]
        struct Load(#[source] MapErr);
        let err = Load(MapErr {
            io: std::io::Error::from_raw_os_error(libc::EPERM),
        });
        let msg = load_error(err).to_string();
        assert_eq!(msg.matches("COUNTERS").count(), 1, "{msg}");
        assert!(msg.contains("Operation not permitted"), "{msg}");
        assert!(
            msg.contains("CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN"),
            "{msg}"
        );
    }
}
