//! Loading the kernel programs, attaching them, and reading their records and counters.
//!
//! This is, with [`crate::decode`], the only place that deals with raw kernel data.

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, SchedClassifier, TcAttachType,
        tc::{SchedClassifierLinkId, TcAttach},
    },
};
use tracer_common::{
    Config, Control, DnsEntry, DnsKey, FlowKey, FlowStats, KernelOffsets, LOSS_SLOTS, SEEN_SLOTS,
    SummaryKey, SummaryValue, counter,
};

/// Object file of the kernel programs, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// Errors of loading and attaching.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The object could not be loaded (verifier, missing BTF, permissions).
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program failed to load or attach.
    #[error("program {name}: {source}")]
    Program {
        /// Program name.
        name: &'static str,
        /// Cause.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map is missing or of the wrong type.
    #[error("map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// Cause.
        #[source]
        source: aya::maps::MapError,
    },
    /// The object lacks something this build expects.
    #[error("eBPF object has no {0}")]
    Missing(&'static str),
    /// A memory-mapped map could not be mapped.
    #[error("mapping {0}: {1}")]
    Mmap(&'static str, #[source] std::io::Error),
    /// Reading kernel BTF failed.
    #[error("reading kernel BTF: {0}")]
    Btf(#[from] aya::BtfError),
}

/// Which tc program an attachment uses (see tracer-ebpf's tc.rs): one per interface role and
/// direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TcProgram {
    /// Pod veth ingress (packets from the pod).
    PodIn,
    /// Pod veth egress (packets toward the pod).
    PodOut,
    /// Uplink, trunk or branch ENI ingress.
    UplinkIn,
    /// Uplink, trunk or branch ENI egress.
    UplinkOut,
    /// Any other interface, ingress.
    OtherIn,
    /// Any other interface, egress.
    OtherOut,
    /// The empty baseline program (benchmarks).
    Empty,
}

impl TcProgram {
    /// All programs, loaded at start-up.
    pub const ALL: [Self; 7] = [
        Self::PodIn,
        Self::PodOut,
        Self::UplinkIn,
        Self::UplinkOut,
        Self::OtherIn,
        Self::OtherOut,
        Self::Empty,
    ];

    /// True for the ingress programs.
    pub const fn is_ingress(self) -> bool {
        matches!(self, Self::PodIn | Self::UplinkIn | Self::OtherIn)
    }

    /// Symbol name in the object (also the program name the kernel shows, which is how a
    /// filter left behind by a killed tracer is recognised).
    pub const fn name(self) -> &'static str {
        match self {
            Self::PodIn => "tc_pod_in",
            Self::PodOut => "tc_pod_out",
            Self::UplinkIn => "tc_uplink_in",
            Self::UplinkOut => "tc_uplink_out",
            Self::OtherIn => "tc_other_in",
            Self::OtherOut => "tc_other_out",
            Self::Empty => "tc_empty",
        }
    }
}

/// Priority of the tracer's clsact filters (netlink mode).
pub const NETLINK_PRIORITY: u16 = 1;
/// Handle of the tracer's clsact filters: not 1, which the VPC CNI network-policy agent takes
/// at priority 1 (an auto-assigned handle would be 1 on an empty hook and make the agent's
/// attach fail).
pub const NETLINK_HANDLE: u32 = 0x7472_6163;

/// Sizes and settings the kernel programs are loaded with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadConfig {
    /// Struct offsets for the drop program (from the kernel's BTF); without them it reports
    /// nothing.
    pub offsets: Option<KernelOffsets>,
    /// Settings of the DNS table (window, grace, slow answers, `--answered flows`).
    pub dns: Config,
    /// Entries of the DNS table (queries whose slot was taken, and those handed over).
    pub dns_entries: u32,
    /// Slots of the direct-mapped DNS table (rounded down to a power of two).
    pub dns_slots: u32,
    /// Entries of the answer summaries.
    pub summary_entries: u32,
    /// Size of the ring buffer (bytes, a power of two); the object's default when `None`.
    pub ring_bytes: Option<u32>,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            offsets: None,
            dns: Config {
                window_ns: 5_000_000_000,
                grace_ns: 1_000_000_000,
                slow_ns: 500_000_000,
                answered_flows: 0,
                ledger_slots: 0,
                slot_mask: 0,
                _pad: 0,
            },
            dns_entries: tracer_common::DNS_TABLE_ENTRIES,
            dns_slots: tracer_common::DNS_SLOTS,
            summary_entries: tracer_common::SUMMARY_ENTRIES,
            ring_bytes: None,
        }
    }
}

