//! Bad input gives a typed [`Error`] whose message names what is wrong (the file, the
//! field, the tensor, the token), never a panic: broken `config.json`s, broken safetensors
//! files and indexes, and misuse of sessions (context overflow, bad token ids, bad sizes).
//!
//! Each case copies a tiny fixture into a fresh temporary folder, breaks one thing, and
//! opens it through the public API.

use std::collections::HashMap;
use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use moestream::{checkpoint::Checkpoint, config::ModelConfig, Error, Model};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn fixture_src(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A copy of a fixture in a fresh temporary folder, removed on drop.
struct TempFixture {
    dir: PathBuf,
}

impl TempFixture {
    /// Copies `tests/fixtures/<fixture>` (all but `golden.json`) to
    /// `$TMP/moestream-errors-<test>-<pid>`.
    fn new(fixture: &str, test: &str) -> TempFixture {
        let dir =
            std::env::temp_dir().join(format!("moestream-errors-{test}-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .unwrap_or_else(|e| panic!("removing {}: {e}", dir.display()));
        }
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let src = fixture_src(fixture);
        for entry in
            std::fs::read_dir(&src).unwrap_or_else(|e| panic!("reading {}: {e}", src.display()))
        {
            let entry = entry.unwrap();
            let name = entry.file_name();
            if name == "golden.json" || !entry.file_type().unwrap().is_file() {
                continue;
            }
            std::fs::copy(entry.path(), dir.join(&name))
                .unwrap_or_else(|e| panic!("copying {}: {e}", entry.path().display()));
        }
        TempFixture { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Edits `config.json` as a JSON object.
    fn edit_config(&self, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
        let path = self.path("config.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(v.as_object_mut().expect("config.json is an object"));
        std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }

    /// Edits `model.safetensors.index.json` as a JSON value.
    fn edit_index(&self, edit: impl FnOnce(&mut serde_json::Value)) {
        let path = self.path("model.safetensors.index.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }

    /// Rewrites one safetensors file after editing its tensor list.
    fn edit_tensors(&self, file: &str, edit: impl FnOnce(&mut Vec<OwnedTensor>)) {
        let path = self.path(file);
        let bytes = std::fs::read(&path).unwrap();
        let mut tensors: Vec<OwnedTensor> = SafeTensors::deserialize(&bytes)
            .unwrap_or_else(|e| panic!("fixture {} does not parse: {e}", path.display()))
            .tensors()
            .into_iter()
            .map(|(name, t)| OwnedTensor {
                name,
                dtype: t.dtype(),
                shape: t.shape().to_vec(),
                data: t.data().to_vec(),
            })
            .collect();
        edit(&mut tensors);
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|t| {
                let view = TensorView::new(t.dtype, t.shape.clone(), &t.data)
                    .unwrap_or_else(|e| panic!("test bug: tensor {} is inconsistent: {e}", t.name));
                (t.name.clone(), view)
            })
            .collect();
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        let out = safetensors::serialize(views, Some(metadata)).unwrap();
        std::fs::write(&path, out).unwrap();
    }
}

impl Drop for TempFixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct OwnedTensor {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn tensor_mut<'a>(tensors: &'a mut [OwnedTensor], name: &str) -> &'a mut OwnedTensor {
    tensors
        .iter_mut()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("test bug: the fixture has no tensor {name}"))
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".into())
}

/// Runs `f`, which must return an error: a panic or a success fails the test with a
/// message naming the case.
fn expect_err<T: Debug>(case: &str, f: impl FnOnce() -> moestream::Result<T>) -> Error {
    match catch_unwind(AssertUnwindSafe(f)) {
        Err(payload) => panic!(
            "{case}: panicked instead of returning an error: {}",
            panic_message(&*payload)
        ),
        Ok(Ok(v)) => {
            let shown: String = format!("{v:?}").chars().take(300).collect();
            panic!("{case}: succeeded ({shown}) where an error was expected")
        }
        Ok(Err(e)) => e,
    }
}

/// Runs `f`, which must succeed without panicking.
fn expect_ok<T>(case: &str, f: impl FnOnce() -> moestream::Result<T>) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Err(payload) => panic!("{case}: panicked: {}", panic_message(&*payload)),
        Ok(Err(e)) => panic!("{case}: failed: {e} ({e:?})"),
        Ok(Ok(v)) => v,
    }
}

/// Asserts the error is of the given variant and its message contains every `needle`.
macro_rules! assert_error {
    ($case:expr, $err:expr, $pat:pat, [$($needle:expr),* $(,)?]) => {{
        let err = &$err;
        assert!(
            matches!(err, $pat),
            "{}: expected {}, got {:?} (\"{}\")",
            $case,
            stringify!($pat),
            err,
            err
        );
        let msg = err.to_string();
        println!("{}: {}", $case, msg);
        $(
            let needle: &str = &$needle;
            assert!(
                msg.contains(needle),
                "{}: the message does not name {:?}: \"{}\"",
                $case,
                needle,
                msg
            );
        )*
    }};
}

/// Opens the model in `dir` (builder defaults); must fail.
fn open_err(case: &str, dir: &Path) -> Error {
    expect_err(case, || Model::open(dir))
}

/// One shared model over the untouched `tiny_f32` fixture, for the session tests.
fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| expect_ok("opening tiny_f32", || Model::open(fixture_src("tiny_f32"))))
}

