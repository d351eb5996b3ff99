//! Files written as root, in one place: never through a symbolic link, never half-written, and
//! only in directories nobody else can write.
//!
//! - [`replace_file`]: a new file under a temporary name (`O_CREAT|O_EXCL|O_NOFOLLOW`), owner
//!   and mode set on the descriptor (`fchown`, `fchmod`), fsynced, renamed over the target,
//!   and the directory fsynced. A symbolic link at the target is refused, not replaced.
//! - [`open_append`]: an append-only log opened with `O_NOFOLLOW`, refused unless a regular file.
//! - [`chmod_no_follow`]: a mode (and group) set on a path that must not be a link (the socket).
//! - [`check_private_dir`]: a state or spool directory writable by group or others, or owned by
//!   another user, is refused, naming the path and the command that fixes it.

use std::{
    fs::{self, File},
    io,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use nix::{
    errno::Errno,
    fcntl::OFlag,
    sys::stat::{FchmodatFlags, Mode, fchmodat},
};

/// What a file operation as root refused or failed at.
#[derive(Debug, thiserror::Error)]
pub enum SafeFsError {
    /// A symbolic link where a file is written.
    #[error(
        "{path} is a symbolic link; files written as root never follow links: remove it (`rm {path}`) and try again"
    )]
    Symlink { path: PathBuf },
    /// Something other than a regular file where one is written.
    #[error("{path} is not a regular file; refusing to write to it")]
    NotRegular { path: PathBuf },
    /// A directory others may write into.
    #[error("{path} is writable by group or others (mode {mode:03o}); run `chmod go-w {path}`")]
    LooseDir { path: PathBuf, mode: u32 },
    /// A directory another user owns.
    #[error(
        "{path} is owned by uid {owner}, not by this process's user (uid {me}); run `chown {me} {path}` or choose another directory"
    )]
    ForeignOwner { path: PathBuf, owner: u32, me: u32 },
    /// A system call failed.
    #[error("{step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl From<SafeFsError> for io::Error {
    fn from(e: SafeFsError) -> Self {
        match e {
            SafeFsError::Io { source, .. } => source,
            e => io::Error::other(e),
        }
    }
}

fn io_err(step: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SafeFsError {
    let path = path.to_owned();
    move |source| SafeFsError::Io { step, path, source }
}

/// Refuses a symbolic link at `path` (a missing path is fine).
pub fn refuse_symlink(path: &Path) -> Result<(), SafeFsError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(SafeFsError::Symlink {
            path: path.to_owned(),
        }),
        Ok(m) if !m.is_file() => Err(SafeFsError::NotRegular {
            path: path.to_owned(),
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("inspecting", path)(e)),
    }
}

/// How a new file is made.
#[derive(Clone, Copy, Debug)]
pub struct NewFile {
    /// Its mode (set with `fchmod`, so the umask does not narrow it).
    pub mode: u32,
    /// Owner and group (set with `fchown`), if not the caller's.
    pub owner: Option<(u32, u32)>,
}

/// Writes `dir/name` atomically: `fill` writes a new temporary file, which is fsynced and
/// renamed over the target. A symbolic link (or anything but a regular file) at the target is
/// refused and left as it is.
pub fn replace_file(
    dir: &Path,
    name: &str,
    new: NewFile,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<PathBuf, SafeFsError> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let path = dir.join(name);
    refuse_symlink(&path)?;
    let tmp = dir.join(format!(
        ".tmp-{name}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(new.mode & 0o700)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
            .open(&tmp)
            .map_err(io_err("creating", &tmp))?;
        if let Some((uid, gid)) = new.owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .map_err(io_err("changing the owner of", &tmp))?;
        }
        file.set_permissions(fs::Permissions::from_mode(new.mode))
            .map_err(io_err("changing the mode of", &tmp))?;
        fill(&mut file).map_err(io_err("writing", &tmp))?;
        file.sync_all().map_err(io_err("syncing", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("moving into place", &path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing", dir))
    })();
    if result.is_err() {
        // Best effort: the error above is the one to report.
        fs::remove_file(&tmp).ok();
    }
    result.map(|()| path)
}

/// Opens `path` for appending (created with `mode` if missing), refusing a symbolic link or
/// anything but a regular file.
pub fn open_append(path: &Path, mode: u32) -> Result<File, SafeFsError> {
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(mode)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).bits())
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => SafeFsError::Symlink {
                path: path.to_owned(),
            },
            _ => io_err("opening", path)(e),
        })?;
    if !file
        .metadata()
        .map_err(io_err("inspecting", path))?
        .is_file()
    {
        return Err(SafeFsError::NotRegular {
            path: path.to_owned(),
        });
    }
    Ok(file)
}

