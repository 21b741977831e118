//! ENA allowance counters through the ethtool ioctl (`ethtool -S`): the hypervisor drops packets
//! over an ENI's allowances — `pps_allowance_exceeded`, `conntrack_allowance_exceeded`,
//! `bw_in/out_allowance_exceeded` and `linklocal_allowance_exceeded` (1024 pps per ENI to the
//! VPC resolver, IMDS and time sync). No kernel event shows those drops; these counters do.

use std::{
    ffi::c_void,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

// `libc::Ioctl`: the request is a c_ulong in glibc and a c_int in musl (the static image).
const SIOCETHTOOL: libc::Ioctl = 0x8946;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSTATS: u32 = 0x1d;
const ETH_SS_STATS: u32 = 1;
const ETH_GSTRING_LEN: usize = 32;
/// Most statistics read from one interface (ENA exposes a few hundred with many queues).
pub const MAX_STATS: usize = 4096;

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut c_void,
    _pad: [u8; 16],
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `data` must point at memory the kernel may write the command's answer into: a
/// [`GuardedBuf`] (or a fixed-size struct for a fixed-size answer).
fn ioctl(fd: &OwnedFd, ifname: &str, data: *mut c_void) -> io::Result<()> {
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data,
        _pad: [0; 16],
    };
    let bytes = ifname.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    for (dst, src) in req.name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCETHTOOL with an ifreq whose data points at a buffer owned by the caller for
    // the duration of the call (see above).
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCETHTOOL, &mut req) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Why the statistics of an interface were not read.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The ioctl failed (no such interface, no ethtool support, …).
    #[error("ethtool statistics of {ifname}: {source}")]
    Io {
        /// The interface.
        ifname: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The driver reports more statistics than [`MAX_STATS`].
    #[error("{ifname} reports {count} ethtool statistics, more than the {MAX_STATS} read")]
    TooMany {
        /// The interface.
        ifname: String,
        /// How many it reports.
        count: u32,
    },
    /// The number of statistics changed between the calls (queues added or removed): the
    /// interface is skipped this round.
    #[error("the ethtool statistics of {ifname} changed from {before} to {after} while being read")]
    CountChanged {
        /// The interface.
        ifname: String,
        /// The count the buffers were sized for.
        before: u32,
        /// The count the kernel answered with.
        after: u32,
    },
}

/// A buffer the kernel writes an ethtool answer into, followed by an inaccessible guard page.
///
/// `ETHTOOL_GSTRINGS` and `ETHTOOL_GSTATS` ignore the count the caller passes: the kernel
/// writes as many entries as the driver has *now*, which may be more than when the buffer was
/// sized (queues added in between). Its writes stop with `EFAULT` at the guard page instead of
/// running over whatever follows the buffer.
struct GuardedBuf {
    ptr: *mut u8,
    /// Usable bytes (whole pages), before the guard page.
    len: usize,
    /// Bytes mapped, the guard page included.
    total: usize,
}

