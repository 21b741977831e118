//! What userspace learns from the running kernel: drop-reason names and struct offsets from its
//! BTF ([`btf`]), and function names for kernel addresses from `/proc/kallsyms` ([`ksyms`]).
//!
//! Everything here parses data the kernel (or a test file) hands us, so nothing panics on bad
//! input: errors are [`Error`]s naming what was missing, and lookups fall back to a raw value.

// The module is a small library: not every entry point (e.g. the file and byte-slice
// constructors used by the unit tests) is called by the daemon.
#![allow(dead_code)]

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
