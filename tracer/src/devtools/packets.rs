//! Hand-built packets for benchmarks and the in-kernel parser tests (BPF_PROG_TEST_RUN).
//! Addresses are the lab's: client pod 198.18.1.21 → kube-dns ClusterIP 198.19.0.10.
#![cfg_attr(
    not(test),
    allow(
        dead_code,
        reason = "some builders serve only the in-kernel parser tests"
    )
)]

pub fn eth_ipv4(proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    let total = 20 + l4.len();
    p.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        64,
        proto,
        0,
        0,
    ]);
    p.extend_from_slice(&[198, 18, 1, 21, 198, 19, 0, 10]);
    p.extend_from_slice(l4);
    p
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut u = Vec::with_capacity(len);
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

pub fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    t
}

pub fn dns_message(response: bool) -> Vec<u8> {
    let mut m = vec![
        0x12,
        0x34,
        if response { 0x81 } else { 0x01 },
        if response { 0x80 } else { 0 },
    ];
    m.extend_from_slice(&[0, 1, 0, u8::from(response), 0, 0, 0, 0]);
    for label in ["kubernetes", "default", "svc", "cluster", "local"] {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    if response {
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 198, 19, 0, 1]);
    }
    m
}

/// Ethernet + IPv6 (with one hop-by-hop extension header when `hbh`) + `l4`.
pub fn eth_ipv6(next: u8, l4: &[u8], hbh: bool) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x86, 0xdd];
    let ext: &[u8] = if hbh { &[0, 0, 1, 4, 0, 0, 0, 0] } else { &[] };
    let payload_len = (ext.len() + l4.len()) as u16;
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&payload_len.to_be_bytes());
    p.push(if hbh { 0 } else { next });
    p.push(64);
    p.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x21]);
    p.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a]);
    if hbh {
        let mut e = ext.to_vec();
        if let Some(first) = e.first_mut() {
            *first = next;
        }
        p.extend_from_slice(&e);
    }
    p.extend_from_slice(l4);
    p
}

/// The frame with IPv4 source and destination swapped (a reply to it).
pub fn reply_ipv4(mut frame: Vec<u8>) -> Vec<u8> {
    if let Some(addrs) = frame.get_mut(26..34) {
        let (a, b) = addrs.split_at_mut(4);
        a.swap_with_slice(b);
    }
    frame
}

/// Inserts an 802.1Q tag with `vlan` after the MAC addresses.
pub fn with_vlan(mut frame: Vec<u8>, vlan: u16) -> Vec<u8> {
    let tag = [0x81, 0x00, (vlan >> 8) as u8 & 0x0f, vlan as u8];
    let at = 12.min(frame.len());
    frame.splice(at..at, tag);
    frame
}

/// An ICMP port unreachable (type 3 code 3) from the server quoting `quoted_ip` (IP header
/// onward), sent back to the client.
pub fn icmp_port_unreachable(quoted_ip: &[u8]) -> Vec<u8> {
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(quoted_ip);
    let mut p = eth_ipv4(1, &icmp);
    // Swap source and destination: the error travels server → client.
    if let Some(addrs) = p.get_mut(26..34) {
        addrs.copy_from_slice(&[198, 19, 0, 10, 198, 18, 1, 21]);
    }
    p
}

/// A DNS query for `name` (type A), id 0x1234.
pub fn dns_query_for(name: &str) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    m
}
