//! The dense SwiGLU MLP block, and the choice between it and the MoE block (`super::moe`).

use super::pass::{grid, FusedNorm, Pass, XLayout};
use super::weights::{DenseMlp, FfnWeights, Layer};
use crate::error::Result;
use crate::gpu::kernels::Kernel;
use crate::gpu::params::SwiGluParams;

impl Pass<'_> {
    /// `x = h + ffn(post_norm(h))`: a dense MLP or the MoE block, as the layer's plan says.
    pub(crate) fn ffn(&mut self, l: usize, layer: &Layer) -> Result<()> {
        let s = self.s;
        let h = self.m.cfg.hidden_size;
        // The post-attention norm, fused into the first mat-vec after it (gate_proj, or
        // the router) where every reader of its row reads the 8+8-bit one (`Pass::norm`).
        match &layer.ffn {
            FfnWeights::Dense(mlp) => {
                let rest = [self.input(&mlp.up, h).1];
                let norm = self.norm(&s.h, &layer.post_norm, h, &mlp.gate, &rest);
                self.dense_mlp(mlp, &s.x, Some(&s.h), norm);
                Ok(())
            }
            FfnWeights::Moe(moe) => {
                let rest = self.moe_readers(l, moe);
                let norm = self.norm(&s.h, &layer.post_norm, h, &moe.router, &rest);
                self.moe(l, moe, norm)
            }
        }
    }

    /// `out = (resid +) down(silu(gate(xn)) * up(xn))` over the pass's normalized rows `xn`
    /// (with `norm`, the norm fused into gate's mat-vec: [`Pass::norm`]).
    pub(crate) fn dense_mlp(
        &mut self,
        mlp: &DenseMlp,
        out: &wgpu::Buffer,
        resid: Option<&wgpu::Buffer>,
        norm: Option<FusedNorm<'_>>,
    ) {
        let s = self.s;
        let (h, n) = (self.m.cfg.hidden_size, self.n);
        let DenseMlp { gate, up, down } = mlp;
        self.linear_normed(gate, self.input(gate, h), &s.mlp_g, None, norm);
        self.linear(up, self.input(up, h), &s.mlp_u, None, None);
        let len = n * gate.rows;
        let p = SwiGluParams {
            n: len as u32,
            ..Default::default()
        };
        self.rec.dispatch(
            Kernel::SwiGlu,
            None,
            p.words(),
            &[(&s.mlp_g).into(), (&s.mlp_u).into(), (&s.mlp_a).into()],
            grid(len.div_ceil(64)),
        );
        self.linear(down, (&s.mlp_a, XLayout::Natural), out, None, resid);
    }
}