/// The maps the daemon reads and writes while running (taken from the object once).
pub struct Tables {
    /// The DNS table (open and recently delivered queries).
    pub dns: HashMap<MapData, DnsKey, DnsEntry>,
    /// Answer summaries.
    pub summary: HashMap<MapData, SummaryKey, SummaryValue>,
    /// Loss history per CPU.
    pub loss: PerCpuArray<MapData, [u64; LOSS_SLOTS]>,
    /// Run-time settings (summary epoch, slow clients present).
    pub control: Array<MapData, Control>,
    /// Clients with a slow query open, until when.
    pub slow_clients: HashMap<MapData, [u8; 16], u64>,
    /// This node's network namespaces.
    pub scope: HashMap<MapData, u32, u8>,
    /// The flow table (pod egress flows after their first packet; LRU).
    pub flows: HashMap<MapData, FlowKey, FlowStats>,
    /// The delivery ledger, mapped (`None` when loaded without one).
    pub ledger: Option<super::ledger::Ledger>,
    /// The direct-mapped DNS table, mapped.
    pub slots: super::slots::Slots,
}

#[cfg(test)]
impl Tables {
    /// Every query in the kernel's DNS table, in its slots and in the hash table (at most
    /// `limit` from each).
    pub fn dns_entries(&self, limit: usize) -> std::io::Result<Vec<(DnsKey, DnsEntry)>> {
        let mut all: Vec<(DnsKey, DnsEntry)> = self
            .slots
            .occupied(limit, true)
            .into_iter()
            .map(|s| (s.key, s.entry))
            .collect();
        all.extend(read_all(&self.dns, limit)?);
        Ok(all)
    }
}

/// Loaded kernel programs and maps.
pub struct Capture {
    ebpf: Ebpf,
    mode: TcMode,
    ledger_slots: u32,
    dns_slots: u32,
}

/// How tc programs are attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TcMode {
    /// tcx links on kernels from 6.6, netlink clsact filters before.
    #[default]
    Auto,
    /// tcx links (Linux ≥ 6.6): released by the kernel when the tracer exits, even on a crash.
    Tcx,
    /// netlink filters under a clsact qdisc (any kernel): removed one by one on exit. A clsact
    /// qdisc the tracer had to add stays, empty.
    Netlink,
}

/// Counter totals over all CPUs, indexed like [`tracer_common::counter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Packets that entered a tc program.
    pub tc_seen: u64,
    /// Packets reported by tc programs.
    pub tc_emitted: u64,
    /// tc records lost: ring buffer full.
    pub tc_ringbuf_full: u64,
    /// Packets tc programs could not parse.
    pub tc_parse_error: u64,
    /// kfree_skb calls seen.
    pub drop_seen: u64,
    /// Drops of packets of interest reported.
    pub drop_emitted: u64,
    /// Drop records lost: ring buffer full.
    pub drop_ringbuf_full: u64,
    /// Drop records whose kernel reads failed.
    pub drop_read_error: u64,
    /// In-kernel flow table inserts that failed.
    pub flow_table_full: u64,
    /// Packets of known flows aggregated in the kernel.
    pub flow_aggregated: u64,
    /// UDP DNS queries tracked in the kernel's DNS table.
    pub dns_tracked: u64,
    /// Queries the full DNS table could not take.
    pub dns_table_full: u64,
    /// Answers counted in the kernel's summaries.
    pub dns_summarized: u64,
    /// DNS records (queries handed over whole) emitted.
    pub dns_records: u64,
    /// DNS records the full ring could not take (their entries wait for the sweeper).
    pub dns_ringbuf_full: u64,
    /// Responses that matched no open query.
    pub dns_orphan: u64,
    /// Responses after the window (or repeated after delivery).
    pub dns_late: u64,
    /// Answers the full summary table could not take (handed over whole instead).
    pub summary_full: u64,
    /// Drops on other machines sharing the kernel (not reported).
    pub drops_other_node: u64,
    /// Delivered entries freed after lingering.
    pub dns_linger_freed: u64,
    /// New queries whose slot was taken (tracked in the hash table instead).
    pub dns_slot_taken: u64,
    /// New queries whose key was held by an entry waiting for the sweeper (a loss either way).
    pub dns_key_busy: u64,
    /// Answers to other machines' queries noted in the delivery ledger.
    pub ledger_written: u64,
}

