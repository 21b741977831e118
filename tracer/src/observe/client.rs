//! `tracer observe`: connects to the local `tracer run`'s socket, asks for the filtered stream,
//! and prints it as JSON lines or as a table.

use std::{
    io::{ErrorKind, IsTerminal as _, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

use super::table::{self, Column, Layout};
use crate::sinks::stream::{
    DEFAULT_SOCKET, EVENT_HISTORY_LIMIT, HISTORY_LIMIT, Request, filter::Filter,
};

/// Lines shown by `--no-follow` when neither `--last` nor `--since` is given.
pub const DEFAULT_LAST_NO_FOLLOW: usize = 20;

/// Output format of `tracer observe`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Output {
    /// A table fitted to the terminal: Kubernetes names first, the reason last.
    #[default]
    Table,
    /// Every column, one whole line per record.
    Wide,
    /// These columns.
    Columns(Vec<Column>),
    /// The daemon's JSON lines, unchanged (schema tracer.flow/v1).
    Json,
}

/// Parses `-o`.
fn parse_output(s: &str) -> Result<Output, String> {
    match s.trim() {
        "table" => Ok(Output::Table),
        "wide" => Ok(Output::Wide),
        "json" => Ok(Output::Json),
        other => match other.strip_prefix("columns=") {
            Some(list) => table::parse_columns(list).map(Output::Columns),
            None => Err(format!(
                "unknown output {other:?}: use table, wide, json or columns=LIST (e.g. \
                 columns=decided,pod,verdict,dest,reason; columns: {})",
                Column::ALL.map(Column::name).join(",")
            )),
        },
    }
}

/// `--since`: `30s`, `10m`, `2h`, `1d` or a bare number of seconds.
fn parse_since(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?}: expected e.g. 30s, 10m, 2h or 1d"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(format!("bad duration unit in {s:?}: use s, m, h or d")),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 30.0 * 86400.0 {
        return Err(format!("duration {s:?} out of range (0, 30d]"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Options of `tracer observe`.
#[derive(Clone, Debug, clap::Args)]
pub struct ObserveArgs {
    /// Socket of the `tracer run` on this node.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// Which flows to show.
    #[command(flatten)]
    pub filter: Filter,

    /// Negate the filter flag that follows: `--not --namespace kube-system` hides kube-system,
    /// `--not --verdict answered` hides answers. Repeatable; a flow matching any negated flag
    /// is hidden.
    #[arg(
        long,
        num_args = 0,
        action = clap::ArgAction::Append,
        default_missing_value = "true",
        value_parser = clap::value_parser!(bool),
        help_heading = "Filters"
    )]
    pub not: Vec<bool>,

    /// Negated filters taken out of the command line (one per `--not`).
    #[arg(skip)]
    pub not_filters: Vec<Filter>,

    /// First print the kept verdicts decided in the last DURATION (e.g. 10m, 2h; the daemon
    /// keeps the last 10000 failing and 10000 healthy ones, fewer at thousands a second), then
    /// follow.
    #[arg(long, value_name = "DURATION", value_parser = parse_since)]
    pub since: Option<Duration>,

    /// First print the last N matching verdicts the daemon kept (up to 10000 failing and 10000
    /// healthy ones);
    /// default 0 when following, 20 with --no-follow, all kept with --since.
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,

    /// Keep streaming new verdicts as they come (the default).
    #[arg(long, overrides_with = "no_follow")]
    pub follow: bool,

    /// Print the kept verdicts (--last, --since) and exit.
    #[arg(long, overrides_with = "follow")]
    pub no_follow: bool,

    /// Output: `table` (fitted to the terminal; one whole line per record when piped), `wide`
    /// (every column), `columns=LIST` (e.g. columns=decided,pod,verdict,dest,reason; also
    /// started, node, namespace, kind, server, where, latency, count, hint), or `json` (the
    /// daemon's lines, unchanged).
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "table", value_parser = parse_output)]
    pub output: Output,

    /// Also show packet events (when `tracer run` publishes them).
    #[arg(long)]
    pub events: bool,
}

/// Ids of the filter arguments (clap ids are the field names), for `--not`.
const FILTER_IDS: [&str; 14] = [
    "namespace",
    "pod",
    "from_namespace",
    "to_namespace",
    "from_pod",
    "to_pod",
    "selector",
    "qname",
    "verdict",
    "service",
    "node",
    "kind",
    "ip",
    "min_latency",
];

