//! `cargo xtask setup`: make this machine able to build and test enforcer.
//!
//! Idempotent: every check prints `ok: ...` when nothing needs doing, or
//! `installing: ...` before it fixes something. What cannot be fixed automatically
//! fails with a message that says what to do.

use std::{
    collections::HashSet,
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

use crate::cmd;

/// The toolchain that builds the eBPF crate (aya-build runs `rustup run nightly ...`).
const NIGHTLY: &str = "nightly";
/// Version prefix of bpf-linker that fits the nightly's LLVM.
const BPF_LINKER_SERIES: &str = "0.10.";
/// What `cargo install` gets when bpf-linker is missing or from another series.
const BPF_LINKER_INSTALL: &str = "bpf-linker@0.10.0";
/// LLVM major that bpf-linker 0.10.x expects: it loads rustc's own LLVM 22 at run time
/// (0.11+ needs LLVM 23), so a nightly with another LLVM produces link failures.
const BPF_LINKER_LLVM_MAJOR: u32 = 22;
/// Debian packages the tests and benchmarks call (bpftool to inspect programs and maps,
/// firewalls to compare against, traffic generators, interface/namespace tools, fail2ban
/// to run as a real trigger source, Prometheus to scrape the metrics endpoint, lintian and
/// systemd to check the .deb and its unit, and strace to count the daemon's fsyncs). The
/// CrowdSec LAPI the tests run is unpacked, not installed: see [`check_crowdsec`].
const PACKAGES: &[&str] = &[
    "bpftool",
    "iptables",
    "nftables",
    "ipset",
    "hping3",
    "iperf3",
    "iproute2",
    "ethtool",
    "procps",
    "fail2ban",
    "prometheus",
    "lintian",
    "systemd",
    "strace",
    "libfaketime",
];
const BPFFS: &str = "/sys/fs/bpf";
/// What a cold `cargo xtask test`, `bench --quick` and `fuzz` write under target/ and
/// fuzz/target/ together (measured: 16 GB), with a margin for the tests' own files.
const BUILD_BYTES: u64 = 20 << 30;
/// Below this the build fails whatever it already has (incremental files, test data).
const MIN_FREE_BYTES: u64 = 2 << 30;
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

pub(crate) fn run() -> Result<()> {
    check_root()?;
    check_disk()?;
    check_kernel()?;
    check_cargo_bin_on_path()?;
    check_nightly_components()?;
    let linker_llvm = check_bpf_linker()?;
    check_llvm(linker_llvm)?;
    check_packages()?;
    check_crowdsec()?;
    check_bpffs()?;
    println!("ok: setup complete");
    Ok(())
}

/// Tests load XDP programs, pin maps and create network namespaces: that takes
/// CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN, and installing packages takes root too.
fn check_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    ensure!(
        euid == 0,
        "must run as root (effective uid is {euid}): tests need CAP_BPF/CAP_NET_ADMIN and \
         setup installs packages. Re-run as root, e.g. `sudo -E env PATH=\"$PATH\" cargo xtask ...`"
    );
    println!("ok: running as root");
    Ok(())
}

/// A full disk fails the build halfway with `No space left on device` from whatever crate
/// was compiling: say it first, with what to do. A warm target needs only what it lacks.
fn check_disk() -> Result<()> {
    let target = cmd::target_dir();
    let free = free_bytes(&target)?;
    let have = dir_bytes(&target) + dir_bytes(&cmd::repo_root().join("fuzz/target"));
    let need = BUILD_BYTES.saturating_sub(have).max(MIN_FREE_BYTES);
    let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
    ensure!(
        free >= need,
        "only {:.1} GiB free on the filesystem of {}; building and testing needs about {:.1} \
         GiB more (the build directories hold {:.1} GiB of the {:.0} GiB a cold run writes). \
         Free space (for example `cargo clean` in other checkouts) and rerun",
        gib(free),
        target.display(),
        gib(need),
        gib(have),
        gib(BUILD_BYTES),
    );
    println!(
        "ok: {:.1} GiB free for the build ({:.1} GiB needed)",
        gib(free),
        gib(need)
    );
    Ok(())
}

/// Bytes available to an unprivileged writer on the filesystem holding `path` (or its
/// nearest existing ancestor: a fresh clone has no target/ yet).
fn free_bytes(path: &Path) -> Result<u64> {
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .context("no existing ancestor of the target directory")?;
    let c_path = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes())
        .context("target directory path holds a NUL byte")?;
    // SAFETY: a zeroed statvfs is a valid out-parameter; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut st) };
    ensure!(
        rc == 0,
        "statvfs({}): {}",
        existing.display(),
        std::io::Error::last_os_error()
    );
    Ok(st.f_bavail * st.f_frsize)
}

