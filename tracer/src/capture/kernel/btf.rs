//! The running kernel's BTF: names of `enum skb_drop_reason` values and the struct field offsets
//! the drop program needs ([`tracer_common::KernelOffsets`]).
//!
//! Rust eBPF has no CO-RE relocations, so the offsets are looked up here once at start-up and
//! handed to the program; a kernel whose layout differs gets the right numbers, and a kernel
//! lacking a field fails with an [`Error`] naming it instead of reading garbage.

use std::{collections::HashMap, fs, path::Path};

use btf_rs::{Btf, Member, Struct, Type};
use tracer_common::KernelOffsets;

use super::Error;

/// Where the running kernel exposes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Directory of the kernel's BTF files: `vmlinux` and one split BTF per module that has one.
const SYS_BTF_DIR: &str = "/sys/kernel/btf";

/// A drop reason's subsystem is `value >> SKB_DROP_REASON_SUBSYS_SHIFT` (from
/// `include/net/dropreason.h`); core reasons have subsystem 0.
pub const SKB_DROP_REASON_SUBSYS_SHIFT: u32 = 16;

/// Modules that define subsystem drop reasons, with the enum holding them (kernel sources:
/// `net/openvswitch/drop.h`, `net/mac80211/drop.h`). Keyed by the `skb_drop_reason_subsys`
/// name without its `SKB_DROP_REASON_SUBSYS_` prefix (matched as a prefix, so
/// `MAC80211_UNUSABLE` and `MAC80211_MONITOR` both map to mac80211).
const SUBSYS_ENUMS: &[(&str, &str, &str)] = &[
    // (subsystem name prefix, module, enum)
    ("OPENVSWITCH", "openvswitch", "ovs_drop_reason"),
    ("MAC80211", "mac80211", "mac80211_drop_reason"),
];

/// Bound on typedef/modifier chains and anonymous-member nesting: far above any real kernel type,
/// it only stops loops in corrupt BTF.
const MAX_DEPTH: usize = 32;

/// Reads and parses the running kernel's BTF ([`VMLINUX_BTF`]).
///
/// Parsing takes a noticeable time and memory (the kernel's BTF is several MiB): load it once,
/// derive [`DropReasons`] and [`kernel_offsets`] from it, then drop it.
pub fn load_vmlinux() -> Result<Btf, Error> {
    load_btf_file(VMLINUX_BTF)
}

/// Reads and parses a stand-alone (non-split) BTF file, e.g. a copy of `/sys/kernel/btf/vmlinux`.
pub fn load_btf_file(path: impl AsRef<Path>) -> Result<Btf, Error> {
    let path = path.as_ref();
    let bytes = fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Btf::from_bytes(&bytes).map_err(|source| Error::Btf {
        context: format!("parsing {}", path.display()),
        source,
    })
}

#[cfg(test)]
/// Parses stand-alone (non-split) BTF bytes.
pub fn parse_btf(bytes: &[u8]) -> Result<Btf, Error> {
    Btf::from_bytes(bytes).map_err(|source| Error::Btf {
        context: "parsing BTF bytes".to_string(),
        source,
    })
}

/// Names of the kernel's `enum skb_drop_reason` values, as the `skb:kfree_skb` tracepoint reports
/// them in its `reason` field.
///
/// Core reasons are named like the kernel's own trace output does, without the
/// `SKB_DROP_REASON_` prefix (`NETFILTER_DROP`, `NO_SOCKET`, …; `SKB_NOT_DROPPED_YET` and
/// `SKB_CONSUMED` lose their `SKB_` prefix). Values with bits above
/// [`SKB_DROP_REASON_SUBSYS_SHIFT`] belong to a subsystem (`enum skb_drop_reason_subsys`):
/// they are named after the subsystem's own enum (e.g. `OVS_DROP_LAST_ACTION`) when some loaded
/// BTF defines it. Everything else is `UNKNOWN(<value>)`.
#[derive(Clone, Debug, Default)]
pub struct DropReasons {
    /// Full 32-bit value (subsystem bits included) to name.
    names: HashMap<u32, String>,
    /// Subsystem id to name, without the `SKB_DROP_REASON_SUBSYS_` prefix; not the core (0).
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "read by `subsystem`, which only the tests call so far"
        )
    )]
    subsystems: HashMap<u32, String>,
}

impl DropReasons {
    /// Reads the running kernel's BTF ([`VMLINUX_BTF`]) and builds the names from it and from
    /// the BTF of modules with subsystem drop reasons, see [`DropReasons::from_running_kernel`].
    #[cfg(test)]
    pub fn from_vmlinux() -> Result<Self, Error> {
        Self::from_running_kernel(&load_vmlinux()?)
    }

