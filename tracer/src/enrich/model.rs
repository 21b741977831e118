//! What the cache hands out, and the pure rules that derive it from API objects: the VPC CNI
//! host-veth name, the `vpc.amazonaws.com/pod-eni` annotation, owner → workload.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::atomic::{AtomicU64, Ordering},
};

use k8s_openapi::{
    api::{
        core::v1::{Node, Pod, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use serde::Serialize;
use serde_json::Value;

/// Pod annotation written by the VPC resource controller for security-groups-for-pods pods.
pub const POD_ENI_ANNOTATION: &str = "vpc.amazonaws.com/pod-eni";
/// VPC CNI's default host-side veth prefix (`AWS_VPC_K8S_CNI_VETHPREFIX`).
pub const DEFAULT_VETH_PREFIX: &str = tracer_common::naming::VETH_PREFIX_ENI;
/// Host-side veth prefix of branch-ENI pods in strict enforcing mode.
pub const BRANCH_VETH_PREFIX: &str = tracer_common::naming::VETH_PREFIX_VLAN;
/// Label EndpointSlices carry naming their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `namespace/name` of an object (namespace empty for cluster-scoped objects).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjKey {
    /// Namespace, empty for cluster-scoped objects.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjKey {
    /// A key from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ObjKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// The workload that owns a pod, as an operator names it (`Deployment coredns`, not
/// `ReplicaSet coredns-5d78c9869d`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workload {
    /// `Deployment`, `DaemonSet`, `StatefulSet`, `CronJob`, `Job`, `ReplicaSet`, `Node` (static
    /// pods) or a custom kind.
    pub kind: String,
    /// Its name.
    pub name: String,
}

/// One entry of the `vpc.amazonaws.com/pod-eni` annotation: the pod's branch ENI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BranchEni {
    /// ENI id (`eni-…`).
    pub eni_id: String,
    /// VLAN id on the trunk ENI (the node sees the ENI as `vlan.eth.<vlan_id>`).
    pub vlan_id: u16,
    /// The pod's address on the ENI.
    pub private_ip: IpAddr,
    /// Subnet of the ENI.
    pub subnet_cidr: Option<String>,
    /// MAC address of the ENI.
    pub if_address: Option<String>,
}

/// What the cache knows about a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodMeta {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Owning workload (from the controller ownerReference), if any.
    pub workload: Option<Workload>,
    /// Node the pod is bound to.
    pub node: Option<String>,
    /// Pod IPs (status.podIPs, else status.podIP). Empty until the CNI assigned one.
    pub ips: Vec<IpAddr>,
    /// Whether the pod uses the node's network namespace (then it has no veth and its IP is the
    /// node's; it is not indexed by IP).
    pub host_network: bool,
    /// Host-side veth names the VPC CNI gives this pod: `<prefix><sha1[..11]>`, and for
    /// branch-ENI pods also `vlan<sha1[..11]>` (strict mode) first.
    pub host_veths: Vec<String>,
    /// Branch ENIs from the `vpc.amazonaws.com/pod-eni` annotation (usually zero or one).
    pub branch_enis: Vec<BranchEni>,
    /// The pod's labels (for `tracer observe -l`), at most [`MAX_POD_LABELS`].
    pub labels: BTreeMap<String, String>,
}

/// Most labels kept per pod (the rest are dropped, in key order): a bound on the cache's size.
pub const MAX_POD_LABELS: usize = 64;