impl Capture {
    /// Loads the object and every tc program with `cfg`.
    pub fn load(cfg: &LoadConfig) -> Result<Self, CaptureError> {
        let offsets = cfg.offsets.unwrap_or_default();
        let slots = slot_count(cfg.dns_slots);
        let dns = Config {
            slot_mask: slots - 1,
            ..cfg.dns
        };
        let mut loader = EbpfLoader::new();
        loader
            .override_global("OFFSETS", &offsets, true)
            .override_global("CONFIG", &dns, true)
            .map_max_entries("DNS_SLOTS", slots)
            .map_max_entries("DNS_TABLE", cfg.dns_entries.max(1))
            .map_max_entries("SUMMARY", cfg.summary_entries.max(1))
            .map_max_entries("LEDGER", ledger_entries(cfg.dns.ledger_slots));
        if let Some(bytes) = cfg.ring_bytes {
            loader.map_max_entries("EVENTS", bytes);
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        for prog in TcProgram::ALL {
            let name = prog.name();
            let p: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(CaptureError::Missing(name))?
                .try_into()
                .map_err(|source| CaptureError::Program { name, source })?;
            p.load()
                .map_err(|source| CaptureError::Program { name, source })?;
        }
        Ok(Self {
            ebpf,
            mode: TcMode::Auto,
            ledger_slots: cfg.dns.ledger_slots,
            dns_slots: slots,
        })
    }

    /// Whether attachments are netlink clsact filters (else tcx links).
    pub fn netlink_mode(&self) -> bool {
        match self.mode {
            TcMode::Netlink => true,
            TcMode::Tcx => false,
            TcMode::Auto => !tcx_available(),
        }
    }

    /// Kernel ids of the loaded tc programs (to find our own attachments).
    pub fn program_ids(&mut self) -> std::collections::HashMap<TcProgram, u32> {
        let mut out = std::collections::HashMap::new();
        for prog in TcProgram::ALL {
            if let Ok(p) = self.classifier(prog)
                && let Ok(info) = p.info()
            {
                out.insert(prog, info.id());
            }
        }
        out
    }

    /// Chooses how later [`Capture::attach_tc`] calls attach.
    pub fn set_tc_mode(&mut self, mode: TcMode) {
        self.mode = mode;
    }

    /// Loads and attaches the skb:kfree_skb drop program (tp_btf).
    pub fn attach_drops(&mut self) -> Result<(), CaptureError> {
        const NAME: &str = tracer_common::programs::KFREE_SKB;
        let btf = Btf::from_sys_fs()?;
        let p: &mut BtfTracePoint = self
            .ebpf
            .program_mut(NAME)
            .ok_or(CaptureError::Missing(NAME))?
            .try_into()
            .map_err(|source| CaptureError::Program { name: NAME, source })?;
        p.load("kfree_skb", &btf)
            .map_err(|source| CaptureError::Program { name: NAME, source })?;
        p.attach()
            .map_err(|source| CaptureError::Program { name: NAME, source })?;
        Ok(())
    }

    fn classifier(&mut self, prog: TcProgram) -> Result<&mut SchedClassifier, CaptureError> {
        let name = prog.name();
        self.ebpf
            .program_mut(name)
            .ok_or(CaptureError::Missing(name))?
            .try_into()
            .map_err(|source| CaptureError::Program { name, source })
    }

    /// Attaches `prog` to the ingress or egress hook of `ifindex` (tcx on kernels ≥ 6.6,
    /// netlink clsact before). The link is detached by [`Capture::detach_tc`] or on drop.
    pub fn attach_tc(
        &mut self,
        prog: TcProgram,
        ifindex: u32,
        ingress: bool,
    ) -> Result<SchedClassifierLinkId, CaptureError> {
        let attach_type = if ingress {
            TcAttachType::Ingress
        } else {
            TcAttachType::Egress
        };
        let name = prog.name();
        let netlink = self.netlink_mode();
        let p = self.classifier(prog)?;
        let how = if netlink {
            // The clsact qdisc must exist first; one that is already there is fine.
            let _ = aya::programs::tc::qdisc_add_clsact(ifindex);
            // Priority 1 (the lowest number, run first): filters at the same priority run
            // newest first, so a filter another tool adds later at priority 1 (the VPC CNI
            // network-policy agent uses 1) runs before ours. See the README's limits.
            TcAttach::Netlink {
                parent: attach_type.into(),
                options: aya::programs::tc::NlOptions {
                    priority: NETLINK_PRIORITY,
                    handle: aya::programs::tc::TcHandle::from(NETLINK_HANDLE),
                    classid: None,
                },
            }
        } else {
            // At the head: the tracer sees each packet before anyone decides its fate, and
            // its TCX_NEXT hands every packet on.
            TcAttach::Tcx {
                attach_type,
                order: aya::programs::links::LinkOrder::first(),
            }
        };
        p.attach(ifindex, how)
            .map_err(|source| CaptureError::Program { name, source })
    }

    /// Detaches a link made by [`Capture::attach_tc`]. Fails quietly for interfaces that
    /// disappeared (the kernel already removed their hooks).
    pub fn detach_tc(&mut self, prog: TcProgram, id: SchedClassifierLinkId) {
        match self.classifier(prog) {
            Ok(p) => {
                if let Err(err) = p.detach(id) {
                    tracing::debug!(%err, program = prog.name(), "detach");
                }
            }
            Err(err) => tracing::warn!(%err, "detach"),
        }
    }

    /// Takes the maps the daemon works with (once).
    pub fn take_tables(&mut self) -> Result<Tables, CaptureError> {
        fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, CaptureError> {
            ebpf.take_map(name).ok_or(CaptureError::Missing(name))
        }
        let wrap = |name: &'static str| move |source| CaptureError::Map { name, source };
        Ok(Tables {
            dns: HashMap::try_from(take(&mut self.ebpf, "DNS_TABLE")?)
                .map_err(wrap("DNS_TABLE"))?,
            summary: HashMap::try_from(take(&mut self.ebpf, "SUMMARY")?)
                .map_err(wrap("SUMMARY"))?,
            loss: PerCpuArray::try_from(take(&mut self.ebpf, "LOSS")?).map_err(wrap("LOSS"))?,
            control: Array::try_from(take(&mut self.ebpf, "CONTROL")?).map_err(wrap("CONTROL"))?,
            slow_clients: HashMap::try_from(take(&mut self.ebpf, "SLOW_CLIENTS")?)
                .map_err(wrap("SLOW_CLIENTS"))?,
            scope: HashMap::try_from(take(&mut self.ebpf, "SCOPE")?).map_err(wrap("SCOPE"))?,
            flows: HashMap::try_from(take(&mut self.ebpf, "FLOWS")?).map_err(wrap("FLOWS"))?,
            slots: super::slots::Slots::new(
                Array::try_from(take(&mut self.ebpf, "DNS_SLOTS")?).map_err(wrap("DNS_SLOTS"))?,
                self.dns_slots,
            )
            .map_err(|e| CaptureError::Mmap("DNS_SLOTS", e))?,
            ledger: if self.ledger_slots == 0 {
                None
            } else {
                let map =
                    Array::try_from(take(&mut self.ebpf, "LEDGER")?).map_err(wrap("LEDGER"))?;
                Some(
                    super::ledger::Ledger::new(map, self.ledger_slots, possible_cpus())
                        .map_err(|e| CaptureError::Mmap("LEDGER", e))?,
                )
            },
        })
    }

    /// Takes the ring buffer (once).
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, CaptureError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(CaptureError::Missing("EVENTS"))?;
        RingBuf::try_from(map).map_err(|source| CaptureError::Map {
            name: "EVENTS",
            source,
        })
    }

