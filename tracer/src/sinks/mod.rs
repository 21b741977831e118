//! Pipeline stage 5, the sinks: where each verdict goes once it is final. The daemon's fan-out
//! ([`Sinks`]) counts it in the [`metrics`], publishes it on the live [`stream`] for
//! `tracer observe`, and returns the stdout line (a SIEM's input), shaped by [`ocsf`].
//!
//! Observers on the socket always get the `tracer.flow/v1` line as produced (they are root on
//! the node and need the real names). Stdout, the path to a SIEM, gets it redacted with
//! `--redact-qname` and shaped as OCSF with `--format ocsf`.

use std::sync::Arc;

use serde_json::Value;

pub mod json;
pub mod metrics;
pub mod ocsf;
pub mod stream;

use self::{metrics::Metrics, ocsf::RedactMode, stream::Hub};

/// What `tracer run` prints on stdout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum StdoutFormat {
    /// One `tracer.flow/v1` JSON object per verdict.
    #[default]
    Flow,
    /// One OCSF 1.2 event per verdict (DNS Activity or Network Activity; the verdict whole in
    /// `unmapped`). Packet events are printed unchanged.
    Ocsf,
}

/// A finished line, typed: what the sinks receive.
// Verdicts and summaries are of similar size and make up nearly every line; boxing one would
// add an allocation per line without shrinking the common case.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Output {
    /// A per-flow verdict.
    Verdict(crate::verdict::Verdict),
    /// A summary of healthy answers.
    Summary(crate::verdict::summary::Summary),
    /// A packet event (`tracer run --events`, or a `tracer observe --events` client).
    Packet(crate::decode::event::PacketEvent),
}

impl Output {
    /// The JSON object of the line (packet events get `"type": "packet"`).
    fn to_value(&self) -> Result<Value, serde_json::Error> {
        match self {
            Output::Verdict(v) => serde_json::to_value(v),
            Output::Summary(s) => serde_json::to_value(s),
            Output::Packet(p) => {
                let mut line = serde_json::json!({ "type": "packet" });
                if let (Some(obj), Value::Object(ev)) =
                    (line.as_object_mut(), serde_json::to_value(p)?)
                {
                    obj.extend(ev);
                }
                Ok(line)
            }
        }
    }
}

/// A line serialized once, in both forms the sinks use.
#[derive(Debug)]
pub struct Line<'a> {
    /// The typed line.
    pub output: &'a Output,
    /// Its JSON object (filters and shapers read it).
    pub value: Arc<Value>,
    /// Its text, without the newline.
    pub text: Arc<str>,
}

/// One destination of finished lines.
pub trait Sink {
    /// Takes one line. Never blocks the daemon: a slow destination buffers or drops (counted).
    fn accept(&mut self, line: &Line<'_>);
}

impl Sink for Metrics {
    fn accept(&mut self, line: &Line<'_>) {
        self.record(line.output);
    }
}

impl Sink for Hub {
    fn accept(&mut self, line: &Line<'_>) {
        self.publish(Arc::clone(&line.text), Arc::clone(&line.value));
    }
}

/// Stdout: the SIEM's input, redacted and OCSF-shaped as asked. Packet events are printed only
/// with `--events`.
pub struct Stdout {
    out: std::io::BufWriter<std::io::Stdout>,
    format: StdoutFormat,
    redact: Option<RedactMode>,
    events: bool,
    /// Lines that could not be written.
    pub write_errors: u64,
}

impl Stdout {
    /// Stdout, buffered (flushed after every batch, not per line).
    pub fn new(format: StdoutFormat, redact: Option<RedactMode>, events: bool) -> Self {
        Self {
            out: std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()),
            format,
            redact,
            events,
            write_errors: 0,
        }
    }

    /// The text for stdout, or `None` when this line does not go there.
    fn render(&self, line: &Line<'_>) -> Option<String> {
        let packet = matches!(line.output, Output::Packet(_));
        if packet && !self.events {
            return None;
        }
        let ocsf = self.format == StdoutFormat::Ocsf && !packet;
        if self.redact.is_none() && !ocsf {
            return Some(line.text.to_string());
        }
        let mut out = Value::clone(&line.value);
        if let Some(mode) = self.redact {
            ocsf::redact_qname(&mut out, mode);
        }
        if ocsf {
            out = ocsf::to_ocsf(&out);
        }
        Some(out.to_string())
    }

    /// Flushes the buffer.
    pub fn flush(&mut self) {
        use std::io::Write as _;
        if self.out.flush().is_err() {
            self.write_errors += 1;
        }
    }
}

impl Sink for Stdout {
    fn accept(&mut self, line: &Line<'_>) {
        use std::io::Write as _;
        if let Some(text) = self.render(line)
            && writeln!(self.out, "{text}").is_err()
        {
            self.write_errors += 1;
        }
    }
}

/// The fan-out: serializes each line once and hands it to every sink.
pub struct Sinks {
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// The live stream for `tracer observe`.
    pub hub: Hub,
    /// Stdout.
    pub stdout: Stdout,
    /// Lines that could not be serialized (counted, logged).
    pub serialize_errors: u64,
}

