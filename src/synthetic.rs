//! Synthetic random-weight checkpoints of every family moestream runs, for demos,
//! benchmarks and tests that must not need a download: the spec ([`SyntheticSpec`]), the
//! lazily filled tensors and the folder writer live here; each family's config spelling
//! and tensor list in `arch::<family>::synthetic` (Qwen3-MoE and the Qwen3.5 hybrids,
//! [`SyntheticSpec::linear_attention`], in `arch::qwen3_moe::synthetic`). The weights are
//! deterministic pseudo-random numbers: the model runs exactly like a real one of its
//! shape, but its output is meaningless.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use crate::arch::Names;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::format::{AffineQuant, WeightFormat};
use crate::store::ExpertLayout;

/// The shape of a synthetic model.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SyntheticSpec {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Residual width.
    pub hidden_size: usize,
    /// Decoder layers (all MoE).
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Head width.
    pub head_dim: usize,
    /// Experts per layer.
    pub num_experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Expert width.
    pub moe_intermediate_size: usize,
    /// Stored dtype (of float weights, and of the scales and biases of quantized ones).
    pub dtype: DType,
    /// MLX affine quantization `(bits, group_size)` of every matrix (routers at 8 bits,
    /// group 64, as mlx-lm does), or `None` for float weights. Quantized models are written
    /// in the mlx-community layout (stacked `switch_mlp` experts).
    pub quant: Option<(u32, u32)>,
    /// Seed of the weights.
    pub seed: u64,
    /// `Some`: a Qwen3.5-MoE (`qwen3_5_moe_text`) model of Gated DeltaNet layers with a
    /// gated full-attention layer every `full_attention_interval` layers and a shared
    /// expert per MoE block; `None`: Qwen3-MoE.
    pub linear_attention: Option<SyntheticLinear>,
    /// `Some`: a gpt-oss model (then `quant` and `linear_attention` are ignored; its
    /// attention and router are bf16, its experts MXFP4 or bf16).
    pub gpt_oss: Option<SyntheticGptOss>,
    /// `Some`: a GLM-4.5 MoE model (`linear_attention` ignored): a dense first layer,
    /// sigmoid routing with a correction bias, one ungated shared expert per MoE layer,
    /// written by `arch::glm4_moe::synthetic`.
    pub glm4_moe: Option<SyntheticGlm>,
    /// `Some`: a DeepSeek-V3 model (`linear_attention` ignored; `num_heads` latent-attention
    /// heads), written by `arch::deepseek_v3::synthetic`.
    pub deepseek_v3: Option<SyntheticDeepseek>,
    /// `Some`: a Mixtral or OLMoE model (`linear_attention` ignored), written by
    /// `arch::mixtral::synthetic` (OLMoE's config by `arch::olmoe::synthetic`).
    pub llama_moe: Option<SyntheticLlamaMoe>,
}

mod demo;

pub use crate::arch::deepseek_v3::synthetic::SyntheticDeepseek;
pub use crate::arch::mixtral::synthetic::{LlamaMoeFamily, SyntheticLlamaMoe};
pub use demo::{cache_dir, demo_dir, write_demo, write_demo_tokenizer};

/// The GLM-4.5 part of a [`SyntheticSpec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyntheticGlm {
    /// Width of the dense first layer's MLP (`intermediate_size`).
    pub dense_intermediate_size: usize,
}

impl SyntheticGlm {
    /// A dense layer of `width`.
    pub fn new(width: usize) -> Self {
        SyntheticGlm {
            dense_intermediate_size: width,
        }
    }
}

/// The gpt-oss part of a [`SyntheticSpec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyntheticGptOss {
    /// Keys a sliding layer sees (even layers slide, odd ones attend to everything).
    pub sliding_window: usize,
    /// Experts in MXFP4 (the released checkpoints' layout), else bf16.
    pub mxfp4: bool,
}