/// The labels kept for a pod: the first [`MAX_POD_LABELS`] in key order.
pub fn kept_labels(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels
        .iter()
        .take(MAX_POD_LABELS)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl PodMeta {
    /// `namespace/name`.
    pub fn key(&self) -> ObjKey {
        ObjKey::new(&self.namespace, &self.name)
    }

    /// Whether this is a pod of node `node` with its own network (not host network): traffic
    /// from its address should first be seen entering at its veth.
    pub fn is_pod_network_on(&self, node: &str) -> bool {
        !self.host_network && self.node.as_deref() == Some(node)
    }

    /// The pod's branch ENI: the annotation entry whose privateIp is one of the pod's IPs, else
    /// the first entry.
    pub fn branch_eni(&self) -> Option<&BranchEni> {
        self.branch_enis
            .iter()
            .find(|e| self.ips.contains(&e.private_ip))
            .or_else(|| self.branch_enis.first())
    }
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServicePortMeta {
    /// Port name.
    pub name: Option<String>,
    /// `UDP`, `TCP` or `SCTP`.
    pub protocol: String,
    /// Service port.
    pub port: i32,
}

/// What the cache knows about a Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceMeta {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// ClusterIPs (empty for headless Services).
    pub cluster_ips: Vec<IpAddr>,
    /// Pod selector.
    pub selector: BTreeMap<String, String>,
    /// Ports.
    pub ports: Vec<ServicePortMeta>,
}

impl ServiceMeta {
    /// `namespace/name`.
    pub fn key(&self) -> ObjKey {
        ObjKey::new(&self.namespace, &self.name)
    }
}

/// What the cache knows about a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeMeta {
    /// Node name.
    pub name: String,
    /// InternalIP addresses.
    pub ips: Vec<IpAddr>,
}

/// One endpoint address of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointMeta {
    /// Address.
    pub ip: IpAddr,
    /// The pod behind it (targetRef of kind Pod).
    pub pod: Option<ObjKey>,
    /// Node name (v1 `nodeName`; v1beta1 `topology["kubernetes.io/hostname"]`).
    pub node: Option<String>,
    /// `conditions.ready` (absent means unknown, to be read as ready).
    pub ready: Option<bool>,
}

/// What the cache keeps of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SliceMeta {
    /// The Service it belongs to (label `kubernetes.io/service-name`).
    pub service: Option<ObjKey>,
    /// Its endpoints.
    pub endpoints: Vec<EndpointMeta>,
}

/// Counters of API data the cache tolerated rather than trusted. Shared by the cache handle.
#[derive(Debug, Default)]
pub(crate) struct DataWarnings {
    /// Malformed `vpc.amazonaws.com/pod-eni` annotations (or entries).
    pub annotation: AtomicU64,
    /// Unparseable IP addresses in pod, service, node or endpoint fields.
    pub address: AtomicU64,
    /// EndpointSlices (v1beta1) that did not decode into the v1 type.
    pub decode: AtomicU64,
}

/// How many tolerated-data warnings are logged at `warn` before the rest go to `debug`.
const LOUD_WARNINGS: u64 = 20;

impl DataWarnings {
    fn bump(counter: &AtomicU64, what: std::fmt::Arguments<'_>) {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        if n < LOUD_WARNINGS {
            tracing::warn!("Kubernetes metadata: {what}");
        } else {
            tracing::debug!("Kubernetes metadata: {what}");
        }
    }

    pub fn total(&self) -> u64 {
        self.annotation.load(Ordering::Relaxed)
            + self.address.load(Ordering::Relaxed)
            + self.decode.load(Ordering::Relaxed)
    }
}

pub use tracer_common::naming::host_veth_name;

/// Why a `vpc.amazonaws.com/pod-eni` annotation was not (entirely) usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    /// Not JSON at all.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// JSON, but neither a list nor an object.
    #[error("expected a JSON list of ENIs, got {0}")]
    NotAList(&'static str),
    /// Entry `index` lacks a usable field.
    #[error("entry {index}: {problem}")]
    BadEntry {
        /// Position in the list.
        index: usize,
        /// What is wrong.
        problem: String,
    },
}