/// Disk bytes under `dir` (allocated blocks, symlinks not followed); 0 if it is absent.
fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// aya relocates the program against the kernel's BTF; without it nothing loads.
fn check_kernel() -> Result<()> {
    let release = cmd::probe_stdout(Command::new("uname").arg("-r"))?;
    let release = release.trim();
    ensure!(
        fs::metadata(VMLINUX_BTF).is_ok(),
        "kernel {release} has no BTF ({VMLINUX_BTF} is missing): boot a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y"
    );
    println!("ok: kernel {release} with BTF at {VMLINUX_BTF}");
    Ok(())
}

/// `cargo install` puts bpf-linker in ~/.cargo/bin, and aya-build finds it through PATH.
fn check_cargo_bin_on_path() -> Result<()> {
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let bin = cargo_home.join("bin");
    let path = env::var_os("PATH").unwrap_or_default();
    ensure!(
        env::split_paths(&path).any(|dir| dir == bin),
        "{} is not on PATH: add it (export PATH=\"{}:$PATH\") so bpf-linker can be found",
        bin.display(),
        bin.display()
    );
    println!("ok: {} is on PATH", bin.display());
    Ok(())
}

/// rust-src lets the eBPF build use `-Z build-std=core`; clippy lints the eBPF crate;
/// rustfmt checks the import grouping (unstable options, see `test::format_check`).
fn check_nightly_components() -> Result<()> {
    let installed = cmd::probe_stdout(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
        "--installed",
    ]))
    .with_context(|| {
        format!(
            "the {NIGHTLY} toolchain is needed to build the eBPF crate; install one whose \
             LLVM major is {BPF_LINKER_LLVM_MAJOR} (see `rustc +{NIGHTLY} -vV`)"
        )
    })?;
    for component in ["rust-src", "clippy", "rustfmt"] {
        // Installed components are listed with the host triple, except rust-src.
        let present = installed.lines().any(|line| {
            let line = line.trim();
            line == component || line.starts_with(&format!("{component}-"))
        });
        if present {
            println!("ok: {component} installed for {NIGHTLY}");
        } else {
            println!("installing: {component} for {NIGHTLY}");
            cmd::run(Command::new("rustup").args([
                "component",
                "add",
                component,
                "--toolchain",
                NIGHTLY,
            ]))?;
        }
    }
    Ok(())
}

/// Makes sure bpf-linker 0.10.x is installed; returns the LLVM major it reports, if any.
fn check_bpf_linker() -> Result<Option<u32>> {
    let describe = |found: &Option<String>| match found {
        Some(text) => format!("found `{}`", text.lines().next().unwrap_or("").trim()),
        None => "not installed".to_owned(),
    };
    let mut found = bpf_linker_version()?;
    if !found.as_deref().is_some_and(is_wanted_linker) {
        println!("installing: {BPF_LINKER_INSTALL} ({})", describe(&found));
        cmd::run(cmd::cargo().args(["install", BPF_LINKER_INSTALL, "--locked"]))?;
        found = bpf_linker_version()?;
        if !found.as_deref().is_some_and(is_wanted_linker) {
            bail!(
                "bpf-linker {BPF_LINKER_SERIES}x is still not the one on PATH after \
                 installing ({}); check `which -a bpf-linker`",
                describe(&found)
            );
        }
    }
    let text = found.unwrap_or_default();
    println!("ok: {}", text.lines().next().unwrap_or("").trim());
    Ok(llvm_major(&text))
}

/// `bpf-linker --version` output, or `None` if it is not installed or does not run.
fn bpf_linker_version() -> Result<Option<String>> {
    Ok(cmd::probe(Command::new("bpf-linker").arg("--version"))?
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned()))
}

/// True for output like `bpf-linker 0.10.0`.
fn is_wanted_linker(version_output: &str) -> bool {
    version_output
        .split_whitespace()
        .nth(1)
        .is_some_and(|version| version.starts_with(BPF_LINKER_SERIES))
}

/// The nightly's LLVM must be the one bpf-linker was built for; a newer nightly moves to
/// a newer LLVM and bpf-linker then fails at link time with obscure errors.
fn check_llvm(linker_llvm: Option<u32>) -> Result<()> {
    let info = cmd::probe_stdout(Command::new("rustc").args([&format!("+{NIGHTLY}"), "-vV"]))?;
    let rustc_llvm = llvm_major(&info)
        .with_context(|| format!("`rustc +{NIGHTLY} -vV` does not report an LLVM version"))?;
    // Prefer what the installed linker says about itself; 0.10.x does not say, so fall
    // back to the LLVM that series is known to use.
    let (wanted, source) = match linker_llvm {
        Some(major) => (major, "the installed bpf-linker reports"),
        None => (BPF_LINKER_LLVM_MAJOR, "bpf-linker 0.10.x loads"),
    };
    ensure!(
        rustc_llvm == wanted,
        "{NIGHTLY} rustc uses LLVM {rustc_llvm} but {source} LLVM {wanted}: bpf-linker 0.10.x \
         works with rustc's LLVM 22 and 0.11+ needs LLVM 23. Install a {NIGHTLY} toolchain \
         with LLVM {wanted}, or a bpf-linker built for LLVM {rustc_llvm}"
    );
    println!("ok: {NIGHTLY} rustc LLVM {rustc_llvm} matches bpf-linker");
    Ok(())
}

