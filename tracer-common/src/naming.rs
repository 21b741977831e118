//! Names the Amazon VPC CNI gives to host-side veths, shared by the daemon (which finds a pod's
//! veth from its namespace and name) and the lab (which creates veths named the same way).

extern crate alloc;

use alloc::string::String;
use sha1::{Digest, Sha1};

/// VPC CNI's default host veth prefix.
pub const VETH_PREFIX_ENI: &str = "eni";
/// Host veth prefix of strict-mode branch-ENI pods (pods with security groups).
pub const VETH_PREFIX_VLAN: &str = "vlan";

/// The VPC CNI host-side veth name of a pod: `prefix` + the first 11 hex characters of
/// sha1("<namespace>.<pod name>"). Linux caps names at 15 bytes, so the prefix is at most 4.
pub fn host_veth_name(prefix: &str, namespace: &str, pod: &str) -> String {
    let mut hasher = Sha1::new();
    hasher.update(namespace.as_bytes());
    hasher.update(b".");
    hasher.update(pod.as_bytes());
    let digest = hasher.finalize();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut name = String::with_capacity(prefix.len() + 11);
    name.push_str(prefix);
    for b in digest.iter() {
        for nibble in [b >> 4, b & 0xf] {
            if name.len() == prefix.len() + 11 {
                return name;
            }
            if let Some(&c) = HEX.get(usize::from(nibble)) {
                name.push(char::from(c));
            }
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_follow_vpc_cni_rule() {
        // python3: hashlib.sha1(b"default.client").hexdigest()[:11]
        assert_eq!(host_veth_name("eni", "default", "client"), "enia7a3e029a7b");
        assert_eq!(
            host_veth_name("eni", "kube-system", "coredns-a"),
            "eni54dcd3d4f3b"
        );
        assert_eq!(
            host_veth_name("vlan", "default", "sg-client"),
            "vland65337fa1ab"
        );
        assert_eq!(
            host_veth_name("eni", "kube-system", "coredns-b"),
            "eni11edfe6a182"
        );
        assert_eq!(host_veth_name("", "a", "b").len(), 11);
        assert!(host_veth_name("vlan", "very-long-namespace", "a-very-long-pod-name").len() <= 15);
    }
}
