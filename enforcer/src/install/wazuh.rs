//! Installing the hook into a Wazuh installation.
//!
//! The hook is a **copy** of the running binary, not a symlink to it:
//!
//! - Wazuh wants its programs owned `root:wazuh` with mode 0750; a symlink cannot carry that
//!   (its target's owner and mode would have to change, and `/usr/sbin/enforcer` is not
//!   Wazuh's to own).
//! - Whatever happens to the package's binary (an upgrade mid-way through replacing it, an
//!   uninstall), the file execd runs stays whole and present; a dangling symlink would make every
//!   response fail.
//! - It does not rely on execd or an agent upgrade treating links in `active-response/bin/` like
//!   files.
//!
//! The price is that an upgrade of enforcer does not upgrade the hook: run the install again
//! (it replaces an earlier copy atomically; the protocol is versioned, so an older hook keeps
//! working meanwhile). The copy is written under a temporary name and renamed into place, so
//! execd never starts a half-written program.

use std::{
    fs, io,
    io::Read as _,
    path::{Path, PathBuf},
};

/// The default program name: beside Wazuh's own firewall-drop, not in its place.
pub const DEFAULT_NAME: &str = "enforcer-firewall-drop";

/// The default Wazuh home.
pub const DEFAULT_WAZUH_HOME: &str = "/var/ossec";

/// Bytes every enforcer binary contains (this constant itself): tells an earlier install, which
/// may be replaced, from someone else's program, which is not replaced without `--force`.
const MARKER: &[u8] = b"enforcer:wazuh-active-response-hook:v1";

/// What to install where.
#[derive(Clone, Debug)]
pub struct InstallOptions {
    /// The Wazuh home (`/var/ossec`).
    pub wazuh_home: PathBuf,
    /// The program name under `active-response/bin/`.
    pub name: String,
    /// Replace a file that is not an enforcer hook (such as Wazuh's own firewall-drop).
    pub force: bool,
}

/// What was installed.
#[derive(Clone, Debug)]
pub struct Installed {
    /// The program's path.
    pub path: PathBuf,
    /// The binary it is a copy of.
    pub from: PathBuf,
    /// Its group (`wazuh`, `ossec` on old installs, else `root`).
    pub group: String,
    /// What was there before: `None`, an earlier enforcer hook, or another program.
    pub replaced: Option<Replaced>,
}

/// What an install replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replaced {
    /// An earlier copy of enforcer.
    Enforcer,
    /// Another program (only with `--force`).
    Other,
}

/// Why the install failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// No Wazuh there.
    #[error("{0} does not exist: is Wazuh installed there? (use --wazuh-home DIR)")]
    NoWazuh(PathBuf),
    /// A name execd could not run, or one that would start the CLI instead of the hook.
    #[error(
        "invalid name `{0}`: use letters, digits, '.', '-' and '_', and not `enforcer` (that name runs the CLI)"
    )]
    BadName(String),
    /// Something else is installed under that name.
    #[error(
        "{0} exists and is not an enforcer hook; choose another --name, or pass --force to replace it"
    )]
    NotOurs(PathBuf),
    /// A symbolic link at the target, or another refusal of a file written as root.
    #[error(transparent)]
    File(#[from] crate::safe_fs::SafeFsError),
    /// A file operation failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> InstallError {
    let path = path.to_owned();
    move |source| InstallError::Io { what, path, source }
}

/// Whether `name` is a usable program name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != crate::hooks::CLI_NAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// Whether the file at `path` is a copy of some enforcer binary.
fn is_enforcer(path: &Path) -> io::Result<bool> {
    let mut bytes = Vec::new();
    fs::File::open(path)?.read_to_end(&mut bytes)?;
    // black_box: the marker must exist as bytes in this binary, not be folded into the compare.
    let marker = std::hint::black_box(MARKER);
    Ok(bytes.windows(marker.len()).any(|w| w == marker))
}

/// The group execd's programs belong to: `wazuh`, else `ossec` (Wazuh before 4.3), else root.
fn wazuh_group() -> (String, u32) {
    for name in ["wazuh", "ossec"] {
        if let Ok(gid) = crate::access::group_id(name) {
            return (name.to_owned(), gid);
        }
    }
    ("root".to_owned(), 0)
}

