//! `tracer run`: wires the stages together and runs the loop. Each stage lives in its own
//! folder (capture, decode, verdict, enrich, sinks); this module only starts them, moves
//! records between them on a timer, and shuts them down in order.
//!
//! * [`pipeline`]: records → events → correlator → finalized lines → sinks.
//! * [`tables`]: the daemon's side of the kernel's tables (sweeper, loss history, summaries).
//! * [`scope`]: this node's network namespaces, mirrored into the kernel.
//! * [`clock`]: the kernel's monotonic clock and wall-clock time.
//! * [`budget`]: table sizes from the memory limit.
//! * [`peering`]: cross-node verdicts (the peer service and the asker).

pub mod budget;
pub mod clock;
pub mod peering;
pub mod pipeline;
pub mod preflight;
pub mod scope;
pub mod signal_log;
pub mod tables;

use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use rtnetlink::MulticastGroup;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    capture::{
        Capture, Counters, attach::AttachManager, iface::Classifier, kernel, load::LoadConfig,
        netns, signals,
    },
    cli::RunArgs,
    enrich::{self, MetaCache},
    sinks::{Sinks, Stdout, metrics::Metrics},
    verdict::{self, Correlator},
};

use self::{
    budget::Budget,
    clock::mono_ns,
    pipeline::{HealthyMode, Pipeline},
    scope::Scope,
    tables::KernelTables,
};

/// The host name, as the node name when none is given.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown-node".into())
}

