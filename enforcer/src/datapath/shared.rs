//! Arrays the daemon writes in place: the lengths in use and the block filter (see
//! [`enforcer_common::lookup`]).
//!
//! Both are `BPF_F_MMAPABLE` arrays of u64 words, mapped into the daemon's memory once: setting a
//! bit is a store, not a syscall, so a block costs the same number of syscalls as without them,
//! and a /8 that sets a bit in 256 words (or a reopen that rewrites 4 MiB of filter) costs
//! nothing measurable. The data path reads each word whole (aligned u64 loads).

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::MapData;

/// The words of one mmapable array map, mapped shared into this process.
pub(crate) struct SharedWords {
    words: NonNull<AtomicU64>,
    len: usize,
    bytes: usize,
}

// SAFETY: the mapping is shared memory accessed only through atomics; it lives until drop.
unsafe impl Send for SharedWords {}
// SAFETY: as above: every access is an atomic load or store.
unsafe impl Sync for SharedWords {}

impl SharedWords {
    /// Maps the array `map`.
    pub(crate) fn map(map: &MapData) -> std::io::Result<Self> {
        let info = map.info().map_err(std::io::Error::other)?;
        let len = info.max_entries() as usize;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let bytes = (len * 8).div_ceil(page) * page;
        // SAFETY: a new shared mapping of the map's fd, of the size the kernel allows for it
        // (its values rounded up to a page); nothing else is mapped at the address it picks.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let words = NonNull::new(ptr.cast::<AtomicU64>()).expect("mmap never maps at 0");
        Ok(Self { words, len, bytes })
    }

    fn word(&self, i: u32) -> &AtomicU64 {
        assert!((i as usize) < self.len, "word {i} of {}", self.len);
        // SAFETY: in bounds (checked above); the mapping is page-aligned, so every word is
        // 8-byte aligned, and it lives as long as `self`.
        unsafe { &*self.words.as_ptr().add(i as usize) }
    }

    /// The value of word `i`.
    pub(crate) fn get(&self, i: u32) -> u64 {
        self.word(i).load(Ordering::SeqCst)
    }

    /// Writes word `i`. Sequentially consistent: a bit set before an entry is written is seen
    /// by any CPU that can see the entry.
    pub(crate) fn set(&self, i: u32, value: u64) {
        self.word(i).store(value, Ordering::SeqCst);
    }

    /// Makes every word equal to `values`, writing only those that differ.
    pub(crate) fn copy_from(&self, values: &[u64]) {
        for (i, &v) in values.iter().enumerate().take(self.len) {
            if self.get(i as u32) != v {
                self.set(i as u32, v);
            }
        }
    }
}

impl Drop for SharedWords {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of that size, unmapped once.
        unsafe { libc::munmap(self.words.as_ptr().cast(), self.bytes) };
    }
}
