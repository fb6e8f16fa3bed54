//! The scratch buffers of one pass of a session (activations, routing, readback), sized
//! by the session's layout ([`ScratchLayout`], part of the memory plan) for
//! `MAX_PASS_TOKENS` tokens or the context, whichever is smaller.

use super::state::{mul, SessionParams};
use crate::arch::MlaSpec;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::gpu::{storage_size, Gpu, Timer};
use crate::session::{MAX_PASS_TOKENS, MAX_TOP};

/// GPU buffers of a session sized for `cap` tokens per pass.
pub(crate) struct Scratch {
    pub cap: usize,
    pub ids: wgpu::Buffer,
    pub x: wgpu::Buffer,
    pub h: wgpu::Buffer,
    pub xn: wgpu::Buffer,
    /// A single normalized row (decode) again, in the interleaved layout of
    /// `kernels/include/interleave.wgsl` that the quantized mat-vec kernels read fastest.
    pub xi: wgpu::Buffer,
    /// The same row in the 8+8-bit layout that the 2- to 6-bit kernels read (18 words per 32
    /// values).
    pub xq: wgpu::Buffer,
    pub q: wgpu::Buffer,
    pub k: wgpu::Buffer,
    pub v: wgpu::Buffer,
    /// q, k and v of a fused projection: `[tokens, q_dim + 2 kv_dim]`.
    pub qkv: wgpu::Buffer,
    pub qr: wgpu::Buffer,
    pub attn: wgpu::Buffer,
    /// Partial softmax states of the split decode attention (`kernels/attention_split.wgsl`).
    pub attn_part: wgpu::Buffer,
    pub mlp_g: wgpu::Buffer,
    pub mlp_u: wgpu::Buffer,
    pub mlp_a: wgpu::Buffer,
    pub router_logits: wgpu::Buffer,
    pub route_ids: wgpu::Buffer,
    pub route_w: wgpu::Buffer,
    pub assign: wgpu::Buffer,
    pub assign_w: wgpu::Buffer,
    /// Tiles of one expert's assignments for the prefill expert mat-mat kernels:
    /// (first assignment, count) pairs (`kernels::moe_qmm_tiles`).
    pub tiles: wgpu::Buffer,
    pub route: wgpu::Buffer,
    /// Top-n candidates per vocabulary chunk, as `kernels/topk.wgsl` writes them.
    pub topk: wgpu::Buffer,
    /// What the resident routing kernel logs for the host: per layer a miss flag (set when
    /// a chosen expert is not resident), then per layer the `top_k` experts it chose.
    pub route_log: wgpu::Buffer,
    /// Per cache page: the indirect grids of the expert kernels of a resident step.
    pub moe_args: wgpu::Buffer,
    pub moe_h: wgpu::Buffer,
    pub moe_o: wgpu::Buffer,
    /// A MoE block's shared expert: the residual plus its gated output `[tokens, hidden]`
    /// and its gate's logits.
    pub shared_o: wgpu::Buffer,
    pub shared_g: wgpu::Buffer,
    /// The shared expert's fused gate and up projections, `[tokens, 2 inter]`.
    pub shared_gu: wgpu::Buffer,
    /// Linear attention: the fused input projection `[tokens, projection_rows]`, the
    /// convolution's output `[tokens, channels]`, the delta rule's output and the gated
    /// norm's, `[tokens, value_heads * value_dim]` each.
    pub la_proj: wgpu::Buffer,
    pub la_y: wgpu::Buffer,
    pub la_o: wgpu::Buffer,
    pub la_n: wgpu::Buffer,
    /// Latent attention: `q_a_proj`'s output and its normed copy `[tokens, q_lora_rank]`,
    /// `kv_a_proj_with_mqa`'s `[tokens, kv_lora_rank + qk_rope_head_dim]`.
    pub lat_q: wgpu::Buffer,
    pub lat_qn: wgpu::Buffer,
    pub lat_kv: wgpu::Buffer,
    /// The logits of a pass's last token, in `logits` or `logits2`: a decode step run
    /// ahead of its call writes the one the step before it did not (see `Session`).
    pub logits: wgpu::Buffer,
    pub logits2: wgpu::Buffer,
    pub readback: wgpu::Buffer,
    /// A second readback buffer: a decode step recorded ahead reads into the one that the
    /// step in flight does not.
    pub readback2: wgpu::Buffer,
    /// The RoPE tables: cos `[max_context, rotary_dim / 2]`, then sin from float
    /// `rope_sin` on.
    pub rope: wgpu::Buffer,
    pub rope_sin: u32,
}

