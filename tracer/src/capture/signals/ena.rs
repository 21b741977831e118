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
    // SAFETY: SIOCETHTOOL with an ifreq whose data points at a buffer sized for the command,
    // owned by the caller for the duration of the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCETHTOOL, &mut req) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// All `ethtool -S` statistics of `ifname` (in the calling thread's network namespace).
pub fn stats(ifname: &str) -> io::Result<Vec<(String, u64)>> {
    let fd = socket()?;
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
    ioctl(&fd, ifname, (&raw mut info).cast())?;
    let n = usize::try_from(info.len).unwrap_or(0).min(MAX_STATS);
    if n == 0 {
        return Ok(Vec::new());
    }
    let n32 = u32::try_from(n).unwrap_or(0);
    // ethtool_gstrings: cmd, string_set, len, then len * 32 bytes.
    let mut strings: Vec<u8> = [ETHTOOL_GSTRINGS, ETH_SS_STATS, n32]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect();
    strings.resize(12 + n * ETH_GSTRING_LEN, 0);
    ioctl(&fd, ifname, strings.as_mut_ptr().cast())?;
    // ethtool_stats: cmd and n_stats (two u32 in the first u64 slot), then n u64.
    let mut head = [0u8; 8];
    let words = ETHTOOL_GSTATS
        .to_ne_bytes()
        .into_iter()
        .chain(n32.to_ne_bytes());
    for (dst, src) in head.iter_mut().zip(words) {
        *dst = src;
    }
    let mut values = vec![u64::from_ne_bytes(head)];
    values.resize(1 + n, 0);
    ioctl(&fd, ifname, values.as_mut_ptr().cast())?;
    let (names, _) = strings
        .get(12..)
        .unwrap_or_default()
        .as_chunks::<ETH_GSTRING_LEN>();
    Ok(names
        .iter()
        .zip(values.iter().skip(1))
        .map(|(raw, v)| {
            let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
            (
                String::from_utf8_lossy(raw.get(..end).unwrap_or_default()).into_owned(),
                *v,
            )
        })
        .collect())
}

/// The ENA allowance counters of `ifname` (names ending in `_allowance_exceeded`); empty for
/// drivers without them.
pub fn allowance_exceeded(ifname: &str) -> Vec<(String, u64)> {
    stats(ifname)
        .map(|s| {
            s.into_iter()
                .filter(|(k, _)| k.ends_with("_allowance_exceeded"))
                .collect()
        })
        .unwrap_or_default()
}

/// Follows the ENA allowance counters of the uplinks and says when they grow: those packets
/// were dropped by the hypervisor, outside anything the kernel can see.
#[derive(Default)]
pub struct EnaWatch {
    last: std::collections::HashMap<(String, String), u64>,
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
                {
                    tracing::warn!(
                        interface = %key.0,
                        counter = %key.1,
                        dropped = value - before,
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