    /// Builds the names from `vmlinux` (the parsed [`VMLINUX_BTF`]) and, best effort, from the
    /// split BTF of the loaded modules that define subsystem drop reasons (openvswitch, mac80211:
    /// `/sys/kernel/btf/<module>`). A module loaded later keeps its reasons `UNKNOWN(n)`.
    pub fn from_running_kernel(vmlinux: &Btf) -> Result<Self, Error> {
        let mut modules = Vec::new();
        for (_, module, _) in SUBSYS_ENUMS {
            let path = Path::new(SYS_BTF_DIR).join(module);
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => {
                    tracing::warn!(path = %path.display(), %err, "cannot read module BTF");
                    continue;
                }
            };
            match Btf::from_split_bytes(&bytes, vmlinux) {
                Ok(btf) => modules.push(btf),
                Err(err) => {
                    tracing::warn!(path = %path.display(), %err, "cannot parse module BTF");
                }
            }
        }
        let mut all = vec![vmlinux];
        all.extend(modules.iter());
        Self::from_btfs(&all)
    }

    #[cfg(test)]
    /// Builds the names from the BTF of a stand-alone BTF file (e.g. a saved copy of
    /// `/sys/kernel/btf/vmlinux`).
    pub fn from_btf_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::from_btf(&load_btf_file(path)?)
    }

    #[cfg(test)]
    /// Builds the names from stand-alone BTF bytes.
    pub fn from_btf_bytes(bytes: &[u8]) -> Result<Self, Error> {
        Self::from_btf(&parse_btf(bytes)?)
    }

    /// Builds the names from parsed BTF (only what it holds: see
    /// [`DropReasons::from_running_kernel`] for module reasons).
    #[cfg(test)]
    pub fn from_btf(btf: &Btf) -> Result<Self, Error> {
        Self::from_btfs(&[btf])
    }

    /// Builds the names from several BTF objects: `enum skb_drop_reason` must be in one of them;
    /// subsystem enums are looked up in all of them.
    fn from_btfs(btfs: &[&Btf]) -> Result<Self, Error> {
        let core = find_enum(btfs, "skb_drop_reason")?.ok_or_else(|| Error::MissingType {
            kind: "enum",
            name: "skb_drop_reason".to_string(),
        })?;

        let mut names = HashMap::new();
        for (value, name) in core {
            // Skips SKB_DROP_REASON_SUBSYS_MASK and anything else that is not a core reason.
            if value >> SKB_DROP_REASON_SUBSYS_SHIFT != 0 {
                continue;
            }
            let short = name
                .strip_prefix("SKB_DROP_REASON_")
                .or_else(|| name.strip_prefix("SKB_"))
                .unwrap_or(&name)
                .to_string();
            names.entry(value).or_insert(short);
        }

        // Kernels before `enum skb_drop_reason_subsys` (6.4) only have core reasons.
        let mut subsystems = HashMap::new();
        for (id, name) in find_enum(btfs, "skb_drop_reason_subsys")?.unwrap_or_default() {
            let name = name
                .strip_prefix("SKB_DROP_REASON_SUBSYS_")
                .unwrap_or(&name)
                .to_string();
            if id == 0 || name == "NUM" || id >> (32 - SKB_DROP_REASON_SUBSYS_SHIFT) != 0 {
                continue;
            }
            subsystems.entry(id).or_insert(name);
        }

        for (&id, subsys) in &subsystems {
            let Some(&(_, _, enum_name)) = SUBSYS_ENUMS
                .iter()
                .find(|(prefix, _, _)| subsys.starts_with(prefix))
            else {
                continue;
            };
            for (value, name) in find_enum(btfs, enum_name)?.unwrap_or_default() {
                // The subsystem enums also hold markers (`__OVS_DROP_REASON`, the subsystem
                // base) and, for mac80211, non-drop results (RX_CONTINUE, RX_QUEUED) and the
                // other mac80211 subsystem's values.
                if value >> SKB_DROP_REASON_SUBSYS_SHIFT != id || name.starts_with('_') {
                    continue;
                }
                names.entry(value).or_insert(name);
            }
        }

        Ok(Self { names, subsystems })
    }

    /// Name of a drop reason value: e.g. `NETFILTER_DROP`, a subsystem reason such as
    /// `OVS_DROP_LAST_ACTION`, or `UNKNOWN(<value>)` (decimal) when the BTF does not name it.
    pub fn name(&self, value: u32) -> String {
        match self.names.get(&value) {
            Some(name) => name.clone(),
            None => format!("UNKNOWN({value})"),
        }
    }

    /// Subsystem of a non-core drop reason value, e.g. `OPENVSWITCH` or `MAC80211_UNUSABLE`
    /// (from `enum skb_drop_reason_subsys`); `None` for core reasons and unknown subsystems.
    #[cfg(test)]
    pub fn subsystem(&self, value: u32) -> Option<&str> {
        self.subsystems
            .get(&(value >> SKB_DROP_REASON_SUBSYS_SHIFT))
            .map(String::as_str)
    }

    /// Number of named values.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no value is named ([`DropReasons::default`], or BTF whose enum names no core reason).
    #[cfg(test)]
    #[expect(
        dead_code,
        reason = "clippy's len_without_is_empty wants it beside `len`"
    )]
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Values and names of the first enum called `name` in `btfs`, or `None` when there is none.
/// 64-bit enum values that do not fit in 32 bits are left out.
fn find_enum(btfs: &[&Btf], name: &str) -> Result<Option<Vec<(u32, String)>>, Error> {
    let lookup = |source| Error::Btf {
        context: format!("resolving enum {name}"),
        source,
    };
    for btf in btfs {
        for ty in btf.resolve_types_by_name(name).map_err(lookup)? {
            match ty {
                Type::Enum(e) => {
                    let mut values = Vec::with_capacity(e.members.len());
                    for m in &e.members {
                        values.push((m.val(), btf.resolve_name(m).map_err(lookup)?));
                    }
                    return Ok(Some(values));
                }
                Type::Enum64(e) => {
                    let mut values = Vec::with_capacity(e.members.len());
                    for m in &e.members {
                        if let Ok(value) = u32::try_from(m.val()) {
                            values.push((value, btf.resolve_name(m).map_err(lookup)?));
                        }
                    }
                    return Ok(Some(values));
                }
                _ => {}
            }
        }
    }
    Ok(None)
}

