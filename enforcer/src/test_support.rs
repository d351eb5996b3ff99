//! Helpers shared by unit tests of several modules.

use std::{ffi::OsStr, process::Command};

/// Runs the unit test `name` (its full path, `module::tests::name`) alone in a child process of
/// this test binary, with `var` set to `value`, and fails unless it ran and passed. For a test
/// that changes its whole process (takes every file descriptor) while other tests run beside
/// it: the test calls this when `var` is unset, and does its work when it is set.
pub(crate) fn run_in_child(name: &str, var: &str, value: &OsStr) {
    let out = Command::new(std::env::current_exe().expect("the test binary's path"))
        .args(["--exact", name, "--test-threads=1", "--nocapture"])
        .env(var, value)
        .output()
        .expect("the test binary runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the child failed:\n{text}");
    assert!(text.contains("1 passed"), "the child ran the test:\n{text}");
}
