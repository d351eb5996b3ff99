//! The XDP programs pinned beside the maps they use, so that a restart of the same build takes
//! the verified program back instead of loading it again.
//!
//! The kernel's verifier takes about a CPU-second per program on a small VM, and at a start
//! that also pulls 100k CrowdSec decisions it competes with the LAPI for the CPU. A restart of
//! the same build (or of a build whose XDP object and load options are the same) finds its
//! program pinned as `prog-<name>-<identity>` in the maps directory and reuses it: the links
//! keep running it, nothing is swapped. A program of another build has another identity: it is
//! loaded, verified, swapped into the links as before, and the other build's pin removed (the
//! kernel frees that program once no link runs it). The pins live and die with the maps
//! directory, so a program never outlives the maps it was loaded against.
//!
//! The flood detector's report ring and counters are maps of the program's own, not pinned: a
//! daemon could not read a reused program's reports, so with detection on the loader neither
//! reuses nor pins a program.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::programs::Xdp;
use aya_obj::programs::XdpAttachType;

use super::error::DatapathError;

/// What makes two loads the same program: the XDP object and the load options that become
/// part of it (its read-only globals, the sizes of the maps it owns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Identity(u64);

impl Identity {
    /// `object` loaded with `options` (every load option that becomes part of the program,
    /// written out).
    pub(super) fn of(object: &[u8], options: &str) -> Self {
        use std::hash::{Hash as _, Hasher as _};
        // SipHash with fixed keys: the same in every run of a build, which is all a pin needs
        // (another toolchain's hash differs, and the program is then loaded once more).
        let mut h = std::hash::DefaultHasher::new();
        object.hash(&mut h);
        options.hash(&mut h);
        Self(h.finish())
    }

    fn pin_name(self, program: &str) -> String {
        format!("{}{:016x}", prefix(program), self.0)
    }
}

fn prefix(program: &str) -> String {
    format!("prog-{program}-")
}

/// Where `program` of `identity` is pinned.
pub(super) fn pin_path(maps_dir: &Path, program: &str, identity: Identity) -> PathBuf {
    maps_dir.join(identity.pin_name(program))
}

/// The program of `identity` pinned in `maps_dir`, if an earlier run left it there.
pub(super) fn reuse(
    maps_dir: &Path,
    program: &str,
    identity: Identity,
) -> Result<Option<Xdp>, DatapathError> {
    let path = pin_path(maps_dir, program, identity);
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(Xdp::from_pin(&path, XdpAttachType::Interface)?))
}

/// Pins a freshly loaded `program` for the next run, then removes the pins of other builds'
/// copies of it (links still running one keep it until this build's is swapped in).
pub(super) fn pin(
    xdp: &mut Xdp,
    maps_dir: &Path,
    program: &str,
    identity: Identity,
) -> Result<(), DatapathError> {
    let path = pin_path(maps_dir, program, identity);
    xdp.pin(&path).map_err(|e| DatapathError::Io {
        action: "pinning the XDP program at",
        path: path.clone(),
        source: io::Error::other(e),
    })?;
    let ours = identity.pin_name(program);
    let theirs = prefix(program);
    for entry in fs::read_dir(maps_dir)
        .map_err(|source| DatapathError::Io {
            action: "listing",
            path: maps_dir.to_owned(),
            source,
        })?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&theirs) && name != ours {
            // A pin left behind only keeps an unused program in memory until the next load.
            if let Err(e) = fs::remove_file(entry.path()) {
                tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove the pin of another build's program");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_object_and_options_are_the_same_program_and_any_change_is_another() {
        let id = Identity::of;
        assert_eq!(id(b"object", "hits"), id(b"object", "hits"));
        assert_ne!(id(b"object", "hits"), id(b"object2", "hits"));
        assert_ne!(id(b"object", "hits"), id(b"object", "no hits"));
    }

    #[test]
    fn pin_names_of_the_two_programs_do_not_prefix_each_other() {
        let id = Identity(0xabc);
        let eth = id.pin_name(enforcer_common::PROGRAM_NAME);
        let ip = id.pin_name(enforcer_common::PROGRAM_NAME_IP);
        assert!(
            !ip.starts_with(&prefix(enforcer_common::PROGRAM_NAME)),
            "{ip}"
        );
        assert!(
            !eth.starts_with(&prefix(enforcer_common::PROGRAM_NAME_IP)),
            "{eth}"
        );
    }
}