// ---------------------------------------------------------------------------------------
// config.json
// ---------------------------------------------------------------------------------------

#[test]
fn missing_config_json_is_an_io_error_naming_it() {
    let fx = TempFixture::new("tiny_f32", "missing_config");
    std::fs::remove_file(fx.path("config.json")).unwrap();
    let case = "missing config.json";
    let e = open_err(case, &fx.dir);
    assert_error!(case, e, Error::Io { .. }, ["config.json"]);
    if let Error::Io { path, .. } = &e {
        assert_eq!(
            path,
            &fx.path("config.json"),
            "{case}: Error::Io names the wrong path"
        );
    }
    // The cause is printed once: in Display, not chained again as source() (an error
    // reporter that walks the chain would print it twice).
    let cause = std::fs::read(fx.path("config.json"))
        .unwrap_err()
        .to_string();
    let shown = e.to_string();
    assert_eq!(shown.matches(&cause).count(), 1, "{case}: {shown}");
    assert!(std::error::Error::source(&e).is_none(), "{case}");
    assert!(e.is_retryable(), "{case}: an I/O error is worth retrying");
    let e = expect_err(case, || ModelConfig::from_path(&fx.dir));
    assert_error!(case, e, Error::Io { .. }, ["config.json"]);
}

#[test]
fn config_json_that_is_not_json() {
    let fx = TempFixture::new("tiny_f32", "config_not_json");
    std::fs::write(
        fx.path("config.json"),
        "{ \"model_type\": \"qwen3_moe\", oops",
    )
    .unwrap();
    let case = "config.json not JSON";
    let e = open_err(case, &fx.dir);
    assert_error!(case, e, Error::Config { .. }, ["config.json", "JSON"]);

    std::fs::write(fx.path("config.json"), "[1, 2, 3]").unwrap();
    let case = "config.json a JSON array";
    let e = open_err(case, &fx.dir);
    assert_error!(case, e, Error::Config { .. }, ["config.json"]);
}

#[test]
fn config_json_missing_a_required_field() {
    for field in [
        "hidden_size",
        "num_hidden_layers",
        "vocab_size",
        "num_attention_heads",
        "model_type",
    ] {
        let fx = TempFixture::new("tiny_f32", &format!("config_missing_{field}"));
        fx.edit_config(|c| {
            c.remove(field);
        });
        let case = format!("config.json without `{field}`");
        let e = open_err(&case, &fx.dir);
        assert_error!(case, e, Error::Config { .. }, ["config.json", field]);
    }
}

#[test]
fn config_json_field_of_the_wrong_type() {
    let cases: [(&str, serde_json::Value); 5] = [
        ("hidden_size", serde_json::json!("64")),
        ("num_hidden_layers", serde_json::json!(-2)),
        ("rms_norm_eps", serde_json::json!("1e-6")),
        ("norm_topk_prob", serde_json::json!("yes")),
        ("num_experts_per_tok", serde_json::json!(2.5)),
    ];
    for (field, value) in cases {
        let fx = TempFixture::new("tiny_f32", &format!("config_type_{field}"));
        fx.edit_config(|c| {
            c.insert(field.to_string(), value.clone());
        });
        let case = format!("config.json with `{field}`: {value}");
        let e = open_err(&case, &fx.dir);
        assert_error!(case, e, Error::Config { .. }, ["config.json", field]);
    }
}

#[test]
fn config_json_of_another_architecture() {
    let fx = TempFixture::new("tiny_f32", "config_llama");
    fx.edit_config(|c| {
        c.insert("model_type".into(), "llama".into());
    });
    let case = "model_type llama";
    let e = open_err(case, &fx.dir);
    assert_error!(
        case,
        e,
        Error::UnsupportedModel { .. },
        ["config.json", "llama", "qwen3_moe"]
    );
}

#[test]
fn config_json_heads_not_a_multiple_of_kv_heads() {
    let fx = TempFixture::new("tiny_f32", "config_gqa");
    fx.edit_config(|c| {
        c.insert("num_key_value_heads".into(), 3.into());
    });
    let case = "num_attention_heads 4, num_key_value_heads 3";
    let e = open_err(case, &fx.dir);
    assert_error!(
        case,
        e,
        Error::Config { .. },
        ["config.json", "num_key_value_heads", "num_attention_heads"]
    );

    fx.edit_config(|c| {
        c.insert("num_key_value_heads".into(), 0.into());
    });
    let case = "num_key_value_heads 0";
    let e = open_err(case, &fx.dir);
    assert_error!(
        case,
        e,
        Error::Config { .. },
        ["config.json", "num_key_value_heads"]
    );
}

