//! Where the tracer's programs spend their kernel time under load, by source line
//! (`cargo xtask bench --load N --profile`).
//!
//! `perf record` samples every CPU on the cpu-clock (a timer: this works in VMs without a
//! hardware PMU) with kernel call chains. Each sample is charged to the innermost frame that
//! lies in one of the tracer's JIT-compiled programs, mapped to a source line through the
//! program's own tables (`bpf_prog_info`: the address of each JIT-compiled function, the JIT
//! address of each line-info record, and the program's BTF for the file names and the source
//! text). A sample taken in a kernel function the program called (a helper, a map operation)
//! is charged to the line of the call and named after that function.

use std::{
    collections::HashMap,
    ffi::CStr,
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use anyhow::{Context, Result, bail};
use aya_obj::generated::{bpf_btf_info, bpf_cmd, bpf_line_info, bpf_prog_info};

/// Sampling frequency (Hz per CPU). A prime, so that sampling does not lock onto periodic work.
pub const HZ: u32 = 4_999;

/// A `perf record` running over a load window.
pub struct Recording {
    child: Child,
    path: PathBuf,
}

/// Starts sampling every CPU for `seconds`.
pub fn start(seconds: u32) -> Result<Recording> {
    let path = std::env::temp_dir().join("tracer-bench-profile.data");
    let child = Command::new("perf")
        .args(["record", "-a", "-g", "-F", &HZ.to_string(), "-o"])
        .arg(&path)
        .args(["--", "sleep", &seconds.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("running perf record (Debian package linux-perf; scripts/setup.sh installs it)")?;
    Ok(Recording { child, path })
}

/// One source line of a program.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Line {
    /// File name (last two components of the path) and line number.
    pub place: String,
    /// The source text, trimmed.
    pub text: String,
}

/// A JIT-compiled function of one of the tracer's programs: where it lies and its line table.
struct Func {
    start: u64,
    end: u64,
    /// JIT address of each line-info record, sorted, with its line.
    lines: Vec<(u64, Line)>,
}

/// The line tables of the tracer's programs loaded now.
#[derive(Default)]
pub struct Programs {
    funcs: Vec<Func>,
}

impl Programs {
    /// Reads the tables of the programs with these ids (they must be loaded).
    pub fn read(ids: &[u32]) -> Result<Self> {
        let mut funcs = Vec::new();
        for &id in ids {
            let fd = fd_by_id(bpf_cmd::BPF_PROG_GET_FD_BY_ID, id)?;
            let t = prog_tables(&fd).with_context(|| format!("program {id}: line tables"))?;
            let strings = btf_strings(t.btf_id).with_context(|| format!("program {id}: BTF"))?;
            for (i, (&start, &len)) in t.ksyms.iter().zip(&t.func_lens).enumerate() {
                let end = start.saturating_add(u64::from(len));
                let mut lines: Vec<(u64, Line)> = t
                    .jited_lines
                    .iter()
                    .zip(&t.lines)
                    .filter(|(addr, _)| (start..end).contains(*addr))
                    .map(|(&addr, li)| {
                        let file = string_at(&strings, li.file_name_off);
                        let mut short: Vec<&str> = file.rsplit('/').take(2).collect();
                        short.reverse();
                        let line = Line {
                            place: format!("{}:{}", short.join("/"), li.line_col >> 10),
                            text: string_at(&strings, li.line_off).trim().to_owned(),
                        };
                        (addr, line)
                    })
                    .collect();
                if lines.is_empty() {
                    bail!("program {id}, function {i}: no line info (built without BTF?)");
                }
                lines.sort_unstable_by_key(|(addr, _)| *addr);
                funcs.push(Func { start, end, lines });
            }
        }
        Ok(Programs { funcs })
    }

    /// The line of JIT address `addr`, if it lies in one of the programs.
    fn line_at(&self, addr: u64) -> Option<&Line> {
        let f = self
            .funcs
            .iter()
            .find(|f| (f.start..f.end).contains(&addr))?;
        let i = f
            .lines
            .partition_point(|(a, _)| *a <= addr)
            .checked_sub(1)?;
        f.lines.get(i).map(|(_, l)| l)
    }
}

/// Samples charged to one source line.
#[derive(Debug, Default)]
pub struct LineCost {
    /// Samples in the line's own instructions.
    pub own: u64,
    /// Samples in kernel functions called from it, by function.
    pub calls: HashMap<String, u64>,
}

/// The profile of one window.
#[derive(Debug, Default)]
pub struct Profile {
    /// Samples per source line of the programs.
    pub lines: HashMap<Line, LineCost>,
    /// All samples of the window (every CPU).
    pub total: u64,
    /// The samples charged to the programs (their own code and what they called).
    pub in_programs: u64,
}

impl Recording {
    /// Waits for `perf record` to end and charges its samples to the lines of `programs`.
    pub fn finish(mut self, programs: &Programs) -> Result<Profile> {
        let status = self.child.wait().context("waiting for perf record")?;
        if !status.success() {
            bail!("perf record failed ({status})");
        }
        let out = Command::new("perf")
            .args(["script", "-F", "ip,sym", "-i"])
            .arg(&self.path)
            .stderr(Stdio::null())
            .output()
            .context("running perf script")?;
        let _ = std::fs::remove_file(&self.path);
        Ok(charge(&String::from_utf8_lossy(&out.stdout), programs))
    }
}

/// Charges the samples of `perf script -F ip,sym` output (one block of frames per sample,
/// innermost first, blocks separated by blank lines) to the programs' lines.
fn charge(script: &str, programs: &Programs) -> Profile {
    let mut p = Profile::default();
    for block in script.split("\n\n") {
        let frames: Vec<(u64, &str)> = block
            .lines()
            .filter_map(|l| {
                let l = l.trim();
                let (ip, sym) = l.split_once(' ').unwrap_or((l, ""));
                Some((u64::from_str_radix(ip, 16).ok()?, sym.trim()))
            })
            .collect();
        let Some(&(_, leaf)) = frames.first() else {
            continue;
        };
        p.total += 1;
        // A sampled address is that of the next instruction to run (the stalled one is
        // before it); a return address is the instruction after the call.
        let Some((depth, line)) = frames
            .iter()
            .enumerate()
            .find_map(|(i, (ip, _))| Some((i, programs.line_at(ip.saturating_sub(1))?)))
        else {
            continue;
        };
        p.in_programs += 1;
        let cost = p.lines.entry(line.clone()).or_default();
        if depth == 0 {
            cost.own += 1;
        } else {
            // Name the function the program called (the frame just inside it).
            let callee = frames
                .get(depth - 1)
                .map_or(leaf, |(_, s)| s)
                .split('+')
                .next()
                .unwrap_or(leaf);
            *cost.calls.entry(callee.to_owned()).or_default() += 1;
        }
    }
    p
}

/// Prints the costliest lines of `profile` as kernel time per completed query.
pub fn print(profile: &Profile, completed: u64, top: usize) {
    let ns_per_sample = 1e9 / f64::from(HZ);
    let per_query = |samples: u64| samples as f64 * ns_per_sample / completed.max(1) as f64;
    println!(
        "kernel time by source line under load (perf cpu-clock at {HZ} Hz on every CPU; {} samples, {} in the tracer's programs and what they call = {:.0} ns per completed query):",
        profile.total,
        profile.in_programs,
        per_query(profile.in_programs)
    );
    let mut rows: Vec<(&Line, &LineCost, u64)> = profile
        .lines
        .iter()
        .map(|(l, c)| (l, c, c.own + c.calls.values().sum::<u64>()))
        .collect();
    rows.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.place.cmp(&b.0.place)));
    println!("  {:>8} {:>6}  {:<28} source", "ns/query", "share", "line");
    for (line, cost, samples) in rows.into_iter().take(top) {
        let mut calls: Vec<_> = cost.calls.iter().collect();
        calls.sort_by(|a, b| b.1.cmp(a.1));
        let called = calls
            .first()
            .map(|(f, n)| format!("  [{:.0} % in {f}]", 100.0 * **n as f64 / samples as f64))
            .unwrap_or_default();
        let text: String = line.text.chars().take(90).collect();
        println!(
            "  {:>8.0} {:>5.1}%  {:<28} {text}{called}",
            per_query(samples),
            100.0 * samples as f64 / profile.in_programs.max(1) as f64,
            line.place
        );
    }
}

