//! The synthetic demo model the examples and `moestream-server` run without `--model`: the
//! default [`SyntheticSpec`] (a small random-weight Qwen3-MoE model) plus a made-up
//! word-level tokenizer (two-syllable nonsense words, ChatML special tokens and template),
//! so the text path runs without a download. Its output is meaningless: the weights are
//! random.

use std::path::{Path, PathBuf};

use super::SyntheticSpec;
use crate::error::{Error, Result};

/// Where the demo model is written: `$MOESTREAM_CACHE`, `$XDG_CACHE_HOME/moestream`,
/// `~/.cache/moestream`, or the temp folder.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MOESTREAM_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("moestream");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".cache").join("moestream");
    }
    std::env::temp_dir().join("moestream")
}

/// The demo model's folder under [`cache_dir`].
pub fn demo_dir() -> PathBuf {
    cache_dir().join("synthetic-default")
}

/// Writes the demo model (weights, config and tokenizer) into `dir` unless it is there
/// already, and returns the folder and an expert-cache budget of a quarter of its experts
/// (so that experts really stream from storage).
pub fn write_demo(dir: impl AsRef<Path>) -> Result<(PathBuf, u64)> {
    let spec = SyntheticSpec::default();
    let dir = spec.write(dir)?;
    write_demo_tokenizer(&dir, spec.vocab_size)?;
    Ok((dir, spec.expert_bytes() / 4))
}

/// Writes `tokenizer.json` and `tokenizer_config.json` for the demo model (if absent):
/// a WordLevel tokenizer over `vocab` ids whose last four are `<unk>`, `<|endoftext|>`,
/// `<|im_start|>`, `<|im_end|>`, with a ChatML chat template.
pub fn write_demo_tokenizer(dir: &Path, vocab: usize) -> Result<()> {
    let tok_path = dir.join("tokenizer.json");
    let cfg_path = dir.join("tokenizer_config.json");
    if tok_path.exists() && cfg_path.exists() {
        return Ok(());
    }
    let specials = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let n_words = vocab.saturating_sub(specials.len());
    let mut words: Vec<String> = ["user", "assistant", "system"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (consonants, vowels) = ("bdfghklmnprstvz", "aeiou");
    'outer: for c1 in consonants.chars() {
        for v1 in vowels.chars() {
            for c2 in consonants.chars() {
                for v2 in vowels.chars() {
                    if words.len() >= n_words {
                        break 'outer;
                    }
                    words.push(format!("{c1}{v1}{c2}{v2}"));
                }
            }
        }
    }
    let mut vocab_map = serde_json::Map::new();
    for (i, w) in words.iter().enumerate() {
        vocab_map.insert(w.clone(), serde_json::json!(i));
    }
    let mut added = Vec::new();
    for (k, s) in specials.iter().enumerate() {
        let id = n_words + k;
        vocab_map.insert(s.to_string(), serde_json::json!(id));
        added.push(serde_json::json!({
            "id": id, "content": s, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }));
    }
    let tokenizer = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab_map, "unk_token": "<unk>"}
    });
    let template = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + \
                    message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}\
                    {% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
    let config = serde_json::json!({
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<unk>",
        "chat_template": template,
    });
    let write = |path: &Path, v: &serde_json::Value| {
        std::fs::write(path, v.to_string()).map_err(|e| Error::io(path, e))
    };
    write(&tok_path, &tokenizer)?;
    write(&cfg_path, &config)
}