/// Parses the `vpc.amazonaws.com/pod-eni` annotation: a JSON list of objects with `eniId`,
/// `vlanId`, `privateIp`, `subnetCidr`, `ifAddress`. Tolerant: an empty value or `[]`/`null`
/// gives no ENIs; a single object is taken as a one-entry list; `vlanId` may be a number or a
/// numeric string. Returns the usable entries and one error per unusable entry; a value that
/// is not JSON at all is an error.
pub fn parse_pod_eni(
    value: &str,
) -> Result<(Vec<BranchEni>, Vec<AnnotationError>), AnnotationError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let json: Value =
        serde_json::from_str(value).map_err(|e| AnnotationError::NotJson(e.to_string()))?;
    let entries = match json {
        Value::Null => Vec::new(),
        Value::Array(list) => list,
        obj @ Value::Object(_) => vec![obj],
        Value::Bool(_) => return Err(AnnotationError::NotAList("a boolean")),
        Value::Number(_) => return Err(AnnotationError::NotAList("a number")),
        Value::String(_) => return Err(AnnotationError::NotAList("a string")),
    };
    let mut enis = Vec::new();
    let mut errors = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        match branch_eni_entry(entry) {
            Ok(eni) => enis.push(eni),
            Err(problem) => errors.push(AnnotationError::BadEntry { index, problem }),
        }
    }
    Ok((enis, errors))
}

fn branch_eni_entry(entry: &Value) -> Result<BranchEni, String> {
    let obj = entry.as_object().ok_or("not an object")?;
    let text = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
    let eni_id = text("eniId")
        .filter(|s| !s.is_empty())
        .ok_or("missing eniId")?;
    let vlan_id = match obj.get("vlanId") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
    .and_then(|v| u16::try_from(v).ok())
    .filter(|v| (1..=4094).contains(v))
    .ok_or("missing or invalid vlanId")?;
    let private_ip = text("privateIp")
        .and_then(|s| s.trim().parse::<IpAddr>().ok())
        .ok_or("missing or invalid privateIp")?;
    Ok(BranchEni {
        eni_id,
        vlan_id,
        private_ip,
        subnet_cidr: text("subnetCidr"),
        if_address: text("ifAddress"),
    })
}

/// Whether `s` looks like a `pod-template-hash` (Kubernetes' SafeEncodeString alphabet).
fn looks_like_template_hash(s: &str) -> bool {
    !s.is_empty() && s.len() <= 10 && s.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c))
}

/// The workload owning a pod, from its ownerReferences (the one marked `controller`, else the
/// first). A ReplicaSet `foo-<hash>` becomes Deployment `foo` when the pod's `pod-template-hash`
/// label equals `<hash>` (or, without the label, when `<hash>` looks like one); a Job
/// `foo-<minutes since epoch>` becomes CronJob `foo`. Other kinds are kept as they are.
pub fn workload_of(
    owners: &[OwnerReference],
    labels: &BTreeMap<String, String>,
) -> Option<Workload> {
    let owner = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first())?;
    let kind = owner.kind.as_str();
    let name = owner.name.as_str();
    let split = name.rsplit_once('-');
    match (kind, split) {
        ("ReplicaSet", Some((base, suffix))) if !base.is_empty() => {
            let from_label = labels.get("pod-template-hash").map(String::as_str) == Some(suffix);
            if from_label
                || (!labels.contains_key("pod-template-hash") && looks_like_template_hash(suffix))
            {
                return Some(Workload {
                    kind: "Deployment".to_owned(),
                    name: base.to_owned(),
                });
            }
        }
        ("Job", Some((base, suffix)))
            if !base.is_empty()
                && suffix.len() >= 8
                && suffix.chars().all(|c| c.is_ascii_digit()) =>
        {
            return Some(Workload {
                kind: "CronJob".to_owned(),
                name: base.to_owned(),
            });
        }
        _ => {}
    }
    Some(Workload {
        kind: kind.to_owned(),
        name: name.to_owned(),
    })
}

/// Converts API objects into cache entries. `None` means "not indexable" (the entry, if any, is
/// removed).
pub(crate) trait Indexed: Sized {
    /// What the cache keeps.
    type Meta;
    /// `namespace/name`.
    fn obj_key(&self) -> Option<ObjKey>;
    /// The entry, or `None` when the object should not be in the index.
    fn to_meta(&self, ctx: &ConvertCtx<'_>) -> Option<Self::Meta>;
}

/// What conversions need besides the object.
pub(crate) struct ConvertCtx<'a> {
    /// Host veth prefix for non-branch pods.
    pub veth_prefix: &'a str,
    /// Where to count tolerated data.
    pub warnings: &'a DataWarnings,
}