impl Sinks {
    /// A fan-out to `hub`, `metrics` and `stdout`.
    pub fn new(hub: Hub, metrics: Metrics, stdout: Stdout) -> Self {
        Self {
            metrics,
            hub,
            stdout,
            serialize_errors: 0,
        }
    }

    /// True while a `tracer observe` client asked for packet events, or stdout prints them:
    /// worth building them otherwise not.
    pub fn wants_events(&self) -> bool {
        self.stdout.events || self.hub.wants_events()
    }

    /// Hands one line to every sink; `to_stdout` false keeps it off stdout (and the stream)
    /// while still counting it (`--answered off`).
    pub fn publish(&mut self, output: &Output, to_stdout: bool) {
        let value = match output.to_value() {
            Ok(v) => v,
            Err(err) => {
                self.serialize_errors += 1;
                tracing::warn!(%err, "line not serializable");
                return;
            }
        };
        let line = Line {
            output,
            text: Arc::from(value.to_string()),
            value: Arc::new(value),
        };
        self.metrics.accept(&line);
        if to_stdout {
            self.hub.accept(&line);
            self.stdout.accept(&line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::event::{DnsInfo, Hook, Iface, PacketEvent, Proto};
    use serde_json::json;

    fn packet() -> Output {
        Output::Packet(PacketEvent {
            ts_ns: 1,
            hook: Hook::Ingress,
            iface: Iface {
                ifindex: 7,
                name: "eni1".into(),
                kind: crate::decode::event::IfaceKind::PodVeth,
                vlan: None,
            },
            proto: Proto::Udp,
            src: "198.18.1.21".parse().expect("ip"),
            sport: 40000,
            dst: "198.19.0.10".parse().expect("ip"),
            dport: 53,
            tcp_flags: None,
            icmp: None,
            vlan: None,
            len: 60,
            dns: Some(DnsInfo {
                id: 1,
                response: false,
                rcode: None,
                truncated: false,
                qname: Some("secret.example".into()),
                qtype: None,
                answers: 0,
            }),
            drop: None,
        })
    }

    fn line(output: &Output, value: Value) -> Line<'_> {
        Line {
            output,
            text: Arc::from(value.to_string()),
            value: Arc::new(value),
        }
    }

    #[test]
    fn stdout_shapes_lines() {
        let p = packet();
        let verdict = json!({"schema": "tracer.flow/v1", "kind": "dns", "verdict": "answered",
                             "dns": {"qname": "secret.example"}});
        let plain = Stdout::new(StdoutFormat::Flow, None, false);
        // Packet events only with --events.
        assert_eq!(plain.render(&line(&p, p.to_value().expect("json"))), None);
        assert_eq!(
            plain
                .render(&line(&p, verdict.clone()))
                .map(|t| serde_json::from_str::<Value>(&t).ok()),
            None,
            "a packet output stays off stdout whatever its value"
        );
        let siem = Stdout::new(StdoutFormat::Ocsf, Some(RedactMode::Hash), true);
        let v = p.to_value().expect("json");
        assert_eq!(v["type"], "packet");
        let text = siem.render(&line(&p, v)).expect("printed with --events");
        assert!(text.contains(r#""type":"packet""#), "{text}");
        assert!(text.contains(r#""qname":"sha256:"#), "{text}");
        assert!(!text.contains("secret.example"), "redacted: {text}");
    }

    #[tokio::test]
    async fn fan_out_serializes_once_and_counts() {
        let hub = Hub::new();
        let metrics = Metrics::new();
        let mut sinks = Sinks::new(
            hub.clone(),
            metrics.clone(),
            Stdout::new(StdoutFormat::Flow, None, false),
        );
        let mut sums = crate::verdict::summary::Summaries::default();
        let mut buckets = [0u32; tracer_common::LATENCY_BUCKETS];
        buckets[tracer_common::latency_bucket(1_000_000)] = 3;
        sums.add(
            crate::verdict::summary::Group {
                client: "198.18.1.21".parse().expect("ip"),
                server: "198.18.1.30".parse().expect("ip"),
                qtype: 1,
                rcode: 0,
                origin: crate::decode::record::Origin::Pod,
            },
            3,
            3_000_000,
            &buckets,
        );
        let summary = Output::Summary(sums.take("node-a", 0, 1).remove(0));
        sinks.publish(&summary, true);
        sinks.publish(&packet(), true);
        // Counted but kept off the stream (`--answered off`).
        sinks.publish(&summary, false);
        assert_eq!(hub.history_len(), (1, 1));
        let text = metrics.render();
        assert!(
            text.contains(
                r#"tracer_verdicts_total{verdict="answered",kind="dns",reason="",interface_kind=""} 6"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"tracer_dns_answers_total{server="198.18.1.30",rcode="NOERROR"} 6"#),
            "{text}"
        );
        assert_eq!(sinks.serialize_errors, 0);
    }
}
