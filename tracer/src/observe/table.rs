//! The table outputs of `tracer observe` (`-o table`, `-o wide`, `-o columns=…`): rows rendered
//! one at a time as they stream (a table crate that measures the whole table first cannot work
//! on an endless stream), Kubernetes names first and the reason last.
//!
//! Nothing is ever cut. Each column has a nominal width and rows line up at those stops; a
//! longer cell is printed whole and pushes the rest of its row right. On a terminal every line
//! fits its width: a cell that does not fit moves to a continuation line (indented under the
//! second column), long text (the hint) is wrapped at word boundaries, and the column set
//! shrinks with the width (see [`Layout::table`]). Without a terminal (a pipe, a file) a record
//! is one line, whole, so `grep` sees every name.
//!
//! Node names are shortened by dropping the domain (`ip-192-168-101-23.eu-west-1.compute.internal`
//! → `ip-192-168-101-23`): the distinguishing part stays, and `--node` accepts the short form.
//!
//! Rows come in the order the daemon decided the verdicts; the first column, DECIDED, is that
//! time (the `decided_at` the server stamps on each line). A lost query is decided one window
//! (5 s) after it was sent: its STARTED time (`-o wide`, the JSON's `time`) is earlier.
//!
//! Every cell is sanitized: control and bidirectional-override characters (a query name is
//! attacker-chosen) are replaced, so nothing a pod sends can drive the operator's terminal.

use anstyle::{AnsiColor, Style};
use serde_json::Value;

use crate::sinks::{
    json::{field, is_packet_event, str_at},
    stream::{DECIDED_AT, filter::short_node},
};

/// Gap between columns.
const GAP: usize = 2;
/// Narrowest width honoured; a narrower terminal is treated as this wide.
pub const MIN_WIDTH: usize = 40;
/// Below this width the default table gives each record two lines: who (DECIDED, NAMESPACE,
/// POD, VERDICT), then what and why (QUERY/DEST, REASON); from it, one line that also shows
/// SERVER and WHERE.
pub const ONE_LINE_FROM: usize = 160;

/// A column of the table outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    /// When the daemon decided the verdict (`decided_at`), `HH:MM:SS.mmm` UTC.
    Decided,
    /// First sighting of the flow (`time`), `HH:MM:SS.mmm` UTC.
    Started,
    /// Node that reported the line, without its domain.
    Node,
    /// Namespace of the client pod.
    Namespace,
    /// Client pod name, else the client IP.
    Pod,
    /// Verdict (coloured on a terminal).
    Verdict,
    /// `dns` or `egress`.
    Kind,
    /// Query name and type, or `ip:port/proto` for egress.
    Dest,
    /// Server pod (`@node` when on another node), else the Service or IP.
    Server,
    /// Last observation point: interface and stage.
    Where,
    /// DNS or connection latency; percentiles for a summary line.
    Latency,
    /// Flows (queries, connections) a summary line stands for.
    Count,
    /// Terse facts: rcode and latency, drop reason and location, rejection, retries.
    Reason,
    /// The daemon's one-sentence explanation.
    Hint,
}

impl Column {
    /// Every column, in `-o wide` order.
    pub const ALL: [Self; 14] = [
        Self::Decided,
        Self::Started,
        Self::Node,
        Self::Namespace,
        Self::Pod,
        Self::Verdict,
        Self::Kind,
        Self::Dest,
        Self::Server,
        Self::Where,
        Self::Latency,
        Self::Count,
        Self::Reason,
        Self::Hint,
    ];