impl SyntheticGptOss {
    /// The released models': a window of 128, MXFP4 experts.
    pub fn released() -> Self {
        SyntheticGptOss {
            sliding_window: 128,
            mxfp4: true,
        }
    }
}

/// The Qwen3.5-MoE part of a [`SyntheticSpec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyntheticLinear {
    /// Query/key heads of the linear-attention layers.
    pub key_heads: usize,
    /// Value heads (a multiple of `key_heads`).
    pub value_heads: usize,
    /// Width of a query/key head.
    pub key_dim: usize,
    /// Width of a value head.
    pub value_dim: usize,
    /// Every this many layers one is full attention (the last of each group).
    pub full_attention_interval: usize,
    /// Width of the shared expert.
    pub shared_expert_intermediate_size: usize,
}

impl SyntheticLinear {
    /// Qwen3.5's shape: 16 key heads, value heads as given, heads of 128, full attention
    /// every 4 layers, a shared expert of `shared` values.
    pub fn qwen3_5(value_heads: usize, shared: usize) -> Self {
        SyntheticLinear {
            key_heads: 16,
            value_heads,
            key_dim: 128,
            value_dim: 128,
            full_attention_interval: 4,
            shared_expert_intermediate_size: shared,
        }
    }
}

impl Default for SyntheticSpec {
    /// A small model that runs quickly even on a software GPU: 8 layers of 32 experts
    /// (top-4, bf16, about 100 MB of experts).
    fn default() -> Self {
        SyntheticSpec {
            vocab_size: 4096,
            hidden_size: 256,
            num_layers: 8,
            num_heads: 8,
            num_kv_heads: 2,
            head_dim: 32,
            num_experts: 32,
            top_k: 4,
            moe_intermediate_size: 256,
            dtype: DType::BF16,
            quant: None,
            seed: 0x6d6f_6573,
            linear_attention: None,
            gpt_oss: None,
            glm4_moe: None,
            deepseek_v3: None,
            llama_moe: None,
        }
    }
}

impl SyntheticSpec {
    /// The shape of Qwen3-30B-A3B (48 layers, hidden 2048, 128 experts, top-8, expert
    /// width 768, 32/4 heads of 128, vocab 151936) at MLX 4-bit, group 64, bf16 scales:
    /// about 16 GB of experts.
    pub fn qwen3_30b_a3b_4bit() -> Self {
        SyntheticSpec {
            vocab_size: 151936,
            hidden_size: 2048,
            num_layers: 48,
            num_heads: 32,
            num_kv_heads: 4,
            head_dim: 128,
            num_experts: 128,
            top_k: 8,
            moe_intermediate_size: 768,
            dtype: DType::BF16,
            quant: Some((4, 64)),
            seed: 0x3330_6233,
            linear_attention: None,
            gpt_oss: None,
            glm4_moe: None,
            deepseek_v3: None,
            llama_moe: None,
        }
    }

    /// The shape of Qwen3.5-35B-A3B (40 layers: 30 Gated DeltaNet, 10 gated full attention;
    /// hidden 2048, 256 experts, top-8, expert and shared expert width 512, 16/2 heads of
    /// 256, linear attention 16 key / 32 value heads of 128, vocab 248320) at MLX 4-bit,
    /// group 64, bf16 scales: about 18 GB of experts.
    pub fn qwen3_5_35b_a3b_4bit() -> Self {
        SyntheticSpec {
            vocab_size: 248320,
            hidden_size: 2048,
            num_layers: 40,
            num_heads: 16,
            num_kv_heads: 2,
            head_dim: 256,
            num_experts: 256,
            top_k: 8,
            moe_intermediate_size: 512,
            dtype: DType::BF16,
            quant: Some((4, 64)),
            seed: 0x3335_6133,
            linear_attention: Some(SyntheticLinear::qwen3_5(32, 512)),
            gpt_oss: None,
            glm4_moe: None,
            deepseek_v3: None,
            llama_moe: None,
        }
    }

