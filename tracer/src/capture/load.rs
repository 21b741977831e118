//! Loading the kernel programs, attaching them, and reading their records and counters.
//!
//! This is, with [`crate::decode`], the only place that deals with raw kernel data.

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, SchedClassifier, TcAttachType,
        tc::{SchedClassifierLinkId, TcAttach},
    },
};
use tracer_common::{KernelOffsets, SEEN_SLOTS, counter};

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
    /// Reading kernel BTF failed.
    #[error("reading kernel BTF: {0}")]
    Btf(#[from] aya::BtfError),
}

/// Which tc program an attachment uses (see tracer-ebpf's tc.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TcProgram {
    /// DNS, TCP control packets and ICMP errors, ingress.
    In,
    /// Same, egress.
    Out,
    /// Ingress plus first-UDP-packet tracking (pod veths).
    InTrack,
    /// Egress plus first-UDP-packet tracking (uplinks).
    OutTrack,
    /// The empty baseline program (benchmarks).
    Empty,
}

impl TcProgram {
    /// All programs, loaded at start-up.
    pub const ALL: [Self; 5] = [
        Self::In,
        Self::Out,
        Self::InTrack,
        Self::OutTrack,
        Self::Empty,
    ];

    /// Symbol name in the object.
    pub const fn name(self) -> &'static str {
        match self {
            Self::In => "tc_in",
            Self::Out => "tc_out",
            Self::InTrack => "tc_in_track",
            Self::OutTrack => "tc_out_track",
            Self::Empty => "tc_empty",
        }
    }
}

/// Loaded kernel programs and maps.
pub struct Capture {
    ebpf: Ebpf,
    mode: TcMode,
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
}

impl Counters {
    /// Records the kernel could not hand over (ring buffer full).
    pub fn lost(&self) -> u64 {
        self.tc_ringbuf_full + self.drop_ringbuf_full
    }
}

impl Capture {
    /// Loads the object and every tc program. With `offsets` (from the kernel's BTF) the drop
    /// program is told where to find skb fields; without, it reports nothing.
    pub fn load(offsets: Option<KernelOffsets>) -> Result<Self, CaptureError> {
        let offsets = offsets.unwrap_or_default();
        let mut ebpf = EbpfLoader::new()
            .override_global("OFFSETS", &offsets, true)
            .load(EBPF_OBJECT)?;
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
        })
    }

    /// Chooses how later [`Capture::attach_tc`] calls attach.
    pub fn set_tc_mode(&mut self, mode: TcMode) {
        self.mode = mode;
    }

    /// Loads and attaches the skb:kfree_skb drop program (tp_btf).
    pub fn attach_drops(&mut self) -> Result<(), CaptureError> {
        const NAME: &str = "kfree_skb";
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
        let netlink = match self.mode {
            TcMode::Netlink => true,
            TcMode::Tcx => false,
            TcMode::Auto => !tcx_available(),
        };
        let p = self.classifier(prog)?;
        let how = if netlink {
            // The clsact qdisc must exist first; one that is already there is fine.
            let _ = aya::programs::tc::qdisc_add_clsact(ifindex);
            TcAttach::Netlink {
                parent: attach_type.into(),
                options: Default::default(),
            }
        } else {
            TcAttach::Tcx {
                attach_type,
                order: Default::default(),
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

    /// Sums the per-CPU counters.
    pub fn counters(&self) -> Result<Counters, CaptureError> {
        let map = self
            .ebpf
            .map("COUNTERS")
            .ok_or(CaptureError::Missing("COUNTERS"))?;
        let arr: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| CaptureError::Map {
                name: "COUNTERS",
                source,
            })?;
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
        })
    }

    /// The loaded object, for benchmarks and in-kernel tests (program test runs).
    #[cfg(any(test, feature = "devtools"))]
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

/// tcx exists from Linux 6.6 on.
fn tcx_available() -> bool {
    aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
}
