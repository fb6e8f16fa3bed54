//! Where expert weights come from.
//!
//! An [`ExpertStore`] describes the byte layout of one expert ([`ExpertLayout`], the same
//! for every expert of a model) and fills a caller-provided buffer with one expert's bytes
//! on request. The engine copies those bytes unchanged into a GPU cache slot, so the layout
//! is also the layout of a slot.

mod layout;
mod memory;
mod safetensors_store;

pub use layout::{ExpertLayout, ExpertRole, ExpertTensor};
pub use memory::MemoryStore;
pub use safetensors_store::SafetensorsStore;

use crate::error::Result;

/// A source of expert weights, shared by every session of a model.
///
/// Implementations must be thread-safe: the engine may call [`read_expert`] from several
/// threads at once, for different or equal experts.
///
/// [`read_expert`]: ExpertStore::read_expert
///
/// # Example: a store that counts reads by wrapping another one
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use moestream::{ExpertLayout, ExpertStore, Result};
///
/// struct Counting<S> { inner: S, reads: AtomicU64 }
///
/// impl<S: ExpertStore> ExpertStore for Counting<S> {
///     fn layout(&self) -> &ExpertLayout { self.inner.layout() }
///     fn read_expert(&self, layer: usize, expert: usize, dst: &mut [u8]) -> Result<()> {
///         self.reads.fetch_add(1, Ordering::Relaxed);
///         self.inner.read_expert(layer, expert, dst)
///     }
/// }
/// ```
pub trait ExpertStore: Send + Sync {
    /// Byte layout of one expert; `dst` in [`read_expert`](Self::read_expert) is exactly
    /// `layout().bytes` long.
    fn layout(&self) -> &ExpertLayout;

    /// Fills `dst` with the bytes of expert `expert` of decoder layer `layer`.
    ///
    /// Errors should be [`Error::ExpertRead`](crate::Error::ExpertRead) naming the layer
    /// and expert. A failed read leaves the model usable: the step that needed it fails,
    /// and a later step asks again.
    fn read_expert(&self, layer: usize, expert: usize, dst: &mut [u8]) -> Result<()>;
}