/// The sizes of a session's [`Scratch`] buffers: f32 counts of the storage buffers, bytes
/// of the others (`_bytes`), and the tokens a pass takes (`cap`).
#[derive(Debug, Clone)]
pub(crate) struct ScratchLayout {
    pub cap: usize,
    pub ids: u64,
    pub x: u64,
    pub h: u64,
    pub xn: u64,
    pub xi: u64,
    pub xq: u64,
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub qkv: u64,
    pub qr: u64,
    pub attn: u64,
    pub attn_part: u64,
    pub mlp_g: u64,
    pub mlp_u: u64,
    pub mlp_a: u64,
    pub router_logits: u64,
    pub route_ids: u64,
    pub route_w: u64,
    pub assign: u64,
    pub assign_w: u64,
    pub tiles: u64,
    pub route: u64,
    pub topk: u64,
    pub route_log: u64,
    pub moe_args_bytes: u64,
    pub moe_h: u64,
    pub moe_o: u64,
    pub shared_o: u64,
    pub shared_g: u64,
    pub shared_gu: u64,
    pub la_proj: u64,
    pub la_y: u64,
    pub la_o: u64,
    pub la_n: u64,
    pub lat_q: u64,
    pub lat_qn: u64,
    pub lat_kv: u64,
    pub logits: u64,
    pub readback_bytes: u64,
    /// The RoPE tables, cos then sin, `[max_context, rotary_dim / 2]` each.
    pub rope: u64,
}