    /// Name for `-o columns=`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Decided => "decided",
            Self::Started => "started",
            Self::Node => "node",
            Self::Namespace => "namespace",
            Self::Pod => "pod",
            Self::Verdict => "verdict",
            Self::Kind => "kind",
            Self::Dest => "dest",
            Self::Server => "server",
            Self::Where => "where",
            Self::Latency => "latency",
            Self::Count => "count",
            Self::Reason => "reason",
            Self::Hint => "hint",
        }
    }

    /// Parses a `-o columns=` name (also `time` for decided, `query` for dest, `ns`).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "time" => Some(Self::Decided),
            "query" | "qname" => Some(Self::Dest),
            "ns" => Some(Self::Namespace),
            _ => Self::ALL.into_iter().find(|c| c.name() == s),
        }
    }

    const fn header(self) -> &'static str {
        match self {
            Self::Decided => "DECIDED",
            Self::Started => "STARTED",
            Self::Node => "NODE",
            Self::Namespace => "NAMESPACE",
            Self::Pod => "POD",
            Self::Verdict => "VERDICT",
            Self::Kind => "KIND",
            Self::Dest => "QUERY/DEST",
            Self::Server => "SERVER",
            Self::Where => "WHERE",
            Self::Latency => "LATENCY",
            Self::Count => "COUNT",
            Self::Reason => "REASON",
            Self::Hint => "HINT",
        }
    }

    /// Where the next column starts, relative to this one: wide enough for the usual EKS value
    /// (a longer one pushes the rest of its row right, it is never cut).
    const fn nominal(self) -> usize {
        match self {
            Self::Decided | Self::Started => 12,
            Self::Node => 18,
            Self::Namespace => 11,
            Self::Pod => 32,
            Self::Verdict => 16,
            Self::Kind => 6,
            Self::Dest => 40,
            Self::Server => 24,
            Self::Where => 14,
            Self::Latency => 9,
            Self::Count => 5,
            Self::Reason | Self::Hint => 0,
        }
    }
}