/// Sets the mode (and the group) of `path`, refusing it if it is a symbolic link.
pub fn chmod_no_follow(path: &Path, mode: u32, gid: Option<u32>) -> Result<(), SafeFsError> {
    fchmodat(
        nix::fcntl::AT_FDCWD,
        path,
        Mode::from_bits_truncate(mode),
        FchmodatFlags::NoFollowSymlink,
    )
    .map_err(|e| match e {
        Errno::EOPNOTSUPP | Errno::ELOOP => SafeFsError::Symlink {
            path: path.to_owned(),
        },
        e => io_err("changing the mode of", path)(e.into()),
    })?;
    if let Some(gid) = gid {
        std::os::unix::fs::lchown(path, None, Some(gid))
            .map_err(io_err("changing the group of", path))?;
    }
    Ok(())
}

/// Creates `dir` (and its parents) with `mode` if missing, then refuses it when group or others
/// may write it or another user owns it.
pub fn private_dir(dir: &Path, mode: u32) -> Result<(), SafeFsError> {
    use std::os::unix::fs::DirBuilderExt as _;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(io_err("creating", dir))?;
    check_private_dir(dir)
}

/// [`check_private_dir`], refusing a symbolic link too (for a directory enforcer made itself).
pub fn check_private_dir_no_follow(dir: &Path) -> Result<(), SafeFsError> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => Err(SafeFsError::Symlink {
            path: dir.to_owned(),
        }),
        _ => check_private_dir(dir),
    }
}

/// Refuses a directory that group or others may write, or that another user owns.
pub fn check_private_dir(dir: &Path) -> Result<(), SafeFsError> {
    let meta = fs::metadata(dir).map_err(io_err("inspecting", dir))?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(SafeFsError::ForeignOwner {
            path: dir.to_owned(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(SafeFsError::LooseDir {
            path: dir.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIVATE: NewFile = NewFile {
        mode: 0o600,
        owner: None,
    };

    #[test]
    fn a_file_is_replaced_whole_with_its_mode_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), b"old").unwrap();
        let path = replace_file(
            dir.path(),
            "f",
            NewFile {
                mode: 0o644,
                owner: None,
            },
            |f| io::Write::write_all(f, b"new"),
        )
        .unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn a_symlink_at_the_target_is_refused_and_what_it_points_to_is_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let mode = fs::metadata(&victim).unwrap().mode();
        std::os::unix::fs::symlink(&victim, dir.path().join("f")).unwrap();
        let e =
            replace_file(dir.path(), "f", PRIVATE, |f| io::Write::write_all(f, b"x")).unwrap_err();
        assert!(matches!(e, SafeFsError::Symlink { .. }), "{e}");
        let e = open_append(&dir.path().join("f"), 0o600).unwrap_err();
        assert!(matches!(e, SafeFsError::Symlink { .. }), "{e}");
        let e = chmod_no_follow(&dir.path().join("f"), 0o666, None).unwrap_err();
        assert!(matches!(e, SafeFsError::Symlink { .. }), "{e}");
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::metadata(&victim).unwrap().mode(), mode);
        assert!(
            fs::symlink_metadata(dir.path().join("f"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn a_world_writable_directory_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_private_dir(dir.path()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("mode 777")
                && msg.contains(&format!("chmod go-w {}", dir.path().display())),
            "{msg}"
        );
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o750)).unwrap();
        check_private_dir(dir.path()).unwrap();
    }
}