impl ScratchLayout {
    /// The scratch of a session of `max_context` tokens; a [`Error::DeviceLimit`] naming
    /// the first buffer that would not fit.
    pub fn new(cfg: &ModelConfig, p: &SessionParams, max_context: usize) -> Result<Self> {
        // The widest per-token activation decides how many tokens fit one pass.
        let k = cfg.num_experts_per_tok.max(1);
        // Choices per token: one more where shared experts ride in the expert cache.
        let kk = p.choices.max(k);
        let mlp = cfg
            .intermediate_size
            .max(cfg.shared_expert_intermediate_size);
        let la_rows_max = cfg.linear_attention.map_or(0, |a| a.projection_rows());
        // Latent attention: q_lora_rank, the cache row, the absorbed queries
        // `[heads, rank + rope]`, the heads' latent outputs `[heads, rank]` and values.
        let mla = cfg.layers.iter().find_map(|p| p.mla());
        let ql = mla.and_then(|a| a.q_lora_rank).unwrap_or(0);
        let lat_w = mla.map_or(0, MlaSpec::cache_width);
        let lat_heads = mla.map_or(0, |a| {
            mul(
                a.heads,
                a.cache_width() + a.v_head_dim.max(a.qk_nope_head_dim + a.qk_rope_head_dim),
            )
        });
        let h = cfg.hidden_size;
        let per_token = [
            h as u64,
            mul(2, cfg.shared_expert_intermediate_size),
            mul(cfg.num_attention_heads, cfg.head_dim)
                .saturating_mul(2)
                .saturating_add(mul(2 * cfg.num_key_value_heads, cfg.head_dim)),
            mlp as u64,
            (cfg.num_experts as u64).saturating_add(1),
            mul(kk, h),
            mul(kk, cfg.moe_intermediate_size),
            la_rows_max as u64,
            lat_heads,
        ]
        .into_iter()
        .max()
        .unwrap_or(1)
        .saturating_mul(4)
        .max(1);
        let cap = MAX_PASS_TOKENS.min(max_context).min(
            usize::try_from(p.binding.0 / per_token)
                .unwrap_or(usize::MAX)
                .max(1),
        );
        let qd = mul(cfg.num_attention_heads, cfg.head_dim)
            .saturating_mul(if cfg.attn_output_gate { 2 } else { 1 });
        // q also holds a latent-attention layer's values; qr its absorbed queries, attn
        // its heads' latent outputs.
        let q_w = qd.max(mla.map_or(0, |a| mul(a.heads, a.v_head_dim)));
        let qr_w = qd.max(mla.map_or(0, |a| mul(a.heads, a.cache_width())));
        let attn_w = qd.max(mla.map_or(0, |a| mul(a.heads, a.kv_lora_rank)));
        // The decode row's other layouts, for the q norm's output too.
        let row_w = h.max(ql) as u64;
        let kvd = mul(cfg.num_key_value_heads, cfg.head_dim);
        let la = cfg.linear_attention;
        let la_rows = la.map_or(0, |a| a.projection_rows()) as u64;
        let la_ch = la.map_or(0, |a| a.conv_channels()) as u64;
        let la_v = la.map_or(0, |a| a.value_width()) as u64;
        let vocab = u32::try_from(cfg.vocab_size).unwrap_or(u32::MAX);
        let topk_words = mul(
            crate::gpu::kernels::topk_groups(vocab).0 as usize,
            MAX_TOP * 2,
        );
        let layers = cfg.num_hidden_layers;
        let readback_bytes = mul(cfg.vocab_size, 4)
            .max(topk_words.saturating_mul(4))
            .saturating_add(mul(layers, (k + 1) * 4))
            .max(mul(cap, kk * 8))
            .div_ceil(16)
            .saturating_mul(16)
            .saturating_add(Timer::READBACK_BYTES);
        // Assignment rows: one per (token, choice) of a pass, and every choice per cache
        // page for a resident decode step.
        let pages = p.cache_pages.max(1);
        let rows = mul(cap, kk).max(mul(pages, kk));
        let c = cap as u64;
        let rope = mul(max_context, cfg.rotary_dim / 2).saturating_mul(2);
        let layout = ScratchLayout {
            cap,
            ids: c,
            x: mul(cap, h),
            h: mul(cap, h),
            xn: mul(cap, h),
            // The interleaved row, and the 8+8-bit one (18 words per 32 values), each with the
            // blocks' sums of squares that `Kernel::MoeCombineNorm` leaves after it.
            xi: row_w + row_w / 32,
            xq: row_w / 32 * 19,
            q: c.saturating_mul(q_w),
            k: c.saturating_mul(kvd),
            v: c.saturating_mul(kvd),
            qkv: c.saturating_mul(qd.saturating_add(kvd.saturating_mul(2))),
            qr: c.saturating_mul(qr_w),
            attn: c.saturating_mul(attn_w),
            attn_part: crate::gpu::kernels::attention_part_floats(
                cfg.num_attention_heads as u32,
                cfg.head_dim.max(mla.map_or(0, |a| a.kv_lora_rank)) as u32,
            ),
            mlp_g: mul(cap, mlp),
            mlp_u: mul(cap, mlp),
            mlp_a: mul(cap, mlp),
            router_logits: mul(cap, cfg.num_experts.saturating_add(1)),
            route_ids: mul(cap, kk),
            route_w: mul(cap, kk),
            assign: rows.saturating_mul(2),
            assign_w: rows,
            tiles: rows.saturating_mul(2),
            route: mul(cap, kk),
            topk: topk_words,
            route_log: mul(layers, 1 + k),
            moe_args_bytes: mul(pages, 24),
            moe_h: rows.saturating_mul(cfg.moe_intermediate_size as u64),
            moe_o: rows.saturating_mul(h as u64),
            shared_o: mul(cap, h),
            shared_g: c,
            shared_gu: mul(cap, cfg.shared_expert_intermediate_size).saturating_mul(2),
            la_proj: c.saturating_mul(la_rows),
            la_y: c.saturating_mul(la_ch),
            la_o: c.saturating_mul(la_v),
            la_n: c.saturating_mul(la_v),
            lat_q: mul(cap, ql),
            lat_qn: mul(cap, ql),
            lat_kv: mul(cap, lat_w),
            logits: cfg.vocab_size as u64,
            readback_bytes,
            rope,
        };
        for (label, floats) in layout.storage() {
            p.fits(
                || format!("the session's {label} buffer ({max_context} tokens)"),
                floats.saturating_mul(4),
            )?;
        }
        if readback_bytes > p.max_buffer {
            return Err(Error::DeviceLimit {
                what: "the session's readback buffer".into(),
                requested: readback_bytes,
                limit_name: "max_buffer_size",
                limit: p.max_buffer,
            });
        }
        Ok(layout)
    }

