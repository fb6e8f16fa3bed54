//! Where expert weights come from.
//!
//! An [`ExpertStore`] describes the byte layout of one expert ([`ExpertLayout`], the same
//! for every expert of a model) and fills a caller-provided buffer with one expert's bytes
//! on request. The engine copies those bytes unchanged into a GPU cache slot, so the layout
//! is also the layout of a slot.
//!
//! The stores: [`SafetensorsStore`] (the checkpoint's own files, the default),
//! [`PackedStore`] (a pack made by [`pack_experts`]: each expert contiguous and aligned for
//! direct I/O, [`PackedStoreOptions`]) and [`MemoryStore`] (experts in host memory). The
//! trait and the stores are also at the crate root; docs/storage.md says how to write one.

mod aligned;
mod layout;
mod memory;
mod packed;
mod safetensors_store;
mod split_read;

pub use aligned::AlignedBuf;
pub use layout::{ExpertLayout, ExpertRole, ExpertTensor};
pub use memory::MemoryStore;
pub use packed::{
    checkpoint_identity, pack_experts, pack_experts_from, PackOptions, PackOutcome, PackProgress,
    PackSummary, PackedStore, PackedStoreOptions, PACK_DIR_NAME, PACK_FORMAT, PACK_VERSION,
};
pub use safetensors_store::SafetensorsStore;

use crate::error::Result;

/// Alignment (and length granularity) of the buffers the engine passes to
/// [`ExpertStore::read_expert`], so stores can use direct (uncached) I/O into them.
pub const READ_ALIGN: usize = 16384;

/// A source of expert weights, shared by every session of a model.
///
/// The contract:
/// - [`layout`](Self::layout) describes the bytes of every expert of a layer (the same for
///   all experts of that layer; layers may differ, e.g. in mixed-precision quantization).
/// - [`read_expert`](Self::read_expert) fills the first `layout(layer).bytes` bytes of a
///   caller-owned buffer. The engine reuses its buffers, aligns them to [`READ_ALIGN`] and
///   rounds their length up to a multiple of it; stores may read past `bytes` up to the
///   buffer's length (e.g. to keep direct reads whole), the engine ignores those bytes.
/// - Implementations are thread-safe: the engine issues many reads at once from several
///   threads, for different or equal experts.
/// - Errors name the layer and expert ([`Error::ExpertRead`](crate::Error::ExpertRead)).
///   A failed read leaves the model usable: the step that needed it fails, and a later
///   step asks again.
///
/// # Example: a store that counts reads by wrapping another one
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use moestream::{store::ExpertLayout, ExpertStore, Result};
///
/// struct Counting<S> { inner: S, reads: AtomicU64 }
///
/// impl<S: ExpertStore> ExpertStore for Counting<S> {
///     fn layout(&self, layer: usize) -> Option<&ExpertLayout> { self.inner.layout(layer) }
///     fn read_expert(&self, layer: usize, expert: usize, dst: &mut [u8]) -> Result<()> {
///         self.reads.fetch_add(1, Ordering::Relaxed);
///         self.inner.read_expert(layer, expert, dst)
///     }
/// }
/// ```
pub trait ExpertStore: Send + Sync {
    /// Byte layout of the experts of decoder layer `layer`, or `None` for a layer without
    /// experts.
    fn layout(&self, layer: usize) -> Option<&ExpertLayout>;

    /// Fills `dst[..layout(layer).bytes]` with the bytes of expert `expert` of decoder
    /// layer `layer`. `dst` is at least that long.
    fn read_expert(&self, layer: usize, expert: usize, dst: &mut [u8]) -> Result<()>;

    /// A hint that these experts of `layer` will be read soon (e.g. to start reads early).
    /// The default does nothing.
    fn prefetch(&self, layer: usize, experts: &[usize]) {
        let _ = (layer, experts);
    }
}
