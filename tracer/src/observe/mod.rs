//! `tracer observe`: the client of the daemon's live stream ([`crate::sinks::stream`]). It sends
//! one filtered request ([`client`]) and prints what comes back as JSON lines or as a table
//! ([`table`]). It reads the daemon's JSON lines (schema `tracer.flow/v1`), never its Rust types.

pub mod client;
pub mod table;
