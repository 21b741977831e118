//! Kernel function names for kernel addresses (the `location` of a drop), from `/proc/kallsyms`.
//!
//! Only text symbols (types `t`, `T`, `w`, `W`) are kept, sorted by address in one vector with
//! the names in one string: about 16 bytes per symbol plus the names (a few MiB for a full
//! kernel), and a binary search per lookup.

use std::{fmt, fs};

use super::Error;

/// Where the kernel lists its symbols.
pub const KALLSYMS: &str = "/proc/kallsyms";

/// Largest offset from a symbol still attributed to it. kallsyms has no symbol sizes, so an
/// address past the end of the last function before a gap (e.g. `_etext`, or the last symbol of
/// all) would otherwise get a meaningless `name+0x3ca086f0`. Kernel functions are far smaller
/// (the largest in a 6.18 x86-64 kernel spans about 20 KiB up to the next symbol).
pub const MAX_SYMBOL_OFFSET: u64 = 0x4_0000;

/// [`Sym::module`] of a symbol of the kernel image itself.
const NO_MODULE: u16 = u16::MAX;

/// One text symbol.
#[derive(Clone, Copy, Debug)]
struct Sym {
    /// Its address.
    addr: u64,
    /// Start of its name in [`Ksyms::names`].
    name_start: u32,
    /// Length of its name.
    name_len: u16,
    /// Index of its module in [`Ksyms::modules`], or [`NO_MODULE`].
    module: u16,
}

/// Kernel text symbols, sorted by address, for [`Ksyms::symbolize`].
#[derive(Clone, Default)]
pub struct Ksyms {
    /// Sorted by address, one symbol per address.
    syms: Vec<Sym>,
    /// All names, back to back.
    names: String,
    /// Module names (without brackets).
    modules: Vec<String>,
    /// Whether the input listed symbols whose addresses were all hidden (zero).
    hidden: bool,
}

impl fmt::Debug for Ksyms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ksyms")
            .field("symbols", &self.syms.len())
            .field("modules", &self.modules.len())
            .field("addresses_hidden", &self.hidden)
            .finish()
    }
}

impl Ksyms {
    /// Reads and parses [`KALLSYMS`]. Succeeds also when the kernel hides the addresses
    /// (`kptr_restrict`, or not running as root): check [`Ksyms::is_usable`].
    pub fn load() -> Result<Self, Error> {
        let text = fs::read_to_string(KALLSYMS).map_err(|source| Error::Io {
            path: KALLSYMS.into(),
            source,
        })?;
        Ok(Self::parse(&text))
    }