    /// The shape of Qwen3.5-397B-A17B (hidden 4096, 512 experts, top-10, expert and shared
    /// expert width 1024, 32/2 heads of 256, linear attention 16 key / 64 value heads of
    /// 128, vocab 248320) at MLX 4-bit with `layers` of its 60 layers (a multiple of 4 keeps
    /// its 3:1 mix of linear and full attention): a layer's cost is what a laptop pays per
    /// layer, its 512 experts 3.6 GB per layer.
    pub fn qwen3_5_397b_a17b_4bit(layers: usize) -> Self {
        SyntheticSpec {
            vocab_size: 248320,
            hidden_size: 4096,
            num_layers: layers,
            num_heads: 32,
            num_kv_heads: 2,
            head_dim: 256,
            num_experts: 512,
            top_k: 10,
            moe_intermediate_size: 1024,
            dtype: DType::BF16,
            quant: Some((4, 64)),
            seed: 0x3339_3761,
            linear_attention: Some(SyntheticLinear::qwen3_5(64, 1024)),
            gpt_oss: None,
            glm4_moe: None,
            deepseek_v3: None,
            llama_moe: None,
        }
    }

    /// The shape of gpt-oss-120b (hidden 2880, 128 experts, top-4, expert width 2880,
    /// 64/8 heads of 64, alternating windows of 128 and full attention, vocab 201088) with
    /// `layers` of its 36 layers, MXFP4 experts as released: 1.69 GB of experts per layer.
    pub fn gpt_oss_120b(layers: usize) -> Self {
        SyntheticSpec {
            vocab_size: 201088,
            hidden_size: 2880,
            num_layers: layers,
            num_heads: 64,
            num_kv_heads: 8,
            head_dim: 64,
            num_experts: 128,
            top_k: 4,
            moe_intermediate_size: 2880,
            dtype: DType::BF16,
            quant: None,
            seed: 0x6f73_7331,
            linear_attention: None,
            gpt_oss: Some(SyntheticGptOss::released()),
            glm4_moe: None,
            deepseek_v3: None,
            llama_moe: None,
        }
    }

    /// The shape of GLM-4.5-Air (hidden 4096, 128 experts, top-8, expert and shared expert
    /// width 1408, a dense first layer of 10944, 96/8 heads of 128, vocab 151552) with
    /// `layers` of its 46 layers, at MLX 4-bit, group 64, bf16 scales: 1.25 GB of experts
    /// per MoE layer.
    pub fn glm4_5_air_4bit(layers: usize) -> Self {
        SyntheticSpec {
            vocab_size: 151552,
            hidden_size: 4096,
            num_layers: layers,
            num_heads: 96,
            num_kv_heads: 8,
            head_dim: 128,
            num_experts: 128,
            top_k: 8,
            moe_intermediate_size: 1408,
            dtype: DType::BF16,
            quant: Some((4, 64)),
            seed: 0x676c_6d61,
            linear_attention: None,
            gpt_oss: None,
            glm4_moe: Some(SyntheticGlm::new(10944)),
            deepseek_v3: None,
            llama_moe: None,
        }
    }

    /// The shape of DeepSeek-V3 (hidden 7168, 256 experts of 2048 in 8 groups, top-8, one
    /// shared expert, 128 latent-attention heads, vocab 129280) with `layers` of its 61
    /// layers, the first of them dense, at MLX 4-bit, group 64, bf16 scales: 6.3 GB of
    /// experts per MoE layer.
    pub fn deepseek_v3_4bit(layers: usize) -> Self {
        SyntheticSpec {
            vocab_size: 129280,
            hidden_size: 7168,
            num_layers: layers,
            num_heads: 128,
            num_kv_heads: 128,
            head_dim: 192,
            num_experts: 256,
            top_k: 8,
            moe_intermediate_size: 2048,
            dtype: DType::BF16,
            quant: Some((4, 64)),
            seed: 0x6473_7633,
            linear_attention: None,
            gpt_oss: None,
            glm4_moe: None,
            deepseek_v3: Some(SyntheticDeepseek::v3(1)),
            llama_moe: None,
        }
    }