/// How the eBPF program reads a field.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// A kernel pointer.
    Ptr,
    /// An integer of this many bytes.
    Int(usize),
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expect::Ptr => f.write_str("a pointer"),
            Expect::Int(size) => write!(f, "a {size}-byte integer"),
        }
    }
}

/// Offsets of the fields the drop program reads, from the kernel's BTF (see
/// [`KernelOffsets`]); `valid` is set to 1.
///
/// Fields inside anonymous structs and unions (e.g. `sk_buff.dev`, `sk_buff.network_header`)
/// are found with their offsets summed. Each field's type is checked against how the program
/// reads it (pointer, `u16`, `u32`), so a kernel that changed a field fails here, with an
/// [`Error`] naming the struct and field.
pub fn kernel_offsets(btf: &Btf) -> Result<KernelOffsets, Error> {
    Ok(KernelOffsets {
        skb_head: field_offset(btf, "sk_buff", &["head"], Expect::Ptr)?,
        skb_network_header: field_offset(btf, "sk_buff", &["network_header"], Expect::Int(2))?,
        skb_len: field_offset(btf, "sk_buff", &["len"], Expect::Int(4))?,
        skb_dev: field_offset(btf, "sk_buff", &["dev"], Expect::Ptr)?,
        skb_protocol: field_offset(btf, "sk_buff", &["protocol"], Expect::Int(2))?,
        skb_sk: field_offset(btf, "sk_buff", &["sk"], Expect::Ptr)?,
        dev_ifindex: field_offset(btf, "net_device", &["ifindex"], Expect::Int(4))?,
        // possible_net_t: `struct { struct net *net; }` (empty without CONFIG_NET_NS).
        dev_nd_net: field_offset(btf, "net_device", &["nd_net", "net"], Expect::Ptr)?,
        sk_net: field_offset(btf, "sock", &["__sk_common", "skc_net", "net"], Expect::Ptr)?,
        net_inum: field_offset(btf, "net", &["ns", "inum"], Expect::Int(4))?,
        valid: 1,
        _pad: 0,
    })
}

