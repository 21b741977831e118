//! The DNS header and question parser ([`parse`]): random bytes, and messages built from random
//! labels (cut anywhere, with compression pointers anywhere), whose header and name must come
//! back.

use proptest::{collection::vec, prelude::*, test_runner::TestCaseError};

use super::{check, decode::labels, decode::sane_qname, target};
use crate::decode::dns::{DnsError, parse};

/// What any parse must satisfy: an error exactly when there is no header, else the header's
/// fields as they are in the bytes.
fn sane(msg: &[u8]) -> Result<(), TestCaseError> {
    match parse(msg) {
        Err(DnsError::Short(n)) => check(n == msg.len() && n < 12, || format!("short {n}")),
        Ok(info) => {
            let (h, _) = msg
                .split_first_chunk::<12>()
                .ok_or_else(|| TestCaseError::fail("parsed without a header"))?;
            prop_assert_eq!(info.id, u16::from_be_bytes([h[0], h[1]]));
            prop_assert_eq!(info.response, h[2] & 0x80 != 0);
            prop_assert_eq!(info.truncated, h[2] & 0x02 != 0);
            prop_assert_eq!(
                info.rcode.map(|r| r.0),
                info.response.then_some(h[3] & 0x0f)
            );
            prop_assert_eq!(info.answers, u16::from_be_bytes([h[6], h[7]]));
            if let Some(q) = &info.qname {
                sane_qname(q)?;
                check(u16::from_be_bytes([h[4], h[5]]) > 0, || {
                    format!("a name without a question: {q:?}")
                })?;
            }
            check(info.qname.is_some() == info.qtype.is_some(), || {
                format!("name and type go together: {info:?}")
            })
        }
    }
}

target!(
    fuzz_dns_random_bytes,
    vec(any::<u8>(), 0..600),
    |msg: Vec<u8>| sane(&msg)
);

/// A message: header, question from labels, then possibly more records' worth of bytes.
#[derive(Clone, Debug)]
struct Built {
    msg: Vec<u8>,
    /// Where the question ends.
    question_end: usize,
    name: String,
    qtype: u16,
}

fn built() -> impl Strategy<Value = Built> {
    (
        any::<[u8; 4]>(),
        1u16..4,
        any::<u16>(),
        labels(255),
        any::<u16>(),
        vec(any::<u8>(), 0..64),
    )
        .prop_map(|(head, qd, an, ls, qtype, tail)| {
            let mut msg = head.to_vec();
            msg.extend_from_slice(&qd.to_be_bytes());
            msg.extend_from_slice(&an.to_be_bytes());
            msg.extend_from_slice(&[0, 0, 0, 0]);
            for l in &ls {
                msg.push(l.len() as u8);
                msg.extend_from_slice(l.as_bytes());
            }
            msg.push(0);
            msg.extend_from_slice(&qtype.to_be_bytes());
            msg.extend_from_slice(&1u16.to_be_bytes());
            let question_end = msg.len();
            msg.extend_from_slice(&tail);
            let name = if ls.is_empty() {
                ".".to_owned()
            } else {
                ls.join(".").to_ascii_lowercase()
            };
            Built {
                msg,
                question_end,
                name,
                qtype,
            }
        })
}

target!(
    /// Well-formed messages give their name and type back; cut anywhere, the header is kept
    /// and the name is dropped exactly when the question is not whole.
    fuzz_dns_built_messages,
    (built(), any::<prop::sample::Index>()),
    |(b, cut): (Built, prop::sample::Index)| {
        sane(&b.msg)?;
        let info = parse(&b.msg).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(info.qname.as_deref(), Some(b.name.as_str()));
        prop_assert_eq!(info.qtype.map(|t| t.0), Some(b.qtype));
        let cut = cut.index(b.msg.len() + 1);
        let part = b.msg.get(..cut).unwrap_or_default();
        sane(part)?;
        if let Ok(info) = parse(part) {
            let whole = cut >= b.question_end;
            prop_assert_eq!(info.qname.is_some(), whole, "cut at {}", cut);
        }
        Ok(())
    }
);

target!(
    /// Compression pointers anywhere in the name (backwards, forwards, to themselves, past the
    /// end): an answer or no name, never a loop.
    fuzz_dns_compression_pointers,
    (built(), any::<prop::sample::Index>(), any::<u16>()),
    |(b, at, target): (Built, prop::sample::Index, u16)| {
        let mut msg = b.msg;
        let at = 12 + at.index(b.question_end.saturating_sub(12).max(1));
        let ptr = (0xc000 | (target & 0x3fff)).to_be_bytes();
        for (i, byte) in ptr.iter().enumerate() {
            if let Some(slot) = msg.get_mut(at + i) {
                *slot = *byte;
            }
        }
        sane(&msg)
    }
);
