//! The path from kernel records to output lines: decode (stage 2), scope, correlate and decide
//! (stage 3), finalize with names and hint (stage 4), sinks (stage 5). The daemon's loop feeds
//! it and sets its clock; it owns no I/O besides the sinks.

use crate::{
    capture::{hooks::HookTable, iface::IfaceTable},
    decode::{
        self, Record, Symbols,
        event::{Hook, PacketEvent},
        record::{DnsFlowRecord, Origin, Why},
        wire_addr,
    },
    enrich::{
        MetaCache,
        finalize::{Facts, finalize, hint, source_not_its_pod},
    },
    peer::{Parking, answer::LocalFacts, client::Outcome, ledger::FactsLedger},
    sinks::{Output, Sinks},
    verdict::{
        Correlator, Direction, Evidence, FlowKind, Transport, Verdict, VerdictKind,
        summary::{Summaries, Summary, SummaryGroup},
    },
};
use tracer_common::{FLOW_TABLE_ENTRIES, FlowKey, FlowStats};

/// IP protocol number of UDP.
const IPPROTO_UDP: u8 = 17;

use super::{clock::Clock, scope::Scope, signal_log::SignalLog, tables::Swept};

/// Userspace-side counts of what was decoded, skipped and written.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct UserCounters {
    /// Records decoded.
    pub decoded: u64,
    /// Records that failed to decode (short, unknown kind, bad fields).
    pub decode_errors: u64,
    /// DNS table records (queries handed over whole), from the ring or the sweeper.
    pub dns_records: u64,
    /// Drops in namespaces that are not this node's (other "machines").
    pub drops_other_node: u64,
    /// Lines that could not be written to stdout or serialized.
    pub write_errors: u64,
    /// Summary lines written.
    pub summaries: u64,
    /// Answers in summary lines.
    pub summarized_answers: u64,
    /// Established egress connections in summary lines.
    pub summarized_connections: u64,
    /// Answers the kernel counted that no summary line carries: the interval already had the
    /// most groups the daemon keeps (a loss).
    pub summary_groups_dropped: u64,
    /// Answers found undelivered after the kernel counted them, whose summary was already out
    /// (that line counted them).
    pub summary_retractions_unmatched: u64,
    /// Established connections printed on lines of their own because the interval's egress
    /// summaries were at their limit (the memory budget's share).
    pub egress_over_limit: u64,
    /// UDP egress flows not called lost because the kernel's flow table evicted their entry.
    pub egress_evicted: u64,
    /// Answers left out of the summaries because they count the replica's side of a branch-ENI
    /// pod's query to a replica on this node (the pod's own side is summarised).
    pub server_side_answers: u64,
}

/// What happens to healthy flows: DNS answers (`--answered`), established egress connections
/// (`--established`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum HealthyMode {
    /// One summary line per group per interval.
    #[default]
    Summary,
    /// One verdict line per flow.
    Flows,
    /// No lines (metrics still count them).
    Off,
}

/// Reads the kernel's flow table entry of a key (`None`: no entry, or it could not be read).
pub type FlowProbe<'a> = dyn Fn(&FlowKey) -> Option<FlowStats> + 'a;

/// How much later than a sighting the kernel may have made its flow table entry (it reads
/// the clock for the entry just before it does for the record), ns.
const ENTRY_SLACK_NS: u64 = 1_000_000;

/// True when the kernel's flow table may have evicted a UDP egress flow's entry while the
/// flow was open. A reply is reported only when it finds the entry of its flow (the first
/// reply of a tuple, at the pod veth and at the uplink), and the table evicts its least
/// recently used entry when full: without the entry a reply passes unreported, and silence
/// is no evidence. Each request sighting at a hook that makes entries (pod veth ingress,
/// uplink/trunk/branch ENI egress) must still have its entry, made no later than it.
pub fn evicted_while_open(v: &Verdict, flows: &FlowProbe<'_>) -> bool {
    use crate::decode::event::IfaceKind;
    if v.kind != FlowKind::Egress || v.transport != Transport::Udp {
        return false;
    }
    v.path.iter().any(|p| {
        let makes_entries = matches!(
            (p.direction, p.hook, p.interface_kind),
            (Direction::Request, Hook::Ingress, Some(IfaceKind::PodVeth))
                | (
                    Direction::Request,
                    Hook::Egress,
                    Some(IfaceKind::Uplink | IfaceKind::Trunk | IfaceKind::BranchEni),
                )
        );
        if !makes_entries {
            return false;
        }
        let (src, dst) = (p.src, p.dst);
        let seen = v.start_ns.saturating_add((p.t_ms * 1e6).round() as u64);
        let key = FlowKey::new(
            (wire_addr(src.ip()), src.port()),
            (wire_addr(dst.ip()), dst.port()),
            IPPROTO_UDP,
        );
        match flows(&key) {
            Some(e) => e.first_ns > seen.saturating_add(ENTRY_SLACK_NS),
            None => true,
        }
    })
}

