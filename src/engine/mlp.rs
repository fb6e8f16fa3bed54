//! The dense SwiGLU MLP block, and the choice between it and the MoE block (`super::moe`).

use super::linear::XLayout;
use super::pass::{grid, Pass};
use super::weights::{DenseMlp, FfnWeights, Layer};
use crate::error::Result;
use crate::gpu::kernels::Kernel;
use crate::gpu::params::SwiGluParams;

impl<'a> Pass<'a> {
    /// `x = h + ffn(post_norm(h))`: a dense MLP or the MoE block, as the layer's plan says.
    pub(crate) fn ffn(&mut self, l: usize, layer: &'a Layer) -> Result<()> {
        let s = self.s;
        let h = self.m.cfg.hidden_size;
        let n = self.n;
        let fold = self.folded_post_norm(l, layer);
        match fold {
            // The router applies it (the input row's readers are done with it).
            Some(_) => self.unnormed = None,
            None => self.rmsnorm(&s.h, &layer.post_norm, &s.xn, n, h, 0),
        }
        match &layer.ffn {
            FfnWeights::Dense(mlp) => {
                self.dense_mlp(mlp, &s.x, Some(&s.h));
                Ok(())
            }
            FfnWeights::Moe(moe) => self.moe(l, moe, fold),
        }
    }

    /// `out = (resid +) down(silu(gate(xn)) * up(xn))` over the pass's normalized rows `xn`.
    pub(crate) fn dense_mlp(
        &mut self,
        mlp: &DenseMlp,
        out: &wgpu::Buffer,
        resid: Option<&wgpu::Buffer>,
    ) {
        let s = self.s;
        let (h, n) = (self.m.cfg.hidden_size, self.n);
        let DenseMlp { gate, up, down } = mlp;
        self.linear(gate, self.input(gate, h), &s.mlp_g, None, None);
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