/// The list field of a filter by argument id (`min_latency` is not a list).
fn list_mut<'a>(f: &'a mut Filter, id: &str) -> Option<&'a mut Vec<String>> {
    Some(match id {
        "namespace" => &mut f.namespace,
        "pod" => &mut f.pod,
        "from_namespace" => &mut f.from_namespace,
        "to_namespace" => &mut f.to_namespace,
        "from_pod" => &mut f.from_pod,
        "to_pod" => &mut f.to_pod,
        "selector" => &mut f.selector,
        "qname" => &mut f.qname,
        "verdict" => &mut f.verdict,
        "service" => &mut f.service,
        "node" => &mut f.node,
        "kind" => &mut f.kind,
        "ip" => &mut f.ip,
        _ => return None,
    })
}

impl ObserveArgs {
    /// Moves every filter flag that follows a `--not` out of [`ObserveArgs::filter`] into
    /// [`ObserveArgs::not_filters`], using the argument positions clap recorded in `matches`
    /// (this subcommand's). Fails when a `--not` is not directly followed by a filter flag.
    pub fn take_negations(&mut self, matches: &clap::ArgMatches) -> Result<(), String> {
        let nots: Vec<usize> = matches
            .indices_of("not")
            .map(Iterator::collect)
            .unwrap_or_default();
        if nots.is_empty() {
            return Ok(());
        }
        let mut used = vec![false; nots.len()];
        // (position of the --not, filter) in command-line order.
        let mut negated: Vec<(usize, Filter)> = Vec::new();
        for id in FILTER_IDS {
            let Some(indices) = matches.indices_of(id) else {
                continue;
            };
            let indices: Vec<usize> = indices.collect();
            let counts: Vec<usize> = matches
                .get_raw_occurrences(id)
                .map(|occ| occ.map(Iterator::count).collect())
                .unwrap_or_default();
            // Value positions are flat over occurrences: split them back per occurrence.
            let mut flat = 0usize;
            let mut moved: Vec<usize> = Vec::new();
            for count in counts {
                let first = indices.get(flat).copied();
                let values = flat..flat + count;
                flat += count;
                // `--not --flag value`: the flag sits just before its first value, the --not
                // just before the flag.
                let Some(not_at) = first.and_then(|i| i.checked_sub(2)) else {
                    continue;
                };
                let Some(k) = nots.iter().position(|&n| n == not_at) else {
                    continue;
                };
                if let Some(u) = used.get_mut(k) {
                    *u = true;
                }
                let mut f = Filter::default();
                if id == "min_latency" {
                    f.min_latency = self.filter.min_latency.take();
                } else if let (Some(src), Some(dst)) =
                    (list_mut(&mut self.filter, id), list_mut(&mut f, id))
                {
                    dst.extend(values.clone().filter_map(|i| src.get(i).cloned()));
                }
                moved.extend(values);
                negated.push((not_at, f));
            }
            if let Some(src) = list_mut(&mut self.filter, id) {
                let mut i = 0usize;
                src.retain(|_| {
                    let keep = !moved.contains(&i);
                    i += 1;
                    keep
                });
            }
        }
        if used.iter().any(|u| !u) {
            return Err(
                "--not must be directly followed by a filter flag, e.g. --not --namespace \
                 kube-system or --not --verdict answered"
                    .to_owned(),
            );
        }
        negated.sort_by_key(|(at, _)| *at);
        self.not_filters = negated.into_iter().map(|(_, f)| f).collect();
        Ok(())
    }

    /// The request these options send.
    pub fn request(&self) -> Request {
        let follow = !self.no_follow;
        let last = match (self.last, self.since, follow) {
            (Some(n), _, _) => n,
            (None, Some(_), _) => 2 * HISTORY_LIMIT + EVENT_HISTORY_LIMIT,
            (None, None, true) => 0,
            (None, None, false) => DEFAULT_LAST_NO_FOLLOW,
        };
        let since = self.since.and_then(|d| {
            let span = jiff::SignedDuration::try_from(d).ok()?;
            jiff::Timestamp::now()
                .checked_sub(span)
                .ok()
                .map(|t| t.to_string())
        });
        Request {
            filter: self.filter.clone(),
            not: self.not_filters.clone(),
            last,
            since,
            follow,
            events: self.events,
            stamp: self.output != Output::Json,
        }
    }
}

