//! Small synthetic models for the server tests, with the demo's word tokenizer, and one
//! whose tokenizer has a token that spells a whole reasoning block and tool call (a
//! logit bias makes the model say it) and whose chat template renders `tools`.

use std::path::PathBuf;
use std::sync::Mutex;

use moestream::format::DType;
use moestream::server::{ServerConfig, ServerHandle};
use moestream::synthetic::{SyntheticLinear, SyntheticSpec};
use serde_json::{json, Value};

/// The token id the tools fixture gives [`TOOL_TEXT`].
pub const TOOL_TOKEN: u32 = 100;

/// What [`TOOL_TOKEN`] decodes to.
pub const TOOL_TEXT: &str = "<think>Paris, then.</think><tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}</tool_call>";

/// Tokens of the tools fixture that continue a forced tool call's opening (the prompt
/// ends with `<tool_call>\n` for `tool_choice: "required"`, with `<tool_call>\n{"name":
/// "get_weather", "arguments": ` for that named function), and their texts.
pub const REQUIRED_TOKEN: u32 = 101;
pub const REQUIRED_TEXT: &str = "{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
pub const NAMED_TOKEN: u32 = 102;
pub const NAMED_TEXT: &str = "{\"city\": \"Rome\"}}\n</tool_call>";

/// A chat template in the Qwen style: tools listed in a system block.
const TOOLS_TEMPLATE: &str = "{%- if tools %}<|im_start|>system\n# Tools\n<tools>{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools><|im_end|>\n{% endif %}{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// A small Qwen3-MoE shape (fast on a software GPU); `hybrid`: Qwen3.5's Gated DeltaNet
/// layers (recurrent state) with full attention every second layer.
pub fn spec(hybrid: bool) -> SyntheticSpec {
    let mut spec = SyntheticSpec::default();
    spec.vocab_size = 512;
    spec.hidden_size = 64;
    spec.num_layers = 4;
    spec.num_heads = 4;
    spec.num_kv_heads = 2;
    spec.head_dim = 16;
    spec.num_experts = 8;
    spec.top_k = 2;
    spec.moe_intermediate_size = 32;
    spec.dtype = DType::F32;
    if hybrid {
        let mut la = SyntheticLinear::qwen3_5(4, 32);
        la.key_heads = 2;
        la.key_dim = 16;
        la.value_dim = 16;
        la.full_attention_interval = 2;
        spec.linear_attention = Some(la);
    }
    spec
}

/// Writes a model folder (once per test process) and returns it.
pub fn model_dir(name: &str, hybrid: bool, tools: bool) -> PathBuf {
    static WRITTEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut written = WRITTEN.lock().unwrap_or_else(|p| p.into_inner());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("server-{name}"));
    if written.iter().any(|n| n == name) {
        return dir;
    }
    written.push(name.to_string());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("server-{name}"));
    let s = spec(hybrid);
    let dir = s.write(&dir).expect("write the synthetic model");
    let _ = std::fs::remove_file(dir.join("tokenizer.json"));
    let _ = std::fs::remove_file(dir.join("tokenizer_config.json"));
    moestream::synthetic::write_demo_tokenizer(&dir, s.vocab_size).expect("tokenizer");
    if tools {
        let path = dir.join("tokenizer.json");
        let mut tok: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let vocab = tok["model"]["vocab"].as_object_mut().unwrap();
        // The word at that id gives way to the text (an added token takes the id its text
        // has in the model's vocabulary).
        let added = [
            (TOOL_TOKEN, TOOL_TEXT),
            (REQUIRED_TOKEN, REQUIRED_TEXT),
            (NAMED_TOKEN, NAMED_TEXT),
        ];
        vocab.retain(|_, id| !added.iter().any(|a| id.as_u64() == Some(u64::from(a.0))));
        for (id, text) in added {
            vocab.insert(text.into(), json!(id));
        }
        for (id, text) in added {
            tok["added_tokens"].as_array_mut().unwrap().push(json!({
                "id": id, "content": text, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": false
            }));
        }
        std::fs::write(&path, tok.to_string()).unwrap();
        let path = dir.join("tokenizer_config.json");
        let mut cfg: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        cfg["chat_template"] = json!(TOOLS_TEMPLATE);
        std::fs::write(&path, cfg.to_string()).unwrap();
    }
    dir
}

/// A server on `dir` at a free port, the config adjusted by `f`.
pub fn server(dir: PathBuf, f: impl FnOnce(&mut ServerConfig)) -> ServerHandle {
    let mut config = ServerConfig::new(Some(dir));
    config.addr = "127.0.0.1:0".parse().unwrap();
    config.model_id = Some("test".into());
    config.max_context = Some(4096);
    f(&mut config);
    ServerHandle::start(&config).expect("start the server")
}