#[test]
fn config_json_more_experts_per_token_than_experts() {
    let fx = TempFixture::new("tiny_f32", "config_topk");
    fx.edit_config(|c| {
        c.insert("num_experts_per_tok".into(), 9.into());
    });
    let case = "num_experts_per_tok 9 of 8 experts";
    let e = open_err(case, &fx.dir);
    assert_error!(
        case,
        e,
        Error::Config { .. },
        ["config.json", "num_experts_per_tok", "9"]
    );
}

#[test]
fn config_json_unsupported_rope_type() {
    let fx = TempFixture::new("tiny_f32", "config_rope");
    fx.edit_config(|c| {
        c.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_theta": 1000000.0, "rope_type": "dynamic", "factor": 4.0}),
        );
    });
    let case = "rope_type dynamic";
    let e = open_err(case, &fx.dir);
    assert_error!(case, e, Error::Config { .. }, ["config.json", "dynamic"]);

    // YaRN is supported, but not without its pretraining length.
    let fx = TempFixture::new("tiny_f32", "config_rope_yarn");
    fx.edit_config(|c| {
        c.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_theta": 1000000.0, "rope_type": "yarn", "factor": 4.0}),
        );
    });
    let case = "rope_type yarn without original_max_position_embeddings";
    let e = open_err(case, &fx.dir);
    assert_error!(
        case,
        e,
        Error::Config { .. },
        ["config.json", "YaRN", "original_max_position_embeddings"]
    );

    // The released spelling: `rope_scaling: {"type": ...}`.
    let fx = TempFixture::new("released_spelling", "config_rope_scaling");
    fx.edit_config(|c| {
        c.insert(
            "rope_scaling".into(),
            serde_json::json!({"type": "linear", "factor": 2.0}),
        );
    });
    let case = "rope_scaling type linear";
    let e = open_err(case, &fx.dir);
    assert_error!(case, e, Error::Config { .. }, ["config.json", "linear"]);
}

// ---------------------------------------------------------------------------------------
// safetensors files and indexes
// ---------------------------------------------------------------------------------------

#[test]
fn missing_tensor_is_named() {
    // A resident tensor (found missing while uploading weights) and an expert tensor
    // (found missing while indexing experts).
    for (i, name) in [
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.0.mlp.experts.5.up_proj.weight",
        "model.norm.weight",
    ]
    .into_iter()
    .enumerate()
    {
        let fx = TempFixture::new("tiny_f32", &format!("missing_tensor_{i}"));
        fx.edit_tensors("model.safetensors", |ts| {
            let before = ts.len();
            ts.retain(|t| t.name != name);
            assert_eq!(ts.len() + 1, before, "test bug: no tensor {name}");
        });
        let case = format!("checkpoint without {name}");
        let e = open_err(&case, &fx.dir);
        assert_error!(case, e, Error::MissingTensor { .. }, [name]);
    }
}

#[test]
fn tensor_of_the_wrong_shape() {
    let fx = TempFixture::new("tiny_f32", "wrong_shape");
    let name = "model.layers.0.self_attn.q_proj.weight";
    fx.edit_tensors("model.safetensors", |ts| {
        tensor_mut(ts, name).shape = vec![32, 128]; // [64, 64] stored as [32, 128]
    });
    let case = format!("{name} stored as [32, 128]");
    let e = open_err(&case, &fx.dir);
    assert_error!(
        case,
        e,
        Error::Shape { .. },
        [name, "model.safetensors", "[64, 64]", "[32, 128]"]
    );

    let fx = TempFixture::new("tiny_f32", "wrong_shape_expert");
    let name = "model.layers.1.mlp.experts.2.down_proj.weight";
    fx.edit_tensors("model.safetensors", |ts| {
        tensor_mut(ts, name).shape = vec![24, 64]; // [64, 24] transposed
    });
    let case = format!("{name} stored as [24, 64]");
    let e = open_err(&case, &fx.dir);
    assert_error!(case, e, Error::Shape { .. }, [name, "[64, 24]", "[24, 64]"]);
}

