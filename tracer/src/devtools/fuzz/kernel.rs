//! The kernel facts readers: `/proc/kallsyms` text ([`Ksyms::parse`], checked against a model
//! of its documented rules, on generated lines and on mutations of the checked-in excerpt), and
//! BTF ([`btf::kernel_offsets`], [`btf::DropReasons`]) on small BTF blobs built here with random
//! layouts (whose offsets and names must come back), on mutations of those, and on mutations of
//! the checked-in `vmlinux-6.18.btf`.

use std::{collections::BTreeMap, sync::LazyLock};

use btf_rs::Btf;
use proptest::{collection::vec, prelude::*, test_runner::TestCaseError};
use tracer_common::KernelOffsets;

use super::{any_text, check, target};
use crate::capture::kernel::{
    btf::{self, DropReasons},
    ksyms::{Ksyms, MAX_SYMBOL_OFFSET},
};

const EXCERPT: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/testdata/kallsyms-excerpt.txt"
));

/// The documented rules of [`Ksyms::parse`], written out simply: address → (name, module) of
/// the symbol kept there, and whether text symbols with hidden (zero) addresses were seen.
fn model(text: &str) -> (BTreeMap<u64, (String, Option<String>)>, bool) {
    let mut kept: BTreeMap<u64, (String, Option<String>)> = BTreeMap::new();
    let mut zero = false;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let module = match f.len() {
            3 => None,
            4 => match f[3].strip_prefix('[').and_then(|m| m.strip_suffix(']')) {
                Some(m) if !m.is_empty() => Some(m.to_owned()),
                _ => continue,
            },
            _ => continue,
        };
        if !matches!(f[1], "t" | "T" | "w" | "W") {
            continue;
        }
        let Ok(addr) = u64::from_str_radix(f[0], 16) else {
            continue;
        };
        if addr == 0 {
            zero = true;
            continue;
        }
        let name = f[2].to_owned();
        match kept.get(&addr) {
            // The first name listed, unless it starts with '_' and a later one does not.
            Some((old, _)) if !(old.starts_with('_') && !name.starts_with('_')) => {}
            _ => {
                kept.insert(addr, (name, module));
            }
        }
    }
    let hidden = zero && kept.is_empty();
    (kept, hidden)
}

/// Parses `text` and checks every lookup against the model: each kept address, and `probes`.
fn check_ksyms(text: &str, probes: &[u64]) -> Result<(), TestCaseError> {
    let ksyms = Ksyms::parse(text);
    let (kept, hidden) = model(text);
    prop_assert_eq!(ksyms.len(), kept.len());
    prop_assert_eq!(ksyms.addresses_hidden(), hidden);
    prop_assert_eq!(ksyms.is_usable(), !kept.is_empty());
    let probes = kept
        .keys()
        .flat_map(|a| [*a, a.wrapping_add(1), a.wrapping_sub(1)])
        .chain(probes.iter().copied());
    for addr in probes {
        let want = kept
            .range(..=addr)
            .next_back()
            .and_then(|(at, (name, module))| {
                let off = addr - at;
                (off <= MAX_SYMBOL_OFFSET).then_some((name.as_str(), off, module.as_deref()))
            });
        prop_assert_eq!(ksyms.lookup(addr), want, "lookup {:#x}", addr);
        let s = ksyms.symbolize(addr);
        match want {
            Some((name, off, _)) => {
                prop_assert!(s.starts_with(&format!("{name}+{off:#x}")), "{}", s)
            }
            None => prop_assert_eq!(s, format!("{addr:#x}")),
        }
    }
    Ok(())
}

/// One kallsyms-like line: mostly well-formed, with every field sometimes odd.
fn ksym_line() -> impl Strategy<Value = String> {
    let addr = prop_oneof![
        (0xffff_ffff_8100_0000u64..0xffff_ffff_8100_4000).prop_map(|a| format!("{a:016x}")),
        any::<u64>().prop_map(|a| format!("{a:x}")),
        Just("0000000000000000".to_owned()),
        "[0-9a-fA-Fxz]{0,18}",
    ];
    let ty = prop_oneof![
        prop::sample::select(vec!["t", "T", "w", "W"]),
        prop::sample::select(vec!["d", "D", "b", "r", "TT", "?", ""]),
    ];
    let name = prop_oneof![
        "[a-z][a-z0-9_.]{0,20}",
        "__pfx_[a-z]{1,8}",
        "_[a-z]{1,8}",
        any_text(8)
    ];
    let module = prop_oneof![
        Just(String::new()),
        Just(String::new()),
        "\t\\[[a-z_]{1,10}\\]",
        "\t\\[\\]",
        "\t[a-z]{1,5}",
        " [a-z]{1,3} [a-z]{1,3}",
    ];
    (addr, ty, name, module).prop_map(|(a, t, n, m)| format!("{a} {t} {n}{m}"))
}

