//! Which GPU a model runs on: the choice made when loading ([`AdapterChoice`], given to
//! [`ModelBuilder::adapter`](crate::ModelBuilder::adapter), or the [`ADAPTER_ENV`]
//! environment variable where the code leaves it at [`AdapterChoice::Auto`]) and what was
//! found ([`AdapterSummary`], from [`Model::adapter`](crate::Model::adapter)), including the
//! kernel [`Variant`] in use on it.

#[doc(inline)]
pub use crate::gpu::kernels::Variant;
#[doc(inline)]
pub use crate::gpu::{AdapterChoice, AdapterSummary, ADAPTER_ENV};
