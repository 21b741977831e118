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

/// Where each verdict and packet event goes.
#[derive(Clone, Debug)]
pub struct Sinks {
    hub: Hub,
    metrics: Metrics,
    format: StdoutFormat,
    redact: Option<RedactMode>,
}

impl Sinks {
    /// A fan-out to `hub` and `metrics`, with the stdout shaping asked for.
    pub fn new(
        hub: Hub,
        metrics: Metrics,
        format: StdoutFormat,
        redact: Option<RedactMode>,
    ) -> Self {
        Self {
            hub,
            metrics,
            format,
            redact,
        }
    }

    /// Counts a summary line in the metrics.
    pub fn record_summary(&self, s: &crate::verdict::summary::Summary) {
        self.metrics.record_summary(s);
    }

    /// True while a `tracer observe` client asked for packet events: worth building them even
    /// when stdout does not print them.
    pub fn wants_events(&self) -> bool {
        self.hub.wants_events()
    }

    /// Handles one verdict or packet event: counts it (verdicts), publishes it to observers,
    /// and returns the line for stdout when `to_stdout` (without a newline).
    pub fn emit(&self, value: Value, to_stdout: bool) -> Option<String> {
        self.metrics.record_verdict(&value);
        let line: Arc<str> = Arc::from(value.to_string());
        let value = Arc::new(value);
        self.hub.publish(Arc::clone(&line), Arc::clone(&value));
        if !to_stdout {
            return None;
        }
        let is_verdict = !json::is_packet_event(&value);
        let ocsf = self.format == StdoutFormat::Ocsf && is_verdict;
        if self.redact.is_none() && !ocsf {
            return Some(line.to_string());
        }
        let mut out = Value::clone(&value);
        if let Some(mode) = self.redact {
            ocsf::redact_qname(&mut out, mode);
        }
        if ocsf {
            out = ocsf::to_ocsf(&out);
        }
        Some(out.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn verdict() -> Value {
        json!({"schema": "tracer.flow/v1", "kind": "dns", "verdict": "answered",
               "dns": {"qname": "secret.example"}})
    }

    #[tokio::test]
    async fn fan_out() {
        let hub = Hub::new();
        let metrics = Metrics::new();
        let plain = Sinks::new(hub.clone(), metrics.clone(), StdoutFormat::Flow, None);
        let line = plain.emit(verdict(), true).expect("stdout line");
        assert_eq!(
            serde_json::from_str::<Value>(&line).expect("json"),
            verdict()
        );
        assert_eq!(plain.emit(json!({"type": "packet"}), false), None);
        assert_eq!(hub.history_len(), (1, 1));
        assert!(metrics.render().contains(
            r#"tracer_verdicts_total{verdict="answered",kind="dns",reason="",interface_kind=""} 1"#
        ));
        assert!(!plain.wants_events());

        let siem = Sinks::new(
            hub.clone(),
            metrics,
            StdoutFormat::Ocsf,
            Some(RedactMode::Hash),
        );
        let line = siem.emit(verdict(), true).expect("stdout line");
        let v: Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["class_uid"], 4003);
        assert_eq!(v["query"]["hostname"], ocsf::hash_qname("secret.example"));
        assert!(!line.contains("secret.example"), "{line}");
        // Packet events stay packet events on stdout, redacted too.
        let p = siem
            .emit(
                json!({"type": "packet", "dns": {"qname": "secret.example"}}),
                true,
            )
            .expect("line");
        assert!(p.starts_with(r#"{"dns":{"qname":"sha256:"#), "{p}");
        // Observers got the unredacted lines.
        assert_eq!(hub.history_len(), (2, 2));
    }
}
