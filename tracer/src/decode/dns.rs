//! DNS header and first question from a bounded, possibly truncated copy of a message.
//!
//! The header is 12 fixed bytes and is read by hand; the question name is decoded with
//! hickory-proto, which follows compression pointers within the copied bytes and rejects
//! malformed names (loops, overlong labels) with an error rather than a panic.

use hickory_proto::{
    op::Query,
    serialize::binary::{BinDecodable as _, BinDecoder},
};

use crate::decode::event::{DnsInfo, QType, Rcode};

const HEADER_LEN: usize = 12;

/// Why a DNS copy could not be decoded at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DnsError {
    /// Fewer than 12 bytes: not even a header.
    #[error("DNS message shorter than its 12-byte header ({0} bytes)")]
    Short(usize),
}

/// Decodes the header and, when the copy holds it whole, the first question.
pub fn parse(msg: &[u8]) -> Result<DnsInfo, DnsError> {
    let Some(header) = msg.get(..HEADER_LEN) else {
        return Err(DnsError::Short(msg.len()));
    };
    let [
        id_hi,
        id_lo,
        flags_hi,
        flags_lo,
        qd_hi,
        qd_lo,
        an_hi,
        an_lo,
        ..,
    ] = *header
    else {
        return Err(DnsError::Short(msg.len()));
    };
    let response = flags_hi & 0x80 != 0;
    let truncated = flags_hi & 0x02 != 0;
    let qdcount = u16::from_be_bytes([qd_hi, qd_lo]);
    let mut info = DnsInfo {
        id: u16::from_be_bytes([id_hi, id_lo]),
        response,
        rcode: response.then_some(Rcode(flags_lo & 0x0f)),
        truncated,
        qname: None,
        qtype: None,
        answers: u16::from_be_bytes([an_hi, an_lo]),
    };
    if qdcount > 0 {
        let mut decoder = BinDecoder::new(msg);
        if decoder.read_slice(HEADER_LEN).is_ok()
            && let Ok(query) = Query::read(&mut decoder)
        {
            let name = query.name().to_lowercase().to_ascii();
            let name = name.strip_suffix('.').unwrap_or(&name);
            info.qname = Some(if name.is_empty() {
                ".".into()
            } else {
                name.to_owned()
            });
            info.qtype = Some(QType(u16::from(query.query_type())));
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `whoami.lab.tracer. TXT`, id 0x1234, RD set.
    fn query() -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["whoami", "lab", "tracer"] {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.extend_from_slice(&[0, 0, 16, 0, 1]);
        m
    }

    #[test]
    fn query_header_and_question() {
        let info = parse(&query()).expect("valid query");
        assert_eq!(info.id, 0x1234);
        assert!(!info.response);
        assert_eq!(info.rcode, None);
        assert_eq!(info.qname.as_deref(), Some("whoami.lab.tracer"));
        assert_eq!(info.qtype, Some(QType(16)));
    }

    #[test]
    fn nxdomain_response() {
        let mut m = query();
        m[2] = 0x81;
        m[3] = 0x83;
        let info = parse(&m).expect("valid response");
        assert!(info.response);
        assert_eq!(info.rcode, Some(Rcode::NXDOMAIN));
    }

    #[test]
    fn truncated_question_keeps_header() {
        let m = query();
        let info = parse(&m[..20]).expect("header present");
        assert_eq!(info.id, 0x1234);
        assert_eq!(info.qname, None);
    }

    #[test]
    fn short_and_garbage() {
        assert_eq!(parse(&[1, 2, 3]), Err(DnsError::Short(3)));
        // A compression pointer to itself must not loop.
        let mut m = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        let info = parse(&m).expect("header present");
        assert_eq!(info.qname, None);
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = parse(&junk);
        }
    }

    #[test]
    fn forward_compression_pointer_is_refused() {
        // A question name pointing forward (never produced by real servers; a classic way to
        // build loops) is refused by the decoder: header kept, no name.
        let mut m = vec![0, 7, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&[0xc0, 18, 0, 1, 0, 1]);
        m.extend_from_slice(&[3, b'f', b'o', b'o', 0]);
        let info = parse(&m).expect("header present");
        assert_eq!(info.id, 7);
        assert_eq!(info.qname, None);
    }
}
