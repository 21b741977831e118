//! Typed protocol values carried by events and verdicts: TCP flags, ICMP errors, DNS response
//! codes and query types. They travel as numbers; text is made only when a line is serialized
//! (`Display` and `Serialize` agree), so no stage parses another stage's strings.

use std::fmt;

use serde::{Serialize, Serializer};

/// TCP flag bits, as in the TCP header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
    /// URG.
    pub const URG: u8 = 0x20;

    /// Names in conventional order.
    const NAMES: [(u8, &'static str); 6] = [
        (Self::SYN, "SYN"),
        (Self::RST, "RST"),
        (Self::FIN, "FIN"),
        (Self::PSH, "PSH"),
        (Self::ACK, "ACK"),
        (Self::URG, "URG"),
    ];

    /// True when every bit of `bits` is set.
    pub fn has(self, bits: u8) -> bool {
        self.0 & bits == bits
    }

    /// A SYN without ACK.
    pub fn is_syn(self) -> bool {
        self.has(Self::SYN) && !self.has(Self::ACK)
    }

    /// A SYN-ACK.
    pub fn is_synack(self) -> bool {
        self.has(Self::SYN | Self::ACK)
    }

    /// SYN or RST set: a segment that opens or ends a connection.
    pub fn is_control(self) -> bool {
        self.0 & (Self::SYN | Self::RST) != 0
    }

    /// Parses `SYN|ACK`-style text (unknown words are ignored). For tests.
    #[cfg(test)]
    pub fn parse(text: &str) -> Self {
        Self(
            text.split('|')
                .map(|w| {
                    Self::NAMES
                        .iter()
                        .find(|(_, n)| n.eq_ignore_ascii_case(w.trim()))
                        .map_or(0, |(b, _)| *b)
                })
                .fold(0, |a, b| a | b),
        )
    }
}

impl fmt::Display for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (bit, name) in Self::NAMES {
            if self.0 & bit != 0 {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("NONE")?;
        }
        Ok(())
    }
}

/// An ICMP destination-unreachable error (v4 type 3, v6 type 1), by code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IcmpKind {
    /// Network unreachable (v4 code 0, v6 code 0).
    NetUnreachable,
    /// Host unreachable (v4 1, v6 3).
    HostUnreachable,
    /// Protocol unreachable (v4 2).
    ProtocolUnreachable,
    /// Port unreachable (v4 3, v6 4).
    PortUnreachable,
    /// Fragmentation needed (v4 4): path-MTU discovery, not a rejection.
    FragmentationNeeded,
    /// Administratively prohibited (v4 9, 10, 13; v6 1): a firewall rejected it.
    AdminProhibited,
    /// Another code.
    Other(u8),
}

impl IcmpKind {
    /// The kind of an unreachable error with `code` (ICMPv6 when `v6`).
    pub fn from_code(v6: bool, code: u8) -> Self {
        match (v6, code) {
            (_, 0) => Self::NetUnreachable,
            (false, 1) | (true, 3) => Self::HostUnreachable,
            (false, 2) => Self::ProtocolUnreachable,
            (false, 3) | (true, 4) => Self::PortUnreachable,
            (false, 4) => Self::FragmentationNeeded,
            (false, 9 | 10 | 13) | (true, 1) => Self::AdminProhibited,
            (_, c) => Self::Other(c),
        }
    }

    /// Whether the error rejects the quoted packet (everything but "fragmentation needed",
    /// which is path-MTU discovery).
    pub fn rejects(self) -> bool {
        self != Self::FragmentationNeeded
    }

    /// Parses the serialized name. For tests.
    #[cfg(test)]
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "net_unreachable" => Self::NetUnreachable,
            "host_unreachable" => Self::HostUnreachable,
            "protocol_unreachable" => Self::ProtocolUnreachable,
            "port_unreachable" => Self::PortUnreachable,
            "fragmentation_needed" => Self::FragmentationNeeded,
            "administratively_prohibited" => Self::AdminProhibited,
            other => Self::Other(other.strip_prefix("unreachable_code_")?.parse().ok()?),
        })
    }
}

