//! The engine: resident weights, the blocks a layer plan selects, and the state a session
//! keeps per layer.
//!
//! - [`weights`]: the resident (non-expert) weights of every layer, by its plan, read by
//!   [`loader`].
//! - [`state`]: per-layer sequence state (KV caches, recurrent states) and the session's
//!   layout; [`scratch`]: the scratch buffers of a pass.
//! - [`pass`]: one forward pass and the pieces every block shares (RMSNorm, embedding,
//!   readout); [`linear`]: its linear maps by weight format (mat-vecs, mat-mats, the
//!   layouts of their input rows).
//! - blocks: [`attention`], [`mla`] (multi-head latent attention), [`linear_attention`] (Gated DeltaNet), [`mlp`] (dense MLP and the choice of feed-forward block),
//!   [`moe`] (routing, expert loading, the shared expert), [`experts`] (the expert
//!   kernels' dispatches over cache slots) and [`expert_kernels`] (which kernels read a
//!   layer's slots, and where in them).

mod attention;
mod expert_kernels;
mod experts;
mod linear;
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

pub(crate) use expert_kernels::check_layout as check_expert_layout;

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
