//! The previous release of enforcer, built from git, for the upgrade lab.
//!
//! There are no release tags: the previous release is named by its commit, [`COMMIT`]. Its
//! `enforcer` binary (daemon and CLI, with its XDP object embedded) is built once from
//! `git archive` of that commit and kept in the cache ([`cache_dir`]), outside the target
//! directory, so that a fresh clone (CI's) reuses it: `<cache>/previous-release/<commit>/
//! enforcer`. The build itself happens in a temporary directory, removed after it.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail, ensure};

/// The last commit of the previous release: the one before 8309176 (map layout 6, prefix
/// lookup without the LPM trie walk), so it runs map layout 5 (prefixes in LPM tries).
pub const COMMIT: &str = "647792e597ab960186db2bc4dcd5023d2bf7606b";

/// Overrides where built previous releases are kept.
pub const CACHE_ENV: &str = "ENFORCER_TEST_CACHE";

/// Where built previous releases are kept: `$ENFORCER_TEST_CACHE`, else
/// `$XDG_CACHE_HOME/enforcer-tests`, else `~/.cache/enforcer-tests`, else (no home) the target
/// directory's `enforcer-tests-cache`.
pub fn cache_dir() -> PathBuf {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var(CACHE_ENV)
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("enforcer-tests")))
        .or_else(|| var("HOME").map(|d| d.join(".cache/enforcer-tests")))
        .unwrap_or_else(|| crate::daemon::target_dir().join("enforcer-tests-cache"))
}

/// The previous release's `enforcer` binary, built on first use (several minutes on a fresh
/// two-core machine; a lock keeps concurrent tests from building it twice).
pub fn enforcer_bin() -> Result<PathBuf> {
    let base = cache_dir().join("previous-release");
    let dir = base.join(COMMIT);
    let bin = dir.join("enforcer");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let lock = File::create(base.join("lock")).context("creating the build lock")?;
    lock.lock().context("taking the build lock")?;
    if bin.exists() {
        println!("the previous release ({COMMIT}): {}", bin.display());
    } else {
        build(&base, &bin)?;
    }
    Ok(bin)
}

/// Unpacks [`COMMIT`] into a temporary directory under `base`, builds its `enforcer` there and
/// moves it to `bin`.
fn build(base: &Path, bin: &Path) -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("build-")
        .tempdir_in(base)
        .with_context(|| format!("creating a build directory in {}", base.display()))?;
    let src = tmp.path().join("src");
    std::fs::create_dir(&src)?;
    unpack(&src)?;
    println!(
        "building the previous release ({COMMIT}) in {} (once: kept in {})",
        src.display(),
        bin.display()
    );
    let started = Instant::now();
    let target = tmp.path().join("target");
    let status = Command::new("cargo")
        .args(["build", "--locked", "-p", "enforcer", "--bin", "enforcer"])
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", &target)
        // Only run, never debugged or rebuilt: no debug info or incremental state (a third of
        // the build's disk and time).
        .env("CARGO_PROFILE_DEV_DEBUG", "false")
        .env("CARGO_INCREMENTAL", "0")
        .status()
        .context("running cargo")?;
    ensure!(
        status.success(),
        "building the previous release {COMMIT} failed ({status}): see the output above"
    );
    std::fs::rename(target.join("debug/enforcer"), bin)
        .with_context(|| format!("moving the built binary to {}", bin.display()))?;
    println!(
        "built the previous release in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `git archive COMMIT | tar -x -C src`, from the repository these tests belong to.
fn unpack(src: &Path) -> Result<()> {
    let mut git = Command::new("git")
        .arg("-C")
        .arg(crate::daemon::source_root())
        .args(["archive", "--format=tar", COMMIT])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running git (Debian package git)")?;
    let stdout = git.stdout.take().context("git's stdout")?;
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(src)
        .stdin(stdout)
        .status()
        .context("running tar")?;
    let out = git.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "`git archive {COMMIT}` failed: {}. The upgrade lab builds the previous release from \
             this repository's history: run it from a git clone that has that commit (a shallow \
             clone needs `git fetch --unshallow`), or put its built `enforcer` at {}",
            String::from_utf8_lossy(&out.stderr).trim(),
            cache_dir()
                .join("previous-release")
                .join(COMMIT)
                .join("enforcer")
                .display()
        );
    }
    ensure!(
        tar.success(),
        "unpacking the previous release failed ({tar})"
    );
    Ok(())
}
