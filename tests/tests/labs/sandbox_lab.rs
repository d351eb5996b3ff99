//! The daemon under the shipped unit's sandbox, rebuilt without systemd (CI has none running):
//! only the unit's capabilities (`CapabilityBoundingSet=`, `NoNewPrivileges=`), the file
//! system read-only but for its state, runtime and bpffs directories (`ProtectSystem=strict`,
//! `ReadWritePaths=`, `StateDirectory=`, `RuntimeDirectory=`), a private `/tmp`
//! (`PrivateTmp=`), its own mount namespace (`PrivateMounts=`) and `/proc` mounted
//! `subset=pid` (`ProcSubset=pid`, which also hides `/proc/sys`).

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use enforcer_tests::{
    Lab, RECEIVER_V4, SENDER_V4,
    daemon::{Daemon, enforcer_bin, ok},
    require_root,
};

fn unit() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/enforcer.service"))
        .unwrap()
}

/// The unit's `CapabilityBoundingSet=` as capability numbers.
fn unit_capabilities() -> Vec<u32> {
    let unit = unit();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit bounds capabilities");
    line.split_whitespace()
        .map(|name| match name {
            "CAP_CHOWN" => 0,
            "CAP_DAC_OVERRIDE" => 1,
            "CAP_NET_BIND_SERVICE" => 10,
            "CAP_NET_ADMIN" => 12,
            "CAP_NET_RAW" => 13,
            "CAP_SYS_ADMIN" => 21,
            "CAP_SYS_RESOURCE" => 24,
            "CAP_PERFMON" => 38,
            "CAP_BPF" => 39,
            other => panic!("add {other} to this table (linux/capability.h)"),
        })
        .collect::<std::collections::BTreeSet<u32>>()
        .into_iter()
        .collect()
}

/// The boot id as systemd's `%b` gives it (32 hex digits).
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .replace('-', "")
}

/// A `/proc/PID/status` capability line (`CapEff:`) as a set of numbers.
fn caps_of(status: &str, field: &str) -> Vec<u32> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .trim();
    let mask = u64::from_str_radix(hex, 16).unwrap();
    (0..64).filter(|b| mask & (1 << b) != 0).collect()
}

/// The script that builds the sandbox and execs the daemon in it.
fn sandbox_script(dir: &Path, netns: &str, rw: &[&Path], caps: &[u32]) -> PathBuf {
    let rw_list = rw
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let bounding = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{}", cap_name(*c))))
        .collect::<Vec<_>>()
        .join(",");
    let script = format!(
        r#"#!/bin/sh
# PrivateMounts=: everything below happens in a mount namespace of the daemon's own.
if [ "$ENFORCER_SANDBOXED" != 1 ]; then
  export ENFORCER_SANDBOXED=1
  exec unshare -m --propagation private -- "$0" "$@"
fi
set -e
for d in {rw_list}; do mount --bind "$d" "$d"; done
# ProtectSystem=strict: every mount read-only but the kernel's and the writable paths.
findmnt -rn -o TARGET | while read -r t; do
  case "$t" in
    /proc|/proc/*|/dev|/dev/*|/sys/fs/bpf|/run/netns|/run/netns/*) ;;
    {rw_case}) ;;
    *) mount -o remount,bind,ro "$t" 2>/dev/null || true ;;
  esac
done
mount -t tmpfs -o mode=1777 tmpfs /tmp           # PrivateTmp=
mount -t proc -o subset=pid proc /proc           # ProcSubset=pid
exec nsenter --net=/run/netns/{netns} setpriv --bounding-set={bounding} --inh-caps=-all --no-new-privs -- {bin} "$@"
"#,
        rw_case = rw
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join("|"),
        bin = enforcer_bin().display(),
    );
    let path = dir.join("enforcer-sandboxed");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn cap_name(n: u32) -> &'static str {
    match n {
        0 => "chown",
        1 => "dac_override",
        10 => "net_bind_service",
        12 => "net_admin",
        13 => "net_raw",
        21 => "sys_admin",
        24 => "sys_resource",
        38 => "perfmon",
        39 => "bpf",
        _ => unreachable!("only names from unit_capabilities"),
    }
}

/// Whether the mount holding `path` is read-only in process `pid`'s mount namespace.
fn read_only_for(pid: u32, path: &Path) -> bool {
    let out = Command::new("nsenter")
        .arg(format!("--mount=/proc/{pid}/ns/mnt"))
        .args(["findmnt", "-n", "-o", "OPTIONS", "-T"])
        .arg(path)
        .output()
        .unwrap();
    let options = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "findmnt {}: {options}",
        path.display()
    );
    options.split(',').any(|o| o.trim() == "ro")
}

#[test]
fn the_daemon_runs_and_blocks_under_the_units_sandbox_with_exactly_its_capabilities() {
    require_root();
    let lab = Lab::new().unwrap();
    // Outside /tmp: the sandbox's /tmp is private.
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let tmp = tempfile::tempdir_in(base).unwrap();
    let (state, run) = (tmp.path().join("state"), tmp.path().join("run"));
    for d in [&state, &run] {
        std::fs::create_dir(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o750)).unwrap();
    }
    let caps = unit_capabilities();
    let script = sandbox_script(tmp.path(), lab.receiver.name(), &[&state, &run], &caps);
    let mut daemon = Daemon::builder(&lab)
        .launched_by([&script])
        .socket(&run.join("enforcer.sock"))
        .state_dir(&state)
        .args(&["--max-addresses", "1024", "--max-prefixes", "1024"])
        // The unit's Environment=ENFORCER_BOOT_ID=%b (ProcSubset=pid hides /proc/sys).
        .env("ENFORCER_BOOT_ID", boot_id())
        .start()
        .unwrap_or_else(|e| panic!("the daemon in the sandbox: {e}"));
    let pid = daemon.pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.contains("NoNewPrivs:\t1"),
        "no_new_privs is set: {status}"
    );
    for field in ["CapEff:", "CapPrm:", "CapBnd:"] {
        assert_eq!(
            caps_of(&status, field),
            caps,
            "{field} is the unit's set exactly"
        );
    }
    // The sandbox is what it claims: the system read-only, the daemon's directories not.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, enforcer_bin(), "the pid is the daemon itself");
    for p in [Path::new("/"), Path::new("/etc"), Path::new("/usr"), base] {
        assert!(read_only_for(pid, p), "{} is read-only", p.display());
    }
    for p in [&state, &run, &PathBuf::from("/sys/fs/bpf")] {
        assert!(!read_only_for(pid, p), "{} is writable", p.display());
    }

    ok(&daemon.cli(&["block", SENDER_V4[1], "--ttl", "10m"]));
    let rx = lab.udp_listener(RECEIVER_V4).unwrap();
    assert_eq!(
        lab.exchange(&lab.udp_sender(SENDER_V4[1]).unwrap(), &rx, 5)
            .unwrap(),
        0,
        "{}",
        daemon.log()
    );
    assert_eq!(
        lab.exchange(&lab.udp_sender(SENDER_V4[2]).unwrap(), &rx, 5)
            .unwrap(),
        5
    );
    // A clean stop in the sandbox (the audit log and the store are written).
    daemon.stop().unwrap();
}