/// Parses the list of `-o columns=a,b,c`.
pub fn parse_columns(list: &str) -> Result<Vec<Column>, String> {
    let cols = list
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            Column::parse(s).ok_or_else(|| {
                format!(
                    "unknown column {:?}; columns: {}",
                    s.trim(),
                    Column::ALL.map(Column::name).join(",")
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if cols.is_empty() {
        return Err(format!(
            "no columns given; e.g. -o columns=decided,pod,verdict,dest,reason (columns: {})",
            Column::ALL.map(Column::name).join(",")
        ));
    }
    Ok(cols)
}

/// How records are laid out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Columns, in order.
    pub columns: Vec<Column>,
    /// Terminal width: every line fits it. `None`: one line per record, nothing wrapped.
    pub width: Option<usize>,
    /// Columns that always start a continuation line (the narrow default table).
    pub breaks: Vec<Column>,
    /// Print the hint of a problem verdict (not `answered`/`established`) on its own lines
    /// under the row.
    pub hint_line: bool,
    /// Colour the verdict and the header (ANSI SGR).
    pub color: bool,
}

impl Layout {
    /// The default `-o table`: on a terminal of `width` columns (every line fits, the hint of
    /// a problem on its own lines; see [`ONE_LINE_FROM`]), or without one (`None`: one whole
    /// line per record with every column of a wide terminal, the hint last).
    pub fn table(width: Option<usize>, color: bool) -> Self {
        use Column::*;
        match width {
            None => Self {
                columns: vec![
                    Decided, Namespace, Pod, Verdict, Dest, Server, Where, Reason, Hint,
                ],
                width: None,
                breaks: Vec::new(),
                hint_line: false,
                color,
            },
            Some(w) => {
                let w = w.max(MIN_WIDTH);
                let one_line = w >= ONE_LINE_FROM;
                let columns = if one_line {
                    vec![
                        Decided, Namespace, Pod, Verdict, Dest, Server, Where, Reason,
                    ]
                } else {
                    vec![Decided, Namespace, Pod, Verdict, Dest, Reason]
                };
                Self {
                    columns,
                    width: Some(w),
                    breaks: if one_line { Vec::new() } else { vec![Dest] },
                    hint_line: true,
                    color,
                }
            }
        }
    }

    /// `-o wide`: every column, one whole line per record, whatever the terminal.
    pub fn wide(color: bool) -> Self {
        Self {
            columns: Column::ALL.to_vec(),
            width: None,
            breaks: Vec::new(),
            hint_line: false,
            color,
        }
    }

    /// `-o columns=…`: these columns, fitted to `width` when on a terminal.
    pub fn custom(columns: Vec<Column>, width: Option<usize>, color: bool) -> Self {
        Self {
            columns,
            width: width.map(|w| w.max(MIN_WIDTH)),
            breaks: Vec::new(),
            hint_line: false,
            color,
        }
    }

    /// Start of each column on a record's first line.
    fn stops(&self) -> Vec<usize> {
        let mut at = 0;
        self.columns
            .iter()
            .map(|c| {
                let stop = at;
                at += c.nominal() + GAP;
                stop
            })
            .collect()
    }

    /// Indent of continuation lines: under the second column.
    fn indent(&self) -> usize {
        let indent = self.columns.first().map_or(0, |c| c.nominal() + GAP);
        match self.width {
            Some(w) if indent + 20 > w => 0,
            _ => indent,
        }
    }

    /// The header (one or more lines, without a trailing newline).
    pub fn header(&self) -> String {
        let cells: Vec<Placed> = self
            .columns
            .iter()
            .map(|c| Placed {
                text: c.header().to_owned(),
                style: None,
                break_before: self.breaks.contains(c),
            })
            .collect();
        let text = self.flow(&cells);
        if self.color {
            let bold = Style::new().bold();
            text.lines()
                .map(|l| format!("{}{l}{}", bold.render(), bold.render_reset()))
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            text
        }
    }

    /// One record (one or more lines, without a trailing newline) for a verdict, summary or
    /// packet event line. Never panics, whatever the JSON.
    pub fn row(&self, v: &Value) -> String {
        let cells = if is_packet_event(v) {
            packet_cells(v)
        } else {
            verdict_cells(v)
        };
        let placed: Vec<Placed> = self
            .columns
            .iter()
            .map(|c| Placed {
                text: sanitize(&cells.get(*c)),
                style: (*c == Column::Verdict && self.color).then(|| verdict_style(&cells.verdict)),
                break_before: self.breaks.contains(c),
            })
            .collect();
        let mut out = self.flow(&placed);
        if self.hint_line
            && cells.problem
            && !cells.hint.is_empty()
            && !self.columns.contains(&Column::Hint)
        {
            // `↳ ` then the sentence, wrapped, its lines aligned after the arrow.
            let indent = self.indent();
            let avail = self
                .width
                .map_or(usize::MAX, |w| w.saturating_sub(indent + 2));
            for (i, line) in wrap(&sanitize(&cells.hint), avail.max(1))
                .into_iter()
                .enumerate()
            {
                out.push('\n');
                out.push_str(&" ".repeat(indent));
                out.push_str(if i == 0 { "↳ " } else { "  " });
                out.push_str(&line);
            }
        }
        out
    }

    /// Places cells at their stops, moving what does not fit the width to continuation lines.
    fn flow(&self, cells: &[Placed]) -> String {
        let stops = self.stops();
        let indent = self.indent();
        let mut lines: Vec<String> = Vec::new();
        let mut line = Line::default();
        let mut first = true;
        for (cell, stop) in cells.iter().zip(stops) {
            let n = cell.text.chars().count();
            // A forced break only on the first line: a record already on its continuation
            // line goes on there.
            if cell.break_before && first && !line.is_empty() {
                lines.push(line.take());
                first = false;
            }
            let mut start = if first {
                if line.is_empty() {
                    stop
                } else {
                    stop.max(line.len + GAP)
                }
            } else if line.is_empty() {
                indent
            } else {
                line.len + GAP
            };
            if let Some(w) = self.width
                && start + n > w
            {
                if !line.is_empty() {
                    lines.push(line.take());
                    first = false;
                    start = indent;
                }
                if start + n > w {
                    // Longer than a whole line: wrapped, never cut.
                    let chunks = wrap(&cell.text, w.saturating_sub(start).max(1));
                    let last = chunks.len().saturating_sub(1);
                    for (i, chunk) in chunks.into_iter().enumerate() {
                        line.put(start, &chunk, cell.style);
                        if i < last {
                            lines.push(line.take());
                            first = false;
                            start = indent;
                        }
                    }
                    continue;
                }
            }
            line.put(start, &cell.text, cell.style);
        }
        if !line.is_empty() {
            lines.push(line.take());
        }
        lines.join("\n")
    }
}

/// A cell about to be placed.
struct Placed {
    text: String,
    style: Option<Style>,
    break_before: bool,
}

/// A line being built: its text (with colour codes) and its visible length.
#[derive(Default)]
struct Line {
    text: String,
    len: usize,
}

impl Line {
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn put(&mut self, start: usize, text: &str, style: Option<Style>) {
        let pad = start.saturating_sub(self.len);
        self.text.push_str(&" ".repeat(pad));
        match style {
            Some(st) => {
                self.text
                    .push_str(&format!("{}{text}{}", st.render(), st.render_reset()));
            }
            None => self.text.push_str(text),
        }
        self.len += pad + text.chars().count();
    }

    fn take(&mut self) -> String {
        let line = std::mem::take(&mut self.text);
        self.len = 0;
        line.trim_end().to_owned()
    }
}

/// Splits `text` into lines of at most `width` characters at spaces; a word longer than a line
/// is split, after a `.` or `-` when there is one in its second half (never dropped).
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut cur_len = 0usize;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let mut word: Vec<char> = word.chars().collect();
        loop {
            let need = if cur_len == 0 {
                word.len()
            } else {
                cur_len + 1 + word.len()
            };
            if need <= width {
                if cur_len > 0 {
                    cur.push(' ');
                    cur_len += 1;
                }
                cur.extend(word.iter());
                cur_len += word.len();
                break;
            }
            if cur_len > 0 {
                out.push(std::mem::take(&mut cur));
                cur_len = 0;
                continue;
            }
            // A word longer than the whole line: split after a dot or dash if one is close.
            let limit = width.min(word.len());
            let at = word
                .get(..limit)
                .and_then(|head| head.iter().rposition(|&c| c == '.' || c == '-'))
                .map(|i| i + 1)
                .filter(|&i| i * 2 >= limit)
                .unwrap_or(limit);
            let rest = word.split_off(at);
            out.push(word.iter().collect());
            word = rest;
            if word.is_empty() {
                break;
            }
        }
    }
    if cur_len > 0 || out.is_empty() {
        out.push(cur);
    }
    out
}