    /// [`deepseek_v3_4bit`](Self::deepseek_v3_4bit)'s shape in the released FP8 format:
    /// every linear layer inside the decoder layers e4m3 with f32 128 x 128 block scales
    /// (`weight_scale_inv`), per-expert Hugging Face names, the rest bf16; 11.3 GB of experts
    /// per MoE layer.
    pub fn deepseek_v3_fp8(layers: usize) -> Self {
        let mut d = SyntheticDeepseek::v3(1);
        d.fp8 = true;
        SyntheticSpec {
            quant: None,
            seed: 0x6473_7638,
            deepseek_v3: Some(d),
            ..Self::deepseek_v3_4bit(layers)
        }
    }

    /// The shape of Mixtral-8x7B (hidden 4096, 8 experts of 14336, top-2, 32/8 heads of
    /// 128, vocab 32000) with `layers` of its 32 layers, at MLX 4-bit, group 64, bf16
    /// scales: 0.79 GB of experts per layer.
    pub fn mixtral_8x7b_4bit(layers: usize) -> Self {
        SyntheticSpec {
            vocab_size: 32000,
            hidden_size: 4096,
            num_layers: layers,
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 128,
            num_experts: 8,
            top_k: 2,
            moe_intermediate_size: 14336,
            dtype: DType::BF16,
            quant: Some((4, 64)),
            seed: 0x6d69_7874,
            linear_attention: None,
            gpt_oss: None,
            glm4_moe: None,
            deepseek_v3: None,
            llama_moe: Some(SyntheticLlamaMoe::new(LlamaMoeFamily::Mixtral)),
        }
    }

    /// The shape of OLMoE-1B-7B (16 layers, hidden 2048, 64 experts of 1024, top-8, 16
    /// heads of 128, vocab 50304) at MLX 4-bit, group 64, bf16 scales: 3.6 GB of experts.
    pub fn olmoe_1b_7b_4bit() -> Self {
        SyntheticSpec {
            vocab_size: 50304,
            hidden_size: 2048,
            num_layers: 16,
            num_heads: 16,
            num_kv_heads: 16,
            head_dim: 128,
            num_experts: 64,
            top_k: 8,
            moe_intermediate_size: 1024,
            dtype: DType::BF16,
            quant: Some((4, 64)),
            seed: 0x6f6c_6d6f,
            linear_attention: None,
            gpt_oss: None,
            glm4_moe: None,
            deepseek_v3: None,
            llama_moe: Some(SyntheticLlamaMoe::new(LlamaMoeFamily::Olmoe)),
        }
    }

    /// The shape of gpt-oss-20b (24 layers of 32 experts, otherwise as
    /// [`gpt_oss_120b`](Self::gpt_oss_120b)): about 10 GB of MXFP4 experts.
    pub fn gpt_oss_20b() -> Self {
        SyntheticSpec {
            num_layers: 24,
            num_experts: 32,
            seed: 0x6f73_7332,
            ..Self::gpt_oss_120b(24)
        }
    }

    /// Whether layer `l` is linear attention.
    pub(crate) fn is_linear(&self, l: usize) -> bool {
        self.linear_attention
            .is_some_and(|la| (l + 1) % la.full_attention_interval.max(1) != 0)
    }
}

/// What a lazily generated tensor holds.
#[derive(Clone, Copy)]
pub(crate) enum Fill {
    /// Floats `offset + scale * u`, u uniform in [-1, 1).
    Float { scale: f32, offset: f32 },
    /// Uniformly random u32 words (packed quantization codes).
    Codes,
    /// Bytes uniform in `lo .. lo + span` (MXFP4 codes and scales).
    Bytes { lo: u8, span: u16 },
    /// e4m3 bytes of either sign, exponent field 1..=8 (magnitudes 2^-6 .. 3.75), any
    /// mantissa: FP8 codes with no NaN.
    Fp8,
    /// f32 values `offset + scale * u`, u uniform in [-1, 1), whatever the spec's float
    /// dtype (FP8 block scales).
    F32 { scale: f32, offset: f32 },
}