#[test]
fn tensor_of_an_unsupported_dtype() {
    // Same bytes reinterpreted as I32.
    let fx = TempFixture::new("tiny_f32", "dtype_i32");
    let name = "model.norm.weight";
    fx.edit_tensors("model.safetensors", |ts| {
        tensor_mut(ts, name).dtype = Dtype::I32;
    });
    let case = format!("{name} stored as I32");
    let e = open_err(&case, &fx.dir);
    assert_error!(
        case,
        e,
        Error::Dtype { .. },
        [name, "I32", "model.safetensors"]
    );

    // Widened to F64 (shape kept, twice the bytes).
    let fx = TempFixture::new("tiny_f32", "dtype_f64");
    let name = "model.layers.0.mlp.experts.1.gate_proj.weight";
    fx.edit_tensors("model.safetensors", |ts| {
        let t = tensor_mut(ts, name);
        t.data = t
            .data
            .chunks_exact(4)
            .flat_map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])).to_le_bytes())
            .collect();
        t.dtype = Dtype::F64;
    });
    let case = format!("{name} stored as F64");
    let e = open_err(&case, &fx.dir);
    assert_error!(case, e, Error::Dtype { .. }, [name, "F64"]);

    // One expert in BF16 among F32 experts.
    let fx = TempFixture::new("tiny_f32", "dtype_mixed_experts");
    let name = "model.layers.1.mlp.experts.6.down_proj.weight";
    fx.edit_tensors("model.safetensors", |ts| {
        let t = tensor_mut(ts, name);
        t.data = t.data.chunks_exact(4).flat_map(|b| [b[2], b[3]]).collect();
        t.dtype = Dtype::BF16;
    });
    let case = format!("{name} stored as BF16 among F32 experts");
    let e = open_err(&case, &fx.dir);
    assert_error!(case, e, Error::Dtype { .. }, [name, "BF16"]);

    // A dense (non-expert) matrix as F64.
    let fx = TempFixture::new("tiny_f32", "dtype_f64_dense");
    let name = "lm_head.weight";
    fx.edit_tensors("model.safetensors", |ts| {
        let t = tensor_mut(ts, name);
        t.data = t
            .data
            .chunks_exact(4)
            .flat_map(|b| [0, 0, 0, 0, b[0], b[1], b[2], b[3]])
            .collect();
        t.dtype = Dtype::F64;
    });
    let case = format!("{name} stored as F64");
    let e = open_err(&case, &fx.dir);
    assert_error!(case, e, Error::Dtype { .. }, [name, "F64"]);
}

#[test]
fn truncated_safetensors_file() {
    let fx = TempFixture::new("tiny_f32", "truncated");
    let path = fx.path("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let case = "model.safetensors missing its last 100 bytes";
    let e = open_err(case, &fx.dir);
    assert_error!(
        case,
        e,
        Error::Safetensors { .. },
        ["model.safetensors", "truncated"]
    );
    let e = expect_err(case, || Checkpoint::open(&fx.dir));
    assert_error!(case, e, Error::Safetensors { .. }, ["model.safetensors"]);

    // Cut inside the JSON header.
    std::fs::write(&path, &bytes[..200]).unwrap();
    let case = "model.safetensors cut inside its header";
    let e = open_err(case, &fx.dir);
    assert_error!(case, e, Error::Safetensors { .. }, ["model.safetensors"]);

    // Trailing garbage is rejected too.
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0u8; 64]);
    std::fs::write(&path, &longer).unwrap();
    let case = "model.safetensors with 64 trailing bytes";
    let e = open_err(case, &fx.dir);
    assert_error!(case, e, Error::Safetensors { .. }, ["model.safetensors"]);
}

#[test]
fn safetensors_header_length_larger_than_the_file() {
    let fx = TempFixture::new("tiny_f32", "header_len");
    let path = fx.path("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    for (what, header_len) in [
        ("u64::MAX", u64::MAX),
        ("the file size", bytes.len() as u64),
        ("50 MB", 50_000_000),
    ] {
        let mut broken = bytes.clone();
        broken[..8].copy_from_slice(&header_len.to_le_bytes());
        std::fs::write(&path, &broken).unwrap();
        let case = format!("safetensors header length {what}");
        let e = open_err(&case, &fx.dir);
        assert_error!(case, e, Error::Safetensors { .. }, ["model.safetensors"]);
    }
}

#[test]
fn empty_safetensors_file() {
    let fx = TempFixture::new("tiny_f32", "empty_file");
    std::fs::write(fx.path("model.safetensors"), b"").unwrap();
    let case = "empty model.safetensors";
    let e = open_err(case, &fx.dir);
    assert_error!(case, e, Error::Safetensors { .. }, ["model.safetensors"]);

    std::fs::write(fx.path("model.safetensors"), [1u8, 2, 3]).unwrap();
    let case = "3-byte model.safetensors";
    let e = open_err(case, &fx.dir);
    assert_error!(case, e, Error::Safetensors { .. }, ["model.safetensors"]);
}

#[test]
fn folder_without_any_safetensors_file() {
    let fx = TempFixture::new("tiny_f32", "no_weights");
    std::fs::remove_file(fx.path("model.safetensors")).unwrap();
    let case = "folder with config.json only";
    let e = open_err(case, &fx.dir);
    assert_error!(
        case,
        e,
        Error::Safetensors { .. },
        [fx.dir.to_str().unwrap(), "safetensors"]
    );
}

#[test]
fn sharded_index_naming_a_missing_shard() {
    let fx = TempFixture::new("sharded", "missing_shard");
    let shard = "model-00003-of-00008.safetensors";
    std::fs::remove_file(fx.path(shard)).unwrap();
    let case = format!("index naming the deleted {shard}");
    let e = open_err(&case, &fx.dir);
    assert_error!(case, e, Error::Io { .. }, [shard]);
    if let Error::Io { path, .. } = &e {
        assert_eq!(
            path,
            &fx.path(shard),
            "{case}: Error::Io names the wrong path"
        );
    }
}

