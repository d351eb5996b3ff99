//! fail2ban as a trigger source: an action file (`action.d/enforcer.conf`) whose ban and unban
//! run the `enforcer` CLI with `--source fail2ban` and the jail's ports, and its allports variant
//! (`action.d/enforcer-allports.conf`), which bans the whole address.
//!
//! Unlike the Wazuh hook, nothing is copied: fail2ban runs shell command lines, so the action
//! names the installed binary and the daemon's socket. The files are the ones shipped in
//! `dist/fail2ban/action.d/`, built into the binary, with those two values filled in (and the
//! variant's include naming the action it extends).

use std::{
    fs, io,
    io::Write as _,
    path::{Path, PathBuf},
};

/// The action file as shipped, with `/usr/sbin/enforcer` and the default socket.
pub const ACTION_TEMPLATE: &str = include_str!("../../../dist/fail2ban/action.d/enforcer.conf");

/// The allports variant as shipped: it includes `enforcer.conf` and drops the scope.
pub const ALLPORTS_TEMPLATE: &str =
    include_str!("../../../dist/fail2ban/action.d/enforcer-allports.conf");

/// What the variant's name adds to the action's (`enforcer-allports`).
pub const ALLPORTS_SUFFIX: &str = "-allports";

/// The default directory of fail2ban's actions.
pub const DEFAULT_ACTION_DIR: &str = "/etc/fail2ban/action.d";

/// The default action name (`banaction = enforcer`).
pub const DEFAULT_NAME: &str = "enforcer";

/// The `[Init]` lines the install replaces.
const ENFORCER_LINE: &str = "enforcer = /usr/sbin/enforcer";
const SOCKET_LINE: &str = "socket = /run/enforcer/enforcer.sock";
/// The variant's include line, which names the action it extends.
const INCLUDE_LINE: &str = "before = enforcer.conf";

/// What to install where.
#[derive(Clone, Debug)]
pub struct InstallOptions {
    /// fail2ban's `action.d` directory.
    pub dir: PathBuf,
    /// The action name: the files are `<dir>/<name>.conf` and `<dir>/<name>-allports.conf`,
    /// jails use `banaction = <name>` and `banaction_allports = <name>-allports`.
    pub name: String,
    /// The `enforcer` binary the action runs.
    pub enforcer: PathBuf,
    /// The daemon's control socket.
    pub socket: PathBuf,
    /// Replace different files of those names.
    pub force: bool,
}

/// One file the install wrote or found in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    /// The file.
    pub path: PathBuf,
    /// The action name jails select it by.
    pub action: String,
    /// What the install did to it.
    pub outcome: Outcome,
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
    #[error(
        "invalid action name `{0}`: use letters, digits, '.', '-' and '_' (no `.conf`), at most 55"
    )]
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
    #[error(
        "{0} exists and differs from this action; pass --force to replace it (nothing was written)"
    )]
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

/// Whether `name` is a usable action name (for the variant too: `<name>-allports`).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() + ALLPORTS_SUFFIX.len() <= 64
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

/// The allports variant of the action named `name` (it includes `<name>.conf`).
pub fn render_allports(name: &str) -> String {
    ALLPORTS_TEMPLATE.replacen(INCLUDE_LINE, &format!("before = {name}.conf"), 1)
}

/// The files to write: (action name, text).
fn files(options: &InstallOptions) -> Result<[(String, String); 2], InstallError> {
    if !valid_name(&options.name) {
        return Err(InstallError::BadName(options.name.clone()));
    }
    let name = &options.name;
    Ok([
        (
            name.clone(),
            render_action(&options.enforcer, &options.socket)?,
        ),
        (format!("{name}{ALLPORTS_SUFFIX}"), render_allports(name)),
    ])
}

/// What is at `path` now, compared with `text`: `Err` for a different file without `force`.
fn compare(path: &Path, text: &str, force: bool) -> Result<Outcome, InstallError> {
    crate::safe_fs::refuse_symlink(path)?;
    match fs::read(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Outcome::Created),
        Err(e) => Err(io_err("reading", path)(e)),
        Ok(old) if old == text.as_bytes() => Ok(Outcome::Unchanged),
        Ok(_) if force => Ok(Outcome::Replaced),
        Ok(_) => Err(InstallError::Differs(path.to_owned())),
    }
}

/// Writes `<dir>/<name>.conf` and `<dir>/<name>-allports.conf` (mode 0644, each atomically).
/// Both are checked before either is written: when a different file is there and `force` is
/// off, nothing is written.
pub fn install(options: &InstallOptions) -> Result<Vec<Installed>, InstallError> {
    let files = files(options)?;
    if !options.dir.is_dir() {
        return Err(InstallError::NoDir(options.dir.clone()));
    }
    let mut plan = Vec::with_capacity(files.len());
    for (action, text) in files {
        let path = options.dir.join(format!("{action}.conf"));
        let outcome = compare(&path, &text, options.force)?;
        plan.push((
            Installed {
                path,
                action,
                outcome,
            },
            text,
        ));
    }
    for (file, text) in &plan {
        if file.outcome == Outcome::Unchanged {
            continue;
        }
        // Written under a temporary name and renamed: fail2ban never reads half a file.
        let new = crate::safe_fs::NewFile {
            mode: 0o644,
            owner: None,
        };
        crate::safe_fs::replace_file(&options.dir, &format!("{}.conf", file.action), new, |f| {
            f.write_all(text.as_bytes())
        })?;
    }
    Ok(plan.into_iter().map(|(file, _)| file).collect())
}