impl fmt::Display for IcmpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NetUnreachable => f.write_str("net_unreachable"),
            Self::HostUnreachable => f.write_str("host_unreachable"),
            Self::ProtocolUnreachable => f.write_str("protocol_unreachable"),
            Self::PortUnreachable => f.write_str("port_unreachable"),
            Self::FragmentationNeeded => f.write_str("fragmentation_needed"),
            Self::AdminProhibited => f.write_str("administratively_prohibited"),
            Self::Other(c) => write!(f, "unreachable_code_{c}"),
        }
    }
}

/// A DNS response code (RFC 1035 / 6895; the header's 4 bits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rcode(pub u8);

impl Rcode {
    /// No error.
    pub const NOERROR: Self = Self(0);
    /// The server could not parse the query.
    pub const FORMERR: Self = Self(1);
    /// The server failed to answer.
    pub const SERVFAIL: Self = Self(2);
    /// The name does not exist.
    pub const NXDOMAIN: Self = Self(3);
    /// Not implemented.
    pub const NOTIMP: Self = Self(4);
    /// Refused.
    pub const REFUSED: Self = Self(5);

    const NAMES: [&'static str; 11] = [
        "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
        "NXRRSET", "NOTAUTH", "NOTZONE",
    ];

    /// Parses a name (`NXDOMAIN`) or `RCODE<n>`. For tests.
    #[cfg(test)]
    pub fn parse(text: &str) -> Option<Self> {
        if let Some(i) = Self::NAMES.iter().position(|n| *n == text) {
            return u8::try_from(i).ok().map(Self);
        }
        text.strip_prefix("RCODE")?.parse().ok().map(Self)
    }
}

impl fmt::Display for Rcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Self::NAMES.get(usize::from(self.0)) {
            Some(n) => f.write_str(n),
            None => write!(f, "RCODE{}", self.0),
        }
    }
}

/// A DNS query type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QType(pub u16);

impl QType {
    /// A.
    #[cfg(test)]
    pub const A: Self = Self(1);
    /// AAAA.
    #[cfg(test)]
    pub const AAAA: Self = Self(28);

    /// Parses a mnemonic (`AAAA`). For tests.
    #[cfg(test)]
    pub fn parse(text: &str) -> Option<Self> {
        text.parse::<hickory_proto::rr::RecordType>()
            .ok()
            .map(|t| Self(u16::from(t)))
    }
}

impl fmt::Display for QType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", hickory_proto::rr::RecordType::from(self.0))
    }
}

/// Serializes through `Display`.
macro_rules! serialize_display {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}
serialize_display!(TcpFlags, IcmpKind, Rcode, QType);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips() {
        assert_eq!(TcpFlags(0x12).to_string(), "SYN|ACK");
        assert_eq!(TcpFlags(0x14).to_string(), "RST|ACK");
        assert_eq!(TcpFlags(0).to_string(), "NONE");
        assert_eq!(TcpFlags::parse("SYN|ACK"), TcpFlags(0x12));
        assert!(TcpFlags(0x02).is_syn() && !TcpFlags(0x12).is_syn());
        assert!(TcpFlags(0x12).is_synack());
        for code in 0..16u8 {
            for v6 in [false, true] {
                let k = IcmpKind::from_code(v6, code);
                assert_eq!(IcmpKind::parse(&k.to_string()), Some(k));
            }
        }
        assert!(!IcmpKind::FragmentationNeeded.rejects());
        for r in 0..=15u8 {
            assert_eq!(Rcode::parse(&Rcode(r).to_string()), Some(Rcode(r)));
        }
        assert_eq!(Rcode::NXDOMAIN.to_string(), "NXDOMAIN");
        assert_eq!(QType::A.to_string(), "A");
        assert_eq!(QType::parse("AAAA"), Some(QType::AAAA));
        assert_eq!(
            serde_json::to_string(&(Rcode(3), QType(16), TcpFlags(0x02))).expect("json"),
            r#"["NXDOMAIN","TXT","SYN"]"#
        );
    }
}