fn verdict_style(verdict: &str) -> Style {
    let color = match verdict {
        "answered" | "established" => Some(AnsiColor::Green),
        "dropped" | "rejected" => Some(AnsiColor::Red),
        "lost_beyond_node" | "unanswered" => Some(AnsiColor::Yellow),
        _ => None,
    };
    match color {
        Some(c) => Style::new().fg_color(Some(c.into())).bold(),
        None => Style::new().dimmed(),
    }
}

/// Replaces control characters (ESC, newlines, ...) and bidirectional and zero-width format
/// characters, so a cell can neither move the cursor nor reorder what is shown.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            let format_char = matches!(c,
                '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}'
                | '\u{FEFF}' | '\u{061C}');
            if c.is_control() || format_char {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// `HH:MM:SS.mmm` (UTC) of an RFC 3339 time at `path`; the raw text when it does not parse.
fn short_time(v: &Value, path: &str) -> Option<String> {
    let t = str_at(v, path)?;
    Some(match t.parse::<jiff::Timestamp>() {
        Ok(ts) => ts.strftime("%H:%M:%S%.3f").to_string(),
        Err(_) => t.to_owned(),
    })
}

fn text(v: &Value, path: &str) -> Option<String> {
    match field(v, path)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `ip:port`, bracketing IPv6.
fn host_port(ip: Option<String>, port: Option<String>) -> Option<String> {
    let ip = ip?;
    Some(match port {
        Some(p) if ip.contains(':') => format!("[{ip}]:{p}"),
        Some(p) => format!("{ip}:{p}"),
        None => ip,
    })
}

/// The pod name (without namespace) or else the address of a side.
fn who(v: &Value, prefix: &str) -> Option<String> {
    match str_at(v, &format!("{prefix}.pod")) {
        Some(p) => Some(p.rsplit('/').next().unwrap_or(p).to_owned()),
        None => text(v, &format!("{prefix}.ip")),
    }
}

/// `1.25ms`, `0.41ms`, `1203ms`.
fn ms(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}ms")
    } else {
        format!("{x:.2}ms")
    }
}

/// Every column's text for one line (empty: not known, shown as `-`).
#[derive(Debug, Default)]
struct Cells {
    decided: String,
    started: String,
    node: String,
    namespace: String,
    pod: String,
    verdict: String,
    kind: String,
    dest: String,
    server: String,
    place: String,
    latency: String,
    count: String,
    reason: String,
    hint: String,
    /// Not `answered`/`established`, not a summary: its hint is worth a line.
    problem: bool,
}

