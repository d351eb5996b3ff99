//! Batched map calls: `BPF_MAP_UPDATE_BATCH`, `BPF_MAP_DELETE_BATCH` and `BPF_MAP_LOOKUP_BATCH`
//! (Linux 5.6), which aya 0.14 does not expose. One system call writes, deletes or reads many
//! entries of a map, where a per-entry call costs a system call each (most of a large import's
//! or startup sync's time in the kernel; reading a map entry by entry costs two, the next key
//! and its value).
//!
//! The kernel applies a batch in order and stops at the first entry it refuses, reporting how
//! many it applied before it; [`update`] and [`delete`] go on after that entry, so every entry
//! is tried once, in order, as per-entry writes would, and each failure is reported with its
//! index. A map type without batch operations, or a kernel without them, answers
//! [`BatchError::Unsupported`] before writing anything, and the caller writes entry by entry.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use nix::errno::Errno;

/// `BPF_MAP_LOOKUP_BATCH` (`enum bpf_cmd`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// `BPF_MAP_UPDATE_BATCH`.
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// `BPF_MAP_DELETE_BATCH`.
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// The kernel's internal "operation not supported" (`ENOTSUPP`, not `EOPNOTSUPP`), which
/// `bpf(2)` returns for a map type without the batch operation.
const ENOTSUPP: i32 = 524;
/// Most entries in one call (`count` is a `u32`; this also bounds one call's time in the
/// kernel, which reschedules between entries anyway).
const MAX_PER_CALL: usize = 1 << 16;

/// A batch the kernel would not run at all.
#[derive(Debug, thiserror::Error)]
pub(super) enum BatchError {
    /// The map type (or the kernel) has no such batch operation; nothing was written.
    #[error("the kernel has no batched {op} for this map")]
    Unsupported { op: &'static str },
}

/// Entries read per lookup call: a hash map hands out whole buckets, so a call needs room for
/// the largest bucket (it answers `ENOSPC` otherwise, and the buffer is doubled).
const LOOKUP_PER_CALL: usize = 4096;

/// A batched read that failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum LookupError {
    /// The map type (or the kernel) has no batched lookup; nothing was read.
    #[error("the kernel has no batched lookup for this map")]
    Unsupported,
    /// The kernel refused a call part of the way through.
    #[error(transparent)]
    Kernel(io::Error),
}

/// An entry of a batch that the kernel refused.
#[derive(Debug)]
pub(super) struct Refused {
    /// Its index in the batch.
    pub index: usize,
    /// Why.
    pub error: io::Error,
}

/// The batch member of `union bpf_attr` (`include/uapi/linux/bpf.h`, "struct used by
/// BPF_MAP_*_BATCH commands"). The kernel reads `size_of::<BatchAttr>()` bytes and takes the
/// rest of the union as zero.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    /// Lookup batches only (a resume cursor); 0.
    in_batch: u64,
    /// Lookup batches only; 0.
    out_batch: u64,
    keys: u64,
    values: u64,
    /// In: entries in `keys` (and `values`). Out: entries applied.
    count: u32,
    map_fd: u32,
    /// Per-entry flags (only `BPF_F_LOCK` is allowed); 0 is `BPF_ANY`.
    elem_flags: u64,
    /// Must be 0.
    flags: u64,
}

const _: () = assert!(
    size_of::<BatchAttr>() == 56,
    "the uapi's batch struct is 56 bytes"
);

/// Inserts or replaces `keys[i]` → `values[i]` for every i (`BPF_ANY`). Returns the entries the
/// kernel refused (a full hash map: `E2BIG`), each tried once; every other entry is written.
///
/// `K` and `V` must be exactly the map's key and value types (the kernel reads `key_size` and
/// `value_size` bytes per entry), and the map must not be per-CPU (whose values are per CPU).
pub(super) fn update<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<Vec<Refused>, BatchError> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    run(BPF_MAP_UPDATE_BATCH, "update", map, keys, Some(values))
}

/// Deletes every key. Keys that were absent are not errors; returns the entries the kernel
/// refused otherwise.
pub(super) fn delete<K: aya::Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
) -> Result<Vec<Refused>, BatchError> {
    let refused = run::<K, u8>(BPF_MAP_DELETE_BATCH, "delete", map, keys, None)?;
    Ok(refused
        .into_iter()
        .filter(|r| r.error.raw_os_error() != Some(Errno::ENOENT as i32))
        .collect())
}