    /// The per-CPU `COUNTERS` array.
    fn counters_map(&self) -> Result<PerCpuArray<&MapData, u64>, CaptureError> {
        let map = self
            .ebpf
            .map("COUNTERS")
            .ok_or(CaptureError::Missing("COUNTERS"))?;
        PerCpuArray::try_from(map).map_err(|source| CaptureError::Map {
            name: "COUNTERS",
            source,
        })
    }

    /// One counter ([`tracer_common::counter`]) per CPU: one system call.
    pub fn counter_per_cpu(&self, idx: u32) -> Result<Vec<u64>, CaptureError> {
        let arr = self.counters_map()?;
        arr.get(&idx, 0)
            .map(|v| v.iter().copied().collect())
            .map_err(|source| CaptureError::Map {
                name: "COUNTERS",
                source,
            })
    }

    /// One counter ([`tracer_common::counter`]) summed over CPUs: one system call.
    pub fn counter(&self, idx: u32) -> Result<u64, CaptureError> {
        self.counter_per_cpu(idx).map(|v| v.iter().sum())
    }

    /// Sums the per-CPU counters.
    pub fn counters(&self) -> Result<Counters, CaptureError> {
        let arr = self.counters_map()?;
        let get = |i: u32| -> u64 { arr.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0) };
        let bss_seen = match self
            .ebpf
            .map(".bss")
            .map(Array::<_, [u64; SEEN_SLOTS]>::try_from)
        {
            Some(Ok(bss)) => bss
                .get(&0, 0)
                .map(|slots| slots.iter().sum::<u64>())
                .unwrap_or(0),
            _ => 0,
        };
        Ok(Counters {
            tc_seen: get(counter::TC_SEEN) + bss_seen,
            tc_emitted: get(counter::TC_EMITTED),
            tc_ringbuf_full: get(counter::TC_RINGBUF_FULL),
            tc_parse_error: get(counter::TC_PARSE_ERROR),
            drop_seen: get(counter::DROP_SEEN),
            drop_emitted: get(counter::DROP_EMITTED),
            drop_ringbuf_full: get(counter::DROP_RINGBUF_FULL),
            drop_read_error: get(counter::DROP_READ_ERROR),
            flow_table_full: get(counter::FLOW_TABLE_FULL),
            flow_aggregated: get(counter::FLOW_AGGREGATED),
            dns_tracked: get(counter::DNS_TRACKED),
            dns_table_full: get(counter::DNS_TABLE_FULL),
            dns_summarized: get(counter::DNS_SUMMARIZED),
            dns_records: get(counter::DNS_RECORDS),
            dns_ringbuf_full: get(counter::DNS_RINGBUF_FULL),
            dns_orphan: get(counter::DNS_ORPHAN),
            dns_late: get(counter::DNS_LATE),
            summary_full: get(counter::SUMMARY_FULL),
            drops_other_node: get(counter::DROP_OTHER_NODE),
            dns_linger_freed: get(counter::DNS_LINGER_FREED),
            dns_slot_taken: get(counter::DNS_SLOT_TAKEN),
            dns_key_busy: get(counter::DNS_KEY_BUSY),
            ledger_written: get(counter::LEDGER_WRITTEN),
        })
    }

    /// The loaded object, for benchmarks and in-kernel tests (program test runs).
    #[cfg(any(test, feature = "devtools"))]
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

