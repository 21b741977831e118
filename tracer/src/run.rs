//! `tracer run`: the daemon loop. Owns the capture, the attach manager, and the path from
//! ring-buffer records to stdout.

use std::{collections::HashSet, io::Write as _, time::Duration};

use anyhow::Context as _;
use futures::StreamExt as _;
use rtnetlink::MulticastGroup;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    attach::AttachManager,
    capture::{Capture, Counters},
    cli::RunArgs,
    decode::{self, NoSymbols, Symbols},
    event::Hook,
    iface::Classifier,
    kernel, netns,
};

/// Userspace-side losses and skips, all counted.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct UserCounters {
    /// Records decoded into events.
    pub decoded: u64,
    /// Records that failed to decode (short, unknown kind, bad fields).
    pub decode_errors: u64,
    /// Drops in namespaces that are not this node's (other "machines").
    pub drops_other_node: u64,
    /// Lines that could not be written to stdout.
    pub write_errors: u64,
}

/// How often the ring buffer is drained when the kernel has not woken us (it wakes the reader
/// only once [`tracer_common`]'s batch threshold of unread bytes is reached).
const DRAIN_INTERVAL: Duration = Duration::from_millis(10);

/// Decodes one ring-buffer record and writes what it yields; every skip is counted.
#[allow(clippy::too_many_arguments)]
fn handle_record(
    item: &[u8],
    mgr: &AttachManager,
    own_netns: u32,
    symbols: &dyn Symbols,
    scope: &Scope,
    user: &mut UserCounters,
    out: &mut impl std::io::Write,
    events: bool,
) {
    let raw = match decode::read_record(item) {
        Ok(raw) => raw,
        Err(err) => {
            user.decode_errors += 1;
            tracing::debug!(%err, "record skipped");
            return;
        }
    };
    let ev = match decode::decode(&raw, mgr.table(), own_netns, symbols) {
        Ok(ev) => ev,
        Err(err) => {
            user.decode_errors += 1;
            tracing::debug!(%err, "record skipped");
            return;
        }
    };
    user.decoded += 1;
    if ev.hook == Hook::Drop && ev.drop.as_ref().is_some_and(|d| !scope.contains(d.netns)) {
        user.drops_other_node += 1;
        return;
    }
    if events {
        let mut line = serde_json::json!({ "type": "packet" });
        if let (Some(obj), Ok(serde_json::Value::Object(ev))) =
            (line.as_object_mut(), serde_json::to_value(&ev))
        {
            obj.extend(ev);
        }
        if writeln!(out, "{line}").is_err() {
            user.write_errors += 1;
        }
    }
}

/// Entry point of `tracer run`.
pub fn main(args: RunArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run(args))
}

/// Namespaces whose drops count as this node's: ours and our pods'.
struct Scope {
    own: u32,
    pods: HashSet<u32>,
    unresolved: HashSet<i32>,
}

impl Scope {
    fn contains(&self, netns: u32) -> bool {
        netns == 0 || netns == self.own || self.pods.contains(&netns)
    }

