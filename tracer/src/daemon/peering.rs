//! The daemon's side of cross-node verdicts: starting the peer service and the asker, and
//! answering a peer's question from the tables the loop owns (the pipeline's facts, the
//! kernel's DNS table and delivery ledger, the loss history).

use std::{collections::HashSet, net::SocketAddr, path::Path, sync::Arc};

use anyhow::Context as _;
use tokio::sync::mpsc;

use crate::{
    capture::{Capture, iface::IfaceTable},
    peer::{
        Parking,
        answer::{self, Delivered, Evidence, Horizon, LocalFacts, QueryKey, Sighting},
        client::{Asker, Outcome},
        ledger::FactsLedger,
        proto::Answer,
        server::{self, Question, ServerStats},
        tls::TlsStore,
    },
};

use super::{pipeline::Pipeline, tables::KernelTables};

/// The channels the loop listens on.
pub struct PeerChannels {
    /// Questions from peers.
    pub questions: mpsc::Receiver<Question>,
    /// Answers to this node's questions.
    pub outcomes: mpsc::UnboundedReceiver<Outcome>,
    /// The listener's counts.
    pub stats: Arc<ServerStats>,
    /// When this node started watching (monotonic ns): it cannot speak for earlier times.
    pub started_ns: u64,
}

/// Binds the peer service, starts the asker and gives the pipeline its peer parts.
pub async fn start(
    listen: SocketAddr,
    tls_dir: &Path,
    node: &str,
    facts_cap: usize,
    p: &mut Pipeline,
    wait: std::time::Duration,
    started_ns: u64,
) -> anyhow::Result<PeerChannels> {
    let tls = TlsStore::open(tls_dir).context("reading the peer TLS material (--peer-tls)")?;
    let (q_tx, q_rx) = mpsc::channel(server::QUEUE);
    let stats = Arc::new(ServerStats::default());
    let accept = server::serve(listen, tls.clone(), node.to_owned(), q_tx, stats.clone())
        .await
        .with_context(|| format!("serving the peer service on {listen} (--peer-listen)"))?;
    tokio::spawn(accept);
    let (o_tx, o_rx) = mpsc::unbounded_channel();
    p.parking = Some(Parking::new(
        Asker::new(tls, o_tx),
        listen.port(),
        wait,
        node,
    ));
    // Kept at least the window plus 10 s after the query's first sighting.
    let keep = p.window + std::time::Duration::from_secs(10);
    p.peer_facts = Some(FactsLedger::new(
        facts_cap,
        u64::try_from(keep.as_nanos()).unwrap_or(u64::MAX),
    ));
    Ok(PeerChannels {
        questions: q_rx,
        outcomes: o_rx,
        stats,
        started_ns,
    })
}

fn name_of(ifaces: &IfaceTable, ifindex: u32) -> String {
    ifaces.lookup(ifindex).name
}

/// Answers `q` from what this node holds now.
pub fn answer(
    q: Question,
    p: &Pipeline,
    kt: &KernelTables,
    capture: &Capture,
    ifaces: &IfaceTable,
    started_ns: u64,
) {
    let fps: HashSet<u64> = q
        .asks
        .iter()
        .map(|a| tracer_common::dns_key_fp(&QueryKey::from(a).to_dns_key()))
        .collect();
    // The kernel's ledger: searched once for the whole request.
    let (scan, ledger_horizon) = match kt.ledger() {
        Some(l) => {
            let written = capture
                .counter_per_cpu(tracer_common::counter::LEDGER_WRITTEN)
                .unwrap_or_default();
            // Unreadable counts: treat every segment as come round (careful).
            let written = if written.is_empty() {
                vec![u64::MAX; crate::capture::load::possible_cpus()]
            } else {
                written
            };
            let s = l.scan(&fps, &written);
            let horizon = s.oldest_done_ns;
            (s, horizon)
        }
        None => (Default::default(), Some(u64::MAX)),
    };
    let h = Horizon {
        started_ns,
        delivered_from_ns: ledger_horizon,
        handed_over_from_ns: p.peer_facts.as_ref().and_then(FactsLedger::forgotten_until),
        wall_offset_ns: p.clock.offset_ns(),
    };
    let loss = |t: u64| p.correlator.loss_after(t);
    let answers: Vec<Answer> = q
        .asks
        .iter()
        .map(|ask| {
            let key = QueryKey::from(ask);
            let dns_key = key.to_dns_key();
            let handed_over = p.peer_facts.as_ref().and_then(|f| f.get(&key));
            let open: Option<LocalFacts> = kt
                .dns_entry(&dns_key)
                .and_then(|e| p.entry_facts(&dns_key, &e, ifaces));
            let delivered = scan
                .found
                .get(&tracer_common::dns_key_fp(&dns_key))
                .map(|s| Delivered {
                    arrived: Sighting {
                        interface: name_of(ifaces, s.in_ifindex),
                        mono_ns: s
                            .done_ns
                            .saturating_sub(u64::from(s.arrived_us_before) * 1000),
                    },
                    to_replica: (s.replica_ifindex != 0)
                        .then(|| name_of(ifaces, s.replica_ifindex)),
                    reply_left: Sighting {
                        interface: name_of(ifaces, s.out_ifindex),
                        mono_ns: s.done_ns,
                    },
                });
            let ev = Evidence {
                handed_over,
                open: open.as_ref(),
                delivered: delivered.as_ref(),
            };
            answer::decide(ask, &ev, &h, &loss)
        })
        .collect();
    // The asker may have given up; nothing to do then.
    let _ = q.reply.send(answers);
}