/// A tensor whose bytes are generated when the writer asks for them.
pub(crate) struct Lazy {
    dtype: safetensors::Dtype,
    float: DType,
    shape: Vec<usize>,
    seed: u64,
    fill: Fill,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl safetensors::View for Lazy {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let n: usize = self.shape.iter().product();
        let mut state = self.seed;
        match self.fill {
            Fill::Codes => {
                let mut out = Vec::with_capacity(n * 4);
                for _ in 0..n.div_ceil(2) {
                    out.extend_from_slice(&splitmix(&mut state).to_le_bytes());
                }
                out.truncate(n * 4);
                Cow::Owned(out)
            }
            Fill::Float { scale, offset } => {
                let values: Vec<f32> = (0..n)
                    .map(|_| {
                        let u = (splitmix(&mut state) >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
                        offset + scale * u
                    })
                    .collect();
                Cow::Owned(self.float.encode(&values))
            }
            Fill::Fp8 => {
                let mut out = Vec::with_capacity(n + 8);
                while out.len() < n {
                    let r = splitmix(&mut state);
                    out.extend((0..8).map(|b| {
                        let v = ((r >> (8 * b)) & 0xff) as u8;
                        // sign, exponent 1 + (3 bits), mantissa
                        (v & 0x80) | ((1 + ((v >> 3) & 7)) << 3) | (v & 7)
                    }));
                }
                out.truncate(n);
                Cow::Owned(out)
            }
            Fill::F32 { scale, offset } => {
                let values: Vec<f32> = (0..n)
                    .map(|_| {
                        let u = (splitmix(&mut state) >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
                        offset + scale * u
                    })
                    .collect();
                Cow::Owned(DType::F32.encode(&values))
            }
            Fill::Bytes { lo, span } => {
                let mut out = Vec::with_capacity(n + 8);
                while out.len() < n {
                    let r = splitmix(&mut state);
                    out.extend((0..8).map(|b| {
                        let v = (r >> (8 * b)) & 0xff;
                        lo.wrapping_add(((v * u64::from(span)) >> 8) as u8)
                    }));
                }
                out.truncate(n);
                Cow::Owned(out)
            }
        }
    }
    fn data_len(&self) -> usize {
        let elem = match self.fill {
            Fill::Codes | Fill::F32 { .. } => 4,
            Fill::Bytes { .. } | Fill::Fp8 => 1,
            Fill::Float { .. } => self.float.size(),
        };
        self.shape.iter().product::<usize>() * elem
    }
}

/// `(prefix, lead, rows, cols, amplitude, quantization) -> tensors`: the writers' matrix
/// maker (float, or MLX-quantized codes with scales and biases).
pub(crate) type MatrixFn<'a> =
    dyn Fn(String, &[usize], usize, usize, f32, Option<(u32, u32)>) -> Vec<(String, Lazy)> + 'a;

/// The token embedding and the output head `[vocab, hidden]` under `names`, quantized with
/// `quant`: how every family's writer starts.
pub(crate) fn embed_and_head(
    spec: &SyntheticSpec,
    names: &Names,
    matrix: &MatrixFn<'_>,
    quant: Option<(u32, u32)>,
) -> Vec<(String, Lazy)> {
    let strip = |n: &str| n.trim_end_matches(".weight").to_string();
    let (v, h) = (spec.vocab_size, spec.hidden_size);
    let mut out = matrix(strip(&names.embed()), &[], v, h, 1.0, quant);
    let amp = 1.0 / (h as f32).sqrt();
    out.extend(matrix(strip(names.lm_head), &[], v, h, amp, quant));
    out
}

/// Whether `dir` is an empty folder or one a [`SyntheticSpec::write`] made (its
/// `config.json` says `"synthetic": true`).
fn is_synthetic_folder(dir: &Path) -> bool {
    if !dir.is_dir() {
        return false;
    }
    let empty = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none());
    empty
        || std::fs::read_to_string(dir.join("config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v.get("synthetic") == Some(&serde_json::Value::Bool(true)))
}

fn hash(s: &str, seed: u64) -> u64 {
    // FNV-1a, mixed with the seed.
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl SyntheticSpec {
    /// The `config.json` this spec describes (transformers v5 spelling).
    pub fn config_json(&self) -> String {
        if let Some(g) = &self.gpt_oss {
            return crate::arch::gpt_oss::synthetic::config_json(self, g).to_string();
        }
        if let Some(g) = &self.glm4_moe {
            return crate::arch::glm4_moe::synthetic::config_json(self, g).to_string();
        }
        if let Some(d) = &self.deepseek_v3 {
            return crate::arch::deepseek_v3::synthetic::config_json(self, d).to_string();
        }
        match &self.llama_moe {
            Some(m) if m.family == LlamaMoeFamily::Olmoe => {
                return crate::arch::olmoe::synthetic::config_json(self, m).to_string()
            }
            Some(_) => return crate::arch::mixtral::synthetic::config_json(self).to_string(),
            None => {}
        }
        crate::arch::qwen3_moe::synthetic::config_json(self).to_string()
    }

    /// Routers are 8-bit, group 64 when the hidden size allows (as mlx-lm does).
    pub(crate) fn router_quant(&self, bits: u32, group: u32) -> (u32, u32) {
        if self.hidden_size % 64 == 0 {
            (8, 64)
        } else {
            (bits, group)
        }
    }

    fn tensors(&self) -> Vec<(String, Lazy)> {
        let seed = self.seed;
        let float = self.dtype;
        let lazy = |name: String, dtype: safetensors::Dtype, shape: Vec<usize>, fill: Fill| {
            let s = hash(&name, seed);
            (
                name,
                Lazy {
                    dtype,
                    float,
                    shape,
                    seed: s,
                    fill,
                },
            )
        };
        if let Some(g) = &self.gpt_oss {
            return crate::arch::gpt_oss::synthetic::tensors(self, g, &lazy);
        }
        let fdt = float.to_safetensors();
        // A matrix `[lead.., rows, cols]` with values of amplitude `amp`: float, or
        // quantized codes with scales and biases spanning [-amp, amp].
        let matrix = |prefix: String,
                      lead: &[usize],
                      rows: usize,
                      cols: usize,
                      amp: f32,
                      quant: Option<(u32, u32)>| {
            let dims =
                |tail: &[usize]| -> Vec<usize> { lead.iter().chain(tail).copied().collect() };
            match quant {
                None => vec![lazy(
                    format!("{prefix}.weight"),
                    fdt,
                    dims(&[rows, cols]),
                    Fill::Float {
                        scale: amp,
                        offset: 0.0,
                    },
                )],
                Some((bits, group)) => {
                    let step = 2.0 * amp / ((1u32 << bits) - 1) as f32;
                    let groups = cols / group as usize;
                    vec![
                        lazy(
                            format!("{prefix}.weight"),
                            safetensors::Dtype::U32,
                            dims(&[rows, cols * bits as usize / 32]),
                            Fill::Codes,
                        ),
                        lazy(
                            format!("{prefix}.scales"),
                            fdt,
                            dims(&[rows, groups]),
                            Fill::Float {
                                scale: 0.1 * step,
                                offset: step,
                            },
                        ),
                        lazy(
                            format!("{prefix}.biases"),
                            fdt,
                            dims(&[rows, groups]),
                            Fill::Float {
                                scale: 0.1 * amp,
                                offset: -amp,
                            },
                        ),
                    ]
                }
            }
        };
        if let Some(g) = &self.glm4_moe {
            return crate::arch::glm4_moe::synthetic::tensors(self, g, &lazy, &matrix);
        }
        if let Some(d) = &self.deepseek_v3 {
            return crate::arch::deepseek_v3::synthetic::tensors(self, d, &lazy, &matrix);
        }
        if let Some(m) = &self.llama_moe {
            let olmoe = m.family == LlamaMoeFamily::Olmoe;
            let names = if olmoe {
                &Names::HF
            } else {
                &crate::arch::mixtral::NAMES[0]
            };
            let rq = self.quant.map(|(b, g)| self.router_quant(b, g));
            return crate::arch::mixtral::synthetic::tensors(
                self, names, olmoe, rq, &lazy, &matrix,
            );
        }
        crate::arch::qwen3_moe::synthetic::tensors(self, &lazy, &matrix)
    }

    /// The format of expert matrices.
    fn expert_format(&self) -> WeightFormat {
        if let Some(g) = &self.gpt_oss {
            return if g.mxfp4 {
                WeightFormat::Mxfp4
            } else {
                WeightFormat::Float(DType::BF16)
            };
        }
        if self.deepseek_v3.is_some_and(|d| d.fp8) {
            return WeightFormat::Fp8Block;
        }
        match self.quant {
            Some((bits, group_size)) => WeightFormat::Affine(AffineQuant {
                bits,
                group_size,
                scale_dtype: self.dtype,
            }),
            None => WeightFormat::Float(self.dtype),
        }
    }

    /// Decoder layers with routed experts (GLM-4.5's first layer is dense).
    pub fn moe_layers(&self) -> usize {
        let dense = match (&self.glm4_moe, &self.deepseek_v3) {
            (_, Some(d)) => d.first_dense,
            (Some(_), None) => 1,
            (None, None) => 0,
        };
        self.num_layers.saturating_sub(dense)
    }

    /// Bytes of all expert weights (as the engine lays them out).
    pub fn expert_bytes(&self) -> u64 {
        let f = self.expert_format();
        let (h, i) = (self.hidden_size, self.moe_intermediate_size);
        let one = if self.gpt_oss.is_some() {
            ExpertLayout::swiglu_biased([f, f, f], h, i)
        } else {
            ExpertLayout::swiglu_with([f, f, f], h, i)
        }
        .map_or(0, |l| l.bytes);
        (self.moe_layers() * self.num_experts * one) as u64
    }

    /// Writes `config.json` and `model.safetensors` into `dir` (created). The folder is
    /// built under a temporary name and renamed into place, so an interrupted run never
    /// leaves a folder that looks complete. If `dir` already holds this exact spec's
    /// model it is left as is; one holding another synthetic model (its `config.json`
    /// says `"synthetic": true`) is replaced; any other existing path (a folder this
    /// writer did not make, a file) is an [`Error::InvalidArgument`] and left untouched.
    pub fn write(&self, dir: impl AsRef<Path>) -> Result<PathBuf> {
        let dir = dir.as_ref().to_path_buf();
        let config = self.config_json();
        if std::fs::read_to_string(dir.join("config.json"))
            .ok()
            .as_deref()
            == Some(config.as_str())
            && dir.join("model.safetensors").exists()
        {
            return Ok(dir);
        }
        if dir.exists() && !is_synthetic_folder(&dir) {
            return Err(Error::InvalidArgument(format!(
                "{} exists and is not a synthetic model folder: not replacing it (choose another path)",
                dir.display()
            )));
        }
        let parent = dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let tmp = parent.join(format!(
            ".{}.partial-{}",
            dir.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("synthetic"),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let st = tmp.join("model.safetensors");
        safetensors::serialize_to_file(self.tensors(), None, &st).map_err(|e| {
            Error::Safetensors {
                path: st.clone(),
                reason: e.to_string(),
            }
        })?;
        let cfg_path = tmp.join("config.json");
        std::fs::write(&cfg_path, &config).map_err(|e| Error::io(&cfg_path, e))?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
        Ok(dir)
    }
}