    /// Every storage buffer: its label and f32 count.
    fn storage(&self) -> [(&'static str, u64); 40] {
        let ScratchLayout {
            cap: _,
            ids,
            x,
            h,
            xn,
            xi,
            xq,
            q,
            k,
            v,
            qkv,
            qr,
            attn,
            attn_part,
            mlp_g,
            mlp_u,
            mlp_a,
            router_logits,
            route_ids,
            route_w,
            assign,
            assign_w,
            tiles,
            route,
            topk,
            route_log,
            moe_args_bytes: _,
            moe_h,
            moe_o,
            shared_o,
            shared_g,
            shared_gu,
            la_proj,
            la_y,
            la_o,
            la_n,
            lat_q,
            lat_qn,
            lat_kv,
            logits,
            readback_bytes: _,
            rope,
        } = *self;
        [
            ("ids", ids),
            ("x", x),
            ("h", h),
            ("xn", xn),
            ("xi", xi),
            ("xq", xq),
            ("q", q),
            ("k", k),
            ("v", v),
            ("qkv", qkv),
            ("qr", qr),
            ("attn", attn),
            ("attention partials", attn_part),
            ("mlp_g", mlp_g),
            ("mlp_u", mlp_u),
            ("mlp_a", mlp_a),
            ("router_logits", router_logits),
            ("route_ids", route_ids),
            ("route_w", route_w),
            ("assign", assign),
            ("assign_w", assign_w),
            ("tiles", tiles),
            ("route", route),
            ("top-k candidates", topk),
            ("route log", route_log),
            ("moe_h", moe_h),
            ("moe_o", moe_o),
            ("shared_o", shared_o),
            ("shared_g", shared_g),
            ("shared_gu", shared_gu),
            ("la_proj", la_proj),
            ("la_y", la_y),
            ("la_o", la_o),
            ("la_n", la_n),
            ("lat_q", lat_q),
            ("lat_qn", lat_qn),
            ("lat_kv", lat_kv),
            ("logits 2", logits),
            ("logits", logits),
            ("rope", rope),
        ]
    }

    /// GPU bytes of the scratch buffers ([`Scratch::bytes`]).
    pub fn bytes(&self) -> u64 {
        self.storage()
            .iter()
            .map(|&(_, floats)| storage_size(floats.saturating_mul(4)))
            .fold(0, u64::saturating_add)
            .saturating_add(self.moe_args_bytes)
            // Two readback buffers (`Scratch::readback`, `readback2`).
            .saturating_add(self.readback_bytes.saturating_mul(2))
    }

    /// The largest scratch buffer: what it is and its bytes.
    pub fn largest(&self) -> (String, u64) {
        self.storage()
            .iter()
            .map(|&(label, floats)| (label, storage_size(floats.saturating_mul(4))))
            .chain([("readback", self.readback_bytes)])
            .max_by_key(|&(_, b)| b)
            .map_or((String::new(), 0), |(l, b)| {
                (format!("the session's {l} buffer"), b)
            })
    }
}

impl Scratch {
    /// The scratch buffers of a session of `max_context` tokens on a model of `cfg`, as
    /// `layout` ([`ScratchLayout::new`]) sizes them.
    pub fn new(
        gpu: &Gpu,
        cfg: &ModelConfig,
        layout: &ScratchLayout,
        max_context: usize,
    ) -> Result<Scratch> {
        let (cos, sin) = crate::reference::rope_tables_scaled(
            cfg.rope_theta,
            cfg.rotary_dim,
            max_context,
            cfg.rope_scaling.as_ref(),
        );
        if (cos.len() + sin.len()) as u64 != layout.rope {
            return Err(Error::Internal(format!(
                "the RoPE tables have {} values, the session layout {}",
                cos.len() + sin.len(),
                layout.rope
            )));
        }
        let rope_sin = u32::try_from(cos.len())
            .map_err(|_| Error::Internal("the RoPE tables exceed 2^32 values".into()))?;
        let l = layout;
        let buf = |label: &str, floats: u64| gpu.storage_buffer(label, floats.saturating_mul(4));
        Ok(Scratch {
            cap: l.cap,
            ids: buf("ids", l.ids),
            x: buf("x", l.x),
            h: buf("h", l.h),
            xn: buf("xn", l.xn),
            xi: buf("xi", l.xi),
            xq: buf("xq", l.xq),
            q: buf("q", l.q),
            k: buf("k", l.k),
            v: buf("v", l.v),
            qkv: buf("qkv", l.qkv),
            qr: buf("qr", l.qr),
            attn: buf("attn", l.attn),
            attn_part: buf("attention partials", l.attn_part),
            mlp_g: buf("mlp_g", l.mlp_g),
            mlp_u: buf("mlp_u", l.mlp_u),
            mlp_a: buf("mlp_a", l.mlp_a),
            router_logits: buf("router_logits", l.router_logits),
            route_ids: buf("route_ids", l.route_ids),
            route_w: buf("route_w", l.route_w),
            assign: buf("assign", l.assign),
            assign_w: buf("assign_w", l.assign_w),
            tiles: buf("tiles", l.tiles),
            route: buf("route", l.route),
            route_log: buf("route log", l.route_log),
            topk: buf("top-k candidates", l.topk),
            moe_args: gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("expert grids"),
                size: l.moe_args_bytes,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::INDIRECT,
                mapped_at_creation: false,
            }),
            moe_h: buf("moe_h", l.moe_h),
            moe_o: buf("moe_o", l.moe_o),
            shared_o: buf("shared_o", l.shared_o),
            shared_g: buf("shared_g", l.shared_g),
            shared_gu: buf("shared_gu", l.shared_gu),
            la_proj: buf("la_proj", l.la_proj),
            la_y: buf("la_y", l.la_y),
            la_o: buf("la_o", l.la_o),
            la_n: buf("la_n", l.la_n),
            lat_q: buf("lat_q", l.lat_q),
            lat_qn: buf("lat_qn", l.lat_qn),
            lat_kv: buf("lat_kv", l.lat_kv),
            logits: buf("logits", l.logits),
            logits2: buf("logits 2", l.logits),
            readback: gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size: l.readback_bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            readback2: gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback 2"),
                size: l.readback_bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            rope_sin,
            rope: gpu.upload("rope", bytemuck::cast_slice(&[cos, sin].concat())),
        })
    }

    /// GPU bytes of the scratch buffers (every field: a buffer added to [`Scratch`] must
    /// be counted here, and sized by [`ScratchLayout`]).
    pub fn bytes(&self) -> u64 {
        let Scratch {
            cap: _,
            ids,
            x,
            h,
            xn,
            xi,
            xq,
            q,
            k,
            v,
            qkv,
            qr,
            attn,
            attn_part,
            mlp_g,
            mlp_u,
            mlp_a,
            router_logits,
            route_ids,
            route_w,
            assign,
            assign_w,
            tiles,
            route,
            topk,
            route_log,
            moe_args,
            moe_h,
            moe_o,
            shared_o,
            shared_g,
            shared_gu,
            la_proj,
            la_y,
            la_o,
            la_n,
            lat_q,
            lat_qn,
            lat_kv,
            logits,
            logits2,
            readback,
            readback2,
            rope,
            rope_sin: _,
        } = self;
        [
            ids,
            x,
            h,
            xn,
            xi,
            xq,
            q,
            k,
            v,
            qkv,
            qr,
            attn,
            attn_part,
            mlp_g,
            mlp_u,
            mlp_a,
            router_logits,
            route_ids,
            route_w,
            assign,
            assign_w,
            tiles,
            route,
            topk,
            route_log,
            moe_args,
            moe_h,
            moe_o,
            shared_o,
            shared_g,
            shared_gu,
            la_proj,
            la_y,
            la_o,
            la_n,
            lat_q,
            lat_qn,
            lat_kv,
            logits,
            logits2,
            readback,
            readback2,
            rope,
        ]
        .iter()
        .map(|b| b.size())
        .sum()
    }
}