target!(
    /// Generated lines (and random ones) agree with the model for every kept address and for
    /// random addresses.
    fuzz_ksyms_lines,
    (
        vec(prop_oneof![4 => ksym_line(), 1 => any_text(40)], 0..40),
        vec(any::<u64>(), 0..8),
    ),
    |(lines, probes): (Vec<String>, Vec<u64>)| check_ksyms(&lines.join("\n"), &probes)
);

/// A few random edits of `base`: bytes replaced, ranges removed or duplicated, a cut.
fn mutated(base: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    let edit = (
        0u8..4,
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        any::<u8>(),
    );
    vec(edit, 1..6).prop_map(move |edits| {
        let mut b = base.to_vec();
        for (op, i, j, byte) in edits {
            if b.is_empty() {
                break;
            }
            let (i, j) = (i.index(b.len()), j.index(b.len()));
            let (lo, hi) = (i.min(j), i.max(j));
            match op {
                0 => b[i] = byte,
                1 => {
                    b.drain(lo..hi.min(lo + 64));
                }
                2 => {
                    let copy: Vec<u8> = b[lo..hi.min(lo + 64)].to_vec();
                    b.splice(i..i, copy);
                }
                _ => b.truncate(i),
            }
        }
        b
    })
}

target!(
    /// The checked-in excerpt with random edits (bytes, removed or repeated ranges, cuts).
    fuzz_ksyms_excerpt_mutations,
    (mutated(EXCERPT.as_bytes()), vec(any::<u64>(), 0..4)),
    |(bytes, probes): (Vec<u8>, Vec<u64>)| {
        check_ksyms(&String::from_utf8_lossy(&bytes), &probes)
    }
);

/// A little BTF writer: enough kinds for the structs and enums the tracer reads.
struct BtfWriter {
    types: Vec<u8>,
    strings: Vec<u8>,
    next_id: u32,
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_CONST: u32 = 10;

impl BtfWriter {
    fn new() -> Self {
        Self {
            types: Vec::new(),
            strings: vec![0],
            next_id: 1,
        }
    }

    fn name(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }

