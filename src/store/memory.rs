//! Experts held in host memory.

use std::collections::HashMap;

use super::{ExpertLayout, ExpertStore};
use crate::error::{Error, Result};

/// A store that keeps expert blobs in host memory: for tests, for small models, and as a
/// building block for custom stores.
#[derive(Debug)]
pub struct MemoryStore {
    layout: ExpertLayout,
    blobs: HashMap<(usize, usize), Vec<u8>>,
}

impl MemoryStore {
    /// An empty store of the given layout.
    pub fn new(layout: ExpertLayout) -> Self {
        MemoryStore {
            layout,
            blobs: HashMap::new(),
        }
    }

    /// Copies every expert of `other` for the given `(layer, num_experts)` pairs.
    pub fn copy_from(
        other: &dyn ExpertStore,
        layers: &[usize],
        num_experts: usize,
    ) -> Result<Self> {
        let mut store = MemoryStore::new(other.layout().clone());
        for &layer in layers {
            for expert in 0..num_experts {
                let mut blob = vec![0u8; store.layout.bytes];
                other.read_expert(layer, expert, &mut blob)?;
                store.blobs.insert((layer, expert), blob);
            }
        }
        Ok(store)
    }

    /// Inserts (or replaces) one expert's blob; its length must equal the layout's.
    pub fn insert(&mut self, layer: usize, expert: usize, blob: Vec<u8>) -> Result<()> {
        if blob.len() != self.layout.bytes {
            return Err(Error::InvalidArgument(format!(
                "expert blob for layer {layer}, expert {expert} is {} bytes, the layout needs {}",
                blob.len(),
                self.layout.bytes
            )));
        }
        self.blobs.insert((layer, expert), blob);
        Ok(())
    }
}

impl ExpertStore for MemoryStore {
    fn layout(&self) -> &ExpertLayout {
        &self.layout
    }

    fn read_expert(&self, layer: usize, expert: usize, dst: &mut [u8]) -> Result<()> {
        let blob = self
            .blobs
            .get(&(layer, expert))
            .ok_or_else(|| Error::ExpertRead {
                layer,
                expert,
                reason: "not in this memory store".into(),
                source: None,
            })?;
        if dst.len() != blob.len() {
            return Err(Error::InvalidArgument(format!(
                "destination is {} bytes, an expert is {}",
                dst.len(),
                blob.len()
            )));
        }
        dst.copy_from_slice(blob);
        Ok(())
    }
}
