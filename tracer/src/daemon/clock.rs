//! The kernel's clock (`CLOCK_MONOTONIC`, what `bpf_ktime_get_ns` reads) and its conversion to
//! wall-clock time for the `time` fields of verdicts.

use std::time::Duration;

/// How often the monotonic-to-wall offset is measured again, so an NTP step moves `time` within
/// this long instead of never.
pub const RESYNC: Duration = Duration::from_secs(10);

/// Converts the kernel's monotonic timestamps to wall-clock time.
#[derive(Debug)]
pub struct Clock {
    /// Wall-clock ns minus monotonic ns, at the last measurement.
    offset_ns: i128,
    /// Monotonic ns of the last measurement.
    measured_at: u64,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// A clock measured now.
    pub fn new() -> Self {
        let mut c = Self {
            offset_ns: 0,
            measured_at: 0,
        };
        c.resync();
        c
    }

    /// Measures the offset again.
    pub fn resync(&mut self) {
        let mono = mono_ns();
        self.offset_ns = wall_ns() - i128::from(mono);
        self.measured_at = mono;
    }

    /// Measures the offset again when [`RESYNC`] has passed.
    pub fn maybe_resync(&mut self, now_mono: u64) {
        let due = u64::try_from(RESYNC.as_nanos()).unwrap_or(u64::MAX);
        if now_mono.saturating_sub(self.measured_at) >= due {
            self.resync();
        }
    }

    /// `CLOCK_MONOTONIC` now, ns.
    pub fn mono_ns(&self) -> u64 {
        mono_ns()
    }

    /// Wall-clock minus monotonic, ns (as last measured).
    pub fn offset_ns(&self) -> i128 {
        self.offset_ns
    }

    /// Wall-clock ns since the Unix epoch of a monotonic timestamp.
    pub fn unix_ns(&self, mono: u64) -> i64 {
        i64::try_from(i128::from(mono) + self.offset_ns).unwrap_or(i64::MAX)
    }

    /// RFC 3339 wall-clock time of a monotonic timestamp.
    pub fn wall_rfc3339(&self, mono: u64) -> Option<String> {
        let ts = jiff::Timestamp::from_nanosecond(i128::from(mono) + self.offset_ns).ok()?;
        Some(ts.to_string())
    }
}

fn wall_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_follows_a_changed_wall_clock() {
        let mut c = Clock::new();
        let now = c.mono_ns();
        let before = c.wall_rfc3339(now).expect("time");
        // Pretend the wall clock had been an hour behind when measured (an NTP step since).
        c.offset_ns -= 3_600_000_000_000;
        assert_ne!(c.wall_rfc3339(now).expect("time"), before);
        // Not due yet: unchanged.
        c.maybe_resync(c.measured_at + 1);
        assert_ne!(c.wall_rfc3339(now).expect("time"), before);
        // Due: measured again, back to the real offset (to within the test's run time).
        c.maybe_resync(c.measured_at + u64::try_from(RESYNC.as_nanos()).expect("fits"));
        let after: jiff::Timestamp = c.wall_rfc3339(now).expect("time").parse().expect("rfc3339");
        let before: jiff::Timestamp = before.parse().expect("rfc3339");
        let gap = (after.as_nanosecond() - before.as_nanosecond()).abs();
        assert!(gap < 1_000_000_000, "{after} vs {before}");
    }
}