/// Entry point of `tracer observe` from a synchronous `main`.
pub fn main(args: ObserveArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(observe(args))
}

/// Explains a failed connect in the operator's terms.
fn connect_error(path: &Path, err: &std::io::Error) -> anyhow::Error {
    let p = path.display();
    match err.kind() {
        ErrorKind::NotFound => {
            anyhow::anyhow!("is `tracer run` running on this node? socket {p} not found")
        }
        ErrorKind::PermissionDenied => anyhow::anyhow!(
            "permission denied on {p}: the observe socket is root only (run as root, or \
             `kubectl exec` into the tracer pod)"
        ),
        ErrorKind::ConnectionRefused => anyhow::anyhow!(
            "nothing listens on {p}: is `tracer run` running on this node? (stale socket)"
        ),
        _ => anyhow::anyhow!("connecting to {p}: {err}"),
    }
}

/// Terminal width of stdout when it is a terminal (`COLUMNS` wins when set).
fn terminal_width() -> Option<usize> {
    if let Some(w) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|&w| w > 0)
    {
        return Some(w);
    }
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the valid, exclusively borrowed `ws`; fd 1
    // is only queried. Any failure leaves `ws` zeroed and is reported through the return value.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0).then_some(usize::from(ws.ws_col))
}

/// Colour when stdout is a terminal and `NO_COLOR` is unset or empty (no-color.org).
fn use_color(stdout_is_tty: bool) -> bool {
    stdout_is_tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The layout of a table output (`None` for `-o json`), for a terminal of `width` columns
/// (`None`: not a terminal).
pub fn layout(output: &Output, width: Option<usize>, color: bool) -> Option<Layout> {
    match output {
        Output::Table => Some(Layout::table(width, color)),
        Output::Wide => Some(Layout::wide(color)),
        Output::Columns(cols) => Some(Layout::custom(cols.clone(), width, color)),
        Output::Json => None,
    }
}

/// What to do with one line from the daemon.
#[derive(Debug, PartialEq)]
enum Action {
    /// Print this on stdout.
    Print(String),
    /// Tell the user on stderr (the stream continues).
    Warn(String),
    /// The daemon refused the request.
    Fail(String),
    /// Nothing to show.
    Skip,
}

/// Turns one line from the daemon into what to show.
fn render(line: &str, layout: Option<&Layout>) -> Action {
    let value: Option<Value> = serde_json::from_str(line).ok();
    let kind = value
        .as_ref()
        .and_then(|v| v.get("type"))
        .and_then(Value::as_str);
    let message = || {
        table::sanitize(
            value
                .as_ref()
                .and_then(|v| v.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("(no message)"),
        )
    };
    match (kind, layout) {
        (Some("error"), _) => Action::Fail(message()),
        (Some("warning"), _) => Action::Warn(format!("warning: {}", message())),
        (_, None) => Action::Print(line.to_owned()),
        (Some("notice"), Some(_)) => Action::Warn(message()),
        (_, Some(layout)) => match &value {
            Some(v) => Action::Print(layout.row(v)),
            None if line.trim().is_empty() => Action::Skip,
            None => Action::Warn("the daemon sent a line that is not JSON".to_owned()),
        },
    }
}

/// Writes and maps a closed stdout (`| head`) to `Ok(false)`: stop quietly.
fn emit(out: &mut impl Write, text: &str) -> anyhow::Result<bool> {
    match writeln!(out, "{text}") {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing to stdout"),
    }
}

fn flush(out: &mut impl Write) -> anyhow::Result<bool> {
    match out.flush() {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing to stdout"),
    }
}

/// Streams from the daemon's socket to stdout until the stream ends (`--no-follow`), stdout is
/// closed (`| head`: a quiet success), or the daemon goes away.
pub async fn observe(args: ObserveArgs) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let tty = stdout.is_terminal();
    let layout = layout(
        &args.output,
        tty.then(terminal_width).flatten(),
        use_color(tty),
    );
    stream_to(&args, std::io::BufWriter::new(stdout), layout.as_ref()).await
}

/// [`observe`] writing to `out` with an explicit layout (`None`: JSON lines).
pub async fn stream_to(
    args: &ObserveArgs,
    mut out: impl Write,
    layout: Option<&Layout>,
) -> anyhow::Result<()> {
    let request = args.request();
    let stream = UnixStream::connect(&args.socket)
        .await
        .map_err(|e| connect_error(&args.socket, &e))?;
    let (rd, mut wr) = stream.into_split();
    let mut req = serde_json::to_string(&request).context("encoding the request")?;
    req.push('\n');
    wr.write_all(req.as_bytes())
        .await
        .with_context(|| format!("sending the request to {}", args.socket.display()))?;

    if let Some(layout) = layout
        && !emit(&mut out, &layout.header())?
    {
        return Ok(());
    }
    let mut reader = BufReader::new(rd);
    let mut line = String::new();
    loop {
        // Flush whenever nothing more is buffered, so a live stream shows at once while a burst
        // is written in one go.
        if reader.buffer().is_empty() && !flush(&mut out)? {
            return Ok(());
        }
        line.clear();
        let n = reader
            .read_line(&mut line)
            .await
            .context("reading from tracer run")?;
        if n == 0 {
            flush(&mut out)?;
            if request.follow {
                anyhow::bail!("tracer run closed the stream (daemon stopped?)");
            }
            return Ok(());
        }
        match render(line.trim_end_matches(['\n', '\r']), layout) {
            Action::Print(text) => {
                if !emit(&mut out, &text)? {
                    return Ok(());
                }
            }
            Action::Warn(msg) => {
                flush(&mut out)?;
                eprintln!("tracer observe: {msg}");
            }
            Action::Fail(msg) => {
                flush(&mut out)?;
                let older = if msg.contains("unknown field") {
                    " (is `tracer run` an older version than this `tracer observe`?)"
                } else {
                    ""
                };
                anyhow::bail!("tracer run refused the request: {msg}{older}");
            }
            Action::Skip => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::stream::{self, Hub, ObserveStats};
    use clap::{CommandFactory as _, FromArgMatches as _};
    use std::sync::Arc;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: ObserveArgs,
    }

    /// Parses like `tracer observe` does, `--not` included.
    fn try_parse(argv: &[&str]) -> Result<ObserveArgs, String> {
        let matches = Cli::command()
            .try_get_matches_from(std::iter::once("observe").chain(argv.iter().copied()))
            .map_err(|e| e.to_string())?;
        let mut args = Cli::from_arg_matches(&matches)
            .map_err(|e| e.to_string())?
            .args;
        args.take_negations(&matches)?;
        Ok(args)
    }

    fn parse(argv: &[&str]) -> ObserveArgs {
        try_parse(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"))
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn flags_to_request() {
        let a = parse(&[]);
        assert_eq!(a.socket, Path::new(DEFAULT_SOCKET));
        assert_eq!(a.output, Output::Table);
        assert_eq!(
            a.request(),
            Request {
                stamp: true,
                ..Request::default()
            },
            "the table asks for decided_at"
        );
        assert!(
            !parse(&["-o", "json"]).request().stamp,
            "JSON lines unchanged"
        );

        let a = parse(&[
            "-n",
            "shop",
            "--namespace",
            "kube-system",
            "--pod",
            "shop/web",
            "--verdict",
            "dropped,rejected",
            "--verdict",
            "unanswered",
            "--qname",
            "*.example.com",
            "--to-service",
            "kube-system/kube-dns",
            "--node",
            "n1",
            "--kind",
            "dns",
            "--ip",
            "10.0.0.1",
            "--last",
            "5",
            "--no-follow",
            "-o",
            "json",
            "--events",
        ]);
        let r = a.request();
        assert_eq!(r.filter.namespace, ["shop", "kube-system"]);
        assert_eq!(r.filter.verdict, ["dropped", "rejected", "unanswered"]);
        assert_eq!(r.filter.service, ["kube-system/kube-dns"]);
        assert_eq!((r.last, r.follow, r.events), (5, false, true));
        assert_eq!(a.output, Output::Json);

        assert_eq!(
            parse(&["--no-follow"]).request().last,
            DEFAULT_LAST_NO_FOLLOW
        );
        assert!(parse(&["--no-follow", "--follow"]).request().follow);
        assert!(!parse(&["--follow", "--no-follow"]).request().follow);
        for bad in [
            &["--verdict", "lost"][..],
            &["--kind", "tcp"],
            &["-o", "yaml"],
            &["-o", "columns=pod,colour"],
            &["-l", "app in (a"],
            &["--min-latency", "fast"],
            &["--since", "5y"],
        ] {
            assert!(try_parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn new_filters_and_outputs() {
        let a = parse(&[
            "--from-pod",
            "shop/web",
            "--to-pod",
            "kube-system/coredns",
            "--from-namespace",
            "shop",
            "--to-namespace",
            "kube-system",
            "-l",
            "app=web,tier!=db",
            "--label",
            "team in (a,b)",
            "--min-latency",
            "1.5ms",
            "-o",
            "columns=time,pod,verdict",
        ]);
        let f = &a.request().filter;
        assert_eq!(f.from_pod, ["shop/web"]);
        assert_eq!(f.to_pod, ["kube-system/coredns"]);
        assert_eq!(
            (&f.from_namespace[..], &f.to_namespace[..]),
            (&s(&["shop"])[..], &s(&["kube-system"])[..])
        );
        assert_eq!(f.selector, ["app=web,tier!=db", "team in (a,b)"]);
        assert_eq!(f.min_latency, Some(1500));
        assert_eq!(
            a.output,
            Output::Columns(vec![Column::Decided, Column::Pod, Column::Verdict])
        );
        assert_eq!(parse(&["-o", "wide"]).output, Output::Wide);
        // --since: all kept lines of the period unless --last says otherwise.
        let r = parse(&["--since", "10m"]).request();
        assert_eq!(r.last, 2 * HISTORY_LIMIT + EVENT_HISTORY_LIMIT);
        let since: jiff::Timestamp = r.since.as_deref().expect("since").parse().expect("rfc3339");
        let ago = jiff::Timestamp::now().duration_since(since).as_secs_f64();
        assert!((599.0..=601.0).contains(&ago), "{ago}");
        assert_eq!(parse(&["--since", "1h", "--last", "5"]).request().last, 5);
        assert_eq!(parse_since("2d"), Ok(Duration::from_secs(172_800)));
    }

    #[test]
    fn not_negates_the_next_filter_flag() {
        let a = parse(&[
            "-n",
            "shop",
            "--not",
            "--namespace",
            "kube-system",
            "--verdict",
            "dropped",
            "--not",
            "--verdict=answered,established",
            "--not",
            "-ndefault",
            "--not",
            "--min-latency",
            "100ms",
            "--not",
            "-l",
            "app=noisy",
            "--namespace",
            "payments",
        ]);
        let r = a.request();
        assert_eq!(r.filter.namespace, ["shop", "payments"]);
        assert_eq!(r.filter.verdict, ["dropped"]);
        assert_eq!(r.filter.min_latency, None);
        assert!(r.filter.selector.is_empty());
        let mut want = vec![Filter::default(); 5];
        want[0].namespace = s(&["kube-system"]);
        want[1].verdict = s(&["answered", "established"]);
        want[2].namespace = s(&["default"]);
        want[3].min_latency = Some(100_000);
        want[4].selector = s(&["app=noisy"]);
        assert_eq!(
            r.not, want,
            "one negated filter per --not, in command-line order"
        );
        for bad in [
            &["--not"][..],
            &["--not", "--no-follow", "-n", "x"],
            &["-n", "x", "--not"],
            &["--not", "--not", "-n", "x"],
        ] {
            let e = try_parse(bad).expect_err(&format!("{bad:?}"));
            assert!(
                e.contains("--not must be directly followed"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn rendering_lines() {
        let table = Layout::table(None, false);
        let v = r#"{"verdict":"dropped","node":"n"}"#;
        assert_eq!(render(v, None), Action::Print(v.to_owned()));
        assert!(matches!(render(v, Some(&table)), Action::Print(r) if r.contains("dropped")));
        let notice = r#"{"type":"notice","skipped":3,"message":"3 lines skipped"}"#;
        assert_eq!(render(notice, None), Action::Print(notice.to_owned()));
        assert_eq!(
            render(notice, Some(&table)),
            Action::Warn("3 lines skipped".to_owned())
        );
        // Warnings go to stderr whatever the output, sanitized.
        let warning = r#"{"type":"warning","message":"--namespace \"shpo\": no verdict\u001b[2J"}"#;
        for layout in [None, Some(&table)] {
            assert_eq!(
                render(warning, layout),
                Action::Warn("warning: --namespace \"shpo\": no verdict?[2J".to_owned())
            );
        }
        let err = r#"{"type":"error","message":"bad request: x"}"#;
        assert_eq!(render(err, None), Action::Fail("bad request: x".to_owned()));
        assert!(matches!(render("garbage", Some(&table)), Action::Warn(_)));
        assert_eq!(render("", Some(&table)), Action::Skip);
    }

    #[test]
    fn colour_rule() {
        // NO_COLOR is read from the environment; only the TTY half is tested without touching it.
        assert!(!use_color(false));
    }

    #[test]
    fn emit_stops_quietly_on_broken_pipe() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from(ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Err(std::io::Error::from(ErrorKind::BrokenPipe))
            }
        }
        assert!(!emit(&mut Closed, "x").expect("not an error"));
        assert!(!flush(&mut Closed).expect("not an error"));
    }

    #[tokio::test]
    async fn connect_errors_are_explained() {
        let dir =
            std::env::temp_dir().join(format!("tracer-observe-client-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let missing = dir.join("tracer.sock");
        let err = observe(parse(&["--socket", missing.to_str().expect("utf8")]))
            .await
            .expect_err("no socket");
        assert_eq!(
            err.to_string(),
            format!(
                "is `tracer run` running on this node? socket {} not found",
                missing.display()
            )
        );
        // A stale socket: nobody listens.
        drop(std::os::unix::net::UnixListener::bind(&missing).expect("bind"));
        let err = observe(parse(&["--socket", missing.to_str().expect("utf8")]))
            .await
            .expect_err("stale");
        assert!(err.to_string().contains("nothing listens"), "{err}");
        let denied = connect_error(&missing, &std::io::Error::from(ErrorKind::PermissionDenied));
        assert!(denied.to_string().contains("root only"), "{denied}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn end_to_end() {
        let dir = std::env::temp_dir().join(format!("tracer-observe-e2e-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("tracer.sock");
        let hub = Hub::new();
        let a = r#"{"verdict":"dropped","client":{"namespace":"a","pod":"p"}}"#;
        let b = r#"{"verdict":"answered","client":{"namespace":"b"}}"#;
        for line in [a, b] {
            hub.publish(
                Arc::from(line),
                Arc::new(serde_json::from_str(line).expect("json")),
            );
        }
        let listener = stream::socket::bind(&path).expect("bind");
        let task = tokio::spawn(listener.run(hub.clone(), ObserveStats::default()));
        let sock = path.to_str().expect("utf8");
        let style = Layout::table(None, false);

        // -o json: the raw lines, filtered server-side; --no-follow ends after the history.
        let mut out = Vec::new();
        let args = parse(&["--socket", sock, "--no-follow", "-o", "json", "-n", "a"]);
        stream_to(&args, &mut out, None)
            .await
            .expect("history then exit");
        assert_eq!(String::from_utf8(out).expect("utf8"), format!("{a}\n"));

        // -o table: header and rows.
        let mut out = Vec::new();
        let args = parse(&["--socket", sock, "--no-follow"]);
        stream_to(&args, &mut out, Some(&style))
            .await
            .expect("table");
        let text = String::from_utf8(out).expect("utf8");
        let rows: Vec<&str> = text.lines().collect();
        assert_eq!(rows.len(), 3, "{text}");
        assert!(
            rows[0].starts_with("DECIDED")
                && rows[1].contains("dropped")
                && rows[2].contains("answered")
        );

        // A closed stdout ends quietly.
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from(ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let args = parse(&["--socket", sock, "--no-follow"]);
        stream_to(&args, Closed, Some(&style))
            .await
            .expect("quiet on EPIPE");

        // The server's refusal becomes the error.
        let mut args = parse(&["--socket", sock, "--no-follow"]);
        args.filter.ip = vec!["not-an-ip".to_owned()]; // bypasses the command line's check
        let err = stream_to(&args, Vec::new(), Some(&style))
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("not an IP address"), "{err}");

        // Following: the daemon going away ends the stream with an error.
        let args = parse(&["--socket", sock]);
        let follow = tokio::spawn(async move { stream_to(&args, Vec::new(), None).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        task.abort();
        let _ = task.await;
        let err = tokio::time::timeout(Duration::from_secs(5), follow)
            .await
            .expect("ends when the server stops")
            .expect("task")
            .expect_err("an error");
        assert!(err.to_string().contains("closed the stream"), "{err}");
        assert!(!path.exists(), "socket removed");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