/// The tables read from one program.
struct Tables {
    btf_id: u32,
    ksyms: Vec<u64>,
    func_lens: Vec<u32>,
    lines: Vec<bpf_line_info>,
    jited_lines: Vec<u64>,
}

/// `bpf(BPF_OBJ_GET_INFO_BY_FD)` into `info`.
fn info_by_fd<T>(fd: &std::os::fd::OwnedFd, info: &mut T) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
        _rest: [u64; 14],
    }
    let mut attr = InfoAttr {
        bpf_fd: u32::try_from(fd.as_raw_fd()).context("fd")?,
        info_len: u32::try_from(size_of::<T>()).context("info size")?,
        info: (info as *mut T) as u64,
        _rest: [0; 14],
    };
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)
}

/// A file descriptor for the program or BTF object `id` (`cmd`: `BPF_*_GET_FD_BY_ID`).
fn fd_by_id(cmd: bpf_cmd, id: u32) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    #[repr(C)]
    struct IdAttr {
        id: u32,
        _rest: [u32; 31],
    }
    let mut attr = IdAttr { id, _rest: [0; 31] };
    let fd = bpf_ret(cmd, &mut attr)?;
    let fd = i32::try_from(fd).context("fd out of range")?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

fn bpf<A>(cmd: bpf_cmd, attr: &mut A) -> Result<()> {
    bpf_ret(cmd, attr).map(drop)
}

