//! What a map operation on the data path's maps can fail with, and how the kernel's answers map
//! to it. A leaf: the maps module and the scope maps both use it.

use aya::maps::MapError;
use nix::errno::Errno;

/// A map operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    /// The map holds as many entries as it was created for. Nothing was evicted.
    #[error(
        "the {map} map is full ({capacity} entries); nothing was evicted. Raise its capacity in the configuration or remove blocks"
    )]
    Full { map: &'static str, capacity: u32 },
    /// A map the object should define is missing.
    #[error("map {0} is missing from the eBPF object")]
    Missing(&'static str),
    /// The kernel refused a map operation.
    #[error("{op} on map {map} failed")]
    Kernel {
        op: &'static str,
        map: &'static str,
        #[source]
        source: MapError,
    },
    /// The kernel refused an entry of a batched write.
    #[error("batched {op} on map {map} failed")]
    Batch {
        op: &'static str,
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A pinned map could not be opened.
    #[error("opening pinned map {path}")]
    Open {
        path: String,
        #[source]
        source: MapError,
    },
    /// An array the daemon writes in place could not be mapped into its memory.
    #[error(
        "mapping the {map} map into memory failed (the kernel must allow BPF_F_MMAPABLE arrays: Linux 5.5 or later)"
    )]
    Mmap {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
}

pub(super) fn kernel(op: &'static str, map: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Kernel { op, map, source }
}

pub(super) fn is_not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(Errno::ENOENT as i32),
        _ => false,
    }
}

/// Maps an insert error: a full map is [`MapsError::Full`], anything else a kernel error.
pub(super) fn insert_error(map: &'static str, capacity: u32) -> impl FnOnce(MapError) -> MapsError {
    move |e| {
        if is_full(&e) {
            MapsError::Full { map, capacity }
        } else {
            MapsError::Kernel {
                op: "insert",
                map,
                source: e,
            }
        }
    }
}

/// Maps a delete result: absent is `Ok(false)`.
pub(super) fn removed(map: &'static str, result: Result<(), MapError>) -> Result<bool, MapsError> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(kernel("delete", map)(e)),
    }
}

fn is_full(e: &MapError) -> bool {
    matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error().is_some_and(is_full_errno))
}

/// Whether the kernel's answer to an insert means the map has no room.
pub(super) fn is_full_errno(code: i32) -> bool {
    [Errno::E2BIG, Errno::ENOSPC, Errno::ENOMEM].contains(&Errno::from_raw(code))
}
