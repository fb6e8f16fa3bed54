//! Experts held in host memory.

use std::collections::HashMap;

use super::{ExpertLayout, ExpertStore};
use crate::error::{Error, Result};

/// A store that keeps expert blobs in host memory: for tests, for small models, and as a
/// building block for custom stores.
#[derive(Debug)]
pub struct MemoryStore {
    layouts: Vec<Option<ExpertLayout>>,
    blobs: HashMap<(usize, usize), Vec<u8>>,
}

impl MemoryStore {
    /// An empty store; `layouts[layer]` is the layout of that layer's experts (`None` for
    /// layers without experts).
    pub fn new(layouts: Vec<Option<ExpertLayout>>) -> Self {
        MemoryStore {
            layouts,
            blobs: HashMap::new(),
        }
    }

    /// Copies every expert `0..num_experts` of every layer of `other` that has a layout,
    /// for layers `0..num_layers`.
    pub fn copy_from(
        other: &dyn ExpertStore,
        num_layers: usize,
        num_experts: usize,
    ) -> Result<Self> {
        let layouts: Vec<Option<ExpertLayout>> =
            (0..num_layers).map(|l| other.layout(l).cloned()).collect();
        let mut store = MemoryStore::new(layouts);
        for layer in 0..num_layers {
            let Some(bytes) = store.layouts[layer].as_ref().map(|l| l.bytes) else {
                continue;
            };
            for expert in 0..num_experts {
                let mut blob = vec![0u8; bytes];
                other.read_expert(layer, expert, &mut blob)?;
                store.blobs.insert((layer, expert), blob);
            }
        }
        Ok(store)
    }

    /// Inserts (or replaces) one expert's blob; its length must equal the layer's layout.
    pub fn insert(&mut self, layer: usize, expert: usize, blob: Vec<u8>) -> Result<()> {
        let want = self.layout(layer).map(|l| l.bytes).ok_or_else(|| {
            Error::InvalidArgument(format!("layer {layer} has no expert layout in this store"))
        })?;
        if blob.len() != want {
            return Err(Error::InvalidArgument(format!(
                "expert blob for layer {layer}, expert {expert} is {} bytes, the layout needs {want}",
                blob.len()
            )));
        }
        self.blobs.insert((layer, expert), blob);
        Ok(())
    }
}

impl ExpertStore for MemoryStore {
    fn layout(&self, layer: usize) -> Option<&ExpertLayout> {
        self.layouts.get(layer).and_then(Option::as_ref)
    }

    fn read_expert(&self, layer: usize, expert: usize, dst: &mut [u8]) -> Result<()> {
        let blob = self
            .blobs
            .get(&(layer, expert))
            .ok_or_else(|| Error::ExpertRead {
                layer,
                expert,
                reason: "not in this memory store".into(),
                cause: None,
            })?;
        let dst = dst.get_mut(..blob.len()).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "destination is shorter than an expert ({} bytes)",
                blob.len()
            ))
        })?;
        dst.copy_from_slice(blob);
        Ok(())
    }
}
