//! fail2ban as a trigger source: an action file (`action.d/enforcer.conf`) whose ban and unban
//! run the `enforcer` CLI with `--source fail2ban`.
//!
//! Unlike the Wazuh hook, nothing is copied: fail2ban runs shell command lines, so the action
//! names the installed binary and the daemon's socket. The file is the one shipped in
//! `dist/fail2ban/action.d/enforcer.conf`, built into the binary, with those two values filled in.

use std::{
    fs, io,
    io::Write as _,
    path::{Path, PathBuf},
};

/// The action file as shipped, with `/usr/sbin/enforcer` and the default socket.
pub const ACTION_TEMPLATE: &str = include_str!("../../../dist/fail2ban/action.d/enforcer.conf");

/// The default directory of fail2ban's actions.
pub const DEFAULT_ACTION_DIR: &str = "/etc/fail2ban/action.d";

/// The default action name (`banaction = enforcer`).
pub const DEFAULT_NAME: &str = "enforcer";

/// The `[Init]` lines the install replaces.
const ENFORCER_LINE: &str = "enforcer = /usr/sbin/enforcer";
const SOCKET_LINE: &str = "socket = /run/enforcer/enforcer.sock";

/// What to install where.
#[derive(Clone, Debug)]
pub struct InstallOptions {
    /// fail2ban's `action.d` directory.
    pub dir: PathBuf,
    /// The action name: the file is `<dir>/<name>.conf`, jails use `banaction = <name>`.
    pub name: String,
    /// The `enforcer` binary the action runs.
    pub enforcer: PathBuf,
    /// The daemon's control socket.
    pub socket: PathBuf,
    /// Replace a different file of that name.
    pub force: bool,
}

/// What the install did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No file was there.
    Created,
    /// The same file was there already; nothing written.
    Unchanged,
    /// A different file was replaced (only with `force`).
    Replaced,
}

/// Why the install failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A name fail2ban would not find as `action.d/<name>.conf`.
    #[error("invalid action name `{0}`: use letters, digits, '.', '-' and '_' (no `.conf`)")]
    BadName(String),
    /// A path the action's shell command line or fail2ban's configuration parser would misread.
    #[error("{what} `{}` cannot go into a fail2ban action: use an absolute path of letters, digits and / . _ - + @ :", path.display())]
    BadPath {
        /// Which path.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// No such directory.
    #[error("{0} does not exist: is fail2ban installed? (use --dir DIR)")]
    NoDir(PathBuf),
    /// Another file is there.
    #[error("{0} exists and differs from this action; pass --force to replace it")]
    Differs(PathBuf),
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

/// Whether `name` is a usable action name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && !name.ends_with(".conf")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// Whether `path` goes into the action verbatim: absolute, and no character the shell (spaces,
/// quotes, `$`) or fail2ban's configuration parser (`%`, `<`, `>`, newlines) would treat specially.
fn plain_path(path: &Path) -> bool {
    let Some(s) = path.to_str() else { return false };
    s.starts_with('/')
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-' | b'+' | b'@' | b':')
        })
}

/// The action file for this binary and socket.
pub fn render_action(enforcer: &Path, socket: &Path) -> Result<String, InstallError> {
    for (what, path) in [("binary path", enforcer), ("socket path", socket)] {
        if !plain_path(path) {
            return Err(InstallError::BadPath {
                what,
                path: path.to_owned(),
            });
        }
    }
    Ok(ACTION_TEMPLATE
        .replacen(
            ENFORCER_LINE,
            &format!("enforcer = {}", enforcer.display()),
            1,
        )
        .replacen(SOCKET_LINE, &format!("socket = {}", socket.display()), 1))
}

/// Writes `<dir>/<name>.conf` (mode 0644, atomically), unless a different file is there and
/// `force` is off.
pub fn install(options: &InstallOptions) -> Result<(PathBuf, Outcome), InstallError> {
    if !valid_name(&options.name) {
        return Err(InstallError::BadName(options.name.clone()));
    }
    let text = render_action(&options.enforcer, &options.socket)?;
    if !options.dir.is_dir() {
        return Err(InstallError::NoDir(options.dir.clone()));
    }
    let path = options.dir.join(format!("{}.conf", options.name));
    crate::safe_fs::refuse_symlink(&path)?;
    let outcome = match fs::read(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Outcome::Created,
        Err(e) => return Err(io_err("reading", &path)(e)),
        Ok(old) if old == text.as_bytes() => return Ok((path, Outcome::Unchanged)),
        Ok(_) if options.force => Outcome::Replaced,
        Ok(_) => return Err(InstallError::Differs(path)),
    };
    // Written under a temporary name and renamed: fail2ban never reads half a file.
    let new = crate::safe_fs::NewFile {
        mode: 0o644,
        owner: None,
    };
    crate::safe_fs::replace_file(&options.dir, &format!("{}.conf", options.name), new, |f| {
        f.write_all(text.as_bytes())
    })?;
    Ok((path, outcome))
}