fn parse_ip(s: &str, what: &str, warnings: &DataWarnings) -> Option<IpAddr> {
    match s.trim().parse::<IpAddr>() {
        Ok(ip) => Some(ip),
        Err(_) => {
            DataWarnings::bump(&warnings.address, format_args!("{what}: bad address {s:?}"));
            None
        }
    }
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<ObjKey> {
    Some(ObjKey::new(
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone()?,
    ))
}

impl Indexed for Pod {
    type Meta = PodMeta;

    fn obj_key(&self) -> Option<ObjKey> {
        key_of(&self.metadata)
    }

    fn to_meta(&self, ctx: &ConvertCtx<'_>) -> Option<PodMeta> {
        let key = self.obj_key()?;
        let status = self.status.as_ref();
        // Finished pods keep their IP in status, but it may already belong to a new pod.
        if let Some(phase) = status.and_then(|s| s.phase.as_deref())
            && (phase == "Succeeded" || phase == "Failed")
        {
            return None;
        }
        let what = format!("pod {key}");
        let mut ips: Vec<IpAddr> = Vec::new();
        for s in status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .map(|p| p.ip.as_str())
            .chain(status.and_then(|s| s.pod_ip.as_deref()))
        {
            if s.is_empty() {
                continue;
            }
            if let Some(ip) = parse_ip(s, &what, ctx.warnings)
                && !ips.contains(&ip)
            {
                ips.push(ip);
            }
        }
        let spec = self.spec.as_ref();
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let empty = BTreeMap::new();
        let labels = self.metadata.labels.as_ref().unwrap_or(&empty);
        let branch_enis = match self
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(POD_ENI_ANNOTATION))
        {
            None => Vec::new(),
            Some(value) => match parse_pod_eni(value) {
                Ok((enis, errors)) => {
                    for e in errors {
                        DataWarnings::bump(
                            &ctx.warnings.annotation,
                            format_args!("{what}: {POD_ENI_ANNOTATION}: {e}"),
                        );
                    }
                    enis
                }
                Err(e) => {
                    DataWarnings::bump(
                        &ctx.warnings.annotation,
                        format_args!("{what}: {POD_ENI_ANNOTATION}: {e}"),
                    );
                    Vec::new()
                }
            },
        };
        let host_veths = if host_network {
            Vec::new()
        } else if branch_enis.is_empty() {
            vec![host_veth_name(ctx.veth_prefix, &key.namespace, &key.name)]
        } else {
            // Strict mode names the veth `vlan…`, standard mode uses the usual prefix.
            let mut v = vec![host_veth_name(
                BRANCH_VETH_PREFIX,
                &key.namespace,
                &key.name,
            )];
            let standard = host_veth_name(ctx.veth_prefix, &key.namespace, &key.name);
            if !v.contains(&standard) {
                v.push(standard);
            }
            v
        };
        Some(PodMeta {
            workload: workload_of(
                self.metadata
                    .owner_references
                    .as_deref()
                    .unwrap_or_default(),
                labels,
            ),
            node: spec.and_then(|s| s.node_name.clone()),
            ips,
            host_network,
            host_veths,
            branch_enis,
            labels: kept_labels(labels),
            namespace: key.namespace,
            name: key.name,
        })
    }
}

impl Indexed for Service {
    type Meta = ServiceMeta;

    fn obj_key(&self) -> Option<ObjKey> {
        key_of(&self.metadata)
    }

