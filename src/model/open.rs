//! Opening a checkpoint for a load or a memory plan ([`Opened`]): `config.json` read and
//! checked against what the engine supports, the checkpoint's headers, the expert store
//! (the builder's, a pack made from this checkpoint, or the checkpoint's own files), and
//! the store's layouts checked against the model. No weight data is read.

use std::path::Path;
use std::sync::Arc;

use crate::checkpoint::Checkpoint;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::store::{ExpertRole, ExpertStore, SafetensorsStore};

/// The configuration, the checkpoint's headers and the expert store, opened and checked:
/// what both [`ModelBuilder::plan`] and [`ModelBuilder::build`] start from.
pub(crate) struct Opened {
    pub cfg: ModelConfig,
    pub ckpt: Arc<Checkpoint>,
    pub store: Arc<dyn ExpertStore>,
}

impl Opened {
    /// Reads and checks `config.json`, opens the checkpoint's files (headers only) and the
    /// expert store, and checks the store's layouts against the model.
    pub(crate) fn open(dir: &Path, store: Option<&Arc<dyn ExpertStore>>) -> Result<Opened> {
        let cfg = ModelConfig::from_path(dir.join("config.json"))?;
        crate::engine::check_plan(&cfg, &dir.join("config.json"))?;
        // The softmax-attention kernels' widest head (latent attention has its own bound,
        // `engine::check_plan`).
        if cfg.head_dim > 256 && cfg.layers.iter().any(|p| p.attention().is_some()) {
            return Err(Error::Config {
                path: dir.join("config.json"),
                reason: format!(
                    "head_dim {} is above the supported maximum of 256",
                    cfg.head_dim
                ),
            });
        }
        if cfg.num_experts > 1024 {
            return Err(Error::Config {
                path: dir.join("config.json"),
                reason: format!(
                    "num_experts {} is above the supported maximum of 1024",
                    cfg.num_experts
                ),
            });
        }
        tracing::debug!(
            model_type = %cfg.model_type,
            layers = cfg.num_hidden_layers,
            experts = cfg.num_experts,
            "config read"
        );
        let ckpt = Arc::new(Checkpoint::open(dir)?);
        tracing::debug!(
            tensors = ckpt.tensor_names().count(),
            "checkpoint headers read"
        );
        let store: Arc<dyn ExpertStore> = match store {
            Some(s) => {
                tracing::debug!("expert store: the builder's");
                s.clone()
            }
            // An expert pack next to the checkpoint (`moestream-pack/`, written by the pack
            // example) is used when it was made from this checkpoint; a stale one is an error.
            None => match crate::store::PackedStore::for_checkpoint(&ckpt)? {
                Some(pack) => Arc::new(pack),
                None => Arc::new(SafetensorsStore::new(ckpt.clone(), &cfg)?),
            },
        };
        let moe_layers = cfg.moe_layers();
        for &l in &moe_layers {
            let layout = store.layout(l).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "the expert store has no expert layout for MoE layer {l}"
                ))
            })?;
            let (h, i) = (cfg.hidden_size, cfg.moe_intermediate_size);
            let shapes = [
                (ExpertRole::Gate, i, h),
                (ExpertRole::Up, i, h),
                (ExpertRole::Down, h, i),
            ];
            for (t, (role, rows, cols)) in layout.tensors.iter().zip(shapes) {
                if t.role != role || t.rows != rows || t.cols != cols {
                    return Err(Error::InvalidArgument(format!(
                        "the expert store's layout of layer {l} has {:?} [{}, {}] where the model needs {role:?} [{rows}, {cols}]",
                        t.role, t.rows, t.cols
                    )));
                }
                let biased = cfg.layers[l].moe().is_some_and(|m| m.expert_bias);
                if t.bias.is_some() != biased {
                    return Err(Error::InvalidArgument(format!(
                        "the expert store's layout of layer {l} has {} {:?} bias, and the model's experts {}",
                        if t.bias.is_some() { "a" } else { "no" },
                        t.role,
                        if biased { "have biases" } else { "have none" }
                    )));
                }
            }
        }
        for &l in &moe_layers {
            if let Some(layout) = store.layout(l) {
                crate::engine::check_expert_layout(l, layout)?;
            }
        }
        Ok(Opened { cfg, ckpt, store })
    }
}