/// The major version in the first `LLVM ... <major>.<minor>` mention, e.g. in
/// `LLVM version: 22.1.4`.
fn llvm_major(text: &str) -> Option<u32> {
    text.lines().find_map(|line| {
        let rest = &line[line.find("LLVM")? + "LLVM".len()..];
        let start = rest.find(|c: char| c.is_ascii_digit())?;
        let digits: String = rest[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    })
}

fn check_packages() -> Result<()> {
    let mut missing = missing_packages()?;
    if missing.is_empty() {
        println!("ok: debian packages installed: {}", PACKAGES.join(" "));
        return Ok(());
    }
    println!("installing: debian packages {}", missing.join(" "));
    cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q"])
            .args(&missing),
    )?;
    missing = missing_packages()?;
    ensure!(
        missing.is_empty(),
        "still not installed after apt-get: {}",
        missing.join(" ")
    );
    println!("ok: debian packages installed");
    Ok(())
}

/// Packages from [`PACKAGES`] that dpkg does not report as installed (one query for all).
fn missing_packages() -> Result<Vec<&'static str>> {
    let output = cmd::probe(
        Command::new("dpkg-query")
            .args(["-W", r"-f=${Package} ${Status}\n"])
            .args(PACKAGES),
    )?
    .context(
        "dpkg-query not found: setup installs packages with apt and needs a Debian-based system",
    )?;
    // dpkg-query exits non-zero when some package is unknown; its output still lists the
    // known ones, which is all we need.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let installed: HashSet<&str> = stdout
        .lines()
        .filter(|line| line.contains("install ok installed"))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    Ok(PACKAGES
        .iter()
        .copied()
        .filter(|name| !installed.contains(name))
        .collect())
}

/// Where the tests' CrowdSec LAPI comes from: Debian's `crowdsec` package, unpacked (never
/// installed: its post-install step wants the Central API and leaves dpkg half-configured
/// here) into `target/crowdsec/root`, the directory `enforcer_tests::crowdsec` runs it from.
/// Fetching it here means no test downloads anything mid-run.
fn check_crowdsec() -> Result<()> {
    let dir = cmd::target_dir().join("crowdsec");
    let root = dir.join("root");
    if root.join("usr/bin/crowdsec").is_file() && root.join("usr/bin/cscli").is_file() {
        println!("ok: crowdsec LAPI unpacked in {}", root.display());
        return Ok(());
    }
    println!(
        "installing: crowdsec package, downloaded and unpacked into {} (not installed)",
        root.display()
    );
    let work = dir.join(format!("setup-{}", std::process::id()));
    // A leftover of an interrupted run, if any.
    fs::remove_dir_all(&work).ok();
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let fetched = unpack_crowdsec(&work, &root);
    // Best effort: what `fetched` says is the outcome.
    fs::remove_dir_all(&work).ok();
    fetched?;
    println!("ok: crowdsec LAPI unpacked in {}", root.display());
    Ok(())
}

/// `apt-get download crowdsec` into `work`, `dpkg-deb -x` it, and move the tree to `root`.
fn unpack_crowdsec(work: &Path, root: &Path) -> Result<()> {
    let download = |cwd: &Path| {
        cmd::run(
            Command::new("apt-get")
                .args(["download", "-q", "crowdsec"])
                .current_dir(cwd),
        )
    };
    if download(work).is_err() {
        // A fresh machine may not have the package lists yet.
        cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
        download(work)?;
    }
    let deb = fs::read_dir(work)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("`apt-get download crowdsec` left no .deb")?;
    let tree = work.join("root");
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    // The previous tree, if any: the rename below fails, saying so, if it stays.
    fs::remove_dir_all(root).ok();
    fs::rename(&tree, root)
        .with_context(|| format!("moving the unpacked crowdsec to {}", root.display()))
}

/// Pinned maps and links live in bpffs, which a fresh machine does not mount.
fn check_bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&BPFFS) && fields.get(2) == Some(&"bpf")
    });
    if mounted {
        println!("ok: bpffs mounted at {BPFFS}");
    } else {
        println!("installing: bpffs was not mounted at {BPFFS}, mounting it");
        cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_llvm_major() {
        assert_eq!(
            llvm_major("release: 1.97.0-nightly\nLLVM version: 22.1.4\n"),
            Some(22)
        );
        assert_eq!(llvm_major("bpf-linker 0.11.0 (LLVM 23.0.1)"), Some(23));
        assert_eq!(llvm_major("bpf-linker 0.10.0\n"), None);
    }

    #[test]
    fn recognises_linker_series() {
        assert!(is_wanted_linker("bpf-linker 0.10.0\n"));
        assert!(is_wanted_linker("bpf-linker 0.10.3"));
        assert!(!is_wanted_linker("bpf-linker 0.11.0"));
        assert!(!is_wanted_linker("bpf-linker 0.1.0"));
    }
}