/// Byte offset of `path` (a field, then fields of the struct it is, …) from the start of
/// `struct strukt`, checking the last field's type against `expect`.
fn field_offset(btf: &Btf, strukt: &str, path: &[&str], expect: Expect) -> Result<u32, Error> {
    let mut current = find_struct(btf, strukt)?;
    // Names the struct being searched in errors: `sock`, then `sock.__sk_common`, …
    let mut context = strukt.to_string();
    let mut bits: u64 = 0;
    let mut fields = path.iter().peekable();
    while let Some(&field) = fields.next() {
        let (offset, member) =
            find_member(btf, &current, field, &context, 0)?.ok_or_else(|| Error::MissingField {
                strukt: context.clone(),
                field: field.to_string(),
            })?;
        bits = bits.saturating_add(offset);
        if matches!(member.bitfield_size(), Some(size) if size != 0) || !bits.is_multiple_of(8) {
            return Err(Error::NotByteAligned {
                strukt: context,
                field: field.to_string(),
                bit_offset: bits,
            });
        }
        let ty = member_type(btf, &member, &context, field)?;
        if fields.peek().is_some() {
            current = match ty {
                Type::Struct(s) | Type::Union(s) => s,
                other => {
                    return Err(Error::UnexpectedFieldType {
                        strukt: context,
                        field: field.to_string(),
                        expected: "a struct or union".to_string(),
                        found: describe(&other),
                    });
                }
            };
            context = format!("{context}.{field}");
        } else {
            let ok = match (expect, &ty) {
                (Expect::Ptr, Type::Ptr(_)) => true,
                (Expect::Int(size), Type::Int(int)) => int.size() == size,
                _ => false,
            };
            if !ok {
                return Err(Error::UnexpectedFieldType {
                    strukt: context,
                    field: field.to_string(),
                    expected: expect.to_string(),
                    found: describe(&ty),
                });
            }
        }
    }
    u32::try_from(bits / 8).map_err(|_| Error::OffsetOverflow {
        strukt: strukt.to_string(),
        field: path.join("."),
    })
}

/// The first struct (or union) called `name`.
fn find_struct(btf: &Btf, name: &str) -> Result<Struct, Error> {
    let types = btf
        .resolve_types_by_name(name)
        .map_err(|source| Error::Btf {
            context: format!("resolving struct {name}"),
            source,
        })?;
    types
        .into_iter()
        .find_map(|ty| match ty {
            Type::Struct(s) | Type::Union(s) => Some(s),
            _ => None,
        })
        .ok_or_else(|| Error::MissingType {
            kind: "struct",
            name: name.to_string(),
        })
}

/// The member called `field` of `s` and its offset in bits, looking into anonymous struct and
/// union members (whose fields C puts in the scope of `s`) depth first.
fn find_member(
    btf: &Btf,
    s: &Struct,
    field: &str,
    context: &str,
    depth: usize,
) -> Result<Option<(u64, Member)>, Error> {
    if depth > MAX_DEPTH {
        return Err(Error::TooDeep {
            strukt: context.to_string(),
            field: field.to_string(),
        });
    }
    for member in &s.members {
        let name = btf.resolve_name(member).map_err(|source| Error::Btf {
            context: format!("resolving a member name of {context}"),
            source,
        })?;
        if name == field {
            return Ok(Some((u64::from(member.bit_offset()), member.clone())));
        }
        if name.is_empty()
            && let Type::Struct(inner) | Type::Union(inner) =
                member_type(btf, member, context, field)?
            && let Some((offset, found)) = find_member(btf, &inner, field, context, depth + 1)?
        {
            return Ok(Some((
                u64::from(member.bit_offset()).saturating_add(offset),
                found,
            )));
        }
    }
    Ok(None)
}

/// The type of a member, through typedefs and qualifiers.
fn member_type(btf: &Btf, member: &Member, context: &str, field: &str) -> Result<Type, Error> {
    let resolve = |source| Error::Btf {
        context: format!("resolving the type of {context}.{field}"),
        source,
    };
    let mut ty = btf.resolve_chained_type(member).map_err(resolve)?;
    for _ in 0..MAX_DEPTH {
        match &ty {
            Type::Typedef(t) => ty = btf.resolve_chained_type(t).map_err(resolve)?,
            Type::Const(t) | Type::Volatile(t) | Type::Restrict(t) => {
                ty = btf.resolve_chained_type(t).map_err(resolve)?;
            }
            Type::TypeTag(t) => ty = btf.resolve_chained_type(t).map_err(resolve)?,
            _ => return Ok(ty),
        }
    }
    Err(Error::TooDeep {
        strukt: context.to_string(),
        field: field.to_string(),
    })
}

/// Short description of a type for errors.
fn describe(ty: &Type) -> String {
    match ty {
        Type::Int(int) => format!("a {}-byte integer", int.size()),
        other => format!("a BTF {}", other.name()),
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)] // Tests state what they expect.
mod tests {
    use std::sync::LazyLock;

    use super::*;

    /// `/sys/kernel/btf/vmlinux` of the 6.18 x86-64 kernel the expected values below come from.
    const VMLINUX_618: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/vmlinux-6.18.btf");

