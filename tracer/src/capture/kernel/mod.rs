//! What userspace learns from the running kernel: drop-reason names and struct offsets from its
//! BTF ([`btf`]), and function names for kernel addresses from `/proc/kallsyms` ([`ksyms`]).
//!
//! Everything here parses data the kernel (or a test file) hands us, so nothing panics on bad
//! input: errors are [`Error`]s naming what was missing, and lookups fall back to a raw value.

pub mod btf;
pub mod ksyms;

use std::path::PathBuf;

/// Errors of the [`kernel`](self) module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// BTF data could not be parsed, or a type id inside it does not resolve.
    #[error("invalid BTF ({context}): {source}")]
    Btf {
        /// What was being parsed or resolved.
        context: String,
        /// The underlying error.
        #[source]
        source: btf_rs::Error,
    },
    /// The BTF has no type of this kind and name.
    #[error("BTF has no {kind} `{name}`")]
    MissingType {
        /// `struct`, `enum`, …
        kind: &'static str,
        /// The type's name.
        name: String,
    },
    /// The struct has no such field, also not inside its anonymous structs and unions.
    #[error("BTF: struct `{strukt}` has no field `{field}`")]
    MissingField {
        /// The struct (or the path to it, e.g. `sock_common.skc_net`).
        strukt: String,
        /// The missing field.
        field: String,
    },
    /// The field exists but is a bitfield or does not start on a byte boundary.
    #[error(
        "BTF: field `{strukt}.{field}` is a bitfield or not byte aligned (bit offset {bit_offset})"
    )]
    NotByteAligned {
        /// The struct.
        strukt: String,
        /// The field.
        field: String,
        /// Its offset in bits from the start of the struct.
        bit_offset: u64,
    },
    /// The field does not have the type the eBPF program reads it as.
    #[error("BTF: field `{strukt}.{field}` is {found}, expected {expected}")]
    UnexpectedFieldType {
        /// The struct.
        strukt: String,
        /// The field.
        field: String,
        /// What the eBPF program reads.
        expected: String,
        /// What the BTF says.
        found: String,
    },
    /// Types nest deeper than any real kernel struct (or refer to themselves).
    #[error("BTF: types nest too deeply while resolving `{strukt}.{field}`")]
    TooDeep {
        /// The struct.
        strukt: String,
        /// The field.
        field: String,
    },
    /// The offset does not fit the `u32` the eBPF program takes.
    #[error("BTF: offset of `{strukt}.{field}` does not fit in 32 bits")]
    OffsetOverflow {
        /// The struct.
        strukt: String,
        /// The field.
        field: String,
    },
}

/// Names for kernel values: drop reasons and code locations.
pub trait Symbols {
    /// Drop reason name (`NETFILTER_DROP`), `UNKNOWN(n)` when unknown.
    fn reason(&self, value: u32) -> String;
    /// Symbolized kernel address (`nft_do_chain+0x1a4`), or hex.
    fn location(&self, addr: u64) -> String;
}

/// Symbols when nothing could be loaded: numbers only.
pub struct NoSymbols;

impl Symbols for NoSymbols {
    fn reason(&self, value: u32) -> String {
        format!("UNKNOWN({value})")
    }
    fn location(&self, addr: u64) -> String {
        format!("{addr:#x}")
    }
}

/// Drop reason names and kernel symbols of the running kernel.
pub struct KernelSymbols {
    reasons: Option<btf::DropReasons>,
    ksyms: Option<ksyms::Ksyms>,
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
pub fn kernel_facts(no_drops: bool) -> (Option<tracer_common::KernelOffsets>, Box<dyn Symbols>) {
    let btf = match btf::load_vmlinux() {
        Ok(btf) => Some(btf),
        Err(err) => {
            tracing::warn!(%err, "no kernel BTF: drop reasons will be numbers, drops not traced");
            None
        }
    };
    let offsets = match (&btf, no_drops) {
        (Some(btf), false) => match btf::kernel_offsets(btf) {
            Ok(o) => Some(o),
            Err(err) => {
                tracing::warn!(%err, "kernel struct layout not understood: drops not traced");
                None
            }
        },
        _ => None,
    };
    let reasons = btf.as_ref().and_then(|btf| {
        btf::DropReasons::from_running_kernel(btf)
            .map_err(|err| tracing::warn!(%err, "drop reason names unavailable"))
            .ok()
    });
    drop(btf);
    let ksyms = match ksyms::Ksyms::load() {
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