/// The jail.local lines that select the action.
pub fn jail_snippet(name: &str) -> String {
    format!(
        "[DEFAULT]
# every jail bans through enforcer (or set it in one jail's section only)
banaction = {name}
banaction_allports = {name}
"
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn the_shipped_action_has_the_lines_the_install_fills_in() {
        assert_eq!(ACTION_TEMPLATE.matches(ENFORCER_LINE).count(), 1);
        assert_eq!(ACTION_TEMPLATE.matches(SOCKET_LINE).count(), 1);
        assert!(ACTION_TEMPLATE.contains("source = fail2ban"));
        assert!(ACTION_TEMPLATE.contains("\ntimeout = "));
        assert!(
            !ACTION_TEMPLATE.replace("%%", "").contains('%'),
            "a bare % breaks fail2ban's parser"
        );
    }

    #[test]
    fn renders_the_binary_and_socket_and_refuses_paths_the_shell_would_split() {
        let text = render_action(
            Path::new("/opt/enforcer/bin/enforcer"),
            Path::new("/run/e/x.sock"),
        )
        .unwrap();
        assert!(
            text.contains("\nenforcer = /opt/enforcer/bin/enforcer\n"),
            "{text}"
        );
        assert!(text.contains("\nsocket = /run/e/x.sock\n"), "{text}");
        assert!(text.contains("<enforcer> --socket <socket> block <ip> $ttl --source <source>"));
        assert!(text.contains("unblock <ip> --source <source>"));
        for bad in [
            "relative/enforcer",
            "/with space/enforcer",
            "/a%b",
            "/a$b",
            "/a\"b",
            "/a<b>",
        ] {
            assert!(
                matches!(
                    render_action(Path::new(bad), Path::new("/run/e.sock")),
                    Err(InstallError::BadPath { .. })
                ),
                "{bad}"
            );
        }
        assert!(render_action(Path::new("/usr/sbin/enforcer"), Path::new("run.sock")).is_err());
    }

    #[test]
    fn action_names_fail2ban_can_find() {
        for ok in ["enforcer", "enforcer-xdp", "enforcer_2.v1"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "a/b",
            "..",
            ".hidden",
            "enforcer.conf",
            "with space",
            &"x".repeat(65),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn installs_0644_is_idempotent_and_does_not_clobber_a_different_file_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let opts = |socket: &str, force| InstallOptions {
            dir: dir.path().to_owned(),
            name: "enforcer".into(),
            enforcer: "/usr/local/sbin/enforcer".into(),
            socket: socket.into(),
            force,
        };
        let missing = InstallOptions {
            dir: dir.path().join("nope"),
            ..opts("/run/a.sock", false)
        };
        assert!(matches!(install(&missing), Err(InstallError::NoDir(_))));

        let (path, outcome) = install(&opts("/run/a.sock", false)).unwrap();
        assert_eq!(outcome, Outcome::Created);
        assert_eq!(path, dir.path().join("enforcer.conf"));
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o644
        );
        assert!(
            fs::read_to_string(&path)
                .unwrap()
                .contains("socket = /run/a.sock")
        );
        assert_eq!(
            install(&opts("/run/a.sock", false)).unwrap().1,
            Outcome::Unchanged
        );

        assert!(matches!(
            install(&opts("/run/b.sock", false)),
            Err(InstallError::Differs(_))
        ));
        assert!(
            fs::read_to_string(&path)
                .unwrap()
                .contains("socket = /run/a.sock"),
            "left alone"
        );
        assert_eq!(
            install(&opts("/run/b.sock", true)).unwrap().1,
            Outcome::Replaced
        );
        assert!(
            fs::read_to_string(&path)
                .unwrap()
                .contains("socket = /run/b.sock")
        );
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "no temporary file left: {left:?}");
    }

    #[test]
    fn the_snippet_selects_the_action_by_name() {
        assert!(jail_snippet("enforcer").contains("\nbanaction = enforcer\n"));
    }
}