    async fn refresh(&mut self, handle: &mut rtnetlink::Handle, mgr: &AttachManager) {
        let wanted: HashSet<i32> = mgr.pod_peer_nsids().collect();
        if wanted.is_subset(&self.unresolved.iter().copied().collect()) && !self.pods.is_empty() {
            return;
        }
        let map = netns::resolve_nsids(handle, &wanted).await;
        self.unresolved = wanted
            .iter()
            .filter(|id| !map.contains_key(id))
            .copied()
            .collect();
        self.pods = map.into_values().collect();
        tracing::debug!(
            pods = self.pods.len(),
            unresolved = self.unresolved.len(),
            "node netns scope"
        );
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let classifier = Classifier::new(&args.iface_overrides)?;
    let own_netns = netns::own_inode().context("reading /proc/self/ns/net")?;
    let (offsets, symbols) = kernel_facts(args.no_drops);

    let mut capture =
        Capture::load(offsets).context("loading the kernel programs (are you root?)")?;
    if !args.no_drops
        && offsets.is_some()
        && let Err(err) = capture.attach_drops()
    {
        tracing::warn!(%err, "drop tracing unavailable: verdicts will lack kernel drop reasons");
    }

    let (conn, mut handle, mut link_events) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link]).context("opening netlink")?;
    tokio::spawn(conn);
    let mut mgr = AttachManager::new(classifier);
    mgr.discover(&handle, &mut capture)
        .await
        .context("listing interfaces")?;
    let mut scope = Scope {
        own: own_netns,
        pods: HashSet::new(),
        unresolved: HashSet::new(),
    };
    scope.refresh(&mut handle, &mgr).await;

    let ring = capture.take_ring()?;
    // SAFETY: the ring buffer owns its fd and outlives the registration (both dropped together).
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .context("registering the ring buffer")?;

    if let Some(path) = &args.ready_file {
        std::fs::write(path, b"ready\n").with_context(|| format!("writing {}", path.display()))?;
    }
    tracing::info!(interfaces = mgr.stats().attached, "tracer running");

    let mut drain_tick = tokio::time::interval(DRAIN_INTERVAL);
    drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut stats_tick = tokio::time::interval(args.stats_interval);
    stats_tick.tick().await;
    // Losses are checked often: verdicts of flows open while records were lost are marked.
    let mut loss_tick = tokio::time::interval(Duration::from_millis(200));
    let mut lost_before = capture.counters().map(|c| c.lost()).unwrap_or(0);
    let mut user = UserCounters::default();
    // Buffered: flushed after every batch of records, not per line.
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout());

    let result: anyhow::Result<()> = loop {
        tokio::select! {
            _ = drain_tick.tick() => {
                // Records below the kernel's wake-up threshold are collected here.
                let rb = ring.get_mut();
                while let Some(item) = rb.next() {
                    handle_record(&item, &mgr, own_netns, symbols.as_ref(), &scope, &mut user, &mut out, args.events);
                }
                if out.flush().is_err() {
                    user.write_errors += 1;
                }
            }
            guard = ring.readable_mut() => {
                let mut guard = match guard {
                    Ok(g) => g,
                    Err(err) => break Err(err).context("waiting on the ring buffer"),
                };
                let rb = guard.get_inner_mut();
                while let Some(item) = rb.next() {
                    handle_record(&item, &mgr, own_netns, symbols.as_ref(), &scope, &mut user, &mut out, args.events);
                }
                if out.flush().is_err() {
                    user.write_errors += 1;
                }
                guard.clear_ready();
            }
            msg = link_events.next() => {
                match msg {
                    Some((msg, _)) => {
                        mgr.on_message(&msg, &mut capture);
                        scope.refresh(&mut handle, &mgr).await;
                    }
                    None => break Err(anyhow::anyhow!("netlink link notifications ended")),
                }
            }
            _ = loss_tick.tick() => {
                let lost = capture.counters().map(|c| c.lost()).unwrap_or(lost_before);
                if lost > lost_before {
                    tracing::warn!(lost = lost - lost_before, total = lost, "kernel records lost: ring buffer full");
                    lost_before = lost;
                }
            }
            _ = stats_tick.tick() => log_counters(&capture, &mgr, &user),
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
        }
    };
    mgr.detach_all(&mut capture);
    log_counters(&capture, &mgr, &user);
    if let Some(path) = &args.ready_file {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Drop reason names and kernel symbols of the running kernel.
struct KernelSymbols {
    reasons: Option<kernel::btf::DropReasons>,
    ksyms: Option<kernel::ksyms::Ksyms>,
}

impl Symbols for KernelSymbols {
    fn reason(&self, value: u32) -> String {
        match &self.reasons {
            Some(r) => r.name(value),
            None => NoSymbols.reason(value),
        }
    }
    fn location(&self, addr: u64) -> String {
        match &self.ksyms {
            Some(k) => k.symbolize(addr),
            None => NoSymbols.location(addr),
        }
    }
}

/// Reads the kernel's BTF (struct offsets for the drop program, drop reason names) and
/// /proc/kallsyms. Each part that fails is logged and degrades the output, never the run.
fn kernel_facts(no_drops: bool) -> (Option<tracer_common::KernelOffsets>, Box<dyn Symbols>) {
    let btf = match kernel::btf::load_vmlinux() {
        Ok(btf) => Some(btf),
        Err(err) => {
            tracing::warn!(%err, "no kernel BTF: drop reasons will be numbers, drops not traced");
            None
        }
    };
    let offsets = match (&btf, no_drops) {
        (Some(btf), false) => match kernel::btf::kernel_offsets(btf) {
            Ok(o) => Some(o),
            Err(err) => {
                tracing::warn!(%err, "kernel struct layout not understood: drops not traced");
                None
            }
        },
        _ => None,
    };
    let reasons = btf.as_ref().and_then(|btf| {
        kernel::btf::DropReasons::from_running_kernel(btf)
            .map_err(|err| tracing::warn!(%err, "drop reason names unavailable"))
            .ok()
    });
    drop(btf);
    let ksyms = match kernel::ksyms::Ksyms::load() {
        Ok(k) if k.is_usable() => Some(k),
        Ok(_) => {
            tracing::warn!("/proc/kallsyms hides addresses: drop locations will be hex");
            None
        }
        Err(err) => {
            tracing::warn!(%err, "/proc/kallsyms unreadable: drop locations will be hex");
            None
        }
    };
    (offsets, Box::new(KernelSymbols { reasons, ksyms }))
}

fn log_counters(capture: &Capture, mgr: &AttachManager, user: &UserCounters) {
    let kernel = capture.counters().unwrap_or_else(|err| {
        tracing::warn!(%err, "reading kernel counters");
        Counters::default()
    });
    tracing::info!(
        kernel = %serde_json::to_string(&kernel).unwrap_or_default(),
        user = %serde_json::to_string(user).unwrap_or_default(),
        attach = %serde_json::to_string(&mgr.stats()).unwrap_or_default(),
        "counters"
    );
}
