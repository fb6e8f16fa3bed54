//! Heap buffers aligned for direct I/O.

use std::alloc::{alloc_zeroed, dealloc, Layout};

use super::READ_ALIGN;

/// A zeroed byte buffer aligned to [`READ_ALIGN`] with a length rounded up to a multiple
/// of it, as the engine hands to [`ExpertStore::read_expert`](super::ExpertStore::read_expert).
pub struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only give out &[u8].
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A buffer of at least `len` bytes (at least one page of [`READ_ALIGN`]).
    pub fn new(len: usize) -> Self {
        let len = len.max(1).div_ceil(READ_ALIGN) * READ_ALIGN;
        let Ok(layout) = Layout::from_size_align(len, READ_ALIGN) else {
            // Only reachable for lengths near usize::MAX, which no allocation can satisfy.
            std::alloc::handle_alloc_error(Layout::new::<u8>());
        };
        // SAFETY: layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        AlignedBuf { ptr, len }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialized (zeroed) bytes for the buffer's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this exact layout.
        unsafe {
            dealloc(
                self.ptr,
                Layout::from_size_align_unchecked(self.len, READ_ALIGN),
            )
        }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_rounded() {
        let b = AlignedBuf::new(100);
        assert_eq!(b.len(), READ_ALIGN);
        assert_eq!(b.as_ptr() as usize % READ_ALIGN, 0);
        assert!(b.iter().all(|&x| x == 0));
        let b = AlignedBuf::new(READ_ALIGN + 1);
        assert_eq!(b.len(), 2 * READ_ALIGN);
    }
}
