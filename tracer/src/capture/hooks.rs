//! What else runs at the tc hooks the tracer observes: other tools' programs (tcx links and
//! legacy clsact filters), read from the kernel. The tracer uses it to name the program that
//! dropped a packet (drop reason `TC_INGRESS` / `TC_EGRESS`), to recognise filters of its own
//! left behind by a killed predecessor, and to check that its own attachments are still there.

use std::collections::HashMap;

use aya::programs::{SchedClassifier, TcAttachType};
use futures::TryStreamExt as _;
use netlink_packet_route::tc::{TcAttribute, TcFilterBpfOption, TcOption};

/// Longest a netlink request may take before the tracer gives up on it (and counts it).
pub const NETLINK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How a program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachMode {
    /// A tcx link (Linux ≥ 6.6).
    Tcx,
    /// A filter under the clsact qdisc.
    Clsact,
}

/// A program attached at a tc hook.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HookProgram {
    /// Program name as the kernel knows it (at most 15 characters).
    pub name: String,
    /// Program id (`bpftool prog show id N`).
    pub id: u32,
    /// How it is attached.
    pub attach: AttachMode,
    /// The tool it belongs to, when recognised by its name.
    pub tool: Option<&'static str>,
}

/// Recognises well-known datapath tools by their programs' names.
pub fn tool_of(name: &str) -> Option<&'static str> {
    match name {
        // aws-network-policy-agent (VPC CNI NetworkPolicy).
        "handle_ingress" | "handle_egress" => Some("VPC CNI network-policy agent"),
        n if n.starts_with("cil_") || n.starts_with("tail_") => Some("Cilium"),
        n if n.starts_with("calico_") || n.starts_with("cali_") => Some("Calico"),
        _ => None,
    }
}

/// The programs attached at one hook, tcx links first (they run first), then clsact filters in
/// priority order. Our own programs (`ours`) are left out.
pub async fn programs_at(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    ingress: bool,
    ours: &[&str],
) -> Vec<HookProgram> {
    let mut out = Vec::new();
    let attach_type = if ingress {
        TcAttachType::Ingress
    } else {
        TcAttachType::Egress
    };
    if let Ok((_, progs)) = SchedClassifier::query_tcx(ifindex, attach_type) {
        for p in progs {
            let name = p.name_as_str().unwrap_or_default().to_owned();
            if ours.contains(&name.as_str()) {
                continue;
            }
            out.push(HookProgram {
                tool: tool_of(&name),
                name,
                id: p.id(),
                attach: AttachMode::Tcx,
            });
        }
    }
    let mut filters: Vec<(u16, HookProgram)> = clsact_filters(handle, ifindex, ingress)
        .await
        .into_iter()
        .filter(|(_, p)| !ours.contains(&p.name.as_str()))
        .collect();
    filters.sort_by_key(|(prio, _)| *prio);
    out.extend(filters.into_iter().map(|(_, p)| p));
    out
}

/// The BPF filters under the clsact qdisc at one hook: (priority, program). Empty when there is
/// none, on error or timeout.
pub async fn clsact_filters(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    ingress: bool,
) -> Vec<(u16, HookProgram)> {
    let Ok(index) = i32::try_from(ifindex) else {
        return Vec::new();
    };
    let mut req = handle.clone().traffic_filter(index).get();
    req = if ingress { req.ingress() } else { req.egress() };
    let fetch = req.execute().try_collect::<Vec<_>>();
    let msgs = match tokio::time::timeout(NETLINK_TIMEOUT, fetch).await {
        Ok(Ok(m)) => m,
        Ok(Err(err)) => {
            tracing::debug!(%err, ifindex, "listing tc filters");
            return Vec::new();
        }
        Err(_) => {
            tracing::warn!(ifindex, "listing tc filters timed out");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for m in msgs {
        // tcm_info: priority in the upper 16 bits.
        let prio = (m.header.info >> 16) as u16;
        let (mut name, mut id) = (None, None);
        for attr in &m.attributes {
            if let TcAttribute::Options(opts) = attr {
                for o in opts {
                    match o {
                        TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => name = Some(n.clone()),
                        TcOption::Bpf(TcFilterBpfOption::ProgId(i)) => id = Some(*i),
                        _ => {}
                    }
                }
            }
        }
        if let Some(id) = id {
            // The kernel reports `<name>` or `<object>:[<name>]`; keep the program name.
            let name = name
                .map(|n| {
                    n.rsplit_once(":[")
                        .map(|(_, rest)| rest.trim_end_matches(']').to_owned())
                        .unwrap_or(n)
                })
                .unwrap_or_default();
            out.push((
                prio,
                HookProgram {
                    tool: tool_of(&name),
                    name,
                    id,
                    attach: AttachMode::Clsact,
                },
            ));
        }
    }
    out
}

/// Other programs at each hook of each interface, kept by the attach manager.
#[derive(Clone, Debug, Default)]
pub struct HookTable {
    by_hook: HashMap<(u32, bool), Vec<HookProgram>>,
}

impl HookTable {
    /// Most interfaces remembered.
    const MAX: usize = 65_536;

    /// Records what runs at (ifindex, ingress).
    pub fn set(&mut self, ifindex: u32, ingress: bool, programs: Vec<HookProgram>) {
        if programs.is_empty() {
            self.by_hook.remove(&(ifindex, ingress));
        } else if self.by_hook.len() < Self::MAX || self.by_hook.contains_key(&(ifindex, ingress)) {
            self.by_hook.insert((ifindex, ingress), programs);
        }
    }

    /// Forgets an interface.
    pub fn remove(&mut self, ifindex: u32) {
        self.by_hook.remove(&(ifindex, true));
        self.by_hook.remove(&(ifindex, false));
    }

    /// Other programs at (ifindex, ingress).
    pub fn get(&self, ifindex: u32, ingress: bool) -> &[HookProgram] {
        self.by_hook
            .get(&(ifindex, ingress))
            .map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_by_program_name() {
        assert_eq!(
            tool_of("handle_ingress"),
            Some("VPC CNI network-policy agent")
        );
        assert_eq!(tool_of("cil_from_container"), Some("Cilium"));
        assert_eq!(tool_of("calico_tc_main"), Some("Calico"));
        assert_eq!(tool_of("tc_pod_in"), None);
        let mut t = HookTable::default();
        let p = HookProgram {
            name: "handle_ingress".into(),
            id: 7,
            attach: AttachMode::Clsact,
            tool: tool_of("handle_ingress"),
        };
        t.set(5, true, vec![p.clone()]);
        assert_eq!(t.get(5, true), &[p]);
        assert!(t.get(5, false).is_empty());
        t.remove(5);
        assert!(t.get(5, true).is_empty());
    }
}
