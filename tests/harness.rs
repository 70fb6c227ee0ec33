//! The test harness itself: whatever a test started is gone once its
//! [`Harness`] is dropped, even when the test panics.

mod common;

use std::path::Path;
use std::process::Command;

use common::harness::Harness;

/// Whether a process with this pid still exists (a reaped child does not).
fn running(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_panicking_test_leaves_no_process_running_and_no_file_behind() {
    let mut started = None;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut harness = Harness::new();
        let pid = harness.spawn("sleeper", Command::new("sleep").arg("600"));
        let dir = harness.temp_dir("harness-test");
        std::fs::write(dir.join("scratch"), b"x").unwrap();
        started = Some((pid, dir));
        panic!("the test fails half-way");
    }));
    assert!(outcome.is_err());
    let (pid, dir) = started.expect("the test started its process");
    assert!(!running(pid), "process {pid} survived the panic");
    assert!(!dir.exists(), "{} survived the panic", dir.display());
}

#[test]
fn a_process_that_ignores_sigterm_is_killed() {
    let mut harness = Harness::new();
    let pid = harness.spawn(
        "stubborn",
        // `exec`: the sleep itself ignores TERM, and no grandchild is left.
        Command::new("sh").args(["-c", "trap '' TERM; exec sleep 600"]),
    );
    // Give the shell time to install its trap (else TERM ends it at once).
    std::thread::sleep(std::time::Duration::from_millis(200));
    let status = harness.stop(pid).expect("stopped");
    assert!(!status.success());
    assert!(!running(pid));
}

#[test]
fn the_built_gateway_and_its_database_file_go_with_the_harness() {
    // Nothing connects to thoth here: the gateway dials it per session.
    let builder = Harness::builder("ws://127.0.0.1:9/ws").env("RUST_LOG", "info");
    let database = builder.env_map()["DATABASE_URL"].clone();
    let mut harness = builder.start();
    let pid = harness.gateway().child.id();
    assert!(running(pid));
    assert!(
        Path::new(&database).exists(),
        "the gateway created {database}"
    );
    drop(harness);
    assert!(!running(pid), "the gateway process survived its harness");
    assert!(
        !Path::new(&database).exists(),
        "{database} survived its harness"
    );
}

#[test]
fn paths_kept_if_failed_survive_a_panic_and_go_with_a_passing_test() {
    let kept = std::env::temp_dir().join(format!("chronus-kept-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&kept).unwrap();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut harness = Harness::new();
        harness.keep_if_failed(&kept);
        panic!("the test fails half-way");
    }));
    assert!(outcome.is_err());
    assert!(kept.exists(), "a failed test's folder is kept");

    let mut harness = Harness::new();
    harness.keep_if_failed(&kept);
    drop(harness);
    assert!(!kept.exists(), "{} survived a passing test", kept.display());
}