impl GuardedBuf {
    /// At least `want` zeroed bytes.
    fn new(want: usize) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|p| p.is_power_of_two())
            .unwrap_or(4096);
        let len = want.max(1).div_ceil(page).saturating_mul(page);
        let total = len
            .checked_add(page)
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        // SAFETY: a fresh private anonymous mapping; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let buf = Self {
            ptr: ptr.cast(),
            len,
            total,
        };
        // SAFETY: the last page of the mapping made above.
        if unsafe { libc::mprotect(ptr.cast::<u8>().add(len).cast(), page, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(buf)
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `len` readable and writable bytes, mapped for the life of self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, borrowed mutably through self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// Writes native-endian `u32`s at the start.
    fn put_u32s(&mut self, words: &[u32]) {
        for (dst, w) in self
            .bytes_mut()
            .as_chunks_mut::<4>()
            .0
            .iter_mut()
            .zip(words)
        {
            *dst = w.to_ne_bytes();
        }
    }

    /// The native-endian `u32` at byte `at`.
    fn u32_at(&self, at: usize) -> Option<u32> {
        let b = self.bytes().get(at..at.checked_add(4)?)?;
        Some(u32::from_ne_bytes(b.try_into().ok()?))
    }
}

impl Drop for GuardedBuf {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new` (usable pages and the guard page); nothing borrows
        // it any more.
        unsafe { libc::munmap(self.ptr.cast(), self.total) };
    }
}

/// The requests [`read_stats`] makes: the kernel's ethtool ioctl, or a fake one in tests.
trait Ethtool {
    /// `ETHTOOL_GSSET_INFO` for `ETH_SS_STATS`: how many statistics the driver has now.
    fn count(&mut self) -> io::Result<u32>;
    /// Runs the request whose header is at the start of `buf`; the answer is written in place.
    fn request(&mut self, buf: &mut GuardedBuf) -> io::Result<()>;
}

struct Kernel<'a> {
    fd: OwnedFd,
    ifname: &'a str,
}

impl Ethtool for Kernel<'_> {
    fn count(&mut self) -> io::Result<u32> {
        // ethtool_sset_info: cmd, reserved, sset_mask (u64), then one u32 per set in the mask.
        #[repr(C)]
        struct SsetInfo {
            cmd: u32,
            reserved: u32,
            mask: u64,
            len: u32,
        }
        let mut info = SsetInfo {
            cmd: ETHTOOL_GSSET_INFO,
            reserved: 0,
            mask: 1 << ETH_SS_STATS,
            len: 0,
        };
        ioctl(&self.fd, self.ifname, (&raw mut info).cast())?;
        // The kernel clears the mask bits of sets the driver does not have.
        Ok(if info.mask & (1 << ETH_SS_STATS) == 0 {
            0
        } else {
            info.len
        })
    }

    fn request(&mut self, buf: &mut GuardedBuf) -> io::Result<()> {
        ioctl(&self.fd, self.ifname, buf.ptr.cast())
    }
}

/// Header bytes of `ethtool_gstrings` (cmd, string_set, len) and `ethtool_stats` (cmd,
/// n_stats).
const GSTRINGS_HEAD: usize = 12;
const GSTATS_HEAD: usize = 8;

/// Runs one request and checks the count the kernel answered with (it writes its own, the
/// driver's count at that moment, at `count_at`) against the `n` the buffer was sized for.
fn checked_request(
    dev: &mut impl Ethtool,
    ifname: &str,
    buf: &mut GuardedBuf,
    count_at: usize,
    n: u32,
) -> Result<(), StatsError> {
    let result = dev.request(buf);
    // The header is written back first, also when the entries then hit the guard page.
    match buf.u32_at(count_at) {
        Some(after) if after != n => Err(StatsError::CountChanged {
            ifname: ifname.to_owned(),
            before: n,
            after,
        }),
        _ => result.map_err(|source| StatsError::Io {
            ifname: ifname.to_owned(),
            source,
        }),
    }
}

/// The statistics of one device: buffers sized from the count the driver reports, the answer
/// used only when the driver's count did not change in between.
fn read_stats(dev: &mut impl Ethtool, ifname: &str) -> Result<Vec<(String, u64)>, StatsError> {
    let io = |source| StatsError::Io {
        ifname: ifname.to_owned(),
        source,
    };
    let n32 = dev.count().map_err(io)?;
    if n32 == 0 {
        return Ok(Vec::new());
    }
    let n = usize::try_from(n32)
        .ok()
        .filter(|n| *n <= MAX_STATS)
        .ok_or_else(|| StatsError::TooMany {
            ifname: ifname.to_owned(),
            count: n32,
        })?;
    let mut strings = GuardedBuf::new(GSTRINGS_HEAD + n * ETH_GSTRING_LEN).map_err(io)?;
    strings.put_u32s(&[ETHTOOL_GSTRINGS, ETH_SS_STATS, n32]);
    checked_request(dev, ifname, &mut strings, 8, n32)?;
    let mut values = GuardedBuf::new(GSTATS_HEAD + n * 8).map_err(io)?;
    values.put_u32s(&[ETHTOOL_GSTATS, n32]);
    checked_request(dev, ifname, &mut values, 4, n32)?;

    let names = strings
        .bytes()
        .get(GSTRINGS_HEAD..GSTRINGS_HEAD + n * ETH_GSTRING_LEN)
        .unwrap_or_default()
        .as_chunks::<ETH_GSTRING_LEN>()
        .0;
    let values = values
        .bytes()
        .get(GSTATS_HEAD..GSTATS_HEAD + n * 8)
        .unwrap_or_default()
        .as_chunks::<8>()
        .0;
    Ok(names
        .iter()
        .zip(values)
        .map(|(raw, v)| {
            let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
            (
                String::from_utf8_lossy(raw.get(..end).unwrap_or_default()).into_owned(),
                u64::from_ne_bytes(*v),
            )
        })
        .collect())
}

/// All `ethtool -S` statistics of `ifname` (in the calling thread's network namespace). An
/// interface whose number of statistics changes while it is read is an error for this call
/// ([`StatsError::CountChanged`]); the next call reads it again.
pub fn stats(ifname: &str) -> Result<Vec<(String, u64)>, StatsError> {
    let fd = socket().map_err(|source| StatsError::Io {
        ifname: ifname.to_owned(),
        source,
    })?;
    read_stats(&mut Kernel { fd, ifname }, ifname)
}

/// The ENA allowance counters of `ifname` (names ending in `_allowance_exceeded`); empty for
/// drivers without them.
pub fn allowance_exceeded(ifname: &str) -> Vec<(String, u64)> {
    match stats(ifname) {
        Ok(s) => s
            .into_iter()
            .filter(|(k, _)| k.ends_with("_allowance_exceeded"))
            .collect(),
        Err(err @ (StatsError::TooMany { .. } | StatsError::CountChanged { .. })) => {
            tracing::debug!(%err, "ENA allowance counters skipped this round");
            Vec::new()
        }
        Err(StatsError::Io { .. }) => Vec::new(),
    }
}

/// Follows the ENA allowance counters of the uplinks and says when they grow: those packets
/// were dropped by the hypervisor, outside anything the kernel can see.
#[derive(Default)]
pub struct EnaWatch {
    last: std::collections::HashMap<(String, String), u64>,
    unwarned: std::collections::HashMap<(String, String), super::Unwarned>,
}

impl EnaWatch {
    /// Bound on remembered (interface, counter) pairs.
    const MAX: usize = 1024;
}

impl super::Signal for EnaWatch {
    fn sample(&mut self, ifaces: &crate::capture::iface::IfaceTable) -> Vec<super::Reading> {
        use crate::capture::iface::IfaceKind;
        let mut out = Vec::new();
        for iface in ifaces.live() {
            if !matches!(iface.kind, IfaceKind::Uplink | IfaceKind::Trunk) {
                continue;
            }
            for (counter, value) in allowance_exceeded(&iface.name) {
                let key = (iface.name.clone(), counter.clone());
                if let Some(before) = self.last.get(&key)
                    && value > *before
                    && (self.unwarned.len() < Self::MAX || self.unwarned.contains_key(&key))
                    && let Some(dropped) = self
                        .unwarned
                        .entry(key.clone())
                        .or_default()
                        .add(value - before, std::time::Instant::now())
                {
                    tracing::warn!(
                        interface = %key.0,
                        counter = %key.1,
                        dropped,
                        "ENA allowance exceeded: the hypervisor dropped packets on this ENI \
                         (linklocal: over 1024 pps to the VPC resolver/IMDS; use NodeLocal DNSCache)"
                    );
                }
                if self.last.len() < Self::MAX || self.last.contains_key(&key) {
                    self.last.insert(key, value);
                }
                out.push(super::Reading {
                    signal: "ena",
                    interface: Some(iface.name.clone()),
                    counter,
                    value,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A driver as the kernel's ethtool ioctl presents it: GSTRINGS and GSTATS answer with the
    /// driver's count at the time of each call, whatever count the caller asked for, and
    /// writing past the caller's memory fails with EFAULT (the guard page).
    struct FakeDriver {
        /// The driver's count at the 1st, 2nd, 3rd call (count, strings, stats).
        counts: Vec<u32>,
        calls: usize,
    }

    impl FakeDriver {
        fn now(&mut self) -> u32 {
            let n = self.counts.get(self.calls).or(self.counts.last()).copied();
            self.calls += 1;
            n.unwrap_or(0)
        }
    }

    impl Ethtool for FakeDriver {
        fn count(&mut self) -> io::Result<u32> {
            Ok(self.now())
        }

        fn request(&mut self, buf: &mut GuardedBuf) -> io::Result<()> {
            let n = self.now();
            let cmd = buf.u32_at(0).unwrap_or(0);
            let (head, entry, count_at) = match cmd {
                ETHTOOL_GSTRINGS => (GSTRINGS_HEAD, ETH_GSTRING_LEN, 8),
                ETHTOOL_GSTATS => (GSTATS_HEAD, 8, 4),
                _ => return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP)),
            };
            let bytes = buf.bytes_mut();
            if let Some(dst) = bytes.get_mut(count_at..count_at + 4) {
                dst.copy_from_slice(&n.to_ne_bytes());
            }
            for i in 0..n as usize {
                let at = head + i * entry;
                let Some(dst) = bytes.get_mut(at..at + entry) else {
                    return Err(io::Error::from_raw_os_error(libc::EFAULT));
                };
                if cmd == ETHTOOL_GSTRINGS {
                    let name = format!("queue_{i}_allowance_exceeded");
                    dst.fill(0);
                    let len = name.len().min(entry - 1);
                    dst[..len].copy_from_slice(&name.as_bytes()[..len]);
                } else {
                    dst.copy_from_slice(&(1000 + i as u64).to_ne_bytes());
                }
            }
            Ok(())
        }
    }

    fn read(counts: &[u32]) -> Result<Vec<(String, u64)>, StatsError> {
        read_stats(
            &mut FakeDriver {
                counts: counts.to_vec(),
                calls: 0,
            },
            "eth0",
        )
    }

    #[test]
    fn buffers_are_sized_from_the_drivers_count() {
        for n in [1u32, 3, 127, 128, 129, 1000, MAX_STATS as u32] {
            let got = read(&[n]).unwrap_or_else(|e| panic!("{n}: {e}"));
            assert_eq!(got.len(), n as usize);
            let last = n - 1;
            assert_eq!(
                got.last(),
                Some(&(
                    format!("queue_{last}_allowance_exceeded"),
                    1000 + u64::from(last)
                ))
            );
        }
        assert_eq!(read(&[0]).expect("no statistics").len(), 0);
    }

    #[test]
    fn a_count_that_changes_between_calls_skips_the_interface() {
        // More statistics by the time the names or the values are read (queues added), far
        // more than the buffer's slack, or fewer: an error for this round, never an overrun.
        for counts in [
            &[4u32, 5][..],
            &[4, 4, 5],
            &[4, 4000],
            &[4, 4, 4000],
            &[40, 3],
            &[40, 40, 39],
        ] {
            match read(counts) {
                Err(StatsError::CountChanged { before, after, .. }) => {
                    assert_eq!(before, counts[0], "{counts:?}");
                    assert_ne!(after, before, "{counts:?}");
                }
                other => panic!("{counts:?}: {other:?}"),
            }
        }
        // The next round, with a stable count, reads it.
        assert_eq!(read(&[5, 5, 5]).expect("stable").len(), 5);
    }

    #[test]
    fn more_statistics_than_read_is_an_error_not_a_truncated_buffer() {
        let n = MAX_STATS as u32 + 1;
        assert!(matches!(
            read(&[n]),
            Err(StatsError::TooMany { count, .. }) if count == n
        ));
        assert!(matches!(read(&[u32::MAX]), Err(StatsError::TooMany { .. })));
    }

    #[test]
    fn the_kernel_cannot_write_past_a_guarded_buffer() {
        let mut buf = GuardedBuf::new(100).expect("mapping");
        assert!(buf.len >= 100);
        buf.bytes_mut().fill(0xaa);
        // Ask the kernel to write twice the buffer: it stops at the guard page.
        let zero = std::fs::File::open("/dev/zero").expect("/dev/zero");
        // SAFETY: the kernel writes into our mapping and faults at its guard page.
        let n = unsafe { libc::read(zero.as_raw_fd(), buf.ptr.cast(), buf.len * 2) };
        let err = io::Error::last_os_error();
        assert!(
            n == buf.len as isize || (n < 0 && err.raw_os_error() == Some(libc::EFAULT)),
            "read {n} ({err})"
        );
    }

    /// Reads a veth's real ethtool statistics: `peer_ifindex` must be its peer's index. Needs
    /// root (a veth pair in a network namespace of the test's own).
    #[test]
    fn veth_statistics_through_the_ioctl() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var("CI").map_or(true, |v| v.is_empty() || v == "false"),
                "needs root under CI"
            );
            eprintln!("SKIPPED: needs root");
            return;
        }
        let ns = "trt-ethtool";
        let run = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .status()
                .expect("ip runs")
        };
        let _ = run(&["netns", "del", ns]);
        assert!(run(&["netns", "add", ns]).success());
        assert!(
            run(&[
                "-n", ns, "link", "add", "ta0", "type", "veth", "peer", "name", "tb0"
            ])
            .success()
        );
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "cat", "/sys/class/net/tb0/ifindex"])
            .output()
            .expect("cat");
        let peer: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("ifindex");
        // Read from inside the namespace: a helper thread joins it, reads and leaves.
        let got = std::thread::spawn(move || {
            let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns file");
            // SAFETY: setns on this short-lived thread only.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            (
                stats("ta0"),
                stats("no-such-if0"),
                allowance_exceeded("ta0"),
            )
        })
        .join()
        .expect("thread");
        let _ = run(&["netns", "del", ns]);
        let (stats, missing, allowance) = got;
        let stats = stats.expect("veth statistics");
        assert!(
            stats.contains(&("peer_ifindex".to_owned(), peer)),
            "{stats:?}"
        );
        assert!(missing.is_err(), "unknown interface is an error");
        assert!(allowance.is_empty(), "veth has no ENA allowance counters");
    }
}