    fn add(&mut self, name: &str, kind: u32, vlen: usize, size_or_type: u32, extra: &[u32]) -> u32 {
        let name = self.name(name);
        for w in [name, (kind << 24) | vlen as u32, size_or_type]
            .iter()
            .chain(extra)
        {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
        self.next_id += 1;
        self.next_id - 1
    }

    fn int(&mut self, name: &str, size: u32) -> u32 {
        self.add(name, KIND_INT, 0, size, &[size * 8])
    }

    fn ptr(&mut self, to: u32) -> u32 {
        self.add("", KIND_PTR, 0, to, &[])
    }

    /// `ty` behind `depth` typedefs / consts.
    fn wrap(&mut self, mut ty: u32, depth: u8) -> u32 {
        for i in 0..depth {
            ty = if i % 2 == 0 {
                self.add("wrapped_t", KIND_TYPEDEF, 0, ty, &[])
            } else {
                self.add("", KIND_CONST, 0, ty, &[])
            };
        }
        ty
    }

    fn record(&mut self, kind: u32, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
        let mut extra = Vec::new();
        for (n, ty, byte_off) in members {
            extra.extend([self.name(n), *ty, byte_off * 8]);
        }
        self.add(name, kind, members.len(), size, &extra)
    }

    fn enumeration(&mut self, name: &str, values: &[(String, u32)]) -> u32 {
        let mut extra = Vec::new();
        for (n, v) in values {
            extra.extend([self.name(n), *v]);
        }
        self.add(name, KIND_ENUM, values.len(), 4, &extra)
    }

    fn finish(self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xeb9fu16.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            self.types.len() as u32,
            self.types.len() as u32,
            self.strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// Field byte offsets of a random kernel layout and drop reasons.
#[derive(Clone, Debug)]
struct Layout {
    /// head, network_header, len, protocol, sk of sk_buff; dev's anonymous union and its
    /// offset inside it.
    skb: [u32; 5],
    skb_dev: (u32, u32),
    /// ifindex, nd_net of net_device; net inside possible_net_t.
    dev: [u32; 2],
    pnet_net: u32,
    /// __sk_common of sock, skc_net of sock_common.
    sk: [u32; 2],
    /// ns of net, inum of ns_common.
    net: [u32; 2],
    /// typedef/const chain depth of each leaf field type.
    wrap: u8,
    reasons: BTreeMap<u32, String>,
}

fn layout() -> impl Strategy<Value = Layout> {
    let off = || 0u32..4096;
    (
        [off(), off(), off(), off(), off()],
        (off(), 0u32..64),
        [off(), off()],
        0u32..16,
        [off(), off()],
        [off(), off()],
        0u8..5,
        prop::collection::btree_map(0u32..0x1_0000, "[A-Z][A-Z0-9_]{0,15}", 0..40),
    )
        .prop_map(
            |(skb, skb_dev, dev, pnet_net, sk, net, wrap, reasons)| Layout {
                skb,
                skb_dev,
                dev,
                pnet_net,
                sk,
                net,
                wrap,
                reasons,
            },
        )
}

impl Layout {
    fn btf(&self) -> Vec<u8> {
        let mut w = BtfWriter::new();
        let u32_t = w.int("unsigned int", 4);
        let u16_t = w.int("short unsigned int", 2);
        let void_p = w.ptr(0);
        let (u32_t, u16_t, void_p) = (
            w.wrap(u32_t, self.wrap),
            w.wrap(u16_t, self.wrap),
            w.wrap(void_p, self.wrap),
        );
        let dev_union = w.record(
            KIND_UNION,
            "",
            128,
            &[("dev", void_p, self.skb_dev.1), ("other", u32_t, 0)],
        );
        let [head, nh, len, proto, sk] = self.skb;
        w.record(
            KIND_STRUCT,
            "sk_buff",
            8192,
            &[
                ("next", void_p, 0),
                ("", dev_union, self.skb_dev.0),
                ("head", void_p, head),
                ("network_header", u16_t, nh),
                ("len", u32_t, len),
                ("protocol", u16_t, proto),
                ("sk", void_p, sk),
            ],
        );
        let pnet = w.record(
            KIND_STRUCT,
            "possible_net_t",
            16,
            &[("net", void_p, self.pnet_net)],
        );
        w.record(
            KIND_STRUCT,
            "net_device",
            8192,
            &[
                ("ifindex", u32_t, self.dev[0]),
                ("nd_net", pnet, self.dev[1]),
            ],
        );
        let common = w.record(
            KIND_STRUCT,
            "sock_common",
            4096,
            &[("skc_net", pnet, self.sk[1])],
        );
        w.record(
            KIND_STRUCT,
            "sock",
            8192,
            &[("__sk_common", common, self.sk[0])],
        );
        let ns = w.record(
            KIND_STRUCT,
            "ns_common",
            4096,
            &[("inum", u32_t, self.net[1])],
        );
        w.record(KIND_STRUCT, "net", 8192, &[("ns", ns, self.net[0])]);
        let mut values: Vec<(String, u32)> = self
            .reasons
            .iter()
            .map(|(v, n)| (format!("SKB_DROP_REASON_{n}"), *v))
            .collect();
        values.push(("SKB_DROP_REASON_SUBSYS_MASK".to_owned(), 0xffff_0000));
        w.enumeration("skb_drop_reason", &values);
        w.finish()
    }

    fn offsets(&self) -> KernelOffsets {
        let [head, nh, len, proto, sk] = self.skb;
        KernelOffsets {
            skb_head: head,
            skb_network_header: nh,
            skb_len: len,
            skb_dev: self.skb_dev.0 + self.skb_dev.1,
            skb_protocol: proto,
            skb_sk: sk,
            dev_ifindex: self.dev[0],
            dev_nd_net: self.dev[1] + self.pnet_net,
            sk_net: self.sk[0] + self.sk[1] + self.pnet_net,
            net_inum: self.net[0] + self.net[1],
            valid: 1,
            _pad: 0,
        }
    }
}

/// Whatever BTF parses, the analyses answer with a value or an error.
fn analyse(bytes: &[u8]) {
    if let Ok(btf) = Btf::from_bytes(bytes) {
        let _ = btf::kernel_offsets(&btf);
        if let Ok(r) = DropReasons::from_btf(&btf) {
            let _ = r.name(12);
        }
    }
}

target!(
    /// BTF built from a random layout gives back its offsets and drop-reason names.
    fuzz_btf_built_layouts,
    layout(),
    |l: Layout| {
        let bytes = l.btf();
        let btf = Btf::from_bytes(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let got = btf::kernel_offsets(&btf).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(got, l.offsets());
        let reasons = DropReasons::from_btf(&btf).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (v, n) in &l.reasons {
            prop_assert_eq!(&reasons.name(*v), n);
        }
        prop_assert_eq!(reasons.name(0xffff_0000), "UNKNOWN(4294901760)");
        Ok(())
    }
);

target!(
    /// The same blobs with random edits: parsed and analysed, or refused, never a panic.
    fuzz_btf_mutated_layouts,
    (layout(), vec((any::<prop::sample::Index>(), any::<u32>(), 0u8..4), 1..6)),
    |(l, edits): (Layout, Vec<(prop::sample::Index, u32, u8)>)| {
        let mut b = l.btf();
        for (at, value, op) in edits {
            if b.is_empty() {
                break;
            }
            let i = at.index(b.len());
            match op {
                // A byte, or a whole (unaligned) word: sizes, counts, type ids, offsets.
                0 => b[i] = value as u8,
                1 => {
                    for (k, byte) in value.to_le_bytes().iter().enumerate() {
                        if let Some(slot) = b.get_mut(i + k) {
                            *slot = *byte;
                        }
                    }
                }
                // A small change of a word (off by a few: lengths that almost fit).
                2 => {
                    let i = i & !3;
                    if let Some(w) = b.get_mut(i..i + 4) {
                        let v = u32::from_le_bytes([w[0], w[1], w[2], w[3]])
                            .wrapping_add(value % 9)
                            .wrapping_sub(4);
                        w.copy_from_slice(&v.to_le_bytes());
                    }
                }
                _ => b.truncate(i),
            }
        }
        analyse(&b);
        Ok(())
    }
);

static VMLINUX: LazyLock<Vec<u8>> = LazyLock::new(|| {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/vmlinux-6.18.btf"
    ))
    .unwrap_or_default()
});

target!(
    /// The real kernel's BTF (5.5 MB) with a few random edits. One case parses the whole
    /// blob, so this target runs a thousandth of the cases (at least 4).
    fuzz_btf_vmlinux_mutations,
    cost = 1000,
    min = 4,
    (vec((any::<prop::sample::Index>(), any::<u32>(), any::<bool>()), 1..4),),
    |(edits,): (Vec<(prop::sample::Index, u32, bool)>,)| {
        let mut b = VMLINUX.clone();
        check(!b.is_empty(), || "testdata/vmlinux-6.18.btf missing".into())?;
        for (at, value, cut) in edits {
            let i = at.index(b.len());
            if cut {
                // Cuts near the end more often than not (within the last string or type).
                let keep = b.len() - (i % 4096).min(b.len());
                b.truncate(keep);
            } else {
                for (k, byte) in value.to_le_bytes().iter().enumerate() {
                    if let Some(slot) = b.get_mut(i + k) {
                        *slot = *byte;
                    }
                }
            }
        }
        analyse(&b);
        Ok(())
    }
);

/// A struct whose anonymous members are the struct itself, twice: C cannot write it, corrupt
/// BTF can. Looking a field up in it must end (with an error) instead of visiting 2^depth
/// members.
#[test]
fn self_nesting_anonymous_members_end_with_an_error() {
    let mut w = BtfWriter::new();
    let u32_t = w.int("unsigned int", 4);
    // Its own id: the next one.
    let me = w.next_id;
    w.record(
        KIND_STRUCT,
        "sk_buff",
        64,
        &[("", me, 0), ("", me, 0), ("", me, 0), ("len", u32_t, 8)],
    );
    let bytes = w.finish();
    let btf = Btf::from_bytes(&bytes).expect("parses");
    let start = std::time::Instant::now();
    let err = btf::kernel_offsets(&btf).expect_err("no usable sk_buff");
    assert!(
        start.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    assert!(err.to_string().contains("sk_buff"), "{err}");
}