/// Copies the running binary to `<home>/active-response/bin/<name>`, root:wazuh, mode 0750.
pub fn install(options: &InstallOptions) -> Result<Installed, InstallError> {
    if !valid_name(&options.name) {
        return Err(InstallError::BadName(options.name.clone()));
    }
    let bin_dir = options.wazuh_home.join("active-response").join("bin");
    if !bin_dir.is_dir() {
        return Err(InstallError::NoWazuh(bin_dir));
    }
    let from = std::env::current_exe().map_err(io_err(
        "finding the running binary",
        Path::new("/proc/self/exe"),
    ))?;
    let path = bin_dir.join(&options.name);
    crate::safe_fs::refuse_symlink(&path)?;
    let replaced = match fs::symlink_metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("inspecting", &path)(e)),
        Ok(_) if is_enforcer(&path).unwrap_or(false) => Some(Replaced::Enforcer),
        Ok(_) if options.force => Some(Replaced::Other),
        Ok(_) => return Err(InstallError::NotOurs(path)),
    };
    let (group, gid) = wazuh_group();
    // Owner and mode are set on the open file, never through a path someone could swap.
    let new = crate::safe_fs::NewFile {
        mode: 0o750,
        owner: Some((0, gid)),
    };
    crate::safe_fs::replace_file(&bin_dir, &options.name, new, |copy| {
        fs::File::open(&from)
            .and_then(|mut b| io::copy(&mut b, copy))
            .map(drop)
    })?;
    Ok(Installed {
        path,
        from,
        group,
        replaced,
    })
}

/// The ossec.conf blocks that run the hook, with `<extra_args>` for its TTL (the only option
/// the hook takes from the message; it finds the socket in the daemon's configuration file).
/// The TTL is longer than `<timeout>`: Wazuh's delete ends a block on time, the TTL ends it
/// when that delete is lost.
pub fn ossec_snippet(name: &str) -> String {
    let extra_args = "--ttl 1h";
    format!(
        "<command>
  <name>{name}</name>
  <executable>{name}</executable>
  <timeout_allowed>yes</timeout_allowed>
  <!-- The block's own expiry (without it: the daemon's default for source wazuh). Keep it at
       least as long as the longest
       <timeout> below (and any <repeated_offenders> step): Wazuh's delete ends the block on
       time; this TTL ends it if that delete is ever lost. -->
  <extra_args>{extra_args}</extra_args>
</command>

<active-response>
  <command>{name}</command>
  <location>local</location>
  <rules_id>5712,5763</rules_id>
  <timeout>600</timeout>
</active-response>
"
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn names_execd_can_run_and_that_do_not_start_the_cli() {
        for ok in [
            "enforcer-firewall-drop",
            "firewall-drop",
            "enforcer_firewall-drop.v2",
        ] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "enforcer", "a/b", "..", "drop me", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn installs_a_private_copy_and_refuses_to_clobber_someone_elses_program() {
        let home = tempfile::tempdir().unwrap();
        let opts = |name: &str, force| InstallOptions {
            wazuh_home: home.path().to_owned(),
            name: name.to_owned(),
            force,
        };
        assert!(matches!(
            install(&opts("enforcer-firewall-drop", false)),
            Err(InstallError::NoWazuh(_))
        ));
        let bin = home.path().join("active-response/bin");
        fs::create_dir_all(&bin).unwrap();
        // The test binary contains MARKER too (this module is linked into it), like `enforcer`.
        let first = install(&opts("enforcer-firewall-drop", false)).unwrap();
        assert_eq!(first.replaced, None);
        let meta = fs::metadata(&first.path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o750);
        assert_eq!(
            fs::read(&first.path).unwrap(),
            fs::read(&first.from).unwrap()
        );
        assert_eq!(
            install(&opts("enforcer-firewall-drop", false))
                .unwrap()
                .replaced,
            Some(Replaced::Enforcer)
        );

        fs::write(bin.join("firewall-drop"), b"#!/bin/sh\niptables ...\n").unwrap();
        assert!(matches!(
            install(&opts("firewall-drop", false)),
            Err(InstallError::NotOurs(_))
        ));
        assert_eq!(
            install(&opts("firewall-drop", true)).unwrap().replaced,
            Some(Replaced::Other)
        );
        let left: Vec<_> = fs::read_dir(&bin)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "no temporary file left: {left:?}");
    }

    #[test]
    fn the_snippet_keeps_the_ttl_above_the_timeout() {
        let s = ossec_snippet("enforcer-firewall-drop");
        assert!(s.contains("<executable>enforcer-firewall-drop</executable>"));
        assert!(s.contains("<extra_args>--ttl 1h</extra_args>"));
        assert!(s.contains("<timeout>600</timeout>"));
        assert!(s.contains("<timeout_allowed>yes</timeout_allowed>"));
    }
}