    fn to_meta(&self, ctx: &ConvertCtx<'_>) -> Option<ServiceMeta> {
        let key = self.obj_key()?;
        let spec = self.spec.as_ref();
        let what = format!("service {key}");
        let mut cluster_ips = Vec::new();
        for s in spec
            .and_then(|s| s.cluster_ips.as_ref())
            .into_iter()
            .flatten()
            .map(String::as_str)
            .chain(spec.and_then(|s| s.cluster_ip.as_deref()))
        {
            if s.is_empty() || s == "None" {
                continue;
            }
            if let Some(ip) = parse_ip(s, &what, ctx.warnings)
                && !cluster_ips.contains(&ip)
            {
                cluster_ips.push(ip);
            }
        }
        Some(ServiceMeta {
            cluster_ips,
            selector: spec.and_then(|s| s.selector.clone()).unwrap_or_default(),
            ports: spec
                .and_then(|s| s.ports.as_ref())
                .into_iter()
                .flatten()
                .map(|p| ServicePortMeta {
                    name: p.name.clone(),
                    protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                    port: p.port,
                })
                .collect(),
            namespace: key.namespace,
            name: key.name,
        })
    }
}

impl Indexed for Node {
    type Meta = NodeMeta;

    fn obj_key(&self) -> Option<ObjKey> {
        Some(ObjKey::new("", self.metadata.name.clone()?))
    }

    fn to_meta(&self, ctx: &ConvertCtx<'_>) -> Option<NodeMeta> {
        let name = self.metadata.name.clone()?;
        let what = format!("node {name}");
        let ips = self
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
            .filter_map(|a| parse_ip(&a.address, &what, ctx.warnings))
            .collect();
        Some(NodeMeta { name, ips })
    }
}

impl Indexed for EndpointSlice {
    type Meta = SliceMeta;

    fn obj_key(&self) -> Option<ObjKey> {
        key_of(&self.metadata)
    }

    fn to_meta(&self, ctx: &ConvertCtx<'_>) -> Option<SliceMeta> {
        let key = self.obj_key()?;
        let what = format!("endpointslice {key}");
        let service = self
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .map(|svc| ObjKey::new(&key.namespace, svc));
        let mut endpoints = Vec::new();
        for ep in &self.endpoints {
            let pod = ep
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| {
                    Some(ObjKey::new(
                        r.namespace.clone().unwrap_or_else(|| key.namespace.clone()),
                        r.name.clone()?,
                    ))
                });
            let node = ep.node_name.clone().or_else(|| {
                ep.deprecated_topology
                    .as_ref()
                    .and_then(|t| t.get("kubernetes.io/hostname").cloned())
            });
            for a in &ep.addresses {
                if let Some(ip) = parse_ip(a, &what, ctx.warnings) {
                    endpoints.push(EndpointMeta {
                        ip,
                        pod: pod.clone(),
                        node: node.clone(),
                        ready: ep.conditions.as_ref().and_then(|c| c.ready),
                    });
                }
            }
        }
        Some(SliceMeta { service, endpoints })
    }
}

