//! Property and fuzz tests of every parser that takes kernel, network or API data: random
//! bytes of random lengths, and random but well-formed inputs whose decoding must give back
//! what was encoded.
//!
//! | target | parser | input |
//! |---|---|---|
//! | [`decode`] | `decode::{decode_record, read_record, decode}`, `decode::record::{read_dns_record, decode_dns, decode_entry}` | ring-buffer records |
//! | [`dns`] | `decode::dns::parse` | DNS messages (copied from packets) |
//! | [`ebpf_parse`] | `tracer-ebpf/src/parse.rs` (`parse_ip`), compiled for the host | packets |
//! | [`stream`] | `sinks::stream::{client::parse_request, filter, selector}` | `tracer observe` socket requests |
//! | [`enrich`] | `enrich::parse_pod_eni` | the `vpc.amazonaws.com/pod-eni` annotation |
//! | [`kernel`] | `capture::kernel::{ksyms, btf}` | `/proc/kallsyms`, kernel BTF |
//! | [`signals`] | `capture::signals::conntrack` | `/proc/net/stat/nf_conntrack` |
//!
//! Properties everywhere: no panic (overflow checks on: `cargo xtask fuzz` builds with the
//! `fuzz` profile), no hang (a watchdog aborts the process when one case runs longer than
//! [`HANG_LIMIT`], naming the target; the slowest case is reported), errors are errors (a
//! result is either an error value or passes the target's checks, never garbage).
//!
//! Every target is a test named `fuzz_<target>`: [`DEFAULT_CASES`] cases in the normal test
//! suite, `TRACER_FUZZ_CASES` cases under `cargo xtask fuzz --cases N`. A failing case is
//! shrunk and its seed saved under `tracer/proptest-regressions/fuzz/<test>.txt`, which is
//! committed: every later run replays it first.

use std::{
    cell::Cell,
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use proptest::{
    strategy::Strategy,
    test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner},
};

mod decode;
mod dns;
mod ebpf_parse;
mod enrich;
mod kernel;
mod signals;
mod stream;

/// Cases per target in the normal test suite.
pub const DEFAULT_CASES: u32 = 256;

/// One case running longer than this is a hang: the process aborts.
pub const HANG_LIMIT: Duration = Duration::from_secs(60);

/// Cases for a target: `TRACER_FUZZ_CASES` (else [`DEFAULT_CASES`]) divided by `cost` (for
/// targets whose one case costs as much as `cost` cases of the others), at least `min`.
pub fn cases(cost: u32, min: u32) -> u32 {
    let n = std::env::var("TRACER_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse::<u32>().ok())
        .unwrap_or(DEFAULT_CASES);
    (n / cost.max(1)).max(min)
}

/// A target's case in progress, for the watchdog: start time (ns since [`epoch`]), 0 when idle.
struct Slot {
    name: &'static str,
    started: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Registers a target with the watchdog (started on first use).
fn watch(name: &'static str) -> Arc<Slot> {
    static SLOTS: OnceLock<Mutex<Vec<Arc<Slot>>>> = OnceLock::new();
    let slots = SLOTS.get_or_init(|| {
        std::thread::spawn(|| {
            loop {
                std::thread::sleep(Duration::from_millis(250));
                let Some(slots) = SLOTS.get() else { continue };
                let now = now_ns();
                for slot in slots.lock().unwrap_or_else(PoisonError::into_inner).iter() {
                    let started = slot.started.load(Ordering::Relaxed);
                    if started != 0
                        && Duration::from_nanos(now.saturating_sub(started)) > HANG_LIMIT
                    {
                        eprintln!(
                            "fuzz: {}: one case has run for more than {HANG_LIMIT:?}: a hang",
                            slot.name
                        );
                        std::process::abort();
                    }
                }
            }
        });
        Mutex::new(Vec::new())
    });
    let slot = Arc::new(Slot {
        name,
        started: AtomicU64::new(0),
    });
    slots
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Arc::clone(&slot));
    slot
}

/// Runs `cases` cases of `test` on values of `strategy`, replaying the failures saved in
/// `regressions` first, and prints one line of figures (shown by `--nocapture`, which
/// `cargo xtask fuzz` reads). Panics with the shrunk failing input when a case fails.
pub fn run<S: Strategy>(
    name: &'static str,
    regressions: &'static str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let config = Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
        // Shrinking a failure found after a million cases may take a while; bounded.
        max_shrink_time: 120_000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let slot = watch(name);
    let slowest = Cell::new(Duration::ZERO);
    let ran = Cell::new(0u64);
    let start = Instant::now();
    let result = runner.run(&strategy, |value| {
        let t = Instant::now();
        slot.started.store(now_ns().max(1), Ordering::Relaxed);
        let r = test(value);
        slot.started.store(0, Ordering::Relaxed);
        slowest.set(slowest.get().max(t.elapsed()));
        ran.set(ran.get() + 1);
        r
    });
    let took = start.elapsed();
    let ran = ran.get().max(1);
    println!(
        "fuzz: {name}: {ran} cases in {:.2} s ({:.1} us/case, slowest case {:.2} ms)",
        took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / ran as f64,
        slowest.get().as_secs_f64() * 1e3,
    );
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

/// Declares a target: `#[test] fn $name()` running [`run`] with [`cases`]`($cost, $min)`, its
/// failures saved in `tracer/proptest-regressions/fuzz/$name.txt`.
macro_rules! target {
    ($(#[$meta:meta])* $name:ident, cost = $cost:expr, min = $min:expr, $strategy:expr, $test:expr $(,)?) => {
        $(#[$meta])*
        #[test]
        fn $name() {
            $crate::devtools::fuzz::run(
                stringify!($name),
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/proptest-regressions/fuzz/",
                    stringify!($name),
                    ".txt"
                ),
                $crate::devtools::fuzz::cases($cost, $min),
                $strategy,
                $test,
            );
        }
    };
    ($(#[$meta:meta])* $name:ident, $strategy:expr, $test:expr $(,)?) => {
        $crate::devtools::fuzz::target!($(#[$meta])* $name, cost = 1, min = 1, $strategy, $test);
    };
}
pub(crate) use target;

/// Any text of up to `max` characters (any Unicode scalar value, control characters
/// included): cheaper to generate than a regex over a Unicode class.
pub fn any_text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::char::any(), 0..=max).prop_map(String::from_iter)
}

/// `prop_assert!` for a condition computed outside the macro (keeps targets readable).
pub fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if ok {
        Ok(())
    } else {
        Err(TestCaseError::fail(what()))
    }
}
