//! `tracer run`: the daemon loop. Owns the capture, the attach manager, and the path from
//! ring-buffer records to stdout.

pub mod preflight;

use std::{
    collections::{HashMap, HashSet},
    io::Write as _,
    time::Duration,
};

use anyhow::Context as _;
use futures::StreamExt as _;
use rtnetlink::MulticastGroup;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    capture::{
        Capture, Counters,
        attach::AttachManager,
        iface::{Classifier, IfaceTable},
        kernel, netns,
    },
    cli::RunArgs,
    decode::event::Hook,
    decode::{self, NoSymbols, Symbols},
    enrich::{self, MetaCache},
    sinks::Sinks,
    verdict::{self, Correlator, Verdict},
};

/// The host name, as the node name when none is given.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown-node".into())
}

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

/// The path from ring-buffer records to verdict lines: decode, scope, correlate, emit.
struct Pipeline {
    own_netns: u32,
    symbols: Box<dyn Symbols>,
    scope: Scope,
    user: UserCounters,
    out: std::io::BufWriter<std::io::Stdout>,
    events: bool,
    sinks: Sinks,
    correlator: Correlator,
    clock: Clock,
    meta: MetaCache,
}

impl Pipeline {
    /// Decodes one ring-buffer record and feeds what it yields on; every skip is counted.
    fn record(&mut self, item: &[u8], ifaces: &IfaceTable) {
        let ev = match decode::read_record(item)
            .and_then(|raw| decode::decode(&raw, ifaces, self.own_netns, self.symbols.as_ref()))
        {
            Ok(ev) => ev,
            Err(err) => {
                self.user.decode_errors += 1;
                tracing::debug!(%err, "record skipped");
                // A flow open now may be missing this event: its verdict must say so.
                self.correlator
                    .note_loss(self.clock.mono_ns(), "a kernel record could not be decoded");
                return;
            }
        };
        self.user.decoded += 1;
        if ev.hook == Hook::Drop
            && ev
                .drop
                .as_ref()
                .is_some_and(|d| !self.scope.contains(d.netns))
        {
            self.user.drops_other_node += 1;
            return;
        }
        if self.events || self.sinks.wants_events() {
            let mut line = serde_json::json!({ "type": "packet" });
            if let (Some(obj), Ok(serde_json::Value::Object(ev))) =
                (line.as_object_mut(), serde_json::to_value(&ev))
            {
                obj.extend(ev);
            }
            self.write(line, self.events);
        }
        self.correlator.observe(&ev);
    }

    fn write(&mut self, value: serde_json::Value, to_stdout: bool) {
        if let Some(text) = self.sinks.emit(value, to_stdout)
            && writeln!(self.out, "{text}").is_err()
        {
            self.user.write_errors += 1;
        }
    }

    /// Emits the verdicts of flows that completed or whose window closed.
    fn poll(&mut self) {
        let verdicts = self.correlator.poll(self.clock.mono_ns());
        self.emit(verdicts);
    }

    /// Emits every open flow's verdict (shutdown).
    fn finish(&mut self) {
        let verdicts = self.correlator.flush();
        self.emit(verdicts);
        self.flush();
    }

    fn emit(&mut self, verdicts: Vec<Verdict>) {
        for mut v in verdicts {
            v.time = self.clock.wall_rfc3339(v.start_ns);
            crate::enrich::finalize::annotate(&mut v, &self.meta);
            match serde_json::to_value(&v) {
                Ok(value) => self.write(value, true),
                Err(err) => {
                    self.user.write_errors += 1;
                    tracing::warn!(%err, "verdict not serializable");
                }
            }
        }
    }

    fn flush(&mut self) {
        if self.out.flush().is_err() {
            self.user.write_errors += 1;
        }
    }
}

/// Converts the kernel's monotonic timestamps to wall-clock time.
struct Clock {
    /// Wall-clock ns minus monotonic ns, measured at start.
    offset_ns: i128,
}

impl Clock {
    fn new() -> Self {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        Self {
            offset_ns: wall - i128::from(mono_ns()),
        }
    }

    fn mono_ns(&self) -> u64 {
        mono_ns()
    }

    fn wall_rfc3339(&self, mono: u64) -> Option<String> {
        let ts = jiff::Timestamp::from_nanosecond(i128::from(mono) + self.offset_ns).ok()?;
        Some(ts.to_string())
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// How often open flows are checked for a verdict.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

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
    /// Pod-veth peer netns id → namespace inode, as resolved so far.
    resolved: HashMap<i32, u32>,
}

impl Scope {
    fn contains(&self, netns: u32) -> bool {
        netns == 0 || netns == self.own || self.pods.contains(&netns)
    }

