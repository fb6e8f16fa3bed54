//! The engine: resident weights, the blocks a layer plan selects, and the state a session
//! keeps per layer.
//!
//! - [`weights`]: the resident (non-expert) weights of every layer, by its plan, read by
//!   [`loader`].
//! - [`state`]: per-layer sequence state (KV caches, recurrent states) and the session's
//!   layout; [`scratch`]: the scratch buffers of a pass.
//! - [`pass`]: one forward pass and the pieces every block shares (mat-vecs, RMSNorm).
//! - blocks: [`attention`], [`mla`] (multi-head latent attention), [`linear_attention`] (Gated DeltaNet), [`mlp`] (dense MLP and the choice of feed-forward block),
//!   [`moe`] (routing, expert loading, the shared expert), [`experts`] (the expert
//!   kernels over cache slots).

mod attention;
mod experts;
mod linear_attention;
pub(crate) mod loader;
mod mla;
mod mlp;
mod moe;
mod norm_fold;
pub(crate) mod pass;
pub(crate) mod scratch;
pub(crate) mod sizes;
pub(crate) mod state;
pub(crate) mod weights;

pub(crate) use experts::check_layout as check_expert_layout;

use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// Checks that the GPU engine runs every block of `cfg`'s plan; an [`Error::Config`]
/// naming the first layer and block it cannot run (latent attention of a shape its
/// kernels do not take).
pub(crate) fn check_plan(cfg: &ModelConfig, path: &std::path::Path) -> Result<()> {
    for (l, plan) in cfg.layers.iter().enumerate() {
        if let Some(reason) = plan.mla().and_then(mla::unsupported) {
            return Err(Error::Config {
                path: path.to_path_buf(),
                reason: format!("{}: layer {l}: {reason}", cfg.model_type),
            });
        }
    }
    Ok(())
}