/// Reads every entry of a hash map, a bucket at a time (`BPF_MAP_LOOKUP_BATCH`), in a few calls
/// instead of two per entry. Like a per-entry walk, it sees a map being written meanwhile as
/// some mix of before and after (the data path never adds or removes entries; the daemon, its
/// one writer, does).
///
/// `K` and `V` must be exactly the map's key and value types, the map must be a hash map (the
/// resume cursor is its bucket index, a `u32`) and not per-CPU.
pub(super) fn lookup_all<K, V>(map: BorrowedFd<'_>) -> Result<Vec<(K, V)>, LookupError>
where
    K: aya::Pod + Default,
    V: aya::Pod + Default,
{
    let mut out = Vec::new();
    let mut per_call = LOOKUP_PER_CALL;
    let (mut keys, mut values) = (vec![K::default(); per_call], vec![V::default(); per_call]);
    // The cursor: `None` starts at the first bucket; the kernel writes where to go on.
    let mut cursor: Option<u32> = None;
    let mut next = 0u32;
    loop {
        let mut attr = BatchAttr {
            in_batch: cursor.as_ref().map_or(0, |c| std::ptr::from_ref(c) as u64),
            out_batch: std::ptr::from_mut(&mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: u32::try_from(per_call).expect("a bounded buffer"),
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `keys` and `values` hold `count` entries of the map's key and value types (the
        // caller's contract), which the kernel overwrites with at most `count` entries;
        // `in_batch` (when set) and `out_batch` point to a `u32` each, a hash map's bucket
        // cursor, and outlive the call. `map` is an open map descriptor, borrowed for the call.
        let result = unsafe { bpf_batch(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        let error = result.err();
        let code = error.as_ref().and_then(io::Error::raw_os_error);
        if code == Some(Errno::ENOSPC as i32) && per_call < MAX_PER_CALL {
            // A bucket larger than the buffer: nothing was read; again with room for it.
            per_call *= 2;
            keys.resize(per_call, K::default());
            values.resize(per_call, V::default());
            continue;
        }
        if let Some(error) = error.filter(|_| code != Some(Errno::ENOENT as i32)) {
            if cursor.is_none() && is_unsupported(&error) {
                return Err(LookupError::Unsupported);
            }
            return Err(LookupError::Kernel(error));
        }
        let read = (attr.count as usize).min(per_call);
        out.extend(
            keys[..read]
                .iter()
                .copied()
                .zip(values[..read].iter().copied()),
        );
        if code == Some(Errno::ENOENT as i32) {
            // The last buckets were read.
            return Ok(out);
        }
        cursor = Some(next);
    }
}

/// How a batch call ended early.
enum Stop {
    /// The kernel applied `applied` entries, then refused the next one.
    At { applied: usize, error: io::Error },
    /// The kernel refused the call before looking at any entry.
    Whole(io::Error),
}

/// Runs `cmd` over all of `keys` (and `values`), going on after each refused entry.
fn run<K: aya::Pod, V: aya::Pod>(
    cmd: libc::c_long,
    op: &'static str,
    map: BorrowedFd<'_>,
    keys: &[K],
    values: Option<&[V]>,
) -> Result<Vec<Refused>, BatchError> {
    let mut refused = Vec::new();
    let mut start = 0;
    while start < keys.len() {
        let end = keys.len().min(start + MAX_PER_CALL);
        match call(cmd, map, &keys[start..end], values.map(|v| &v[start..end])) {
            Ok(()) => start = end,
            Err(Stop::At { applied, error }) => {
                refused.push(Refused {
                    index: start + applied,
                    error,
                });
                start += applied + 1;
            }
            Err(Stop::Whole(error)) if start == 0 && is_unsupported(&error) => {
                return Err(BatchError::Unsupported { op });
            }
            Err(Stop::Whole(error)) => {
                let code = error.raw_os_error().unwrap_or(Errno::EIO as i32);
                refused.extend((start..keys.len()).map(|index| Refused {
                    index,
                    error: io::Error::from_raw_os_error(code),
                }));
                break;
            }
        }
    }
    Ok(refused)
}

/// Whether a refused call means "no such batch operation here": `ENOTSUPP` from a map type
/// without it, `EINVAL` from a kernel older than the command (5.6).
fn is_unsupported(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(c) if c == ENOTSUPP || c == Errno::EOPNOTSUPP as i32 || c == Errno::EINVAL as i32)
}

/// One `bpf(2)` batch call over `keys` (at most [`MAX_PER_CALL`]).
fn call<K: aya::Pod, V: aya::Pod>(
    cmd: libc::c_long,
    map: BorrowedFd<'_>,
    keys: &[K],
    values: Option<&[V]>,
) -> Result<(), Stop> {
    let count = u32::try_from(keys.len()).expect("at most MAX_PER_CALL entries per call");
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.map_or(0, |v| v.as_ptr() as u64),
        count,
        map_fd: map.as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: `keys` (and `values`, for an update) hold `count` plain-data entries of the map's
    // key (value) size (the callers' contract) and live for the call; the kernel only reads
    // them, and writes back only `attr.count`. `map` is an open map descriptor, borrowed for
    // the call.
    let Err(error) = (unsafe { bpf_batch(cmd, &mut attr) }) else {
        return Ok(());
    };
    // Once it has started on the entries, the kernel sets `count` to the entries it applied
    // (0 first, so a refused first entry reads 0); a call refused as a whole leaves ours.
    let applied = attr.count as usize;
    if applied < keys.len() {
        Err(Stop::At { applied, error })
    } else {
        Err(Stop::Whole(error))
    }
}

/// One `bpf(2)` batch command on `attr`.
///
/// # Safety
///
/// `attr`'s pointers must be valid for what `cmd` does with them: `keys` and `values` for
/// `count` entries of the map's key and value sizes (read by an update or delete, written by a
/// lookup), `in_batch` and `out_batch` null or pointing to the map type's cursor, all living
/// for the call.
unsafe fn bpf_batch(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is the batch member of `union bpf_attr` (layout checked above; the kernel
    // reads `size` bytes, takes the rest of the union as zero, and writes back only `count`);
    // the pointers in it are the caller's to vouch for.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            size_of::<BatchAttr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