/// The verdict of a flow whose kernel entry was evicted: no loss is claimed.
pub fn downgrade_evicted(v: &mut Verdict) {
    let note = format!(
        "the kernel's flow table (at most {FLOW_TABLE_ENTRIES} UDP flows, the least recently used evicted first) evicted this flow's entry while it was open, so a reply may have passed unreported"
    );
    v.evidence_note = Some(match v.evidence_note.take() {
        Some(n) => format!("{n}; {note}"),
        None => note,
    });
    v.facts.downgraded_from = Some(v.verdict);
    v.verdict = VerdictKind::Unknown;
    v.evidence = Evidence::Incomplete;
}

/// The path from records to lines.
pub struct Pipeline {
    own_netns: u32,
    symbols: Box<dyn Symbols>,
    /// Counters.
    pub user: UserCounters,
    answered: HealthyMode,
    /// What established egress connections produce (`--established`).
    pub established: HealthyMode,
    sinks: Sinks,
    /// The correlator (stage 3).
    pub correlator: Correlator,
    /// Monotonic → wall clock.
    pub clock: Clock,
    /// Kubernetes names.
    pub meta: MetaCache,
    /// Healthy answers of the current interval.
    pub summaries: Summaries,
    /// Interfaces where a tc program dropped a packet since the daemon last looked at what runs
    /// there (the verdict will name that program).
    pub tc_drop_ifaces: std::collections::HashSet<u32>,
    node: String,
    /// Cross-node verdicts: lost verdicts waiting for their peer's answer (asking side).
    pub parking: Option<Parking>,
    /// Cross-node verdicts: facts of other nodes' queries the kernel handed over (answering
    /// side).
    pub peer_facts: Option<FactsLedger>,
    /// The flow window (peers are told how long a query could be on its way).
    pub window: std::time::Duration,
    /// When the node's loss counters grew (tied to verdicts by time).
    pub signals: SignalLog,
}