    /// Resolves the namespaces of pod veth peers not resolved yet and recomputes the set.
    async fn refresh(&mut self, handle: &mut rtnetlink::Handle, mgr: &AttachManager) {
        let wanted: HashSet<i32> = mgr.pod_peer_nsids().collect();
        let missing: HashSet<i32> = wanted
            .iter()
            .filter(|id| !self.resolved.contains_key(id))
            .copied()
            .collect();
        if !missing.is_empty() {
            self.resolved
                .extend(netns::resolve_nsids(handle, &missing).await);
        }
        self.resolved.retain(|id, _| wanted.contains(id));
        self.pods = self.resolved.values().copied().collect();
        tracing::debug!(
            pods = self.pods.len(),
            unresolved = wanted.len() - self.resolved.len(),
            "node netns scope"
        );
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    preflight::check()?;
    let classifier = Classifier::new(&args.iface_overrides)?.with_pod_prefix(&args.veth_prefix);
    // Sinks first: a taken port or socket fails start-up, and /healthz answers while loading.
    let metrics = crate::sinks::metrics::Metrics::new();
    if let Some(addr) = args.metrics_addr {
        tokio::spawn(crate::sinks::metrics::serve(addr, metrics.clone()).await?);
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
    let sinks = Sinks::new(hub, metrics.clone(), args.format, args.redact_qname);
    let own_netns = netns::own_inode().context("reading /proc/self/ns/net")?;
    // Kubernetes names: watches start in the background; verdicts flow before they are ready.
    let meta = match &args.lab_metadata {
        Some(path) => MetaCache::from_lab_topology(path).context("reading the lab topology")?,
        None => {
            enrich::try_start(enrich::EnrichConfig {
                kubeconfig: args.kubeconfig.clone(),
                node_name: args.node_name.clone(),
                veth_prefix: args.veth_prefix.clone(),
                ..Default::default()
            })
            .await?
        }
    };
    let (offsets, symbols) = kernel_facts(args.no_drops);

    let mut capture = Capture::load(offsets).map_err(preflight::load_error)?;
    capture.set_tc_mode(args.tc_attach);
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
    mgr.discover(&handle, &mut capture)
        .await
        .context("listing interfaces")?;
    let mut scope = Scope {
        own: own_netns,
        pods: HashSet::new(),
        resolved: HashMap::new(),
    };
    scope.refresh(&mut handle, &mgr).await;
    let node = args.node_name.clone().unwrap_or_else(hostname);
    let mut config = verdict::Config::new(node);
    config.window = args.window;
    let mut p = Pipeline {
        own_netns,
        symbols,
        scope,
        user: UserCounters::default(),
        // Buffered: flushed after every batch of records, not per line.
        out: std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()),
        events: args.events,
        sinks,
        correlator: Correlator::new(config),
        clock: Clock::new(),
        meta,
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
        "tracer running"
    );
    metrics.set_ready(true);
    // Its first tick is immediate: the metrics are filled at once.
    let mut metrics_tick = tokio::time::interval(METRICS_INTERVAL);

    let mut drain_tick = tokio::time::interval(DRAIN_INTERVAL);
    drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut stats_tick = tokio::time::interval(args.stats_interval);
    stats_tick.tick().await;
    // Losses are checked often: verdicts of flows open while records were lost are marked.
    let mut loss_tick = tokio::time::interval(Duration::from_millis(200));
    let mut lost_before = capture.counters().map(|c| c.lost()).unwrap_or(0);
    let mut poll_tick = tokio::time::interval(POLL_INTERVAL);
    let mut conntrack = ConntrackWatch::default();
    let mut ena = EnaWatch::default();

    let result: anyhow::Result<()> = loop {
        tokio::select! {
            _ = drain_tick.tick() => {
                // Records below the kernel's wake-up threshold are collected here.
                let rb = ring.get_mut();
                while let Some(item) = rb.next() {
                    p.record(&item, mgr.table());
                }
                p.flush();
            }
            guard = ring.readable_mut() => {
                let mut guard = match guard {
                    Ok(g) => g,
                    Err(err) => break Err(err).context("waiting on the ring buffer"),
                };
                let rb = guard.get_inner_mut();
                while let Some(item) = rb.next() {
                    p.record(&item, mgr.table());
                }
                p.flush();
                guard.clear_ready();
            }
            msg = link_events.next() => {
                match msg {
                    Some((msg, _)) => {
                        mgr.on_message(&msg, &mut capture);
                        p.scope.refresh(&mut handle, &mgr).await;
                    }
                    None => break Err(anyhow::anyhow!("netlink link notifications ended")),
                }
            }
            _ = loss_tick.tick() => {
                let lost = capture.counters().map(|c| c.lost()).unwrap_or(lost_before);
                if lost > lost_before {
                    tracing::warn!(lost = lost - lost_before, total = lost, "kernel records lost: ring buffer full");
                    p.correlator.note_loss(p.clock.mono_ns(), "the kernel ring buffer was full");
                    lost_before = lost;
                }
            }
            _ = poll_tick.tick() => {
                p.poll();
                p.flush();
            }
            _ = stats_tick.tick() => log_counters(&capture, &mgr, &p),
            _ = metrics_tick.tick() => {
                update_metrics(&metrics, &capture, &mgr, &p);
                conntrack.sample(&metrics);
                ena.sample(&metrics, mgr.table());
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
    // Records still in the ring buffer, then every open flow, get their say.
    while let Some(item) = ring.get_mut().next() {
        p.record(&item, mgr.table());
    }
    p.finish();
    log_counters(&capture, &mgr, &p);
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

/// Follows the node's conntrack `insert_failed`/`drop` and says when they grow: the DNS
/// A/AAAA insert race drops a query inside conntrack (5 s client timeouts).
#[derive(Default)]
struct ConntrackWatch {
    last: Option<(u64, u64)>,
}

impl ConntrackWatch {
    fn sample(&mut self, metrics: &crate::sinks::metrics::Metrics) {
        let counters = crate::capture::signals::conntrack::read_conntrack();
        if counters.is_empty() {
            return;
        }
        metrics.set_conntrack(counters.iter().copied());
        let get = |n: &str| {
            counters
                .iter()
                .find(|(k, _)| *k == n)
                .map_or(0, |(_, v)| *v)
        };
        let now = (get("insert_failed"), get("drop"));
        if let Some(before) = self.last
            && (now.0 > before.0 || now.1 > before.1)
        {
            tracing::warn!(
                insert_failed = now.0 - before.0,
                drop = now.1.saturating_sub(before.1),
                "conntrack insert failures on this node: parallel A/AAAA queries from one socket \
                 race in conntrack and one is dropped (5 s DNS timeouts); `single-request-reopen` \
                 or NodeLocal DNSCache avoid it"
            );
        }
        self.last = Some(now);
    }
}

/// Follows the ENA allowance counters of the uplinks (ethtool statistics) and says when they
/// grow: those packets were dropped by the hypervisor, outside anything the kernel can see.
#[derive(Default)]
struct EnaWatch {
    last: HashMap<(String, String), u64>,
}

impl EnaWatch {
    /// Bound on remembered (interface, counter) pairs.
    const MAX: usize = 1024;

    fn sample(&mut self, metrics: &crate::sinks::metrics::Metrics, ifaces: &IfaceTable) {
        use crate::decode::event::IfaceKind;
        for iface in ifaces.live() {
            if !matches!(iface.kind, IfaceKind::Uplink | IfaceKind::Trunk) {
                continue;
            }
            for (counter, value) in crate::capture::signals::ena::allowance_exceeded(&iface.name) {
                metrics.set_ena(&iface.name, &counter, value);
                let key = (iface.name.clone(), counter);
                match self.last.get(&key) {
                    Some(before) if value > *before => tracing::warn!(
                        interface = %key.0,
                        counter = %key.1,
                        dropped = value - before,
                        "ENA allowance exceeded: the hypervisor dropped packets on this ENI \
                         (linklocal: over 1024 pps to the VPC resolver/IMDS; use NodeLocal DNSCache)"
                    ),
                    _ => {}
                }
                if self.last.len() < Self::MAX || self.last.contains_key(&key) {
                    self.last.insert(key, value);
                }
            }
        }
    }
}

/// How often the metrics read the kernel, userspace and attach counters.
const METRICS_INTERVAL: Duration = Duration::from_secs(5);

/// Copies the absolute counters into the metrics.
fn update_metrics(
    metrics: &crate::sinks::metrics::Metrics,
    capture: &Capture,
    mgr: &AttachManager,
    p: &Pipeline,
) {
    let user = &p.user;
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
    metrics.set_user_fields(user);
    let a = mgr.stats();
    metrics.set_attach(
        u64::try_from(a.attached).unwrap_or(u64::MAX),
        a.attaches,
        a.failures,
    );
}

fn log_counters(capture: &Capture, mgr: &AttachManager, p: &Pipeline) {
    let user = &p.user;
    let kernel = capture.counters().unwrap_or_else(|err| {
        tracing::warn!(%err, "reading kernel counters");
        Counters::default()
    });
    tracing::info!(
        kernel = %serde_json::to_string(&kernel).unwrap_or_default(),
        user = %serde_json::to_string(user).unwrap_or_default(),
        attach = %serde_json::to_string(&mgr.stats()).unwrap_or_default(),
        flows = %serde_json::to_string(&p.correlator.stats()).unwrap_or_default(),
        "counters"
    );
}