    /// Parses kallsyms text: lines `<hex address> <type> <name>[\t[<module>]]`. Lines that do
    /// not have this shape are skipped, as are symbols other than text ones and symbols at
    /// address 0.
    pub fn parse(text: &str) -> Self {
        let mut ksyms = Ksyms::default();
        let mut seen_zero = false;
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let module = match (fields.next(), fields.next()) {
                (None, _) => None,
                (Some(module), None) => {
                    match module.strip_prefix('[').and_then(|m| m.strip_suffix(']')) {
                        Some(module) if !module.is_empty() => Some(module),
                        _ => continue,
                    }
                }
                (Some(_), Some(_)) => continue,
            };
            if !matches!(kind, "t" | "T" | "w" | "W") {
                continue;
            }
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            if addr == 0 {
                seen_zero = true;
                continue;
            }
            ksyms.push(addr, name, module);
        }
        ksyms.hidden = seen_zero && ksyms.syms.is_empty();
        // Stable: of several names at one address, the first listed is kept, except that a name
        // not starting with '_' (`ip_rcv`) wins over aliases and markers (`__pfx_…`, `_stext`).
        ksyms.syms.sort_by_key(|sym| sym.addr);
        let names = &ksyms.names;
        let rank = |sym: &Sym| {
            name_of(names, sym)
                .map(|name| name.starts_with('_'))
                .unwrap_or(true)
        };
        let mut deduped: Vec<Sym> = Vec::with_capacity(ksyms.syms.len());
        for sym in ksyms.syms.iter().copied() {
            match deduped.last_mut() {
                Some(last) if last.addr == sym.addr => {
                    if rank(last) && !rank(&sym) {
                        *last = sym;
                    }
                }
                _ => deduped.push(sym),
            }
        }
        ksyms.syms = deduped;
        ksyms
    }

    /// Adds a symbol; names and module tables that would overflow their index types are
    /// skipped (real kernels are orders of magnitude below).
    fn push(&mut self, addr: u64, name: &str, module: Option<&str>) {
        let (Ok(name_start), Ok(name_len)) =
            (u32::try_from(self.names.len()), u16::try_from(name.len()))
        else {
            return;
        };
        if name_start.checked_add(u32::from(name_len)).is_none() {
            return;
        }
        let module = match module {
            None => NO_MODULE,
            Some(module) => match self.modules.iter().rposition(|m| m == module) {
                Some(index) => u16::try_from(index).unwrap_or(NO_MODULE),
                None => match u16::try_from(self.modules.len()) {
                    Ok(index) if index != NO_MODULE => {
                        self.modules.push(module.to_string());
                        index
                    }
                    _ => return,
                },
            },
        };
        self.names.push_str(name);
        self.syms.push(Sym {
            addr,
            name_start,
            name_len,
            module,
        });
    }

    /// Whether addresses can be symbolized: false when the kernel hid all addresses (they read
    /// as 0 under `kptr_restrict` or without `CAP_SYSLOG`) or no text symbol was found.
    pub fn is_usable(&self) -> bool {
        !self.syms.is_empty()
    }

    #[cfg(test)]
    /// Whether the kernel listed symbols but hid their addresses (all zero), e.g. because of
    /// `kernel.kptr_restrict` or missing `CAP_SYSLOG`.
    pub fn addresses_hidden(&self) -> bool {
        self.hidden
    }

    #[cfg(test)]
    /// Number of symbols kept.
    pub fn len(&self) -> usize {
        self.syms.len()
    }

    #[cfg(test)]
    /// Whether no symbol was kept.
    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// `name+0x<offset>` (hex; `+0x0` at the symbol itself) of the symbol at or below `addr`,
    /// with ` [module]` appended for module symbols; `0x<addr>` when there is none, when the
    /// offset exceeds [`MAX_SYMBOL_OFFSET`], or when the table is not [usable](Self::is_usable).
    pub fn symbolize(&self, addr: u64) -> String {
        match self.lookup(addr) {
            Some((name, offset, None)) => format!("{name}+{offset:#x}"),
            Some((name, offset, Some(module))) => format!("{name}+{offset:#x} [{module}]"),
            None => format!("{addr:#x}"),
        }
    }

    /// The symbol at or below `addr`: its name, the offset of `addr` from it and its module.
    pub fn lookup(&self, addr: u64) -> Option<(&str, u64, Option<&str>)> {
        let index = self.syms.partition_point(|sym| sym.addr <= addr);
        let sym = self.syms.get(index.checked_sub(1)?)?;
        let offset = addr.checked_sub(sym.addr)?;
        if offset > MAX_SYMBOL_OFFSET {
            return None;
        }
        let name = name_of(&self.names, sym)?;
        let module = match sym.module {
            NO_MODULE => None,
            index => Some(self.modules.get(usize::from(index))?.as_str()),
        };
        Some((name, offset, module))
    }
}