    /// Parsed once: parsing takes a while in debug builds.
    static BTF: LazyLock<Btf> =
        LazyLock::new(|| load_btf_file(VMLINUX_618).expect("parse testdata/vmlinux-6.18.btf"));
    static REASONS: LazyLock<DropReasons> =
        LazyLock::new(|| DropReasons::from_btf(&BTF).expect("drop reasons of vmlinux-6.18.btf"));

    #[test]
    fn core_reasons_match_tracefs_print_fmt() {
        // From /sys/kernel/tracing/events/skb/kfree_skb/format of that kernel (print fmt:
        // __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" }, …)).
        for (value, name) in [
            (2, "NOT_SPECIFIED"),
            (3, "NO_SOCKET"),
            (6, "SOCKET_RCVBUFF"),
            (12, "NETFILTER_DROP"),
            (16, "IP_RPFILTER"),
            (54, "IP_OUTNOROUTES"),
            (73, "TC_INGRESS"),
            (88, "IP_INNOROUTES"),
            (127, "RECURSION_LIMIT"),
            (128, "MAX"),
        ] {
            assert_eq!(REASONS.name(value), name, "value {value}");
            assert_eq!(REASONS.subsystem(value), None);
        }
        assert_eq!(REASONS.name(0), "NOT_DROPPED_YET");
        assert_eq!(REASONS.name(1), "CONSUMED");
        // 0..=128: SKB_NOT_DROPPED_YET, SKB_CONSUMED and the 127 reasons of the print fmt.
        assert_eq!(REASONS.len(), 129);
    }

    #[test]
    fn unknown_values() {
        assert_eq!(REASONS.name(129), "UNKNOWN(129)");
        assert_eq!(REASONS.name(0xffff), "UNKNOWN(65535)");
        assert_eq!(REASONS.name(u32::MAX), "UNKNOWN(4294967295)");
        // SKB_DROP_REASON_SUBSYS_MASK is an enumerator but no reason.
        assert_eq!(REASONS.name(0xffff_0000), "UNKNOWN(4294901760)");
        assert_eq!(REASONS.subsystem(u32::MAX), None);
    }

    #[test]
    fn subsystem_values_without_their_enum() {
        // 6.18 has skb_drop_reason_subsys {CORE, MAC80211_UNUSABLE, OPENVSWITCH, NUM} but the
        // subsystem enums live in module BTF that vmlinux does not include.
        let ovs = (2 << SKB_DROP_REASON_SUBSYS_SHIFT) | 1;
        assert_eq!(REASONS.name(ovs), "UNKNOWN(131073)");
        assert_eq!(REASONS.subsystem(ovs), Some("OPENVSWITCH"));
        assert_eq!(REASONS.subsystem(1 << 16), Some("MAC80211_UNUSABLE"));
        // NUM and beyond are no subsystems.
        assert_eq!(REASONS.subsystem(3 << 16), None);
        assert_eq!(REASONS.name(3 << 16), "UNKNOWN(196608)");
    }

    #[test]
    fn kernel_offsets_of_618() {
        // Checked against gcc's offsetof on `bpftool btf dump file … format c` of the same BTF,
        // and by hand against `bpftool btf dump file … format raw` (bits_offset / 8).
        let offsets = kernel_offsets(&BTF).expect("offsets");
        assert_eq!(
            offsets,
            KernelOffsets {
                skb_head: 192,
                skb_network_header: 180,
                skb_len: 112,
                skb_dev: 16,
                skb_protocol: 176,
                skb_sk: 24,
                dev_ifindex: 224,
                dev_nd_net: 264,
                sk_net: 48,
                net_inum: 176,
                valid: 1,
                _pad: 0,
            }
        );
    }

    #[test]
    fn file_and_bytes_constructors() {
        let bytes = fs::read(VMLINUX_618).expect("read testdata");
        let from_bytes = DropReasons::from_btf_bytes(&bytes).expect("from bytes");
        assert_eq!(from_bytes.name(12), "NETFILTER_DROP");
        let from_file = DropReasons::from_btf_file(VMLINUX_618).expect("from file");
        assert_eq!(from_file.name(16), "IP_RPFILTER");
        assert!(matches!(
            DropReasons::from_btf_file("/nonexistent/vmlinux"),
            Err(Error::Io { .. })
        ));
    }

