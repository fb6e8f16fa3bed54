//! The engine: resident weights, the blocks a layer plan selects, and the state a session
//! keeps per layer.
//!
//! - [`weights`]: the resident (non-expert) weights of every layer, by its plan, read by
//!   [`loader`].
//! - [`state`]: per-layer sequence state (KV caches) and the scratch buffers of a pass.
//! - [`pass`]: one forward pass and the pieces every block shares (mat-vecs, RMSNorm).
//! - blocks: [`attention`], [`linear_attention`] (Gated DeltaNet), [`mlp`] (dense MLP and the choice of feed-forward block),
//!   [`moe`] (routing, expert loading, the shared expert), [`experts`] (the expert
//!   kernels over cache slots).

mod attention;
mod experts;
mod linear_attention;
pub(crate) mod loader;
mod mlp;
mod moe;
pub(crate) mod pass;
pub(crate) mod state;
pub(crate) mod weights;

use std::path::Path;

use crate::arch::ExpertActivation;
use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// Checks that the GPU engine runs every block variant of `cfg`'s plan; an
/// [`Error::Config`] naming the first layer and variant it does not (yet) run. The CPU
/// reference may run more (gpt-oss's biased, clamped experts are there first).
pub(crate) fn check_plan(cfg: &ModelConfig, path: &Path) -> Result<()> {
    let unsupported = |l: usize, what: &str| Error::Config {
        path: path.to_path_buf(),
        reason: format!(
            "{}: layer {l} uses {what}, which the GPU engine does not run yet",
            cfg.model_type
        ),
    };
    for (l, plan) in cfg.layers.iter().enumerate() {
        if let Some(m) = plan.moe() {
            if m.activation != ExpertActivation::SwiGlu || m.expert_bias {
                return Err(unsupported(l, "experts with biases and a clamped SwiGLU"));
            }
        }
    }
    Ok(())
}
