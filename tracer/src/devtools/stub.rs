//! `tracer stub-policy`: attaches `handle_ingress` or `handle_egress` from the policy-stub object
//! (a stand-in for the VPC CNI network-policy agent: drops DNS, ends tc processing with
//! `TC_ACT_OK` for the rest) to an interface, the way the agent does (clsact filter at priority
//! 1, handle 1) or as a tcx link, and holds it until SIGTERM/SIGINT.

use std::path::PathBuf;

use anyhow::Context as _;
use aya::programs::{
    SchedClassifier, TcAttachType,
    links::LinkOrder,
    tc::{NlOptions, TcAttach, TcHandle},
};

/// Object of the stand-in program, built by build.rs beside the tracer's own.
static STUB_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/policy-stub"));

/// Options of `tracer stub-policy`.
#[derive(Debug, clap::Args)]
pub struct StubArgs {
    /// Interface to attach to (in the current network namespace).
    #[arg(long)]
    pub iface: String,
    /// Attach to egress instead of ingress.
    #[arg(long)]
    pub egress: bool,
    /// `tcx` (a link, after the others) or `netlink` (clsact filter, priority 1, handle 1).
    #[arg(long, default_value = "netlink")]
    pub mode: String,
    /// Create this file once attached.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

/// Runs `tracer stub-policy`.
pub fn main(args: StubArgs) -> anyhow::Result<()> {
    let mut ebpf = aya::Ebpf::load(STUB_OBJECT).context("loading the policy stub")?;
    let (name, attach_type) = if args.egress {
        ("handle_egress", TcAttachType::Egress)
    } else {
        ("handle_ingress", TcAttachType::Ingress)
    };
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .context("program missing")?
        .try_into()
        .context("not a classifier")?;
    prog.load().context("loading the classifier")?;
    let iface = std::ffi::CString::new(args.iface.clone()).context("interface name")?;
    let how = match args.mode.as_str() {
        "tcx" => TcAttach::Tcx {
            attach_type,
            order: LinkOrder::last(),
        },
        "netlink" => {
            let _ = aya::programs::tc::qdisc_add_clsact(iface.as_c_str());
            TcAttach::Netlink {
                parent: attach_type.into(),
                options: NlOptions {
                    priority: 1,
                    handle: TcHandle::new(0, 1),
                    classid: None,
                },
            }
        }
        other => anyhow::bail!("unknown mode {other:?}: tcx or netlink"),
    };
    let link = prog
        .attach(iface.as_c_str(), how)
        .with_context(|| format!("attaching to {}", args.iface))?;
    if let Some(path) = &args.ready_file {
        std::fs::write(path, b"ready\n").with_context(|| format!("writing {}", path.display()))?;
    }
    // Wait for SIGTERM or SIGINT, then detach.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        anyhow::Ok(())
    })?;
    prog.detach(link).context("detaching")?;
    if let Some(path) = &args.ready_file {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}
