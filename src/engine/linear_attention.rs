//! The Gated DeltaNet block (Qwen3.5, Qwen3-Next linear attention): one fused input
//! projection `[q | k | v | z | b | a]`, the causal depthwise conv1d + SiLU over q/k/v with
//! its conv state, the gated delta rule over the recurrent state, the gated RMSNorm with
//! `silu(z)`, and out_proj added to the residual. A prefill runs each step as one dispatch
//! over all its tokens.

use super::linear::XLayout;
use super::pass::Pass;
use super::weights::LinearAttention;
use crate::error::Result;
use crate::gpu::kernels::{self, Kernel};
use crate::gpu::params::{Conv1dSiluParams, GatedDeltaNetParams, GatedRmsNormParams};
use crate::gpu::GpuVec;

impl Pass<'_> {
    /// `h = x + out_proj(gated_delta_net(input_norm(x)))`, advancing layer `l`'s
    /// recurrent state by this pass's tokens (written to the uncommitted copy).
    pub(crate) fn linear_attention(
        &mut self,
        l: usize,
        input_norm: &GpuVec,
        a: &LinearAttention,
    ) -> Result<()> {
        let s = self.s;
        let spec = &a.spec;
        let (h, n) = (self.m.cfg.hidden_size, self.n);
        // The kernels read the committed states (none at the start of a sequence) and
        // write the other copy, which the session commits if the pass succeeds.
        let ((conv_in, state_in), (conv, state)) = self.state.recurrent(l)?;
        let fresh = u32::from(self.pos0 == 0);
        self.input_norm(input_norm);
        self.linear(&a.proj, self.input(&a.proj, h), &s.la_proj, None, None);
        let (ch, vw, hv) = (spec.conv_channels(), spec.value_width(), spec.value_heads);
        let stride = spec.projection_rows() as u32;
        // As transformers: `1 / sqrt(Dk)` in double precision, rounded to f32.
        let q_scale = (1.0 / (spec.key_dim as f64).sqrt()) as f32;
        let delta_p = GatedDeltaNetParams {
            n_tokens: n as u32,
            key_heads: spec.key_heads as u32,
            value_heads: hv as u32,
            dk: spec.key_dim as u32,
            dv: spec.value_dim as u32,
            stride,
            b_offset: (ch + vw) as u32,
            a_offset: (ch + vw + hv) as u32,
            q_scale,
            fresh,
            ..Default::default()
        }
        .with_consts(a.at.a_log as u32, a.at.dt_bias as u32);
        // A decode step runs the convolution inside the delta-rule dispatch (one dependency
        // level less per layer); a prefill runs it as its own dispatch over all tokens.
        let delta_p = if self.decode {
            delta_p.with_conv(spec.conv_kernel as u32, 0)?
        } else {
            let conv_p = Conv1dSiluParams {
                n_tokens: n as u32,
                channels: ch as u32,
                k: spec.conv_kernel as u32,
                stride,
                offset: 0,
                fresh,
                ..Default::default()
            };
            self.rec.dispatch(
                Kernel::Conv1dSilu,
                None,
                conv_p.words(),
                &[
                    (&s.la_proj).into(),
                    a.conv(),
                    conv.into(),
                    (&s.la_y).into(),
                    conv_in.into(),
                ],
                kernels::conv1d_silu_groups(ch as u32, n as u32),
            );
            delta_p
        };
        self.rec.dispatch(
            Kernel::GatedDeltaNet,
            None,
            delta_p.words(),
            &[
                (&s.la_y).into(),
                (&s.la_proj).into(),
                a.delta_consts(),
                state.into(),
                (&s.la_o).into(),
                state_in.into(),
                conv_in.into(),
                conv.into(),
            ],
            kernels::gated_delta_net_groups(hv as u32, spec.value_dim as u32),
        );
        let norm_p = GatedRmsNormParams {
            n_tokens: n as u32,
            heads: hv as u32,
            dv: spec.value_dim as u32,
            eps: self.m.cfg.rms_norm_eps,
            stride,
            z_offset: ch as u32,
            ..Default::default()
        };
        self.rec.dispatch(
            Kernel::GatedRmsNorm,
            None,
            norm_p.words(),
            &[
                (&s.la_o).into(),
                (&s.la_proj).into(),
                a.norm(),
                (&s.la_n).into(),
            ],
            kernels::gated_rmsnorm_groups(hv as u32, n as u32),
        );
        self.linear(&a.out, (&s.la_n, XLayout::Natural), &s.h, None, Some(&s.x));
        Ok(())
    }
}