/// The loop's period: drain the ring buffer (records below the kernel's wake-up threshold),
/// decide flows, write lines.
const TICK: Duration = Duration::from_millis(100);
/// Records read per wake-up of the ring before the loop turns to its other work (the tick:
/// decisions, output, the loss history; the observe socket; metrics).
const RECORDS_PER_WAKE: usize = 4096;
/// Every how many ticks the DNS table is swept and the loss history read.
const SWEEP_EVERY: u32 = 1;
/// Margin between the kernel's last touch of an open DNS table entry (window + GRACE / 2) and
/// the sweeper's first (window + GRACE). A program runs for microseconds.
const GRACE: Duration = Duration::from_millis(300);
/// An answer this long after its query is handed over whole (slow answers are interesting, and
/// this is what lets a client's retry be linked to it).
const SLOW_ANSWER: Duration = Duration::from_millis(500);
/// How often the metrics read the kernel, userspace and attach counters.
const METRICS_INTERVAL: Duration = Duration::from_secs(5);
/// How often the node signals (conntrack statistics, ENA allowance counters) are read: often
/// enough to tie a growth to the flows open at the time.
const SIGNALS_INTERVAL: Duration = Duration::from_secs(1);

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Entry point of `tracer run`.
pub fn main(args: RunArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run(args))
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    preflight::check()?;
    // Signal handlers first: a SIGTERM during start-up must still lead to a clean exit.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let classifier = Classifier::new(&args.iface_overrides)?.with_pod_prefix(&args.veth_prefix);
    // Sinks first: a taken port or socket fails start-up, and /healthz answers while loading.
    let metrics = Metrics::new();
    if let Some(addr) = args.metrics_addr {
        tokio::spawn(crate::sinks::metrics::serve(addr, metrics.clone()).await?);
    }
    let health_addr = args.health_listen_addr().map_err(anyhow::Error::msg)?;
    if let Some(addr) = health_addr {
        tokio::spawn(crate::sinks::metrics::serve_health(addr, metrics.clone()).await?);
    }
    let hub = crate::sinks::stream::Hub::new();
    let observe_stats = crate::sinks::stream::ObserveStats::default();
    metrics.track_observe(observe_stats.clone());
    let observe_task = if args.no_socket {
        None
    } else {
        let server = crate::sinks::stream::serve(&args.socket, hub.clone(), observe_stats)
            .context("serving the observe socket (--socket)")?;
        Some(tokio::spawn(server))
    };
    let sinks = Sinks::new(
        hub,
        metrics.clone(),
        Stdout::new(args.format, args.redact_qname, args.events),
    );
    let own_netns = netns::own_inode().context("reading /proc/self/ns/net")?;
    // Kubernetes names: watches start in the background; verdicts flow before they are ready.
    let meta = match &args.lab_metadata {
        Some(path) => MetaCache::from_lab_topology(path).context("reading the lab topology")?,
        None => {
            enrich::try_start(enrich::EnrichConfig {
                kubeconfig: args.kubeconfig.clone(),
                node_name: args.node_name.clone(),
                veth_prefix: args.veth_prefix.clone(),
                peer_namespace: args.peer_listen.map(|_| args.peer_namespace.clone()),
                ..Default::default()
            })
            .await?
        }
    };
    let (offsets, symbols) = kernel::kernel_facts(args.no_drops);
    let budget = Budget::detect(args.memory_budget);
    let answered = args.answered;
    let load_cfg = LoadConfig {
        offsets,
        dns: tracer_common::Config {
            window_ns: ns(args.window),
            grace_ns: ns(GRACE),
            slow_ns: ns(SLOW_ANSWER),
            // Packet events need every query handed over.
            answered_flows: u32::from(answered == HealthyMode::Flows || args.events),
            // Per CPU; only the peer service reads the ledger.
            ledger_slots: if args.peer_listen.is_some() {
                let cpus = u32::try_from(crate::capture::load::possible_cpus()).unwrap_or(1);
                (budget.ledger_slots / cpus.max(1)).max(64)
            } else {
                0
            },
            // Set by the loader from `dns_slots`.
            slot_mask: 0,
            _pad: 0,
        },
        dns_entries: budget.dns_entries,
        dns_slots: budget.dns_slots,
        summary_entries: budget.summary_entries,
        ring_bytes: args.ring_bytes,
    };

    let mut capture = Capture::load(&load_cfg).map_err(preflight::load_error)?;
    capture.set_tc_mode(args.tc_attach);
    let tables = capture.take_tables()?;
    if !args.no_drops
        && offsets.is_some()
        && let Err(err) = capture.attach_drops()
    {
        let err = preflight::load_error(err);
        tracing::warn!(%err, "drop tracing unavailable: verdicts will lack kernel drop reasons");
    }

    let (conn, mut handle, mut link_events) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link]).context("opening netlink")?;
    tokio::spawn(conn);
    let mut mgr = AttachManager::new(classifier);
    #[cfg(feature = "devtools")]
    if args.empty_programs {
        mgr = mgr.with_empty_programs();
    }
    mgr.discover(&handle, &mut capture)
        .await
        .context("listing interfaces")?;
    mgr.refresh_hooks(&handle).await;
    let sweep_period = TICK * SWEEP_EVERY;
    let mut kt = KernelTables::new(tables, load_cfg.dns, ns(sweep_period), mono_ns());
    let mut scope = Scope::new(own_netns);
    scope.refresh(&mut handle, &mgr, kt.scope_map()).await;
    let node = args.node_name.clone().unwrap_or_else(hostname);
    let mut config = verdict::Config::new(node.clone());
    config.window = args.window;
    config.max_flows = budget.max_flows;
    // Negative verdicts wait until the sweeper has surely taken the entry and read the losses.
    config.loss_margin = GRACE + sweep_period * 2;
    let window = config.window;
    let mut p = Pipeline::new(
        own_netns,
        symbols,
        answered,
        sinks,
        Correlator::new(config),
        meta,
        node.clone(),
    );
    p.window = window;
    p.established = args.established;
    p.summaries.egress_limit = budget.egress_groups;
    let peers = match (args.peer_listen, &args.peer_tls) {
        (Some(listen), Some(dir)) => {
            let ch = peering::start(
                listen,
                dir,
                &node,
                budget.peer_facts,
                &mut p,
                args.peer_wait,
                mono_ns(),
            )
            .await;
            match ch {
                Ok(ch) => {
                    metrics.track_peer(ch.stats.clone());
                    Some(ch)
                }
                // Cross-node verdicts are an addition: without them every verdict is still
                // made from this node's evidence, so the node is not left unwatched.
                Err(e) => {
                    tracing::error!(
                        "cross-node verdicts are off: {e:#}; make the material with \
                         `tracer certs --out DIR --secret tracer-peer-tls | kubectl apply -f -`"
                    );
                    None
                }
            }
        }
        _ => None,
    };
    let peer_started = peers.as_ref().map_or(0, |c| c.started_ns);
    let (mut peer_questions, mut peer_outcomes) = match peers {
        Some(c) => (Some(c.questions), Some(c.outcomes)),
        None => (None, None),
    };

    let ring = capture.take_ring()?;
    // SAFETY: the ring buffer owns its fd and outlives the registration (both dropped together).
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .context("registering the ring buffer")?;

    if let Some(path) = &args.ready_file {
        std::fs::write(path, b"ready\n").with_context(|| format!("writing {}", path.display()))?;
    }
    tracing::info!(
        interfaces = mgr.stats().attached,
        attach = preflight::attach_mode(args.tc_attach),
        socket = %if args.no_socket { "off".into() } else { args.socket.display().to_string() },
        metrics = %args.metrics_addr.map_or("off".into(), |a| format!("http://{a}/metrics")),
        health = %health_addr.map_or("off".into(), |a| format!("http://{a}/healthz")),
        budget_mib = budget.bytes >> 20,
        dns_table = budget.dns_entries,
        dns_slots = crate::capture::load::slot_count(budget.dns_slots),
        max_flows = budget.max_flows,
        "tracer running"
    );
    metrics.set_ready(true);
    // Its first tick is immediate: the metrics are filled at once.
    let mut metrics_tick = tokio::time::interval(METRICS_INTERVAL);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stats_tick = tokio::time::interval(args.stats_interval);
    stats_tick.tick().await;
    let mut reconcile_tick = tokio::time::interval(
        args.reconcile_interval
            .min(crate::capture::attach::RECONCILE_INTERVAL),
    );
    reconcile_tick.tick().await;
    let mut node_signals = signals::all();
    let mut signals_tick = tokio::time::interval(SIGNALS_INTERVAL);
    signals_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let summary_ns = ns(args.summary_interval);
    let ring_bytes = u64::from(args.ring_bytes.unwrap_or(tracer_common::RING_BUF_BYTES));
    let mut ticks: u32 = 0;

    let result: anyhow::Result<()> = loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = mono_ns();
                drain(&mut ring, ring_bytes, &mut p, &mgr, &scope);
                ticks = ticks.wrapping_add(1);
                if ticks.is_multiple_of(SWEEP_EVERY) {
                    sweep(&mut kt, &mut p, &capture, &mgr, &scope, now);
                }
                if !p.tc_drop_ifaces.is_empty() {
                    let ifaces: Vec<u32> = p.tc_drop_ifaces.drain().collect();
                    mgr.refresh_hooks_of(&handle, ifaces).await;
                }
                p.poll(now, mgr.hooks(), &|k| kt.flow(k));
                p.peer_expire(false);
                metrics.heartbeat(now / 1_000_000_000);
                if let Some((start, end)) = kt.collect(&mut p.summaries) {
                    p.emit_summaries(start, end);
                }
                kt.maybe_flip(now, summary_ns, false);
                p.clock.maybe_resync(now);
                p.flush();
            }
            guard = ring.readable_mut() => {
                let mut guard = match guard {
                    Ok(g) => g,
                    Err(err) => break Err(err).context("waiting on the ring buffer"),
                };
                let rb = guard.get_inner_mut();
                let mut emptied = false;
                for _ in 0..RECORDS_PER_WAKE {
                    let Some(item) = rb.next() else {
                        emptied = true;
                        break;
                    };
                    p.record(&item, mgr.table(), &scope);
                }
                p.flush();
                // Not emptied (the kernel writes as fast as this reads): stay ready, so the
                // loop comes back here after the tick and the rest had their turn.
                if emptied {
                    guard.clear_ready();
                }
            }
            msg = link_events.next() => {
                match msg {
                    Some((msg, _)) => {
                        mgr.on_message(&msg, &mut capture);
                        mgr.refresh_hooks(&handle).await;
                        scope.refresh(&mut handle, &mgr, kt.scope_map()).await;
                    }
                    None => {
                        // The notification socket died (overrun, error): open a new one and
                        // reconcile, so nothing that happened meanwhile is missed.
                        tracing::warn!("netlink link notifications ended: reconnecting");
                        let (conn, h, events) = rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
                            .context("reopening netlink")?;
                        tokio::spawn(conn);
                        handle = h;
                        link_events = events;
                        mgr.reconcile(&handle, &mut capture).await;
                        scope.refresh(&mut handle, &mgr, kt.scope_map()).await;
                    }
                }
            }
            _ = reconcile_tick.tick() => {
                mgr.reconcile(&handle, &mut capture).await;
                scope.refresh(&mut handle, &mgr, kt.scope_map()).await;
            }
            Some(q) = recv_or_pending(&mut peer_questions) => {
                peering::answer(q, &p, &kt, &capture, mgr.table(), peer_started);
            }
            Some(o) = recv_or_pending_unbounded(&mut peer_outcomes) => {
                p.peer_outcome(o);
                p.flush();
            }
            _ = stats_tick.tick() => log_counters(&capture, &mgr, &p, &kt),
            _ = metrics_tick.tick() => update_metrics(&metrics, &capture, &mgr, &p),
            _ = signals_tick.tick() => {
                let now = mono_ns();
                for s in &mut node_signals {
                    let readings = s.sample(mgr.table());
                    p.signals.observe(&readings, now);
                    metrics.set_signal_readings(&readings);
                }
            }
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
        }
    };
    metrics.set_ready(false);
    if let Some(task) = observe_task {
        // Ends every client stream and removes the socket file.
        task.abort();
        let _ = task.await;
    }
    mgr.detach_all(&mut capture);
    // The last summaries: flip, let programs that saw the old epoch finish, read.
    kt.maybe_flip(mono_ns(), 0, true);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let now = mono_ns();
    // The programs are detached: nothing new comes, read all.
    drain(&mut ring, u64::MAX, &mut p, &mgr, &scope);
    sweep(&mut kt, &mut p, &capture, &mgr, &scope, now);
    // Every open flow gets its say (healthy connections into the last summaries), then the
    // last summaries go out; verdicts still waiting for a peer go out as they are.
    p.finish(mgr.hooks(), &|k| kt.flow(k));
    let (start, end) = kt.collect(&mut p.summaries).unwrap_or((now, now));
    p.emit_summaries(start, end);
    p.peer_expire(true);
    p.flush();
    log_counters(&capture, &mgr, &p, &kt);
    if let Some(path) = &args.ready_file {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// The asking and answering sides' counts, as JSON (`-` without a peer service).
fn peer_counters(p: &Pipeline) -> String {
    match (&p.parking, &p.peer_facts) {
        (Some(park), Some(facts)) => serde_json::json!({
            "asked": park.stats().asked,
            "waiting": park.stats().waiting,
            "facts_held": facts.len(),
            "facts_evicted": facts.evicted,
        })
        .to_string(),
        _ => "-".into(),
    }
}

/// The next message of an optional channel (pending forever without one).
async fn recv_or_pending<T>(rx: &mut Option<tokio::sync::mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// [`recv_or_pending`] for an unbounded channel.
async fn recv_or_pending_unbounded<T>(
    rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<T>>,
) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Reads the ring until it is empty or until everything it held when called has been read:
/// `ring_bytes` of records, the most it can hold. Under a load the daemon cannot keep up
/// with, the kernel refills the ring as fast as it is read; stopping there keeps the tick's
/// decisions and output coming, and what was in the ring before the tick (everything a
/// decision at the tick's start depends on) has been read.
fn drain(
    ring: &mut AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>,
    ring_bytes: u64,
    p: &mut Pipeline,
    mgr: &AttachManager,
    scope: &Scope,
) {
    let rb = ring.get_mut();
    let mut read: u64 = 0;
    while read < ring_bytes
        && let Some(item) = rb.next()
    {
        read = read.saturating_add(record_span(item.len()));
        p.record(&item, mgr.table(), scope);
    }
}

/// The bytes a record of `len` bytes takes in the ring: its 8-byte header, rounded up to 8.
fn record_span(len: usize) -> u64 {
    (len as u64).saturating_add(8).next_multiple_of(8)
}

/// Reads the kernel's loss history, then sweeps the DNS table (after a drain: see
/// [`tables`]).
fn sweep(
    kt: &mut KernelTables,
    p: &mut Pipeline,
    capture: &Capture,
    mgr: &AttachManager,
    scope: &Scope,
    now: u64,
) {
    kt.read_losses(now, |from, to, what| p.note_loss_span(from, to, what));
    // Unreadable: sweep anyway (u64::MAX never equals the last count).
    let opened = capture
        .counter(tracer_common::counter::DNS_TRACKED)
        .unwrap_or(u64::MAX);
    let mut losses = Vec::new();
    let swept = kt.sweep(now, opened, |t, what| losses.push((t, what.to_owned())));
    for (t, what) in losses {
        p.correlator.note_loss(t, &what);
    }
    for s in swept {
        p.swept(s, mgr.table(), scope);
    }
}

/// Copies the absolute counters into the metrics.
fn update_metrics(metrics: &Metrics, capture: &Capture, mgr: &AttachManager, p: &Pipeline) {
    metrics.set_cache_state(p.meta.state().as_str());
    let flows = p.correlator.stats();
    metrics.set_flows(
        u64::try_from(flows.open_flows).unwrap_or(u64::MAX),
        flows.evicted,
    );
    match capture.counters() {
        Ok(kernel) => metrics.set_kernel_fields(&kernel),
        Err(err) => tracing::debug!(%err, "reading kernel counters for metrics"),
    }
    metrics.set_user_fields(&p.user);
    let a = mgr.stats();
    metrics.set_attach(
        u64::try_from(a.attached).unwrap_or(u64::MAX),
        a.attaches,
        a.failures,
    );
}

fn log_counters(capture: &Capture, mgr: &AttachManager, p: &Pipeline, kt: &KernelTables) {
    let kernel = capture.counters().unwrap_or_else(|err| {
        tracing::warn!(%err, "reading kernel counters");
        Counters::default()
    });
    tracing::info!(
        kernel = %serde_json::to_string(&kernel).unwrap_or_default(),
        user = %serde_json::to_string(&p.user).unwrap_or_default(),
        sweep = %serde_json::to_string(&kt.stats).unwrap_or_default(),
        attach = %serde_json::to_string(&mgr.stats()).unwrap_or_default(),
        flows = %serde_json::to_string(&p.correlator.stats()).unwrap_or_default(),
        peer = %peer_counters(p),
        "counters"
    );
}