impl Cells {
    fn get(&self, c: Column) -> String {
        let s = match c {
            Column::Decided => &self.decided,
            Column::Started => &self.started,
            Column::Node => &self.node,
            Column::Namespace => &self.namespace,
            Column::Pod => &self.pod,
            Column::Verdict => &self.verdict,
            Column::Kind => &self.kind,
            Column::Dest => &self.dest,
            Column::Server => &self.server,
            Column::Where => &self.place,
            Column::Latency => &self.latency,
            Column::Count => &self.count,
            Column::Reason => &self.reason,
            Column::Hint => &self.hint,
        };
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.clone()
        }
    }
}

fn verdict_cells(v: &Value) -> Cells {
    let verdict = text(v, "verdict").unwrap_or_default();
    let kind = str_at(v, "kind");
    let count = field(v, "count").and_then(Value::as_u64);
    let summary = count.is_some() || field(v, "latency_ms").is_some_and(Value::is_object);
    let started = short_time(v, "time").unwrap_or_default();

    let dest = match (kind, str_at(v, "dns.qname")) {
        (Some("dns") | None, Some(q)) => match str_at(v, "dns.qtype") {
            Some(t) => format!("{q} {t}"),
            None => q.to_owned(),
        },
        // A DNS summary stands for many queries: say so, and through which Service. (An egress
        // summary's destination is one ip:port, shown as for a connection.)
        _ if summary && kind != Some("egress") => match str_at(v, "server.service") {
            Some(svc) => format!("* via {svc}"),
            None => "*".to_owned(),
        },
        _ => {
            let dest = host_port(text(v, "server.ip"), text(v, "server.port")).unwrap_or_default();
            match text(v, "proto").or_else(|| text(v, "transport")) {
                Some(p) if !dest.is_empty() => format!("{dest}/{}", p.to_ascii_lowercase()),
                _ => dest,
            }
        }
    };

    let server = who(v, "server")
        .or_else(|| text(v, "server.service"))
        .unwrap_or_default();
    let server = match str_at(v, "server.node") {
        Some(snode) if !server.is_empty() && Some(snode) != str_at(v, "node") => {
            format!("{server}@{}", short_node(snode))
        }
        _ => server,
    };

    let healthy = matches!(verdict.as_str(), "answered" | "established");
    // Where the traffic died: nothing to say for a healthy flow (it arrived).
    let place = match (
        text(v, "where.interface").filter(|_| !healthy),
        str_at(v, "where.stage").or_else(|| str_at(v, "where.interface_kind")),
    ) {
        (Some(i), Some(k)) => format!("{i} ({k})"),
        (Some(i), None) => i,
        (None, Some(k)) if !healthy => k.to_owned(),
        (None, _) => String::new(),
    };

    let pct = |k: &str| field(v, &format!("latency_ms.{k}")).and_then(Value::as_f64);
    let latency = if summary {
        match (pct("p50"), pct("p99")) {
            (Some(a), Some(b)) => format!("p50 {} p99 {}", ms(a), ms(b)),
            (Some(a), None) => format!("p50 {}", ms(a)),
            _ => pct("max").map(ms).unwrap_or_default(),
        }
    } else {
        crate::sinks::stream::filter::latency_ms(v)
            .map(ms)
            .unwrap_or_default()
    };

    let mut reason = Vec::new();
    // UDP egress that got nothing back where no reply was due (statsd, syslog): not a loss,
    // and nothing was missing from the evidence either.
    let one_way = verdict == "unknown"
        && str_at(v, "evidence_note").is_some_and(|n| n.starts_with(crate::verdict::NO_REPLY_DUE));
    if one_way {
        reason.push("no reply, none due (UDP)".to_owned());
    } else if str_at(v, "evidence") == Some("incomplete") {
        reason.push("[evidence incomplete]".to_owned());
    }
    if let Some(n) = count {
        reason.push(format!("×{n}"));
    }
    if let Some(rcode) = text(v, "dns.rcode") {
        reason.push(rcode);
    }
    if summary {
        for k in ["p50", "p90", "p99", "max"] {
            if let Some(x) = pct(k) {
                reason.push(format!("{k} {}", ms(x)));
            }
        }
    } else if healthy && !latency.is_empty() {
        reason.push(latency.clone());
    }
    if verdict == "lost_beyond_node" && str_at(v, "where.direction") == Some("response") {
        // The reply left the node toward the client and never came back in.
        reason.push("reply left, never back".to_owned());
    } else if matches!(verdict.as_str(), "lost_beyond_node" | "unanswered") {
        reason.push("no reply".to_owned());
    }
    // Cross-node verdicts: what the server node's tracer found (this node's own account when
    // the server runs here).
    if let Some(finding) = text(v, "peer.finding") {
        let who = match str_at(v, "peer.node") {
            Some(n) if str_at(v, "node") == Some(n) => "this node".to_owned(),
            n => format!("peer {}", n.map(short_node).unwrap_or_default()),
        };
        match text(v, "peer.reason") {
            Some(r) => reason.push(format!("{who}: {finding} ({r})")),
            None => reason.push(format!("{who}: {finding}")),
        }
    }
    // Node counters that grew meanwhile: `eth0 linklocal_allowance_exceeded +37`.
    if let Some(signals) = field(v, "node_signals").and_then(Value::as_array) {
        for sig in signals.iter().take(4) {
            let Some(counter) = sig.get("counter").and_then(Value::as_str) else {
                continue;
            };
            let delta = sig.get("delta").and_then(Value::as_u64).unwrap_or(0);
            match sig.get("interface").and_then(Value::as_str) {
                Some(i) => reason.push(format!("{i} {counter} +{delta}")),
                None => reason.push(format!("conntrack {counter} +{delta}")),
            }
        }
    }
    if let Some(r) = text(v, "drop.reason") {
        match text(v, "drop.location") {
            Some(loc) => reason.push(format!("{r} at {loc}")),
            None => reason.push(r),
        }
    }
    match (text(v, "rejection.by"), text(v, "rejection.icmp")) {
        (Some(by), Some(icmp)) => reason.push(format!("{by} {icmp}")),
        (Some(by), None) => reason.push(by),
        _ => {}
    }
    match field(v, "dns.retries").and_then(Value::as_u64) {
        Some(1) => reason.push("1 retry".to_owned()),
        Some(n) if n > 1 => reason.push(format!("{n} retries")),
        _ => {}
    }
    if field(v, "dns.tcp_fallback").and_then(Value::as_bool) == Some(true) {
        reason.push("tcp fallback".to_owned());
    }

    Cells {
        decided: short_time(v, DECIDED_AT).unwrap_or_else(|| started.clone()),
        started,
        node: str_at(v, "node")
            .map(short_node)
            .unwrap_or_default()
            .to_owned(),
        namespace: str_at(v, "client.namespace").unwrap_or_default().to_owned(),
        pod: who(v, "client").unwrap_or_default(),
        problem: !summary && !healthy && !verdict.is_empty(),
        verdict,
        kind: kind.unwrap_or_default().to_owned(),
        dest,
        server,
        place,
        latency,
        count: count.map(|n| n.to_string()).unwrap_or_default(),
        reason: reason.join(" "),
        hint: text(v, "hint").unwrap_or_default(),
    }
}