#[test]
fn sharded_index_placing_a_tensor_in_the_wrong_shard() {
    let fx = TempFixture::new("sharded", "wrong_shard");
    let tensor = "model.embed_tokens.weight"; // stored in shard 2
    let claimed = "model-00005-of-00008.safetensors";
    fx.edit_index(|v| {
        v["weight_map"][tensor] = claimed.into();
    });
    let case = format!("index placing {tensor} in {claimed}");
    let e = open_err(&case, &fx.dir);
    assert_error!(case, e, Error::Safetensors { .. }, [tensor, claimed]);

    // A tensor no shard holds.
    let fx = TempFixture::new("sharded", "phantom_tensor");
    let tensor = "model.layers.7.self_attn.q_proj.weight";
    let claimed = "model-00001-of-00008.safetensors";
    fx.edit_index(|v| {
        v["weight_map"][tensor] = claimed.into();
    });
    let case = format!("index listing {tensor}, which no shard holds");
    let e = open_err(&case, &fx.dir);
    assert_error!(case, e, Error::Safetensors { .. }, [tensor, claimed]);
}

#[test]
fn sharded_index_that_is_malformed() {
    let fx = TempFixture::new("sharded", "bad_index");
    let index = "model.safetensors.index.json";
    std::fs::write(fx.path(index), "{\"weight_map\": ").unwrap();
    let case = "index not JSON";
    let e = open_err(case, &fx.dir);
    assert_error!(case, e, Error::Safetensors { .. }, [index, "JSON"]);

    std::fs::write(fx.path(index), "{\"metadata\": {}}").unwrap();
    let case = "index without weight_map";
    let e = open_err(case, &fx.dir);
    assert_error!(case, e, Error::Safetensors { .. }, [index, "weight_map"]);

    std::fs::write(
        fx.path(index),
        "{\"weight_map\": {\"model.norm.weight\": \"../model.safetensors\"}}",
    )
    .unwrap();
    let case = "index naming a file outside the folder";
    let e = open_err(case, &fx.dir);
    assert_error!(
        case,
        e,
        Error::Safetensors { .. },
        [index, "../model.safetensors"]
    );
}

// ---------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------

#[test]
fn context_overflow_on_step_and_on_prefill_then_recovery() {
    let model = model();
    let prompt = [3u32, 17, 42];
    let mut s = expect_ok("session(4)", || model.session(4));
    expect_ok("prefill 3 of 4", || s.prefill(&prompt));
    expect_ok("step to 4 of 4", || s.step(7));
    assert_eq!(s.position(), 4);
    let case = "step past max_context 4";
    let e = expect_err(case, || s.step(8));
    assert_error!(
        case,
        e,
        Error::ContextOverflow {
            needed: 5,
            capacity: 4
        },
        ["5", "4"]
    );
    assert_eq!(
        s.position(),
        4,
        "{case}: the failed step moved the position"
    );

    let case = "prefill onto a full context";
    let e = expect_err(case, || s.prefill(&[1]));
    assert_error!(
        case,
        e,
        Error::ContextOverflow {
            needed: 5,
            capacity: 4
        },
        ["5", "4"]
    );

    // Usable after the error: reset, then the same prompt gives a fresh session's logits.
    s.reset();
    assert_eq!(s.position(), 0);
    let again = expect_ok("prefill after reset", || s.prefill(&prompt));
    let mut fresh = expect_ok("fresh session(4)", || model.session(4));
    let expected = expect_ok("prefill on a fresh session", || fresh.prefill(&prompt));
    assert_eq!(again.len(), model.config().vocab_size);
    assert_eq!(
        again, expected,
        "logits after overflow + reset differ from a fresh session's"
    );

    let case = "prefill longer than max_context";
    let mut s = expect_ok("session(4)", || model.session(4));
    let e = expect_err(case, || s.prefill(&[1, 2, 3, 4, 5]));
    assert_error!(
        case,
        e,
        Error::ContextOverflow {
            needed: 5,
            capacity: 4
        },
        ["5", "4"]
    );
    assert_eq!(
        s.position(),
        0,
        "{case}: the failed prefill moved the position"
    );
    // Nothing was run: the session still works without a reset.
    let after = expect_ok("prefill after a rejected prefill", || s.prefill(&prompt));
    assert_eq!(
        after, expected,
        "logits after a rejected prefill differ from a fresh session's"
    );
    let step = expect_ok("step after recovery", || s.step(5));
    let fresh_step = expect_ok("step on the fresh session", || fresh.step(5));
    assert_eq!(
        step, fresh_step,
        "step logits after a rejected prefill differ from a fresh session's"
    );
}