/// The name of `sym` in `names`.
fn name_of<'a>(names: &'a str, sym: &Sym) -> Option<&'a str> {
    let start = usize::try_from(sym.name_start).ok()?;
    names.get(start..start.checked_add(usize::from(sym.name_len))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real lines of a 6.18 x86-64 `/proc/kallsyms`: its first 5 lines, lines around
    /// sk_skb_reason_drop, nft_do_chain, ip_rcv_finish and udp_queue_rcv_one_skb, and its last
    /// line (the only module-style symbol of that monolithic kernel).
    const EXCERPT: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/kallsyms-excerpt.txt"
    ));

    #[test]
    fn symbolize_excerpt() {
        let ksyms = Ksyms::parse(EXCERPT);
        assert!(ksyms.is_usable());
        assert!(!ksyms.addresses_hidden());
        // 310 lines, all text symbols; 4 names share the first address.
        assert_eq!(ksyms.len(), 307);

        // Exact and inside.
        assert_eq!(ksyms.symbolize(0xffffffff81f653d0), "nft_do_chain+0x0");
        assert_eq!(ksyms.symbolize(0xffffffff81f65432), "nft_do_chain+0x62");
        assert_eq!(ksyms.symbolize(0xffffffff81f659df), "nft_do_chain+0x60f");
        assert_eq!(
            ksyms.symbolize(0xffffffff81f659e0),
            "__pfx_nf_tables_core_module_exit+0x0"
        );
        assert_eq!(ksyms.symbolize(0xffffffff81ff8b5d), "ip_rcv_finish+0x3d");
        assert_eq!(
            ksyms.symbolize(0xffffffff82047700),
            "udp_queue_rcv_one_skb+0x90"
        );
        assert_eq!(
            ksyms.symbolize(0xffffffff81e44f41),
            "sk_skb_reason_drop+0x1"
        );
        // Of the names at one address, the first one not starting with '_'.
        assert_eq!(
            ksyms.symbolize(0xffffffff81000000),
            "srso_alias_untrain_ret+0x0"
        );
        assert_eq!(
            ksyms.symbolize(0xffffffff81000011),
            "__entry_text_start+0x1"
        );

        // Below the first symbol, and zero.
        assert_eq!(ksyms.symbolize(0xffffffff80ffffff), "0xffffffff80ffffff");
        assert_eq!(ksyms.symbolize(0), "0x0");
        // In a gap larger than MAX_SYMBOL_OFFSET (the excerpt skips most of the kernel).
        assert_eq!(ksyms.symbolize(0xffffffff81800000), "0xffffffff81800000");

        // Module symbol, and above the last symbol: near it, then far from it.
        assert_eq!(
            ksyms.symbolize(0xffffffffc0201010),
            "ftrace_trampoline+0x10 [__builtin__ftrace]"
        );
        assert_eq!(
            ksyms.lookup(0xffffffffc0201010),
            Some(("ftrace_trampoline", 0x10, Some("__builtin__ftrace")))
        );
        assert_eq!(ksyms.symbolize(u64::MAX), "0xffffffffffffffff");
    }

    #[test]
    fn modules_and_unsorted_input() {
        let ksyms = Ksyms::parse(
            "ffffffffc1000100 t nft_meta_get_eval\t[nft_meta]\n\
             ffffffffc0a00000 T ovs_vport_receive\t[openvswitch]\n\
             ffffffffc0a00400 t ovs_dp_process_packet\t[openvswitch]\n\
             ffffffff81000100 T ip_rcv\n\
             ffffffffc0a00800 W weak_one\t[openvswitch]\n",
        );
        assert_eq!(ksyms.len(), 5);
        assert_eq!(ksyms.symbolize(0xffffffff81000120), "ip_rcv+0x20");
        assert_eq!(
            ksyms.symbolize(0xffffffffc0a00410),
            "ovs_dp_process_packet+0x10 [openvswitch]"
        );
        assert_eq!(
            ksyms.symbolize(0xffffffffc0a00800),
            "weak_one+0x0 [openvswitch]"
        );
        assert_eq!(
            ksyms.symbolize(0xffffffffc1000101),
            "nft_meta_get_eval+0x1 [nft_meta]"
        );
    }

    #[test]
    fn garbage_lines_are_skipped() {
        let ksyms = Ksyms::parse(
            "\n\
             garbage\n\
             ffffffff81000000\n\
             ffffffff81000000 T\n\
             zzzzffff81000000 T not_hex\n\
             1ffffffff81000000 T too_wide\n\
             ffffffff81000000 D data_symbol\n\
             ffffffff81000000 b bss_symbol\n\
             ffffffff81000000 TT two_letter_type\n\
             ffffffff81000000 T extra tokens here\n\
             ffffffff81000000 T bad_module\tnot_bracketed\n\
             ffffffff81000000 T empty_module\t[]\n\
             ffffffff81001000 T good_one\n\
             \u{fffd}\u{0} T \u{1}\n",
        );
        assert_eq!(ksyms.len(), 1);
        assert_eq!(ksyms.symbolize(0xffffffff81001004), "good_one+0x4");
        assert_eq!(ksyms.symbolize(0xffffffff81000000), "0xffffffff81000000");
    }

    #[test]
    fn empty_and_hidden() {
        let empty = Ksyms::parse("");
        assert!(!empty.is_usable());
        assert!(!empty.addresses_hidden());
        assert!(empty.is_empty());
        assert_eq!(empty.symbolize(0xffffffff81f653d0), "0xffffffff81f653d0");
        assert_eq!(empty.lookup(0xffffffff81f653d0), None);

        // What an unprivileged reader gets under kptr_restrict.
        let hidden: String = EXCERPT
            .lines()
            .map(|line| format!("0000000000000000{}\n", line.get(16..).unwrap_or_default()))
            .collect();
        let ksyms = Ksyms::parse(&hidden);
        assert!(!ksyms.is_usable());
        assert!(ksyms.addresses_hidden());
        assert_eq!(ksyms.symbolize(0xffffffff81f653d0), "0xffffffff81f653d0");
        assert_eq!(ksyms.symbolize(0), "0x0");
    }

    #[test]
    fn live_kallsyms() {
        // Wherever /proc/kallsyms is readable; addresses may be hidden.
        let Ok(ksyms) = Ksyms::load() else {
            return;
        };
        if !ksyms.is_usable() {
            return;
        }
        let Some(addr) = ksyms
            .syms
            .iter()
            .find(|sym| name_of(&ksyms.names, sym) == Some("ip_rcv"))
            .map(|sym| sym.addr)
        else {
            return;
        };
        assert_eq!(ksyms.symbolize(addr + 4), "ip_rcv+0x4");
    }
}