impl Pipeline {
    /// A pipeline writing to stdout through `sinks`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        own_netns: u32,
        symbols: Box<dyn Symbols>,
        answered: HealthyMode,
        sinks: Sinks,
        correlator: Correlator,
        meta: MetaCache,
        node: String,
    ) -> Self {
        Self {
            own_netns,
            symbols,
            user: UserCounters::default(),
            answered,
            established: HealthyMode::Summary,
            sinks,
            correlator,
            clock: Clock::new(),
            meta,
            summaries: Summaries::default(),
            tc_drop_ifaces: std::collections::HashSet::new(),
            node,
            parking: None,
            peer_facts: None,
            window: std::time::Duration::from_secs(5),
            signals: SignalLog::default(),
        }
    }

    /// The facts of an entry read from the kernel's DNS table, when it is a query from another
    /// machine (for a peer's question).
    pub fn entry_facts(
        &self,
        key: &tracer_common::DnsKey,
        entry: &tracer_common::DnsEntry,
        ifaces: &IfaceTable,
    ) -> Option<LocalFacts> {
        let r = decode::record::decode_entry(
            Why::Swept,
            key,
            entry,
            ifaces,
            self.own_netns,
            self.symbols.as_ref(),
        )
        .ok()?;
        LocalFacts::from_events(&r.events).map(|(_, f)| f)
    }

    /// Decodes one ring-buffer record and feeds what it yields on; every skip is counted.
    pub fn record(&mut self, item: &[u8], ifaces: &IfaceTable, scope: &Scope) {
        match decode::decode_record(item, ifaces, self.own_netns, self.symbols.as_ref()) {
            Ok(Record::Packet(ev)) => {
                self.user.decoded += 1;
                self.packet(&ev, scope);
            }
            Ok(Record::Dns(r)) => {
                self.user.decoded += 1;
                self.dns(r, scope);
            }
            Err(err) => {
                self.user.decode_errors += 1;
                tracing::debug!(%err, "record skipped");
                // A flow open now may be missing this record: its verdict must say so.
                self.correlator
                    .note_loss(self.clock.mono_ns(), "a kernel record could not be decoded");
            }
        }
    }

    /// An entry the sweeper took from (or read in) the DNS table.
    pub fn swept(&mut self, s: Swept, ifaces: &IfaceTable, scope: &Scope) {
        match decode::record::decode_entry(
            s.why,
            &s.key,
            &s.entry,
            ifaces,
            self.own_netns,
            self.symbols.as_ref(),
        ) {
            Ok(r) => self.dns(r, scope),
            Err(err) => {
                self.user.decode_errors += 1;
                tracing::debug!(%err, "swept entry skipped");
                self.correlator.note_loss(
                    self.clock.mono_ns(),
                    "a DNS table entry could not be decoded",
                );
            }
        }
    }

    fn dns(&mut self, r: DnsFlowRecord, scope: &Scope) {
        self.user.dns_records += 1;
        if r.why == Why::DroppedAfterSummary
            && let Some(s) = &r.summarized
        {
            // Counted as answered in the kernel, but never reached the client's socket.
            self.summaries.retract(s);
        }
        if let Some(f) = self.peer_facts.as_mut() {
            f.note(&r.events, self.clock.mono_ns());
        }
        for ev in &r.events {
            self.packet(ev, scope);
        }
    }

    fn packet(&mut self, ev: &PacketEvent, scope: &Scope) {
        if ev.hook == Hook::Drop && ev.drop.as_ref().is_some_and(|d| !scope.contains(d.netns)) {
            self.user.drops_other_node += 1;
            return;
        }
        // A drop inside a pod: its device is named after the pod's veth, not the namespace.
        let named;
        let ev = match ev.drop.as_ref().filter(|d| d.netns != self.own_netns) {
            Some(d) if ev.hook == Hook::Drop => {
                match scope.pod_iface_name(d.netns, ev.iface.ifindex) {
                    Some(name) => {
                        let mut e = ev.clone();
                        e.iface.name = name;
                        named = e;
                        &named
                    }
                    None => ev,
                }
            }
            _ => ev,
        };
        if let Some(d) = &ev.drop
            && (d.reason == "TC_INGRESS" || d.reason == "TC_EGRESS")
            && self.tc_drop_ifaces.len() < 1024
        {
            self.tc_drop_ifaces.insert(ev.iface.ifindex);
        }
        if self.sinks.wants_events() {
            self.sinks.publish(&Output::Packet(ev.clone()), true);
        }
        if ev.dns.is_some()
            && let Some(f) = self.peer_facts.as_mut()
        {
            f.observe(ev);
        }
        self.correlator.observe(ev);
    }

    /// Losses somewhere in `[from, to]` (kernel loss history).
    pub fn note_loss_span(&mut self, from: u64, to: u64, what: &str) {
        self.correlator.note_loss_span(from, to, what);
    }

    /// Emits the verdicts of flows that completed or whose window closed by `now`. `flows`
    /// reads an entry of the kernel's flow table (see [`evicted_while_open`]).
    pub fn poll(&mut self, now: u64, hooks: &HookTable, flows: &FlowProbe<'_>) {
        let verdicts = self.correlator.poll(now);
        self.emit(verdicts, hooks, flows);
    }

    /// Emits every open flow's verdict (shutdown).
    pub fn finish(&mut self, hooks: &HookTable, flows: &FlowProbe<'_>) {
        let verdicts = self.correlator.flush();
        self.emit(verdicts, hooks, flows);
        self.flush();
    }

    fn emit(&mut self, verdicts: Vec<Verdict>, hooks: &HookTable, flows: &FlowProbe<'_>) {
        for mut v in verdicts {
            if v.verdict == VerdictKind::LostBeyondNode && evicted_while_open(&v, flows) {
                self.user.egress_evicted += 1;
                downgrade_evicted(&mut v);
                self.correlator
                    .recount(VerdictKind::LostBeyondNode, VerdictKind::Unknown);
            }
            v.node_signals = self.signals.bearing_on(&v, super::ns(self.window));
            let clock = &self.clock;
            let facts = Facts {
                meta: &self.meta,
                hooks,
                wall: &|t| clock.wall_rfc3339(t),
            };
            // A healthy connection counted into a summary needs no names, time or hint of its
            // own: only the check that its source is its veth's pod decides whether it is.
            if self.established != HealthyMode::Flows && v.verdict == VerdictKind::Established {
                source_not_its_pod(&mut v, &self.meta);
                if self.summaries.add_established(&v) {
                    continue;
                }
            }
            finalize(&mut v, &facts);
            hint(&mut v);
            if let Some(park) = self.parking.as_mut()
                && let Some(node) = park.peer_node(&v).map(str::to_owned)
            {
                let addr = self.meta.peer_addr(&node);
                let sent = self.clock.unix_ns(v.start_ns);
                match park.park(v, &node, addr, sent, self.window) {
                    Ok(()) => continue,
                    Err(v) => {
                        self.publish_with_peer(*v);
                        continue;
                    }
                }
            }
            self.publish_verdict(v);
        }
    }

    fn publish_verdict(&mut self, v: Verdict) {
        let shown = match v.verdict {
            VerdictKind::Answered => self.answered != HealthyMode::Off,
            VerdictKind::Established => self.established != HealthyMode::Off,
            _ => true,
        };
        self.sinks.publish(&Output::Verdict(v), shown);
    }

    /// A verdict whose peer answer is in: its hint names the direction now.
    fn publish_with_peer(&mut self, mut v: Verdict) {
        hint(&mut v);
        self.publish_verdict(v);
    }

    /// A peer's answer (or why there is none) for a waiting verdict.
    pub fn peer_outcome(&mut self, o: Outcome) {
        if let Some(v) = self.parking.as_mut().and_then(|p| p.settle(o)) {
            self.publish_with_peer(v);
        }
    }

    /// Verdicts whose peer did not answer in time (all of them at shutdown).
    pub fn peer_expire(&mut self, all: bool) {
        let late = match self.parking.as_mut() {
            Some(p) => p.expire(std::time::Instant::now(), all),
            None => return,
        };
        for v in late {
            self.publish_with_peer(v);
        }
    }

    /// Ends the summary interval `[start, end)`: one line per group.
    pub fn emit_summaries(&mut self, start: u64, end: u64) {
        let lines: Vec<Summary> = self.summaries.take(&self.node, start, end);
        self.user.summary_groups_dropped = self.summaries.dropped_groups;
        self.user.summary_retractions_unmatched = self.summaries.unmatched_retractions;
        self.user.egress_over_limit = self.summaries.egress_over_limit;
        for mut s in lines {
            if self.server_side_of_a_branch_eni_pod(&s) {
                self.user.server_side_answers += s.count;
                continue;
            }
            let clock = &self.clock;
            crate::enrich::finalize::finalize_summary(&mut s, &self.meta, &|t| {
                clock.wall_rfc3339(t)
            });
            self.user.summaries += 1;
            let mode = match s.kind {
                FlowKind::Dns => {
                    self.user.summarized_answers += s.count;
                    self.answered
                }
                FlowKind::Egress => {
                    self.user.summarized_connections += s.count;
                    self.established
                }
            };
            self.sinks
                .publish(&Output::Summary(s), mode != HealthyMode::Off);
        }
    }

    /// Whether `s` counts the replica's side of a branch-ENI pod's queries to a replica on this
    /// node. Such a query goes out through the VPC and comes back in with a new source port
    /// (conntrack), so each answer is summarised twice: under the pod's own origin, and under
    /// "host" for the side first seen at the replica's veth. The pod's own side is the one kept.
    fn server_side_of_a_branch_eni_pod(&self, s: &Summary) -> bool {
        let SummaryGroup::Dns(g) = &s.group else {
            return false;
        };
        g.origin == Origin::Host
            && self
                .meta
                .pod_by_ip(g.client)
                .is_some_and(|p| p.is_pod_network_on(&self.node) && p.branch_eni().is_some())
    }

    /// Flushes stdout; copies the sinks' error counts into the counters.
    pub fn flush(&mut self) {
        self.sinks.stdout.flush();
        self.user.write_errors = self.sinks.stdout.write_errors + self.sinks.serialize_errors;
    }
}
