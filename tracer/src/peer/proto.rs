//! The peer protocol: one JSON object per line over mutual TLS. A request lists queries (by
//! the key every node sees the same way: client address, port and DNS id) with when the
//! asking node first saw them; the response says, per query, what this node saw.
//!
//! Lines are bounded ([`MAX_LINE`]), requests too ([`MAX_ASKS`]); anything else gets an
//! `error` response and the connection is closed.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::verdict::{PeerDrop, PeerFinding, PeerReason};

/// Protocol version ([`Request::v`], [`Response::v`]).
pub const VERSION: u32 = 1;
/// Longest line either side reads, bytes.
pub const MAX_LINE: usize = 256 * 1024;
/// Most queries in one request.
pub const MAX_ASKS: usize = 256;

/// A request: "what did you see of these queries?"
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// [`VERSION`].
    pub v: u32,
    /// The queries, at most [`MAX_ASKS`].
    pub asks: Vec<Ask>,
}

/// One query asked about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ask {
    /// The asker's ticket, echoed in the answer.
    pub n: u64,
    /// Client address (before any SNAT; pod-to-pod traffic in a VPC is not translated).
    pub client: IpAddr,
    /// Client port.
    pub port: u16,
    /// DNS message id.
    pub id: u16,
    /// The replica the query was sent to (after DNAT).
    pub server: IpAddr,
    /// When the asking node first saw the query: wall clock, ns since the Unix epoch.
    pub sent_unix_ns: i64,
    /// The asking node's window: how long after `sent` the query could still be on its way.
    pub window_ms: u64,
}

/// A sighting on the answering node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// Interface name there.
    pub interface: String,
    /// Wall clock there, ns since the Unix epoch (null when not recorded).
    #[serde(default)]
    pub unix_ns: Option<i64>,
}

/// What the answering node saw of one query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The ticket of the [`Ask`].
    pub n: u64,
    /// The finding.
    pub finding: PeerFinding,
    /// Why it could not say (iff `unknown`).
    #[serde(default)]
    pub reason: Option<PeerReason>,
    /// The query's arrival at the node.
    #[serde(default)]
    pub arrived: Option<Seen>,
    /// The query leaving toward the replica.
    #[serde(default)]
    pub to_replica: Option<Seen>,
    /// The reply leaving the node.
    #[serde(default)]
    pub reply_left: Option<Seen>,
    /// A drop on the node.
    #[serde(default)]
    pub drop: Option<PeerDrop>,
}

impl Answer {
    /// An answer that can only say why it cannot say.
    pub fn unknown(n: u64, reason: PeerReason) -> Self {
        Self {
            n,
            finding: PeerFinding::Unknown,
            reason: Some(reason),
            arrived: None,
            to_replica: None,
            reply_left: None,
            drop: None,
        }
    }
}

/// The response to one [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// [`VERSION`].
    pub v: u32,
    /// The answering node's name.
    pub node: String,
    /// One per ask, in any order.
    #[serde(default)]
    pub answers: Vec<Answer>,
    /// Set when the request was refused (then `answers` is empty and the connection closes).
    #[serde(default)]
    pub error: Option<String>,
}

/// Why a request line was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// Not JSON of the request's shape.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// Another protocol version.
    #[error("protocol version {0} is not spoken here (this tracer speaks {VERSION})")]
    Version(u32),
    /// Too many asks.
    #[error("{0} queries in one request (at most {MAX_ASKS})")]
    TooMany(usize),
}

/// Parses and checks one request line.
pub fn parse_request(line: &[u8]) -> Result<Request, ProtoError> {
    let req: Request =
        serde_json::from_slice(line).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    if req.v != VERSION {
        return Err(ProtoError::Version(req.v));
    }
    if req.asks.len() > MAX_ASKS {
        return Err(ProtoError::TooMany(req.asks.len()));
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask() -> Ask {
        Ask {
            n: 7,
            client: "198.18.1.21".parse().expect("ip"),
            port: 40_000,
            id: 0x1234,
            server: "198.18.2.30".parse().expect("ip"),
            sent_unix_ns: 1_700_000_000_000_000_000,
            window_ms: 2000,
        }
    }

    #[test]
    fn requests_round_trip_and_bad_ones_are_refused_with_a_reason() {
        let req = Request {
            v: VERSION,
            asks: vec![ask()],
        };
        let line = serde_json::to_vec(&req).expect("serializes");
        assert_eq!(parse_request(&line), Ok(req));
        assert!(matches!(
            parse_request(b"{\"v\":1,\"asks\":[{\"n\":1}]}"),
            Err(ProtoError::Malformed(_))
        ));
        assert!(matches!(
            parse_request(b"\xff\xfe"),
            Err(ProtoError::Malformed(_))
        ));
        assert_eq!(
            parse_request(b"{\"v\":2,\"asks\":[]}"),
            Err(ProtoError::Version(2))
        );
        let many = Request {
            v: VERSION,
            asks: vec![ask(); MAX_ASKS + 1],
        };
        let line = serde_json::to_vec(&many).expect("serializes");
        assert_eq!(parse_request(&line), Err(ProtoError::TooMany(MAX_ASKS + 1)));
    }

    #[test]
    fn answers_parse_with_optional_fields_left_out() {
        let a: Answer =
            serde_json::from_str(r#"{"n":3,"finding":"request_lost"}"#).expect("parses");
        assert_eq!(a.finding, PeerFinding::RequestLost);
        assert!(a.arrived.is_none() && a.reason.is_none());
        let r: Response = serde_json::from_str(
            r#"{"v":1,"node":"b","answers":[{"n":1,"finding":"unknown","reason":"peer_loss"}]}"#,
        )
        .expect("parses");
        assert_eq!(r.answers[0].reason, Some(PeerReason::PeerLoss));
    }
}