    #[test]
    fn truncated_and_garbage_btf_is_an_error() {
        let bytes = fs::read(VMLINUX_618).expect("read testdata");
        for len in [0, 1, 4, 23, 24, 25, 1000, bytes.len() / 2, bytes.len() - 1] {
            let cut = bytes.get(..len).expect("prefix");
            assert!(
                DropReasons::from_btf_bytes(cut).is_err(),
                "truncated to {len}"
            );
        }
        let garbage: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert!(DropReasons::from_btf_bytes(&garbage).is_err());
        // A valid header promising more than there is.
        let mut header = BtfBuilder::new().build();
        header
            .get_mut(16..20)
            .expect("str_off")
            .copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(DropReasons::from_btf_bytes(&header).is_err());
        // Valid but empty BTF: the enum is missing.
        let empty = BtfBuilder::new().build();
        let err = DropReasons::from_btf_bytes(&empty).expect_err("no enum");
        assert!(err.to_string().contains("skb_drop_reason"), "{err}");
        let err = kernel_offsets(&parse_btf(&empty).expect("empty BTF")).expect_err("no struct");
        assert!(
            matches!(&err, Error::MissingType { name, .. } if name == "sk_buff"),
            "{err}"
        );
    }

    #[test]
    fn subsystem_reasons_resolve_when_the_enum_is_there() {
        let mut b = BtfBuilder::new();
        b.enumeration(
            "skb_drop_reason",
            &[
                ("SKB_NOT_DROPPED_YET", 0),
                ("SKB_CONSUMED", 1),
                ("SKB_DROP_REASON_NOT_SPECIFIED", 2),
                ("SKB_DROP_REASON_NO_SOCKET", 3),
                ("SKB_DROP_REASON_SUBSYS_MASK", 0xffff_0000),
            ],
        );
        b.enumeration(
            "skb_drop_reason_subsys",
            &[
                ("SKB_DROP_REASON_SUBSYS_CORE", 0),
                ("SKB_DROP_REASON_SUBSYS_MAC80211_UNUSABLE", 1),
                ("SKB_DROP_REASON_SUBSYS_MAC80211_MONITOR", 2),
                ("SKB_DROP_REASON_SUBSYS_OPENVSWITCH", 3),
                ("SKB_DROP_REASON_SUBSYS_NUM", 4),
            ],
        );
        b.enumeration(
            "ovs_drop_reason",
            &[
                ("__OVS_DROP_REASON", 3 << 16),
                ("OVS_DROP_LAST_ACTION", (3 << 16) + 1),
                ("OVS_DROP_ACTION_ERROR", (3 << 16) + 2),
                ("OVS_DROP_MAX", (3 << 16) + 3),
            ],
        );
        b.enumeration(
            "mac80211_drop_reason",
            &[
                ("RX_CONTINUE", 1),
                ("RX_QUEUED", 0),
                ("RX_DROP_MONITOR", 2 << 16),
                ("RX_DROP_UNUSABLE", 1 << 16),
                ("RX_DROP_M_UNEXPECTED_4ADDR_FRAME", (2 << 16) + 1),
                ("RX_DROP_U_MIC_FAIL", (1 << 16) + 1),
            ],
        );
        let reasons = DropReasons::from_btf_bytes(&b.build()).expect("synthetic BTF");
        assert_eq!(reasons.name(2), "NOT_SPECIFIED");
        assert_eq!(
            reasons.name(1),
            "CONSUMED",
            "RX_CONTINUE must not shadow a core reason"
        );
        assert_eq!(reasons.name((3 << 16) + 1), "OVS_DROP_LAST_ACTION");
        assert_eq!(reasons.subsystem((3 << 16) + 1), Some("OPENVSWITCH"));
        assert_eq!(reasons.name(3 << 16), "UNKNOWN(196608)", "marker skipped");
        assert_eq!(reasons.name((3 << 16) + 9), "UNKNOWN(196617)");
        assert_eq!(reasons.name((1 << 16) + 1), "RX_DROP_U_MIC_FAIL");
        assert_eq!(reasons.name(1 << 16), "RX_DROP_UNUSABLE");
        assert_eq!(reasons.subsystem(1 << 16), Some("MAC80211_UNUSABLE"));
        assert_eq!(
            reasons.name((2 << 16) + 1),
            "RX_DROP_M_UNEXPECTED_4ADDR_FRAME"
        );
        assert_eq!(reasons.subsystem(2 << 16), Some("MAC80211_MONITOR"));
        assert_eq!(reasons.name(4 << 16), "UNKNOWN(262144)");
        assert_eq!(reasons.subsystem(4 << 16), None);
    }

    #[test]
    fn pre_subsystem_kernels_name_core_reasons() {
        let mut b = BtfBuilder::new();
        b.enumeration(
            "skb_drop_reason",
            &[
                ("SKB_DROP_REASON_NOT_SPECIFIED", 2),
                ("SKB_DROP_REASON_MAX", 3),
            ],
        );
        let reasons = DropReasons::from_btf_bytes(&b.build()).expect("synthetic BTF");
        assert_eq!(reasons.name(2), "NOT_SPECIFIED");
        assert_eq!(reasons.name(0x2_0001), "UNKNOWN(131073)");
        assert_eq!(reasons.subsystem(0x2_0001), None);
    }

