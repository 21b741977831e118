//! Child-process helpers: every system change goes through `ip`, `iptables`, `sysctl` and friends,
//! with the exit status checked and stderr carried into the error.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};

/// Renders an argv for error messages.
pub(crate) fn show(argv: &[&str]) -> String {
    argv.iter()
        .map(|a| {
            if a.is_empty() || a.contains(char::is_whitespace) {
                format!("'{a}'")
            } else {
                (*a).to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn command(argv: &[&str]) -> Result<Command> {
    let Some((prog, args)) = argv.split_first() else {
        bail!("empty command line");
    };
    let mut cmd = Command::new(prog);
    cmd.args(args);
    Ok(cmd)
}

fn check(argv: &[&str], out: Output) -> Result<String> {
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let detail = if stderr.trim().is_empty() {
            stdout.trim().to_owned()
        } else {
            stderr.trim().to_owned()
        };
        bail!("`{}` failed ({}): {}", show(argv), out.status, detail);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `argv`, fails unless it exits 0; returns stdout.
pub(crate) fn run(argv: &[&str]) -> Result<String> {
    let out = command(argv)?
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{}`", show(argv)))?;
    check(argv, out)
}

/// Runs `argv` with `input` on stdin, fails unless it exits 0; returns stdout.
pub(crate) fn run_stdin(argv: &[&str], input: &str) -> Result<String> {
    let mut child = command(argv)?
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run `{}`", show(argv)))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .with_context(|| format!("writing stdin of `{}`", show(argv)))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{}`", show(argv)))?;
    check(argv, out).with_context(|| format!("input was:\n{input}"))
}

/// `ip -n <ns> <args>`, checked.
pub(crate) fn ip(ns: &str, args: &[&str]) -> Result<String> {
    let mut argv = vec!["ip", "-n", ns];
    argv.extend_from_slice(args);
    run(&argv)
}

/// `ip netns exec <ns> <args>`, checked.
pub(crate) fn netns_exec(ns: &str, args: &[&str]) -> Result<String> {
    let mut argv = vec!["ip", "netns", "exec", ns];
    argv.extend_from_slice(args);
    run(&argv)
}

/// Writes sysctls (`key=value`) inside `ns`.
pub(crate) fn sysctl(ns: &str, settings: &[String]) -> Result<()> {
    if settings.is_empty() {
        return Ok(());
    }
    let mut argv = vec!["ip", "netns", "exec", ns, "sysctl", "-q", "-w"];
    argv.extend(settings.iter().map(String::as_str));
    run(&argv).map(drop)
}

/// `iptables-restore` inside `ns`; `noflush` keeps rules of tables and chains not mentioned.
pub(crate) fn iptables_restore(ns: &str, rules: &str, noflush: bool) -> Result<()> {
    let mut argv = vec!["ip", "netns", "exec", ns, "iptables-restore", "-w"];
    if noflush {
        argv.push("--noflush");
    }
    run_stdin(&argv, rules).map(drop)
}

/// A `Command` running `argv` inside network namespace `ns` through `ip netns exec`.
pub fn command_in(ns: &str, argv: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(argv);
    cmd
}