/// The jail.local lines that select the action.
pub fn jail_snippet(name: &str) -> String {
    format!(
        "[DEFAULT]
# every jail bans its ports through enforcer (or set it in one jail's section only);
# jails that ban every port (recidive) ban the whole address
banaction = {name}
banaction_allports = {name}{ALLPORTS_SUFFIX}
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
        for template in [ACTION_TEMPLATE, ALLPORTS_TEMPLATE] {
            assert!(
                !template.replace("%%", "").contains('%'),
                "a bare % breaks fail2ban's parser"
            );
        }
    }

    #[test]
    fn the_allports_variant_includes_the_action_and_empties_exactly_the_tags_it_defines() {
        assert_eq!(ALLPORTS_TEMPLATE.matches(INCLUDE_LINE).count(), 1);
        for tag in ["_scope", "_scope_check"] {
            assert_eq!(
                ACTION_TEMPLATE.matches(&format!("\n{tag} = ")).count(),
                1,
                "{tag} defined once in the action"
            );
            assert!(
                ACTION_TEMPLATE.contains(&format!("<{tag}>")),
                "{tag} used by the action"
            );
            assert!(
                ALLPORTS_TEMPLATE.contains(&format!("\n{tag} =\n")),
                "{tag} emptied by the variant"
            );
        }
        let text = render_allports("enforcer-xdp");
        assert!(text.contains("\nbefore = enforcer-xdp.conf\n"), "{text}");
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
        assert!(
            text.contains(
                "<enforcer> --socket <socket> block <ip> $ttl <_scope> --source <source>"
            )
        );
        assert!(text.contains("unblock <ip> <_scope> --source <source>"));
        assert!(text.contains("\n_scope = --proto '<protocol>' --port '<port>'\n"));
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
        for ok in ["enforcer", "enforcer-xdp", "enforcer_2.v1", &"x".repeat(55)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "a/b",
            "..",
            ".hidden",
            "enforcer.conf",
            "with space",
            &"x".repeat(56),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn installs_both_0644_is_idempotent_and_does_not_clobber_a_different_file_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let opts = |socket: &str, force| InstallOptions {
            dir: dir.path().to_owned(),
            name: "enforcer".into(),
            enforcer: "/usr/local/sbin/enforcer".into(),
            socket: socket.into(),
            force,
        };
        let outcomes = |r: Vec<Installed>| -> Vec<(String, Outcome)> {
            r.into_iter().map(|i| (i.action, i.outcome)).collect()
        };
        let both = |o: Outcome| {
            vec![
                ("enforcer".to_owned(), o),
                ("enforcer-allports".to_owned(), o),
            ]
        };
        let missing = InstallOptions {
            dir: dir.path().join("nope"),
            ..opts("/run/a.sock", false)
        };
        assert!(matches!(install(&missing), Err(InstallError::NoDir(_))));

        let installed = install(&opts("/run/a.sock", false)).unwrap();
        let action = dir.path().join("enforcer.conf");
        let allports = dir.path().join("enforcer-allports.conf");
        assert_eq!(installed[0].path, action);
        assert_eq!(installed[1].path, allports);
        assert_eq!(outcomes(installed), both(Outcome::Created));
        for path in [&action, &allports] {
            assert_eq!(
                fs::metadata(path).unwrap().permissions().mode() & 0o7777,
                0o644
            );
        }
        let read = |p: &Path| fs::read_to_string(p).unwrap();
        assert!(read(&action).contains("socket = /run/a.sock"));
        assert_eq!(read(&allports), ALLPORTS_TEMPLATE);
        assert_eq!(
            outcomes(install(&opts("/run/a.sock", false)).unwrap()),
            both(Outcome::Unchanged)
        );

        assert!(matches!(
            install(&opts("/run/b.sock", false)),
            Err(InstallError::Differs(_))
        ));
        assert!(read(&action).contains("socket = /run/a.sock"), "left alone");
        assert_eq!(
            outcomes(install(&opts("/run/b.sock", true)).unwrap()),
            vec![
                ("enforcer".to_owned(), Outcome::Replaced),
                ("enforcer-allports".to_owned(), Outcome::Unchanged)
            ]
        );
        assert!(read(&action).contains("socket = /run/b.sock"));

        // An install from before the variant existed: the action differs, the variant is new.
        // Without --force nothing is written, not even the new variant.
        fs::write(&action, "old action").unwrap();
        fs::remove_file(&allports).unwrap();
        assert!(matches!(
            install(&opts("/run/b.sock", false)),
            Err(InstallError::Differs(p)) if p == action
        ));
        assert!(!allports.exists(), "nothing written");
        assert_eq!(
            outcomes(install(&opts("/run/b.sock", true)).unwrap()),
            vec![
                ("enforcer".to_owned(), Outcome::Replaced),
                ("enforcer-allports".to_owned(), Outcome::Created)
            ]
        );
        // Only the variant edited: the action is left as it is, the variant refused.
        fs::write(&allports, "edited").unwrap();
        assert!(matches!(
            install(&opts("/run/b.sock", false)),
            Err(InstallError::Differs(p)) if p == allports
        ));
        assert_eq!(read(&allports), "edited");

        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "no temporary file left: {left:?}");
    }

    #[test]
    fn the_snippet_selects_the_action_by_name() {
        let snippet = jail_snippet("enforcer");
        assert!(snippet.contains("\nbanaction = enforcer\n"), "{snippet}");
        assert!(
            snippet.contains("\nbanaction_allports = enforcer-allports\n"),
            "{snippet}"
        );
    }
}