    /// A minimal kernel layout: `sk_buff` with `dev` two anonymous levels deep, typedefs,
    /// `possible_net_t`, and knobs to break it.
    fn layout(skb_len_bits: Option<u32>, ifindex_size: u32, with_nd_net: bool) -> Vec<u8> {
        let mut b = BtfBuilder::new();
        let u8_ = b.int("unsigned char", 1);
        let u16_ = b.int("unsigned short", 2);
        let u32_ = b.int("unsigned int", 4);
        let ifindex_ty = b.int("int", ifindex_size);
        let be16 = b.typedef("__be16", u16_);
        let dev_ptr_target = b.fwd("net_device_fwd");
        let dev_ptr = b.ptr(dev_ptr_target);
        let void_ptr = b.ptr(0);
        let const_u32 = b.konst(u32_);
        let dev_union = b.compound(
            false,
            "",
            8,
            &[("dev", dev_ptr, 0), ("dev_scratch", void_ptr, 0)],
        );
        let inner = b.compound(
            true,
            "",
            24,
            &[
                ("next", void_ptr, 0),
                ("prev", void_ptr, 64),
                ("", dev_union, 128),
            ],
        );
        let outer = b.compound(false, "", 24, &[("", inner, 0), ("list", void_ptr, 0)]);
        let mut skb = vec![
            ("", outer, 0),
            ("sk", void_ptr, 192),
            ("network_header", u16_, 256),
            ("protocol", be16, 272),
            ("head", void_ptr, 320),
        ];
        if let Some(bits) = skb_len_bits {
            skb.push(("len", const_u32, bits));
        }
        b.compound(true, "sk_buff", 64, &skb);
        let net_ptr = b.ptr(0);
        let possible = b.compound(true, "", 8, &[("net", net_ptr, 0)]);
        let possible_net_t = b.typedef("possible_net_t", possible);
        let mut dev = vec![("flags", u8_, 0), ("ifindex", ifindex_ty, 32)];
        if with_nd_net {
            dev.push(("nd_net", possible_net_t, 128));
        }
        b.compound(true, "net_device", 32, &dev);
        let common = b.compound(
            true,
            "sock_common",
            16,
            &[("skc_hash", u32_, 0), ("skc_net", possible_net_t, 64)],
        );
        b.compound(true, "sock", 32, &[("__sk_common", common, 0)]);
        let ns = b.compound(
            true,
            "ns_common",
            8,
            &[("stashed", u32_, 0), ("inum", u32_, 32)],
        );
        b.compound(true, "net", 64, &[("passive", u32_, 0), ("ns", ns, 128)]);
        b.build()
    }

    #[test]
    fn offsets_walk_anonymous_members_and_typedefs() {
        let btf = parse_btf(&layout(Some(352), 4, true)).expect("synthetic BTF");
        assert_eq!(
            kernel_offsets(&btf).expect("offsets"),
            KernelOffsets {
                skb_head: 40,
                skb_network_header: 32,
                skb_len: 44,
                skb_dev: 16,
                skb_protocol: 34,
                skb_sk: 24,
                dev_ifindex: 4,
                dev_nd_net: 16,
                sk_net: 8,
                net_inum: 20,
                valid: 1,
                _pad: 0,
            }
        );
    }