#[test]
fn token_ids_out_of_range() {
    let model = model();
    let vocab = model.config().vocab_size;
    let bad = u32::try_from(vocab).unwrap();
    let mut s = expect_ok("session(16)", || model.session(16));

    let case = "prefill with id == vocab_size at index 2";
    let e = expect_err(case, || s.prefill(&[1, 2, bad, 3]));
    assert_error!(
        case,
        e,
        Error::TokenOutOfRange { index: 2, .. },
        [bad.to_string(), "position 2", vocab.to_string()]
    );
    if let Error::TokenOutOfRange { id, vocab_size, .. } = e {
        assert_eq!(
            (id, vocab_size),
            (bad, vocab),
            "{case}: wrong id or vocab size"
        );
    }
    assert_eq!(
        s.position(),
        0,
        "{case}: the failed prefill moved the position"
    );

    let case = "step with id u32::MAX";
    let e = expect_err(case, || s.step(u32::MAX));
    assert_error!(
        case,
        e,
        Error::TokenOutOfRange {
            id: u32::MAX,
            index: 0,
            ..
        },
        [u32::MAX.to_string()]
    );

    expect_ok("prefill after the errors", || s.prefill(&[1, 2, 3]));
    let case = "step with id == vocab_size after a prefill";
    let e = expect_err(case, || s.step(bad));
    assert_error!(
        case,
        e,
        Error::TokenOutOfRange { index: 0, .. },
        [bad.to_string()]
    );
    assert_eq!(s.position(), 3);
    expect_ok("step after the error", || s.step(bad - 1));
}

#[test]
fn invalid_arguments() {
    let model = model();
    let mut s = expect_ok("session(8)", || model.session(8));
    let case = "empty prefill";
    let e = expect_err(case, || s.prefill(&[]));
    assert_error!(case, e, Error::InvalidArgument(_), ["prefill"]);
    assert_eq!(s.position(), 0);

    let case = "max_context 0";
    let e = expect_err(case, || model.session(0));
    assert_error!(case, e, Error::InvalidArgument(_), ["max_context"]);

    // An f16 KV cache needs a head_dim that is a multiple of 8: a synthetic model with
    // heads of 12 gets a typed error naming it, and runs with the default f32 cache.
    let dir = std::env::temp_dir().join("moestream-test-errors-head-dim-12");
    let mut spec = moestream::synthetic::SyntheticSpec::default();
    (
        spec.vocab_size,
        spec.hidden_size,
        spec.num_layers,
        spec.head_dim,
    ) = (256, 64, 1, 12);
    (spec.num_experts, spec.top_k, spec.moe_intermediate_size) = (4, 2, 32);
    let dir = expect_ok("synthetic model", || spec.write(&dir));
    let case = "f16 KV cache with head_dim 12";
    let e = expect_err(case, || {
        Model::builder(&dir)
            .kv_cache_dtype(moestream::format::DType::F16)
            .build()
    });
    assert_error!(
        case,
        e,
        Error::InvalidArgument(_),
        ["f16 KV cache", "multiple of 8", "12"]
    );
    let m = expect_ok("head_dim 12, f32 KV cache", || Model::open(&dir));
    assert_eq!(m.kv_cache_dtype(), moestream::format::DType::F32);
    let mut s = expect_ok("session", || m.session(8));
    expect_ok("prefill", || s.prefill(&[1, 2, 3]));

    let case = "bf16 KV cache";
    let e = expect_err(case, || {
        Model::builder(fixture_src("tiny_f32"))
            .kv_cache_dtype(moestream::format::DType::BF16)
            .build()
    });
    assert_error!(case, e, Error::InvalidArgument(_), ["KV cache", "BF16"]);
}

#[test]
fn expert_read_failure_is_an_error_and_leaves_the_cache_consistent() {
    let fx = TempFixture::new("tiny_f32", "expert_read");
    let path = fx.path("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    // Two slots: most experts are read from the file during a pass.
    let m = expect_ok("open with 2 expert slots", || {
        Model::builder(&fx.dir)
            .expert_cache_bytes(2 * 18432)
            .build()
    });
    assert_eq!(m.expert_cache_slots(), 2);

    // Experts are read from the file on demand: cut the file after the header.
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    std::fs::write(&path, &bytes[..8 + header_len]).unwrap();
    let prompt = [3u32, 17, 42, 99, 5];
    let mut s = expect_ok("session(16)", || m.session(16));
    let case = "prefill while model.safetensors is truncated";
    let e = expect_err(case, || s.prefill(&prompt));
    assert_error!(
        case,
        e,
        Error::ExpertRead { .. },
        ["model.safetensors", "layer", "expert"]
    );
    assert_eq!(
        s.position(),
        0,
        "{case}: the failed prefill moved the position"
    );

    // Restored: the same session and model give the intact model's logits (no cache slot
    // left claiming an expert whose read failed).
    std::fs::write(&path, &bytes).unwrap();
    let got = expect_ok("prefill after the file is restored", || s.prefill(&prompt));
    let mut reference = expect_ok("session on the intact fixture", || model().session(16));
    let want = expect_ok("prefill on the intact fixture", || {
        reference.prefill(&prompt)
    });
    let diff = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        got.len() == want.len() && diff <= 1e-5,
        "logits after a failed expert read differ from the intact model's (max |diff| {diff})"
    );
}

