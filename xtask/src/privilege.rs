//! Whether privileged tests can run here: the lab's own test and every integration test share
//! this rule.

/// True when privileged tests can run (root). Outside CI a non-root run skips with a message;
/// under CI it panics, so a machine that cannot run the privileged tests turns the run red.
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    if ci() {
        panic!("privileged test cannot run: not root (CI=true requires it to run)");
    }
    eprintln!("SKIPPED: needs root (set CI=true to make this a failure)");
    false
}

/// True when CI=true (or any non-empty value other than false/0).
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}