fn bpf_ret<A>(cmd: bpf_cmd, attr: &mut A) -> Result<i64> {
    // SAFETY: bpf(2) with an attribute block of the size given; the kernel reads and writes
    // only within it and within the buffers its pointers name, which the callers size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            size_of::<A>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("bpf({cmd:?})"));
    }
    Ok(r)
}

/// The JIT and line tables of a program.
fn prog_tables(fd: &std::os::fd::OwnedFd) -> Result<Tables> {
    // SAFETY: a plain C struct; all-zero is its "ask for nothing" value.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    info_by_fd(fd, &mut info)?;
    let (nk, nf, nl, njl) = (
        info.nr_jited_ksyms as usize,
        info.nr_jited_func_lens as usize,
        info.nr_line_info as usize,
        info.nr_jited_line_info as usize,
    );
    if nl == 0 || njl != nl {
        bail!("{nl} line-info records, {njl} JIT addresses");
    }
    let mut t = Tables {
        btf_id: info.btf_id,
        ksyms: vec![0; nk],
        func_lens: vec![0; nf],
        // SAFETY: plain C structs, all-zero valid.
        lines: vec![unsafe { std::mem::zeroed() }; nl],
        jited_lines: vec![0; njl],
    };
    // SAFETY: as above.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    info.nr_jited_ksyms = nk as u32;
    info.jited_ksyms = t.ksyms.as_mut_ptr() as u64;
    info.nr_jited_func_lens = nf as u32;
    info.jited_func_lens = t.func_lens.as_mut_ptr() as u64;
    info.nr_line_info = nl as u32;
    info.line_info_rec_size = size_of::<bpf_line_info>() as u32;
    info.line_info = t.lines.as_mut_ptr() as u64;
    info.nr_jited_line_info = njl as u32;
    info.jited_line_info_rec_size = size_of::<u64>() as u32;
    info.jited_line_info = t.jited_lines.as_mut_ptr() as u64;
    info_by_fd(fd, &mut info)?;
    if info.nr_jited_ksyms as usize != nk || info.nr_line_info as usize != nl {
        bail!("the program changed between two reads");
    }
    Ok(t)
}

