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
