//! Synthetic random-weight Qwen3-MoE checkpoints, for demos, benchmarks and tests that must
//! not need a download. The weights are deterministic pseudo-random numbers: the model
//! runs exactly like a real one of its shape, but its output is meaningless.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::names;

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
    /// Stored dtype.
    pub dtype: DType,
    /// Seed of the weights.
    pub seed: u64,
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
            seed: 0x6d6f_6573,
        }
    }
}

/// A tensor whose bytes are generated when the writer asks for them.
struct Lazy {
    dtype: DType,
    shape: Vec<usize>,
    seed: u64,
    scale: f32,
    /// Values are `offset + scale * u` with u uniform in [-1, 1).
    offset: f32,
}

impl safetensors::View for Lazy {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype.to_safetensors()
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let n: usize = self.shape.iter().product();
        let mut state = self.seed;
        let values: Vec<f32> = (0..n)
            .map(|_| {
                // splitmix64
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                let u = (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
                self.offset + self.scale * u
            })
            .collect();
        Cow::Owned(self.dtype.encode(&values))
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
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
        let dtype = match self.dtype {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
        };
        serde_json::json!({
            "architectures": ["Qwen3MoeForCausalLM"],
            "model_type": "qwen3_moe",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.moe_intermediate_size * self.top_k,
            "moe_intermediate_size": self.moe_intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "num_local_experts": self.num_experts,
            "num_experts_per_tok": self.top_k,
            "norm_topk_prob": true,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
            "max_position_embeddings": 32768,
            "tie_word_embeddings": false,
            "hidden_act": "silu",
            "dtype": dtype,
            "synthetic": true,
        })
        .to_string()
    }

    fn tensors(&self) -> Vec<(String, Lazy)> {
        let (h, hd, i) = (self.hidden_size, self.head_dim, self.moe_intermediate_size);
        let qd = self.num_heads * hd;
        let kvd = self.num_kv_heads * hd;
        let seed = self.seed;
        let dtype = self.dtype;
        let t = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
            let s = hash(&name, seed);
            (
                name,
                Lazy {
                    dtype,
                    shape,
                    seed: s,
                    scale,
                    offset,
                },
            )
        };
        let w = |cols: usize| 1.0 / (cols as f32).sqrt();
        let mut out = vec![
            t(names::EMBED.into(), vec![self.vocab_size, h], 1.0, 0.0),
            t(names::LM_HEAD.into(), vec![self.vocab_size, h], w(h), 0.0),
            t(names::FINAL_NORM.into(), vec![h], 0.1, 1.0),
        ];
        for l in 0..self.num_layers {
            let n = |rest: &str| names::layer(l, rest);
            out.push(t(n("input_layernorm.weight"), vec![h], 0.1, 1.0));
            out.push(t(n("post_attention_layernorm.weight"), vec![h], 0.1, 1.0));
            out.push(t(n("self_attn.q_proj.weight"), vec![qd, h], w(h), 0.0));
            out.push(t(n("self_attn.k_proj.weight"), vec![kvd, h], w(h), 0.0));
            out.push(t(n("self_attn.v_proj.weight"), vec![kvd, h], w(h), 0.0));
            out.push(t(n("self_attn.o_proj.weight"), vec![h, qd], w(qd), 0.0));
            out.push(t(n("self_attn.q_norm.weight"), vec![hd], 0.1, 1.0));
            out.push(t(n("self_attn.k_norm.weight"), vec![hd], 0.1, 1.0));
            out.push(t(
                n("mlp.gate.weight"),
                vec![self.num_experts, h],
                2.0 * w(h),
                0.0,
            ));
            for e in 0..self.num_experts {
                out.push(t(names::expert(l, e, "gate_proj"), vec![i, h], w(h), 0.0));
                out.push(t(names::expert(l, e, "up_proj"), vec![i, h], w(h), 0.0));
                out.push(t(names::expert(l, e, "down_proj"), vec![h, i], w(i), 0.0));
            }
        }
        out
    }

    /// Bytes of all expert weights.
    pub fn expert_bytes(&self) -> u64 {
        (self.num_layers
            * self.num_experts
            * 3
            * self.hidden_size
            * self.moe_intermediate_size
            * self.dtype.size()) as u64
    }

    /// Writes `config.json` and `model.safetensors` into `dir` (created). The folder is
    /// built under a temporary name and renamed into place, so an interrupted run never
    /// leaves a folder that looks complete. If `dir` already holds this exact spec's
    /// model it is left as is.
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
