//! `tracer observe`: connects to the local `tracer run`'s socket, asks for the filtered stream,
//! and prints it as JSON lines or as a table.

use std::{
    io::{ErrorKind, IsTerminal as _, Write},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

use super::table::{self, TableStyle};
use crate::sinks::stream::{DEFAULT_SOCKET, Request, filter::Filter};

/// Lines shown by `--no-follow` when `--last` is not given.
pub const DEFAULT_LAST_NO_FOLLOW: usize = 20;

/// Output format of `tracer observe`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// A readable table: Kubernetes names first, the reason last.
    #[default]
    Table,
    /// The daemon's JSON lines, unchanged (schema tracer.flow/v1).
    Json,
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

    /// First print the last N matching verdicts the daemon kept (it keeps up to 10000);
    /// default 0 when following, 20 with --no-follow.
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,

    /// Keep streaming new verdicts as they come (the default).
    #[arg(long, overrides_with = "no_follow")]
    pub follow: bool,

    /// Print the kept verdicts (--last) and exit.
    #[arg(long, overrides_with = "follow")]
    pub no_follow: bool,

    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,

    /// Also show packet events (when `tracer run` publishes them).
    #[arg(long)]
    pub events: bool,
}

impl ObserveArgs {
    /// The request these options send.
    pub fn request(&self) -> Request {
        let follow = !self.no_follow;
        Request {
            filter: self.filter.clone(),
            last: self
                .last
                .unwrap_or(if follow { 0 } else { DEFAULT_LAST_NO_FOLLOW }),
            follow,
            events: self.events,
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
fn render(line: &str, output: Output, style: &TableStyle) -> Action {
    let value: Option<Value> = serde_json::from_str(line).ok();
    let kind = value
        .as_ref()
        .and_then(|v| v.get("type"))
        .and_then(Value::as_str);
    let message = || {
        value
            .as_ref()
            .and_then(|v| v.get("message"))
            .and_then(Value::as_str)
            .unwrap_or("(no message)")
            .to_owned()
    };
    match (kind, output) {
        (Some("error"), _) => Action::Fail(message()),
        (_, Output::Json) => Action::Print(line.to_owned()),
        (Some("notice"), Output::Table) => Action::Warn(message()),
        (_, Output::Table) => match &value {
            Some(v) => Action::Print(table::row(v, style)),
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
    let style = TableStyle {
        color: use_color(tty),
        width: if tty { terminal_width() } else { None },
    };
    stream_to(&args, std::io::BufWriter::new(stdout), &style).await
}

/// [`observe`] writing to `out` with an explicit table style.
pub async fn stream_to(
    args: &ObserveArgs,
    mut out: impl Write,
    style: &TableStyle,
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

    if args.output == Output::Table && !emit(&mut out, &table::header(style))? {
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
        match render(line.trim_end_matches(['\n', '\r']), args.output, style) {
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
                anyhow::bail!("tracer run refused the request: {msg}");
            }
            Action::Skip => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::stream::{self, Hub, ObserveStats};
    use clap::Parser as _;
    use std::{sync::Arc, time::Duration};

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: ObserveArgs,
    }

    fn parse(argv: &[&str]) -> ObserveArgs {
        Cli::try_parse_from(std::iter::once("observe").chain(argv.iter().copied()))
            .expect("parses")
            .args
    }

    #[test]
    fn flags_to_request() {
        let a = parse(&[]);
        assert_eq!(a.socket, Path::new(DEFAULT_SOCKET));
        assert_eq!(a.output, Output::Table);
        assert_eq!(a.request(), Request::default());

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
        ] {
            assert!(
                Cli::try_parse_from(std::iter::once("observe").chain(bad.iter().copied())).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rendering_lines() {
        let style = TableStyle::default();
        let v = r#"{"verdict":"dropped","node":"n"}"#;
        assert_eq!(render(v, Output::Json, &style), Action::Print(v.to_owned()));
        assert!(
            matches!(render(v, Output::Table, &style), Action::Print(r) if r.contains("dropped"))
        );
        let notice = r#"{"type":"notice","skipped":3,"message":"3 lines skipped"}"#;
        assert_eq!(
            render(notice, Output::Json, &style),
            Action::Print(notice.to_owned())
        );
        assert_eq!(
            render(notice, Output::Table, &style),
            Action::Warn("3 lines skipped".to_owned())
        );
        let err = r#"{"type":"error","message":"bad request: x"}"#;
        assert_eq!(
            render(err, Output::Json, &style),
            Action::Fail("bad request: x".to_owned())
        );
        assert!(matches!(
            render("garbage", Output::Table, &style),
            Action::Warn(_)
        ));
        assert_eq!(render("", Output::Table, &style), Action::Skip);
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
        let listener = stream::bind(&path).expect("bind");
        let task = tokio::spawn(listener.run(hub.clone(), ObserveStats::default()));
        let sock = path.to_str().expect("utf8");
        let style = TableStyle::default();

        // -o json: the raw lines, filtered server-side; --no-follow ends after the history.
        let mut out = Vec::new();
        let args = parse(&["--socket", sock, "--no-follow", "-o", "json", "-n", "a"]);
        stream_to(&args, &mut out, &style)
            .await
            .expect("history then exit");
        assert_eq!(String::from_utf8(out).expect("utf8"), format!("{a}\n"));

        // -o table: header and rows.
        let mut out = Vec::new();
        let args = parse(&["--socket", sock, "--no-follow"]);
        stream_to(&args, &mut out, &style).await.expect("table");
        let text = String::from_utf8(out).expect("utf8");
        let rows: Vec<&str> = text.lines().collect();
        assert_eq!(rows.len(), 3, "{text}");
        assert!(
            rows[0].starts_with("TIME")
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
        stream_to(&args, Closed, &style)
            .await
            .expect("quiet on EPIPE");

        // The server's refusal becomes the error.
        let mut args = parse(&["--socket", sock, "--no-follow"]);
        args.filter.ip = vec!["not-an-ip".to_owned()]; // bypasses the command line's check
        let err = stream_to(&args, Vec::new(), &style)
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("not an IP address"), "{err}");

        // Following: the daemon going away ends the stream with an error.
        let args = parse(&["--socket", sock]);
        let follow =
            tokio::spawn(async move { stream_to(&args, Vec::new(), &TableStyle::default()).await });
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
