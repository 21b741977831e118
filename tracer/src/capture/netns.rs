//! Network namespaces that belong to this node: the tracer's own and those of its pods (the
//! peers of its pod veths). Drops elsewhere happened on "other machines" (in the lab: the VPC
//! and node B) and are not this node's to report.

use std::{
    collections::{HashMap, HashSet},
    fs,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use futures::StreamExt as _;
use netlink_packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    nsid::{NsidAttribute, NsidMessage},
};

/// Directories where namespaces are bind-mounted (iproute2, containerd/CRI-O on the host).
pub const NETNS_DIRS: [&str; 2] = ["/run/netns", "/var/run/netns"];

/// Most namespace files inspected per scan (a bound for very busy nodes).
pub const MAX_SCAN: usize = 4096;

/// Inode of the tracer's own network namespace.
pub fn own_inode() -> std::io::Result<u32> {
    let ino = fs::metadata("/proc/self/ns/net")?.ino();
    Ok(u32::try_from(ino).unwrap_or(0))
}

fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in NETNS_DIRS {
        if let Ok(entries) = fs::read_dir(dir) {
            out.extend(entries.flatten().map(|e| e.path()));
        }
    }
    // With hostPID, every process's namespace is visible too.
    if let Ok(entries) = fs::read_dir("/proc") {
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                out.push(Path::new("/proc").join(name).join("ns/net"));
            }
        }
    }
    out.truncate(MAX_SCAN);
    out
}

async fn nsid_of(handle: &mut rtnetlink::Handle, fd: u32) -> Option<i32> {
    let mut msg = NsidMessage::default();
    msg.attributes.push(NsidAttribute::Fd(fd));
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
    req.header.flags = NLM_F_REQUEST;
    let mut resp = handle.request(req).ok()?;
    while let Some(m) = resp.next().await {
        if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) = m.payload {
            for a in m.attributes {
                if let NsidAttribute::Id(id) = a {
                    return (id >= 0).then_some(id);
                }
            }
        }
    }
    None
}

/// Maps netns ids (as assigned in the tracer's namespace) to namespace inodes, for the ids
/// asked for. Unresolvable ids are left out.
pub async fn resolve_nsids(
    handle: &mut rtnetlink::Handle,
    wanted: &HashSet<i32>,
) -> HashMap<i32, u32> {
    let mut out = HashMap::new();
    if wanted.is_empty() {
        return out;
    }
    let mut seen_inodes = HashSet::new();
    for path in candidates() {
        let Ok(file) = fs::File::open(&path) else {
            continue;
        };
        let Ok(meta) = file.metadata() else { continue };
        let Ok(ino) = u32::try_from(meta.ino()) else {
            continue;
        };
        if !seen_inodes.insert(ino) {
            continue;
        }
        let Ok(fd) = u32::try_from(file.as_raw_fd()) else {
            continue;
        };
        if let Some(id) = nsid_of(handle, fd).await
            && wanted.contains(&id)
        {
            out.insert(id, ino);
            if out.len() == wanted.len() {
                break;
            }
        }
    }
    out
}
