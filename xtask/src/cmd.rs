//! Helpers shared by the subcommands: where the repository is, and running commands
//! visibly (every command is echoed as `$ ...` so a log shows exactly what happened).

use std::{
    env,
    ffi::OsStr,
    io,
    path::PathBuf,
    process::{Command, ExitCode, ExitStatus, Output},
};

use anyhow::{Context, Result, bail};

/// The workspace root. xtask sits one level below it, so this is right from any cwd.
///
/// Read at run time (`cargo xtask` is `cargo run`, which sets `CARGO_MANIFEST_DIR`), the
/// build-time path only as a fallback: a target directory copied from another checkout keeps
/// an xtask binary that cargo takes as fresh, and its build-time path would build and test the
/// other checkout.
pub(crate) fn repo_root() -> PathBuf {
    let manifest = env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Where cargo writes build output; honours `CARGO_TARGET_DIR` like cargo does
/// (relative to the repository root, which is where we run cargo).
pub(crate) fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => repo_root().join(dir),
        None => repo_root().join("target"),
    }
}

/// A `cargo` command run from the repository root, so workspace settings apply.
///
/// This is the rustup proxy from PATH, so `+nightly` works and everything else uses
/// the toolchain `cargo xtask` was started with (stable by default).
pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(repo_root());
    cmd
}

/// Renders a command the way one would type it in a shell.
pub(crate) fn display(cmd: &Command) -> String {
    let envs = cmd.get_envs().filter_map(|(key, value)| {
        value.map(|value| format!("{}={}", key.to_string_lossy(), quote(value)))
    });
    let words = std::iter::once(quote(cmd.get_program())).chain(cmd.get_args().map(quote));
    envs.chain(words).collect::<Vec<_>>().join(" ")
}

/// Single-quotes a word when the shell would otherwise split or expand it.
fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Prints `$ <command>`.
pub(crate) fn echo(cmd: &Command) {
    println!("$ {}", display(cmd));
}

/// Runs a command with inherited stdio and returns its status; the caller judges it.
pub(crate) fn status(cmd: &mut Command) -> Result<ExitStatus> {
    echo(cmd);
    cmd.status()
        .with_context(|| format!("cannot start `{}`", display(cmd)))
}

/// Runs a command with inherited stdio and fails unless it exits successfully.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Runs a probe and captures its output. `Ok(None)` means the program is not installed,
/// which callers treat as "missing" rather than as an error.
pub(crate) fn probe(cmd: &mut Command) -> Result<Option<Output>> {
    echo(cmd);
    match cmd.output() {
        Ok(output) => Ok(Some(output)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("cannot start `{}`", display(cmd))),
    }
}

/// Like [`probe`], but the command must exist and succeed; returns its stdout.
pub(crate) fn probe_stdout(cmd: &mut Command) -> Result<String> {
    let Some(output) = probe(cmd)? else {
        bail!("`{}`: program not found on PATH", display(cmd));
    };
    if !output.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            display(cmd),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Maps a child's exit status to ours, so wrappers like `demo` keep the child's code.
pub(crate) fn exit_code(status: ExitStatus) -> ExitCode {
    match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        // Killed by a signal: there is no code to forward.
        None => ExitCode::FAILURE,
    }
}

/// Runs `target/release/<name>` with `args` after the caller has built it.
///
/// The binaries come from other crates (the tests crate provides `enforcer-demo` and
/// `enforcer-bench`), so a missing one gets a message rather than an ENOENT.
pub(crate) fn run_release_bin(name: &str, args: &[String]) -> Result<ExitCode> {
    let path = target_dir().join("release").join(name);
    if !path.is_file() {
        bail!(
            "{} does not exist after the release build: no workspace crate defines the \
             `{name}` binary yet (it is expected from the tests crate, enforcer-tests)",
            path.display()
        );
    }
    let mut cmd = Command::new(&path);
    cmd.args(args).current_dir(repo_root());
    Ok(exit_code(status(&mut cmd)?))
}

/// Builds the release binaries of `packages` and runs `bin` from them with `args`.
pub(crate) fn build_and_run_release_bin(
    packages: &[&str],
    bin: &str,
    args: &[String],
) -> Result<ExitCode> {
    let mut build = cargo();
    build.args(["build", "--release", "--bins"]);
    for p in packages {
        build.args(["-p", p]);
    }
    run(&mut build)?;
    run_release_bin(bin, args)
}
