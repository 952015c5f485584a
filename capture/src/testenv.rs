//! How tests that need the machine (trace-cmd, tracefs, /dev/kvm, root) skip: they print
//! `SKIP: <reason>` and pass, except under `CI=true`, where a missing capability is a failure.

/// Skips the calling test with `reason`, or panics when the environment variable `CI` is
/// `true`.
pub fn skip(reason: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but this test cannot run: {reason}"
    );
    eprintln!("SKIP: {reason}");
}