/// Number of possible CPUs (per-CPU map sizes), at least 1.
pub fn possible_cpus() -> usize {
    aya::util::nr_cpus().map_or(1, |n| usize::try_from(n.get()).unwrap_or(1))
}

/// Size of the `LEDGER` map: one segment of `per_cpu` slots per possible CPU (at least 1).
fn ledger_entries(per_cpu: u32) -> u32 {
    u32::try_from(possible_cpus())
        .unwrap_or(u32::MAX)
        .saturating_mul(per_cpu)
        .max(1)
}

/// Slots of the direct-mapped DNS table: `n` rounded down to a power of two, at least 2.
pub fn slot_count(n: u32) -> u32 {
    if n < 2 {
        2
    } else {
        1 << (31 - n.leading_zeros())
    }
}

/// tcx exists from Linux 6.6 on.
fn tcx_available() -> bool {
    aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
}

/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` on a hash map (atomic on Linux ≥ 5.14): the value that was
/// removed, `None` when the key was absent. aya offers it only for queues and stacks.
pub fn take_entry<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    key: &K,
) -> std::io::Result<Option<V>> {
    use std::os::fd::{AsFd as _, AsRawFd as _};

    use aya::maps::IterableMap as _;
    /// The `bpf_attr` layout of the map element commands.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
    let mut value = std::mem::MaybeUninit::<V>::zeroed();
    let attr = ElemAttr {
        map_fd: u32::try_from(map.map().fd().as_fd().as_raw_fd()).unwrap_or(u32::MAX),
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: `attr` points at a key and a value buffer of the map's sizes (K and V are the
    // map's Pod types), both alive for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            std::ptr::from_ref(&attr),
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if ret == 0 {
        // SAFETY: the kernel wrote a whole value (V is Pod: any bytes are a valid V).
        return Ok(Some(unsafe { value.assume_init() }));
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENOENT) {
        Ok(None)
    } else {
        Err(err)
    }
}

/// Every entry of a hash map, read with `BPF_MAP_LOOKUP_BATCH` (one system call per batch;
/// aya offers only one lookup per entry). Batches start small — the kernel allocates a buffer
/// for a whole batch on every call, and the tables are nearly empty most of the time — and grow
/// up to [`MAX_BATCH`] while they come back full. At most `limit` entries.
pub fn read_all<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    limit: usize,
) -> std::io::Result<Vec<(K, V)>> {
    use std::os::fd::{AsFd as _, AsRawFd as _};

    use aya::maps::IterableMap as _;
    /// The `bpf_attr` layout of the batch commands.
    #[repr(C)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    let fd = u32::try_from(map.map().fd().as_fd().as_raw_fd()).unwrap_or(u32::MAX);
    let mut out = Vec::new();
    let mut batch = MIN_BATCH;
    let mut keys: Vec<K> = Vec::with_capacity(MAX_BATCH);
    let mut values: Vec<V> = Vec::with_capacity(MAX_BATCH);
    // The hash map's batch token is a bucket number (u32); a u64 leaves room.
    let mut token_in: u64 = 0;
    let mut token_out: u64 = 0;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                std::ptr::from_mut(&mut token_in) as u64
            },
            out_batch: std::ptr::from_mut(&mut token_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: batch as u32,
            map_fd: fd,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: the key and value buffers have room for MAX_BATCH ≥ `batch` elements of the
        // map's sizes (K and V are its Pod types); the tokens are 8 bytes; all outlive the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                std::ptr::from_mut(&mut attr),
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let err = (ret != 0).then(std::io::Error::last_os_error);
        let n = (attr.count as usize).min(batch);
        match &err {
            // A bucket holds more entries than the batch: retry the same place, bigger.
            Some(e) if e.raw_os_error() == Some(libc::ENOSPC) && batch < MAX_BATCH => {
                batch = MAX_BATCH;
                continue;
            }
            _ => {}
        }
        // SAFETY: the kernel wrote `n` whole keys and values (any bytes are valid Pod values).
        unsafe {
            keys.set_len(n);
            values.set_len(n);
        }
        out.extend(keys.drain(..).zip(values.drain(..)));
        match err {
            None => {}
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Some(e) => return Err(e),
        }
        if out.len() >= limit {
            out.truncate(limit);
            break;
        }
        if n == batch {
            batch = (batch * 4).min(MAX_BATCH);
        }
        token_in = token_out;
        first = false;
    }
    Ok(out)
}

/// First batch size of [`read_all`].
pub const MIN_BATCH: usize = 32;
/// Largest batch of [`read_all`] (a hash bucket holding more than this makes the kernel
/// answer ENOSPC; buckets hold a handful).
pub const MAX_BATCH: usize = 1024;

#[cfg(test)]
mod tests {
    #[test]
    fn slot_count_is_a_power_of_two_at_most_what_was_asked() {
        let got: Vec<u32> = [0, 1, 2, 3, 1000, 1024, 25_805, u32::MAX]
            .into_iter()
            .map(super::slot_count)
            .collect();
        assert_eq!(got, [2, 2, 2, 2, 512, 1024, 16_384, 1 << 31]);
    }
}