fn packet_cells(v: &Value) -> Cells {
    let src = host_port(text(v, "src"), text(v, "sport"));
    let dst = host_port(text(v, "dst"), text(v, "dport"));
    let flow = match (src, dst) {
        (Some(s), Some(d)) => format!("{s} > {d}"),
        (s, d) => s.or(d).unwrap_or_default(),
    };
    let place = match (text(v, "iface.name"), str_at(v, "hook")) {
        (Some(i), Some(h)) => format!("{i} {h}"),
        (i, h) => i.or(h.map(str::to_owned)).unwrap_or_default(),
    };
    let mut reason = vec![flow.clone()];
    for path in [
        "proto",
        "tcp_flags",
        "icmp",
        "dns.rcode",
        "drop.reason",
        "drop.location",
    ] {
        if let Some(t) = text(v, path) {
            reason.push(t);
        }
    }
    let decided = short_time(v, DECIDED_AT).unwrap_or_default();
    Cells {
        decided,
        node: str_at(v, "node")
            .map(short_node)
            .unwrap_or_default()
            .to_owned(),
        verdict: "packet".to_owned(),
        kind: if field(v, "dns").is_some() {
            "dns".to_owned()
        } else {
            String::new()
        },
        dest: str_at(v, "dns.qname").map_or(flow, str::to_owned),
        place,
        reason: reason.join(" ").trim().to_owned(),
        ..Cells::default()
    }
}

#[cfg(test)]
mod tests;