    #[test]
    fn offset_errors_name_struct_and_field() {
        let btf = parse_btf(&layout(None, 4, true)).expect("synthetic BTF");
        let err = kernel_offsets(&btf).expect_err("no len");
        assert!(
            matches!(&err, Error::MissingField { strukt, field } if strukt == "sk_buff" && field == "len"),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "BTF: struct `sk_buff` has no field `len`");

        let btf = parse_btf(&layout(Some(356), 4, true)).expect("synthetic BTF");
        let err = kernel_offsets(&btf).expect_err("misaligned len");
        assert!(
            matches!(&err, Error::NotByteAligned { field, .. } if field == "len"),
            "{err:?}"
        );

        let btf = parse_btf(&layout(Some(352), 8, true)).expect("synthetic BTF");
        let err = kernel_offsets(&btf).expect_err("8-byte ifindex");
        assert!(
            matches!(&err, Error::UnexpectedFieldType { strukt, field, .. } if strukt == "net_device" && field == "ifindex"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "BTF: field `net_device.ifindex` is a 8-byte integer, expected a 4-byte integer"
        );

        let btf = parse_btf(&layout(Some(352), 4, false)).expect("synthetic BTF");
        let err = kernel_offsets(&btf).expect_err("no nd_net");
        assert!(
            matches!(&err, Error::MissingField { strukt, field } if strukt == "net_device" && field == "nd_net"),
            "{err:?}"
        );
    }

    #[test]
    fn self_referencing_types_do_not_hang() {
        // An anonymous struct whose only member is itself, and a typedef cycle.
        let mut b = BtfBuilder::new();
        let anon_id = b.next_id();
        b.compound(true, "", 8, &[("", anon_id, 0)]);
        let td_id = b.next_id();
        b.typedef("loop", td_id);
        b.compound(true, "sk_buff", 8, &[("", anon_id, 0), ("head", td_id, 0)]);
        let btf = parse_btf(&b.build()).expect("synthetic BTF");
        let err = kernel_offsets(&btf).expect_err("cycle");
        assert!(matches!(err, Error::TooDeep { .. }), "{err:?}");
        let err = field_offset(&btf, "sk_buff", &["nothere"], Expect::Ptr).expect_err("cycle");
        assert!(matches!(err, Error::TooDeep { .. }), "{err:?}");
    }

    #[test]
    fn live_kernel_matches_tracefs() {
        // Only where the running kernel's BTF and the tracepoint format are readable (root).
        let Ok(format) = fs::read_to_string("/sys/kernel/tracing/events/skb/kfree_skb/format")
        else {
            return;
        };
        let Ok(reasons) = DropReasons::from_vmlinux() else {
            return;
        };
        let mut checked = 0;
        // `{ 2, "NOT_SPECIFIED" }` entries of the print fmt.
        for entry in format.split('{').skip(1) {
            let Some((value, rest)) = entry.split_once(',') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<u32>() else {
                continue;
            };
            let Some(name) = rest.split('"').nth(1) else {
                continue;
            };
            assert_eq!(reasons.name(value), name, "value {value}");
            checked += 1;
        }
        assert!(checked > 50, "parsed only {checked} print fmt entries");
        let live = load_vmlinux().expect("vmlinux");
        kernel_offsets(&live).expect("offsets of the running kernel");
    }

    /// Writes little-endian BTF with types numbered from 1 in the order they are added.
    struct BtfBuilder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next: u32,
    }

    impl BtfBuilder {
        fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
                next: 1,
            }
        }

        fn next_id(&self) -> u32 {
            self.next
        }

        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let offset = u32::try_from(self.strings.len()).expect("small");
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            offset
        }

        fn u32s(&mut self, values: &[u32]) {
            for v in values {
                self.types.extend_from_slice(&v.to_le_bytes());
            }
        }

        fn head(
            &mut self,
            name: &str,
            kind: u32,
            vlen: usize,
            kind_flag: bool,
            size_or_type: u32,
        ) -> u32 {
            let name = self.string(name);
            let info =
                (u32::from(kind_flag) << 31) | (kind << 24) | u32::try_from(vlen).expect("vlen");
            self.u32s(&[name, info, size_or_type]);
            self.next += 1;
            self.next - 1
        }

        fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.head(name, 1, 0, false, size);
            self.u32s(&[size * 8]);
            id
        }

        fn ptr(&mut self, target: u32) -> u32 {
            self.head("", 2, 0, false, target)
        }

        fn fwd(&mut self, name: &str) -> u32 {
            self.head(name, 7, 0, false, 0)
        }

        fn typedef(&mut self, name: &str, target: u32) -> u32 {
            self.head(name, 8, 0, false, target)
        }

        fn konst(&mut self, target: u32) -> u32 {
            self.head("", 10, 0, false, target)
        }

        fn enumeration(&mut self, name: &str, members: &[(&str, u32)]) -> u32 {
            let id = self.head(name, 6, members.len(), false, 4);
            for (name, value) in members {
                let name = self.string(name);
                self.u32s(&[name, *value]);
            }
            id
        }

        /// A struct (or union), members as (name, type id, bit offset).
        fn compound(
            &mut self,
            is_struct: bool,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let id = self.head(
                name,
                if is_struct { 4 } else { 5 },
                members.len(),
                false,
                size,
            );
            for (name, ty, bits) in members {
                let name = self.string(name);
                self.u32s(&[name, *ty, *bits]);
            }
            id
        }

        fn build(&self) -> Vec<u8> {
            let type_len = u32::try_from(self.types.len()).expect("small");
            let str_len = u32::try_from(self.strings.len()).expect("small");
            let mut out = Vec::new();
            out.extend_from_slice(&0xeb9f_u16.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            for v in [24, 0, type_len, type_len, str_len] {
                out.extend_from_slice(&u32::to_le_bytes(v));
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }
}