/// `session(max_context)` with a KV cache larger than a storage binding.
fn assert_session_too_large(max_context: usize) {
    let case = format!("session({max_context})");
    let e = expect_err(&case, || model().session(max_context));
    assert!(
        matches!(e, Error::DeviceLimit { .. } | Error::InvalidArgument(_)),
        "{case}: expected Error::DeviceLimit or Error::InvalidArgument, got {e:?}"
    );
    assert!(!e.is_retryable() || matches!(e, Error::GpuOutOfMemory { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("context") || msg.contains("KV"),
        "{case}: the message names neither the context nor the KV cache: \"{msg}\""
    );
}

#[test]
fn huge_max_context_is_an_error() {
    assert_session_too_large(1 << 40);
}

/// A context so large that its KV-cache size overflows `usize` is an error, not a panic.
#[test]
fn overflowing_max_context_is_an_error_not_a_panic() {
    for max_context in [1usize << 58, usize::MAX / 2, usize::MAX] {
        assert_session_too_large(max_context);
    }
}

#[test]
fn expert_cache_budget_smaller_than_one_expert() {
    // One expert of tiny_f32: 3 matrices of 24 x 64 f32 = 18432 bytes.
    for budget in [0u64, 1, 18431] {
        let case = format!("expert_cache_bytes({budget})");
        let e = expect_err(&case, || {
            Model::builder(fixture_src("tiny_f32"))
                .expert_cache_bytes(budget)
                .build()
        });
        assert_error!(
            case,
            e,
            Error::InvalidArgument(_),
            ["expert", budget.to_string()]
        );
    }
    // Exactly one expert is enough.
    let m = expect_ok("expert_cache_bytes(18432)", || {
        Model::builder(fixture_src("tiny_f32"))
            .expert_cache_bytes(18432)
            .build()
    });
    assert_eq!(m.expert_cache_slots(), 1);
}

// ---------------------------------------------------------------------------------------
// Qwen3.5-MoE / Qwen3-Next
// ---------------------------------------------------------------------------------------

/// `tests/fixtures_qwen35/<name>`, as a name [`TempFixture::new`] takes.
fn qwen35(name: &str) -> String {
    format!("../fixtures_qwen35/{name}")
}

#[test]
fn qwen35_value_heads_not_a_multiple_of_key_heads() {
    let fx = TempFixture::new(&qwen35("q35_flat_f32"), "q35_heads");
    fx.edit_config(|c| {
        c.insert("linear_num_value_heads".into(), 3.into());
    });
    let case = "linear_num_value_heads 3, linear_num_key_heads 2";
    let e = open_err(case, &fx.dir);
    assert_error!(
        case,
        e,
        Error::Config { .. },
        [
            "config.json",
            "linear_num_value_heads",
            "linear_num_key_heads"
        ]
    );
}

#[test]
fn qwen35_rotary_size_that_does_not_fit() {
    let fx = TempFixture::new(&qwen35("q35_flat_f32"), "q35_rotary");
    // head_dim 32: a factor of 0.1 gives 3 rotary dims, an odd number.
    fx.edit_config(|c| {
        c["rope_parameters"]["partial_rotary_factor"] = 0.1.into();
    });
    let case = "partial_rotary_factor 0.1 of head_dim 32";
    let e = open_err(case, &fx.dir);
    assert_error!(
        case,
        e,
        Error::Config { .. },
        ["config.json", "partial_rotary_factor", "head_dim 32"]
    );
}

#[test]
fn qwen35_unknown_layer_type() {
    let fx = TempFixture::new(&qwen35("q35_flat_f32"), "q35_layer_type");
    fx.edit_config(|c| {
        c["layer_types"][2] = "sliding_attention".into();
    });
    let case = "layer_types[2] sliding_attention";
    let e = open_err(case, &fx.dir);
    assert_error!(
        case,
        e,
        Error::Config { .. },
        ["config.json", "layer_types[2]", "sliding_attention"]
    );
    fx.edit_config(|c| {
        c["layer_types"] = serde_json::json!(["linear_attention", "full_attention"]);
    });
    let case = "layer_types of 2 entries for 4 layers";
    let e = open_err(case, &fx.dir);
    assert_error!(case, e, Error::Config { .. }, ["layer_types", "4 layers"]);
}

#[test]
fn qwen35_missing_linear_attention_tensors_are_named() {
    for (i, name) in [
        "model.layers.0.linear_attn.conv1d.weight",
        "model.layers.2.linear_attn.A_log",
        "model.layers.0.linear_attn.dt_bias",
        "model.layers.2.linear_attn.in_proj_b.weight",
        "model.layers.1.mlp.shared_expert_gate.weight",
    ]
    .into_iter()
    .enumerate()
    {
        let fx = TempFixture::new(&qwen35("q35_flat_f32"), &format!("q35_missing_{i}"));
        fx.edit_tensors("model.safetensors", |ts| {
            let before = ts.len();
            ts.retain(|t| t.name != name);
            assert_eq!(ts.len() + 1, before, "test bug: no tensor {name}");
        });
        let case = format!("checkpoint without {name}");
        let e = open_err(&case, &fx.dir);
        assert_error!(case, e, Error::MissingTensor { .. }, [name]);
    }
}

#[test]
fn qwen35_fused_experts_of_the_wrong_shape() {
    // [E, 2I, H] stored transposed as [E, H, 2I] (Qwen3-VL-MoE's layout, not Qwen3.5's).
    let fx = TempFixture::new(&qwen35("q35_flat_f32"), "q35_fused_shape");
    let name = "model.layers.1.mlp.experts.gate_up_proj";
    fx.edit_tensors("model.safetensors", |ts| {
        tensor_mut(ts, name).shape = vec![6, 40, 24];
    });
    let case = format!("{name} stored as [6, 40, 24]");
    let e = open_err(&case, &fx.dir);
    assert_error!(
        case,
        e,
        Error::Shape { .. },
        [name, "[6, 24, 40]", "[6, 40, 24]"]
    );

    // A conv1d weight of the wrong size.
    let fx = TempFixture::new(&qwen35("q35_flat_f32"), "q35_conv_shape");
    let name = "model.layers.0.linear_attn.conv1d.weight";
    fx.edit_tensors("model.safetensors", |ts| {
        let t = tensor_mut(ts, name);
        t.shape = vec![128, 1, 3];
        t.data.truncate(128 * 3 * 4);
    });
    let case = format!("{name} stored as [128, 1, 3]");
    let e = open_err(&case, &fx.dir);
    assert_error!(case, e, Error::Shape { .. }, [name, "[128, 1, 3]"]);
}

#[test]
fn qwen35_absurd_linear_attention_sizes_fail_fast() {
    // Nothing sized by them may be allocated before they are known to be sane.
    let fx = TempFixture::new(&qwen35("q35_flat_f32"), "q35_absurd");
    fx.edit_config(|c| {
        c.insert("linear_num_key_heads".into(), 1_000_000_000_000u64.into());
        c.insert("linear_num_value_heads".into(), 2_000_000_000_000u64.into());
    });
    let case = "linear_num_value_heads 2e12";
    let e = open_err(case, &fx.dir);
    assert_error!(case, e, Error::Config { .. }, ["linear_num_value_heads"]);
    fx.edit_config(|c| {
        c.insert("linear_num_key_heads".into(), 2.into());
        c.insert("linear_num_value_heads".into(), 4.into());
        c.insert("linear_value_head_dim".into(), 100_000.into());
    });
    let case = "linear_value_head_dim 100000";
    let e = open_err(case, &fx.dir);
    assert_error!(case, e, Error::Config { .. }, ["linear_value_head_dim"]);
    fx.edit_config(|c| {
        c.insert("linear_value_head_dim".into(), 16.into());
        c.insert("num_hidden_layers".into(), 1_000_000_000_000u64.into());
    });
    let case = "num_hidden_layers 1e12";
    let e = open_err(case, &fx.dir);
    assert_error!(case, e, Error::Config { .. }, ["num_hidden_layers"]);
}

/// `SyntheticSpec::write` never deletes what it did not make: a folder of the user's (or a
/// file) at the target path is an `Error::InvalidArgument`, and stays as it was; an
/// earlier synthetic model there is replaced.
#[test]
fn synthetic_writer_never_replaces_a_foreign_folder() {
    use moestream::synthetic::SyntheticSpec;
    let root = std::env::temp_dir().join(format!("moestream-synth-foreign-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mine = root.join("my-notes");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("thesis.txt"), "precious").unwrap();
    std::fs::write(mine.join("config.json"), r#"{"model_type": "qwen3_moe"}"#).unwrap();
    let mut spec = SyntheticSpec::default();
    spec.num_layers = 1;
    spec.num_experts = 4;
    spec.top_k = 2;
    spec.vocab_size = 64;
    spec.hidden_size = 64;
    spec.moe_intermediate_size = 32;
    match spec.write(&mine) {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("not a synthetic model"), "{m}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    assert_eq!(
        std::fs::read_to_string(mine.join("thesis.txt")).unwrap(),
        "precious"
    );
    let file = root.join("a-file");
    std::fs::write(&file, "x").unwrap();
    assert!(matches!(spec.write(&file), Err(Error::InvalidArgument(_))));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    // A synthetic model is replaced by another spec's.
    let synth = root.join("synth");
    spec.write(&synth).unwrap();
    spec.num_layers = 2;
    spec.write(&synth).unwrap();
    let cfg = std::fs::read_to_string(synth.join("config.json")).unwrap();
    assert!(cfg.contains("\"num_hidden_layers\":2"), "{cfg}");
    std::fs::remove_dir_all(&root).unwrap();
}
