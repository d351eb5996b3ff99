//! Files enforcer writes as root never follow a symbolic link someone planted, and the daemon
//! refuses state and spool directories that others may write or that another user owns.

use std::{os::unix::fs::PermissionsExt as _, path::Path, process::Command, time::Duration};

use enforcer_tests::{
    PinDir,
    daemon::{DaemonBuilder, enforcer_bin},
    require_root,
};

/// Starts the daemon on `state` (no interface) and expects it to refuse within seconds, with
/// one line naming `needle`. A daemon that starts anyway is killed and the test fails.
fn daemon_refuses(state: &Path, needle: &str) {
    let pins = PinDir::new().unwrap();
    let out = DaemonBuilder::new(pins.path())
        .args(&["--max-addresses", "1024", "--max-prefixes", "64"])
        .state_dir(state)
        .refused(Duration::from_secs(10));
    // Cleanup: a daemon that refused has pinned nothing, and the pins go with `pins`.
    Command::new(enforcer_bin())
        .args(["detach", "--bpffs-dir"])
        .arg(pins.path())
        .output()
        .ok();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

#[test]
fn a_world_writable_state_directory_is_refused_with_the_fix() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    daemon_refuses(
        &state,
        &format!(
            "{} is writable by group or others (mode 777); run `chmod go-w {}`",
            state.display(),
            state.display()
        ),
    );
    assert!(
        !state.join("blocks.redb").exists(),
        "nothing was created in it"
    );
}

#[test]
fn a_state_directory_owned_by_another_user_is_refused() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(65534), None).unwrap();
    daemon_refuses(
        &state,
        &format!("{} is owned by uid 65534", state.display()),
    );
    assert!(
        !state.join("blocks.redb").exists(),
        "nothing was created in it"
    );
}

#[test]
fn a_symlinked_audit_log_is_refused_and_its_target_untouched() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let victim = dir.path().join("shadow");
    std::fs::write(&victim, "root:x:0:0\n").unwrap();
    std::os::unix::fs::symlink(&victim, state.join("audit.log")).unwrap();
    daemon_refuses(
        &state,
        &format!("{} is a symbolic link", state.join("audit.log").display()),
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root:x:0:0\n");
}

#[test]
fn a_symlinked_spool_directory_is_refused() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&elsewhere, state.join("spool")).unwrap();
    daemon_refuses(
        &state,
        &format!("{} is a symbolic link", state.join("spool").display()),
    );
    // And the CLI's spool refuses to write through it too.
    let out = Command::new(enforcer_bin())
        .arg("--socket")
        .arg(dir.path().join("none.sock"))
        .args(["block", "192.0.2.77", "--spool-if-down", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is a symbolic link"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "nothing written through the link"
    );
}

#[test]
fn a_symlinked_installer_target_is_refused_even_with_force_and_its_target_untouched() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let mode = std::fs::metadata(&victim).unwrap().permissions().mode();
    // fail2ban action
    let action_d = dir.path().join("action.d");
    std::fs::create_dir(&action_d).unwrap();
    std::os::unix::fs::symlink(&victim, action_d.join("enforcer.conf")).unwrap();
    let out = Command::new(enforcer_bin())
        .args(["install-fail2ban-action", "--force", "--dir"])
        .arg(&action_d)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is a symbolic link"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::symlink_metadata(action_d.join("enforcer.conf"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // The allports variant beside it: refused too, and the action not written either.
    std::fs::remove_file(action_d.join("enforcer.conf")).unwrap();
    std::os::unix::fs::symlink(&victim, action_d.join("enforcer-allports.conf")).unwrap();
    let out = Command::new(enforcer_bin())
        .args(["install-fail2ban-action", "--force", "--dir"])
        .arg(&action_d)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is a symbolic link"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !action_d.join("enforcer.conf").exists(),
        "nothing written when one file is refused"
    );
    // Wazuh hook
    let home = dir.path().join("wazuh");
    std::fs::create_dir_all(home.join("active-response/bin")).unwrap();
    std::os::unix::fs::symlink(&victim, home.join("active-response/bin/firewall-drop")).unwrap();
    let out = Command::new(enforcer_bin())
        .args([
            "install-wazuh-hook",
            "--force",
            "--name",
            "firewall-drop",
            "--wazuh-home",
        ])
        .arg(&home)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is a symbolic link"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert_eq!(
        std::fs::metadata(&victim).unwrap().permissions().mode(),
        mode,
        "its mode is untouched"
    );
}