/// The string section of BTF object `id`.
fn btf_strings(id: u32) -> Result<Vec<u8>> {
    let fd = fd_by_id(bpf_cmd::BPF_BTF_GET_FD_BY_ID, id)?;
    // SAFETY: plain C struct, all-zero valid.
    let mut info: bpf_btf_info = unsafe { std::mem::zeroed() };
    info_by_fd(&fd, &mut info)?;
    let mut raw = vec![0u8; info.btf_size as usize];
    // SAFETY: as above.
    let mut info: bpf_btf_info = unsafe { std::mem::zeroed() };
    info.btf = raw.as_mut_ptr() as u64;
    info.btf_size = u32::try_from(raw.len()).context("BTF size")?;
    info_by_fd(&fd, &mut info)?;
    // Header: magic u16, version u8, flags u8, hdr_len, type_off, type_len, str_off, str_len.
    let u32_at = |o: usize| {
        raw.get(o..o + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let (Some(hdr_len), Some(str_off), Some(str_len)) = (u32_at(4), u32_at(16), u32_at(20)) else {
        bail!("BTF shorter than its header");
    };
    let start = hdr_len as usize + str_off as usize;
    raw.get(start..start + str_len as usize)
        .map(<[u8]>::to_vec)
        .context("BTF string section out of bounds")
}

/// The NUL-terminated string at `off` of a BTF string section ("" when out of bounds).
fn string_at(strings: &[u8], off: u32) -> String {
    strings
        .get(off as usize..)
        .and_then(|s| CStr::from_bytes_until_nul(s).ok())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn programs() -> Programs {
        let line = |place: &str, text: &str| Line {
            place: place.into(),
            text: text.into(),
        };
        Programs {
            funcs: vec![Func {
                start: 0x1000,
                end: 0x1100,
                lines: vec![
                    (0x1000, line("src/a.rs:1", "let a = 1;")),
                    (0x1040, line("src/a.rs:2", "f(a)")),
                ],
            }],
        }
    }

    /// Samples in the program's own code go to the line of the instruction before the sampled
    /// address; samples in a function it called go to the calling line, named after the
    /// callee; samples elsewhere only count in the total.
    #[test]
    fn samples_are_charged_to_the_line_and_the_callee() {
        let script = "\n\tffffffff81000010 idle+0x10\n\n\
                      \n\t1041 bpf_prog_x_tc+0x41\n\tffffffff81000020 netif+0x5\n\n\
                      \n\t1040 bpf_prog_x_tc+0x40\n\n\
                      \n\tffffffff81000030 memcpy+0x3\n\tffffffff81000040 bpf_skb_load_bytes+0x3a\n\t1045 bpf_prog_x_tc+0x45\n\n";
        let p = charge(script, &programs());
        assert_eq!((p.total, p.in_programs), (4, 3));
        let by_place = |place: &str| {
            p.lines
                .iter()
                .find(|(l, _)| l.place == place)
                .map(|(_, c)| c)
                .unwrap_or_else(|| panic!("no samples on {place}"))
        };
        assert_eq!(by_place("src/a.rs:1").own, 1, "0x1040 - 1 is before line 2");
        let second = by_place("src/a.rs:2");
        assert_eq!(second.own, 1);
        assert_eq!(second.calls.get("bpf_skb_load_bytes"), Some(&1));
    }

    #[test]
    fn strings_out_of_bounds_are_empty() {
        assert_eq!(string_at(b"ab\0cd\0", 3), "cd");
        assert_eq!(string_at(b"ab\0cd\0", 99), "");
        assert_eq!(string_at(b"ab", 0), "");
    }
}