/// Decodes a `discovery.k8s.io/v1beta1` EndpointSlice (as served by Kubernetes ≤ 1.20) into the
/// v1 type: same shape except that v1beta1 carries the node in `topology` (kept as
/// `deprecatedTopology`, which [`Indexed`] reads) and may lack `nodeName`.
pub(crate) fn endpoint_slice_from_v1beta1(
    mut obj: Value,
) -> Result<EndpointSlice, serde_json::Error> {
    if let Some(map) = obj.as_object_mut() {
        map.insert("apiVersion".to_owned(), Value::from("discovery.k8s.io/v1"));
        map.insert("kind".to_owned(), Value::from("EndpointSlice"));
        if !map.contains_key("endpoints") {
            map.insert("endpoints".to_owned(), Value::Array(Vec::new()));
        }
        if let Some(Value::Array(eps)) = map.get_mut("endpoints") {
            for ep in eps.iter_mut().filter_map(Value::as_object_mut) {
                if let Some(topology) = ep.remove("topology") {
                    if !ep.contains_key("nodeName")
                        && let Some(host) = topology.get("kubernetes.io/hostname").cloned()
                    {
                        ep.insert("nodeName".to_owned(), host);
                    }
                    ep.entry("deprecatedTopology").or_insert(topology);
                }
            }
        }
    }
    serde_json::from_value(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serde_json::json;

    #[test]
    fn pod_eni_annotation_good() {
        let v = r#"[{"eniId":"eni-0b4a7c9e1d2f30001","ifAddress":"02:74:72:00:03:00","privateIp":"198.18.1.40","vlanId":1,"subnetCidr":"198.18.1.0/24"}]"#;
        let (enis, errors) = parse_pod_eni(v).expect("parses");
        assert!(errors.is_empty());
        assert_eq!(
            enis,
            vec![BranchEni {
                eni_id: "eni-0b4a7c9e1d2f30001".to_owned(),
                vlan_id: 1,
                private_ip: "198.18.1.40".parse().expect("ip"),
                subnet_cidr: Some("198.18.1.0/24".to_owned()),
                if_address: Some("02:74:72:00:03:00".to_owned()),
            }]
        );
    }

    #[test]
    fn pod_eni_annotation_empty() {
        for v in ["", "  ", "[]", "null"] {
            assert_eq!(parse_pod_eni(v), Ok((Vec::new(), Vec::new())), "{v:?}");
        }
    }

    #[test]
    fn pod_eni_annotation_malformed() {
        assert!(matches!(
            parse_pod_eni("[{"),
            Err(AnnotationError::NotJson(_))
        ));
        assert!(matches!(
            parse_pod_eni("eni-123"),
            Err(AnnotationError::NotJson(_))
        ));
        assert_eq!(
            parse_pod_eni("42"),
            Err(AnnotationError::NotAList("a number"))
        );
        assert_eq!(
            parse_pod_eni(r#""x""#),
            Err(AnnotationError::NotAList("a string"))
        );
        // Entries with missing or odd fields are reported one by one; good entries survive.
        let (enis, errors) = parse_pod_eni(
            r#"[{"eniId":"eni-1","vlanId":"7","privateIp":"10.0.0.7"},
                {"eniId":"eni-2","privateIp":"10.0.0.8"},
                {"eniId":"eni-3","vlanId":70000,"privateIp":"10.0.0.9"},
                {"eniId":"eni-4","vlanId":4,"privateIp":"not-an-ip"},
                {"vlanId":5,"privateIp":"10.0.0.5"},
                17]"#,
        )
        .expect("JSON");
        assert_eq!(enis.len(), 1);
        assert_eq!(enis[0].vlan_id, 7, "numeric string vlanId accepted");
        assert_eq!(enis[0].subnet_cidr, None);
        let idx: Vec<usize> = errors
            .iter()
            .map(|e| match e {
                AnnotationError::BadEntry { index, .. } => *index,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(idx, vec![1, 2, 3, 4, 5]);
        // A bare object is read as a one-entry list.
        let (enis, _) =
            parse_pod_eni(r#"{"eniId":"eni-9","vlanId":9,"privateIp":"10.0.0.9"}"#).expect("JSON");
        assert_eq!(enis.len(), 1);
    }

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).expect("pod JSON")
    }

    #[test]
    fn pod_eni_annotation_multiple_enis_pick_pod_ip() {
        let warnings = DataWarnings::default();
        let ctx = ConvertCtx {
            veth_prefix: "eni",
            warnings: &warnings,
        };
        let p = pod(json!({
            "metadata": { "name": "sg", "namespace": "default", "annotations": {
                POD_ENI_ANNOTATION: r#"[{"eniId":"eni-a","vlanId":1,"privateIp":"10.0.0.1"},{"eniId":"eni-b","vlanId":2,"privateIp":"10.0.0.2"}]"#
            }},
            "status": { "podIP": "10.0.0.2" },
        }));
        let meta = p.to_meta(&ctx).expect("indexable");
        assert_eq!(meta.branch_enis.len(), 2);
        assert_eq!(meta.branch_eni().map(|e| e.eni_id.as_str()), Some("eni-b"));
        assert_eq!(
            meta.host_veths,
            vec![
                "vlan".to_owned() + &host_veth_name("", "default", "sg"),
                "eni".to_owned() + &host_veth_name("", "default", "sg")
            ]
        );
        assert_eq!(warnings.total(), 0);

        let bad = pod(json!({
            "metadata": { "name": "odd", "namespace": "default",
                          "annotations": { POD_ENI_ANNOTATION: "{not json" } },
            "status": { "podIP": "10.0.0.3" },
        }));
        let meta = bad.to_meta(&ctx).expect("still indexable");
        assert!(meta.branch_eni().is_none());
        assert_eq!(
            meta.host_veths,
            vec![host_veth_name("eni", "default", "odd")]
        );
        assert_eq!(warnings.annotation.load(Ordering::Relaxed), 1);
    }

    fn owner(kind: &str, name: &str, controller: bool) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".to_owned(),
            kind: kind.to_owned(),
            name: name.to_owned(),
            uid: "u".to_owned(),
            controller: Some(controller),
            block_owner_deletion: None,
        }
    }

    fn wl(kind: &str, name: &str) -> Option<Workload> {
        Some(Workload {
            kind: kind.to_owned(),
            name: name.to_owned(),
        })
    }

    #[test]
    fn owner_to_workload() {
        let none = BTreeMap::new();
        let hash: BTreeMap<String, String> =
            [("pod-template-hash".to_owned(), "7d9c8".to_owned())].into();
        let rs = [owner("ReplicaSet", "foo-7d9c8", true)];
        assert_eq!(workload_of(&rs, &hash), wl("Deployment", "foo"));
        assert_eq!(
            workload_of(&rs, &none),
            wl("Deployment", "foo"),
            "hash-shaped suffix"
        );
        let other_hash: BTreeMap<String, String> =
            [("pod-template-hash".to_owned(), "zzz".to_owned())].into();
        assert_eq!(workload_of(&rs, &other_hash), wl("ReplicaSet", "foo-7d9c8"));
        assert_eq!(
            workload_of(&[owner("ReplicaSet", "my-app-v1", true)], &none),
            wl("ReplicaSet", "my-app-v1"),
            "'v1' contains a digit 1 outside the hash alphabet"
        );
        assert_eq!(
            workload_of(&[owner("ReplicaSet", "standalone", true)], &none),
            wl("ReplicaSet", "standalone")
        );
        assert_eq!(
            workload_of(&[owner("ReplicaSet", "coredns-5d78c9869d", true)], &none),
            wl("Deployment", "coredns")
        );
        assert_eq!(
            workload_of(&[owner("DaemonSet", "aws-node", true)], &none),
            wl("DaemonSet", "aws-node")
        );
        assert_eq!(
            workload_of(&[owner("StatefulSet", "db", true)], &none),
            wl("StatefulSet", "db")
        );
        assert_eq!(
            workload_of(&[owner("Job", "backup-28391234", true)], &none),
            wl("CronJob", "backup")
        );
        assert_eq!(
            workload_of(&[owner("Job", "migrate-v2", true)], &none),
            wl("Job", "migrate-v2")
        );
        assert_eq!(
            workload_of(&[owner("Node", "ip-10-0-1-12.ec2.internal", true)], &none),
            wl("Node", "ip-10-0-1-12.ec2.internal"),
            "static (mirror) pods"
        );
        assert_eq!(workload_of(&[], &none), None);
        // The controller reference wins over an earlier non-controller one.
        let both = [
            owner("ConfigMap", "x", false),
            owner("DaemonSet", "ds", true),
        ];
        assert_eq!(workload_of(&both, &none), wl("DaemonSet", "ds"));
        // No controller flag at all: the first owner.
        assert_eq!(
            workload_of(&[owner("StatefulSet", "s", false)], &none),
            wl("StatefulSet", "s")
        );
    }

    #[test]
    fn pod_conversion() {
        let warnings = DataWarnings::default();
        let ctx = ConvertCtx {
            veth_prefix: "eni",
            warnings: &warnings,
        };
        let p = pod(json!({
            "metadata": { "name": "client", "namespace": "default",
                          "labels": { "pod-template-hash": "abc" },
                          "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet",
                              "name": "client-abc", "uid": "1", "controller": true }] },
            "spec": { "nodeName": "n1", "containers": [] },
            "status": { "phase": "Running", "podIP": "10.0.0.21",
                        "podIPs": [{ "ip": "10.0.0.21" }, { "ip": "fd00::21" }, { "ip": "bogus" }] },
        }));
        let m = p.to_meta(&ctx).expect("indexable");
        assert_eq!(
            m.ips,
            vec![
                "10.0.0.21".parse::<IpAddr>().expect("ip"),
                "fd00::21".parse().expect("ip")
            ]
        );
        assert_eq!(m.workload, wl("Deployment", "client"));
        assert_eq!(m.node.as_deref(), Some("n1"));
        assert_eq!(m.host_veths, vec!["enia7a3e029a7b".to_owned()]);
        assert_eq!(warnings.address.load(Ordering::Relaxed), 1);

        let done = pod(json!({ "metadata": { "name": "j", "namespace": "d" },
                               "status": { "phase": "Succeeded", "podIP": "10.0.0.5" } }));
        assert!(
            done.to_meta(&ctx).is_none(),
            "finished pods leave the index"
        );
        let host = pod(json!({ "metadata": { "name": "h", "namespace": "d" },
                               "spec": { "hostNetwork": true, "containers": [] },
                               "status": { "podIP": "10.0.0.1" } }));
        let m = host.to_meta(&ctx).expect("indexable");
        assert!(m.host_network && m.host_veths.is_empty());
        let nameless = Pod {
            metadata: ObjectMeta::default(),
            ..Pod::default()
        };
        assert!(nameless.to_meta(&ctx).is_none());
    }

    #[test]
    fn v1beta1_slice_decodes_into_v1() {
        let warnings = DataWarnings::default();
        let ctx = ConvertCtx {
            veth_prefix: "eni",
            warnings: &warnings,
        };
        let v = json!({
            "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
            "metadata": { "name": "kube-dns-x", "namespace": "kube-system",
                          "labels": { SERVICE_NAME_LABEL: "kube-dns" } },
            "addressType": "IPv4",
            "endpoints": [{ "addresses": ["198.18.1.30"], "conditions": { "ready": true },
                            "targetRef": { "kind": "Pod", "namespace": "kube-system", "name": "coredns-a" },
                            "topology": { "kubernetes.io/hostname": "node-a" } }],
            "ports": [{ "name": "dns", "protocol": "UDP", "port": 53 }],
        });
        let s = endpoint_slice_from_v1beta1(v).expect("decodes");
        let m = s.to_meta(&ctx).expect("indexable");
        assert_eq!(m.service, Some(ObjKey::new("kube-system", "kube-dns")));
        assert_eq!(m.endpoints.len(), 1);
        assert_eq!(m.endpoints[0].node.as_deref(), Some("node-a"));
        assert_eq!(
            m.endpoints[0].pod,
            Some(ObjKey::new("kube-system", "coredns-a"))
        );
        assert_eq!(m.endpoints[0].ready, Some(true));
        // A list item without apiVersion/kind and without endpoints still decodes.
        let bare = json!({ "metadata": { "name": "e", "namespace": "n" }, "addressType": "IPv4" });
        assert!(endpoint_slice_from_v1beta1(bare).is_ok());
    }

    #[test]
    fn pod_labels_are_kept_and_bounded() {
        let many: BTreeMap<String, String> = (0..MAX_POD_LABELS + 5)
            .map(|i| (format!("k{i:03}"), "v".to_owned()))
            .collect();
        let kept = kept_labels(&many);
        assert_eq!(kept.len(), MAX_POD_LABELS);
        assert!(
            kept.contains_key("k000") && !kept.contains_key(&format!("k{:03}", MAX_POD_LABELS))
        );
    }
}
