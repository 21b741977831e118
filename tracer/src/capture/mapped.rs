//! A memory-mapped `BPF_F_MMAPABLE` array map: the shared mapping step of the delivery ledger
//! and the DNS slot table.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
};

use aya::maps::{Array, IterableMap as _, MapData};

/// An array map's values, mapped into this process; unmapped on drop.
pub struct Mapped<T: aya::Pod> {
    /// Keeps the map's file descriptor (and so the mapping's backing) alive.
    _map: Array<MapData, T>,
    base: NonNull<T>,
    len: usize,
}

// SAFETY: shared memory that owners access with volatile reads and atomic operations only;
// moving the owner to another thread changes nothing about that.
unsafe impl<T: aya::Pod> Send for Mapped<T> {}

impl<T: aya::Pod> Mapped<T> {
    /// Maps the first `elems` values of `map` (created with `BPF_F_MMAPABLE`), read-only or
    /// read-write.
    pub fn new(map: Array<MapData, T>, elems: usize, writable: bool) -> std::io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let bytes = elems.saturating_mul(std::mem::size_of::<T>());
        let len = bytes.div_ceil(page).saturating_mul(page);
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        let fd = map.map().fd().as_fd().as_raw_fd();
        // SAFETY: a shared mapping of the map's value area, `len` bytes (the kernel rounds the
        // area up to pages), at offset 0 as mmapable arrays require.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0) };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<T>())
            .ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(Self {
            _map: map,
            base,
            len,
        })
    }

    /// The first value (the mapping's start, page-aligned).
    pub fn base(&self) -> *mut T {
        self.base.as_ptr()
    }
}

impl<T: aya::Pod> Drop for Mapped<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
