//! Text without a GPU: tokenizers and chat templates against transformers' output
//! (tests/fixtures_text/expected.json), incremental detokenization, sampling.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use moestream::{
    chat::{ChatOptions, ChatTemplate, ChatTemplates},
    sampling::{Candidate, LogitsNeeded, Sampler},
    tokenizer::{IncrementalDecoder, SpecialTokens, TextTokenizer},
    Error, GenerateOptions, GenerationConfig, SamplingParams, Tokenizer,
};
use serde_json::Value;

fn fixtures_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures_text"))
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures_dir().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn tokenizers() -> Vec<(String, Value)> {
    let all = expected();
    let map = all["tokenizers"].as_object().unwrap();
    assert_eq!(map.len(), 4, "four fixture tokenizers");
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[test]
fn encode_and_decode_match_transformers() {
    for (name, exp) in tokenizers() {
        let tok = Tokenizer::from_dir(fixtures_dir().join(&name)).unwrap();
        for case in exp["encode"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            assert_eq!(
                tok.encode(text, true).unwrap(),
                ids(&case["ids"]),
                "{name}: encode({text:?})"
            );
            assert_eq!(
                tok.encode(text, false).unwrap(),
                ids(&case["ids_no_special"]),
                "{name}: encode({text:?}, add_special_tokens=False)"
            );
        }
        for case in exp["decode"].as_array().unwrap() {
            let i = ids(&case["ids"]);
            assert_eq!(
                tok.decode(&i, false).unwrap(),
                case["text"].as_str().unwrap(),
                "{name}: decode({i:?})"
            );
            assert_eq!(
                tok.decode(&i, true).unwrap(),
                case["text_skip_special"].as_str().unwrap(),
                "{name}: decode({i:?}, skip_special_tokens=True)"
            );
        }
        assert_eq!(
            tok.special_tokens().get("eos_token"),
            exp["eos_token"].as_str(),
            "{name}"
        );
        assert_eq!(
            tok.special_tokens().get("bos_token"),
            exp["bos_token"].as_str(),
            "{name}"
        );
    }
}

#[test]
fn chat_templates_match_transformers() {
    let mut checked = 0;
    for (name, exp) in tokenizers() {
        let tok = Tokenizer::from_dir(fixtures_dir().join(&name)).unwrap();
        for case in exp["chat"].as_array().unwrap() {
            let messages: Vec<Value> = case["messages"].as_array().unwrap().clone();
            let mut opts = ChatOptions::new()
                .with_generation_prompt(case["add_generation_prompt"].as_bool().unwrap());
            if let Some(t) = case.get("tools_json") {
                opts = opts.tools_json(t.as_str().unwrap()).unwrap();
            }
            if let Some(t) = case.get("template") {
                opts = opts.template(t.as_str().unwrap());
            }
            if let Some(k) = case.get("kwargs") {
                opts = opts.kwargs_json(&k.to_string()).unwrap();
            }
            let what = format!("{name}: {}", serde_json::to_string(&messages).unwrap());
            if let Some(err) = case.get("error") {
                match tok.encode_chat(&messages, &opts) {
                    Err(Error::Template { reason, .. }) => {
                        assert_eq!(reason, err.as_str().unwrap(), "{what}")
                    }
                    other => panic!("{what}: expected the template's exception, got {other:?}"),
                }
                checked += 1;
                continue;
            }
            let text = tok.render_chat(&messages, &opts).unwrap();
            assert_eq!(text, case["text"].as_str().unwrap(), "{what}");
            assert_eq!(
                tok.encode_chat(&messages, &opts).unwrap(),
                ids(&case["ids"]),
                "{what}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 24);
}

#[test]
fn template_sources_and_selection() {
    // chat_template.jinja wins over tokenizer_config.json's (stale) chat_template.
    let t = ChatTemplates::from_dir(fixtures_dir().join("jinja_file")).unwrap();
    assert_eq!(t.names().collect::<Vec<_>>(), ["default"]);
    assert!(t
        .get("default")
        .unwrap()
        .label()
        .ends_with("chat_template.jinja"));
    // A list of named templates; tools select `tool_use`.
    let named = ChatTemplates::from_dir(fixtures_dir().join("named")).unwrap();
    assert_eq!(named.names().collect::<Vec<_>>(), ["default", "tool_use"]);
    let with_tools = ChatOptions::new().tools(&serde_json::json!([]));
    assert!(named
        .select(None, with_tools.has_tools())
        .unwrap()
        .source()
        .contains("Tools ("));
    assert!(named
        .select(None, false)
        .unwrap()
        .source()
        .starts_with("{% for message"));
    // An unknown name is a template source, as in transformers.
    let inline = named.select(Some("{{ 'x' }}"), false).unwrap();
    assert_eq!(
        inline
            .render(
                &[serde_json::json!({"role": "user", "content": "a"})],
                &ChatOptions::new(),
                &SpecialTokens::default()
            )
            .unwrap(),
        "x"
    );
    // No template at all.
    let none = ChatTemplates::default();
    assert!(matches!(
        none.select(None, false),
        Err(Error::Template { .. })
    ));
}

#[test]
fn template_errors_name_the_template() {
    let t = ChatTemplate::new("{% for m in messages %}{{ m.content }");
    match t.check() {
        Err(Error::Template { reason, .. }) => assert!(reason.contains("syntax"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let t = ChatTemplate::new("{{ raise_exception('no system messages') }}");
    let err = t
        .render(
            &[serde_json::json!({"role": "system", "content": "x"})],
            &ChatOptions::new(),
            &SpecialTokens::default(),
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "chat template: no system messages");
}

#[test]
fn template_variables_like_transformers() {
    let src = "{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}|{{ tools }}|{{ messages[0] }}|{{ messages[0].thinking }}|{{ custom }}";
    let t = ChatTemplate::new(src);
    let mut special = SpecialTokens::default();
    special.set("bos_token", "<s>");
    special.set("eos_token", "</s>");
    let msg = serde_json::json!({"role": "assistant", "content": "hi", "name": null, "reasoning_content": "r"});
    let out = t
        .render(
            &[msg],
            &ChatOptions::new()
                .kwarg("custom", &7)
                .kwarg("eos_token", "E"),
            &special,
        )
        .unwrap();
    // null keys dropped, reasoning aliased as `thinking`, kwargs override special tokens.
    assert_eq!(
        out,
        "<s>|E|True|None|{'thinking': 'r', 'content': 'hi', 'reasoning_content': 'r', 'role': 'assistant'}|r|7"
    );
}

/// A byte-level tokenizer: id = byte (0..256); decoding is lossy UTF-8.
struct Bytes;

impl TextTokenizer for Bytes {
    fn encode(&self, text: &str, _add_special_tokens: bool) -> moestream::Result<Vec<u32>> {
        Ok(text.bytes().map(u32::from).collect())
    }
    fn decode(&self, ids: &[u32], _skip: bool) -> moestream::Result<String> {
        let bytes: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
    fn token_to_id(&self, _token: &str) -> Option<u32> {
        None
    }
}

#[test]
fn incremental_decoding_never_splits_characters() {
    let text = "héllo wörld 你好 👋!";
    let ids = Bytes.encode(text, false).unwrap();
    let mut dec = IncrementalDecoder::new(&Bytes.encode("prompt ", false).unwrap(), false);
    let mut out = String::new();
    let mut empty = 0;
    for &id in &ids {
        let delta = dec.push(&Bytes, id).unwrap();
        assert!(!delta.contains('\u{FFFD}'), "{delta:?}");
        if delta.is_empty() {
            empty += 1;
        }
        out.push_str(&delta);
    }
    out.push_str(&dec.finish(&Bytes).unwrap());
    assert_eq!(out, text);
    // é, ö: 1 held byte each; 你, 好: 2 each; 👋: 3.
    assert_eq!(empty, 1 + 1 + 2 + 2 + 3);
    // A truncated character comes out replaced at the end.
    let mut dec = IncrementalDecoder::new(&[], false);
    assert_eq!(dec.push(&Bytes, 0xF0).unwrap(), "");
    assert_eq!(dec.finish(&Bytes).unwrap(), "\u{FFFD}");
}

#[test]
fn incremental_decoding_with_fixture_tokenizers() {
    for name in ["chatml_bpe", "llama_bos"] {
        let tok = Tokenizer::from_dir(fixtures_dir().join(name)).unwrap();
        for text in [
            "héllo wörld 你好 👋",
            "Grüße 🚀🚀 naïve",
            " two  spaces\nnew line",
        ] {
            let ids = tok.encode(text, false).unwrap();
            // Some token must end inside a character for the test to mean anything.
            let split =
                (1..ids.len()).any(|n| tok.decode(&ids[..n], false).unwrap().ends_with('\u{FFFD}'));
            let prompt = tok.encode("Hello", true).unwrap();
            let mut dec = IncrementalDecoder::new(&prompt, false);
            let mut out = String::new();
            for &id in &ids {
                let delta = dec.push(tok.backend().as_ref(), id).unwrap();
                assert!(!delta.contains('\u{FFFD}'), "{name}: {delta:?}");
                out.push_str(&delta);
            }
            out.push_str(&dec.finish(tok.backend().as_ref()).unwrap());
            // What follows "Hello" decodes the same incrementally as all at once.
            let mut all = prompt.clone();
            all.extend(&ids);
            let whole = tok.decode(&all, false).unwrap();
            let head = tok.decode(&prompt, false).unwrap();
            assert_eq!(out, whole[head.len()..], "{name}: {text:?}");
            if text.contains('👋') || text.contains('🚀') {
                assert!(
                    split || name == "chatml_bpe",
                    "{name}: {text:?} never split a character"
                );
            }
        }
    }
}

#[test]
fn custom_backend_with_templates_from_a_folder() {
    let tok = Tokenizer::from_dir_with(fixtures_dir().join("jinja_file"), Arc::new(Bytes)).unwrap();
    let ids = tok
        .encode_chat(&[moestream::ChatMessage::user("hi")], &ChatOptions::new())
        .unwrap();
    let text = tok.decode(&ids, false).unwrap();
    assert!(text.starts_with("<|im_start|>system\nYou are a helpful assistant."));
    assert!(text.ends_with("<|im_start|>assistant\n"));
}

// ---------------------------------------------------------------------------------------
// Sampling

fn sampler(p: SamplingParams, seed: u64) -> Sampler {
    Sampler::new(SamplingParams {
        seed: Some(seed),
        ..p
    })
}

fn counts(s: &mut Sampler, logits: &[f32], n: usize) -> BTreeMap<u32, usize> {
    let mut c = BTreeMap::new();
    for _ in 0..n {
        *c.entry(s.sample(logits)).or_default() += 1;
    }
    c
}

/// logits = ln(p) for these probabilities.
fn logits_of(probs: &[f32]) -> Vec<f32> {
    probs.iter().map(|p| p.ln()).collect()
}

#[test]
fn greedy_is_argmax_lowest_id_on_ties() {
    let mut s = Sampler::new(SamplingParams::greedy());
    assert_eq!(s.sample(&[0.1, 3.0, -1.0, 3.0]), 1);
    assert_eq!(s.sample(&[f32::NAN, -5.0, -6.0]), 1);
    assert_eq!(s.sample(&[]), 0);
}

#[test]
fn seeded_sampling_is_deterministic() {
    let logits: Vec<f32> = (0..1000)
        .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
        .collect();
    let p = SamplingParams {
        temperature: 0.9,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.01,
        repetition_penalty: 1.2,
        ..SamplingParams::greedy()
    };
    let run = |seed| {
        let mut s = sampler(p.clone(), seed);
        (0..200)
            .map(|_| {
                let id = s.sample(&logits);
                s.observe(id);
                id
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
    // Plain temperature sampling over the whole vocabulary too.
    let mut a = sampler(SamplingParams::with_temperature(1.0), 5);
    let mut b = sampler(SamplingParams::with_temperature(1.0), 5);
    for _ in 0..100 {
        assert_eq!(a.sample(&logits), b.sample(&logits));
    }
}

#[test]
fn top_k_keeps_the_k_largest() {
    let logits = [1.0, 5.0, 2.0, 4.0, 3.0];
    let mut s = sampler(
        SamplingParams {
            top_k: 2,
            ..SamplingParams::with_temperature(5.0)
        },
        1,
    );
    let c = counts(&mut s, &logits, 3000);
    assert_eq!(c.keys().copied().collect::<Vec<_>>(), [1, 3], "{c:?}");
    // Ties with the k-th are kept (as transformers does).
    let mut s = sampler(
        SamplingParams {
            top_k: 1,
            ..SamplingParams::with_temperature(1.0)
        },
        1,
    );
    let c = counts(&mut s, &[2.0, 2.0, 1.0], 2000);
    assert_eq!(c.keys().copied().collect::<Vec<_>>(), [0, 1], "{c:?}");
}

#[test]
fn top_p_keeps_the_smallest_set_reaching_p() {
    let logits = logits_of(&[0.05, 0.5, 0.15, 0.3]);
    let mut s = sampler(
        SamplingParams {
            top_p: 0.7,
            ..SamplingParams::with_temperature(1.0)
        },
        3,
    );
    let c = counts(&mut s, &logits, 4000);
    assert_eq!(c.keys().copied().collect::<Vec<_>>(), [1, 3], "{c:?}");
    // 0.5 / 0.8 of the draws for id 1.
    let share = c[&1] as f64 / 4000.0;
    assert!((share - 0.625).abs() < 0.04, "{share}");
    let mut s = sampler(
        SamplingParams {
            top_p: 0.85,
            ..SamplingParams::with_temperature(1.0)
        },
        3,
    );
    let c = counts(&mut s, &logits, 4000);
    assert_eq!(c.keys().copied().collect::<Vec<_>>(), [1, 2, 3], "{c:?}");
}

#[test]
fn min_p_drops_the_unlikely() {
    let logits = logits_of(&[0.5, 0.3, 0.15, 0.05]);
    let mut s = sampler(
        SamplingParams {
            min_p: 0.25, // cut at 0.125
            ..SamplingParams::with_temperature(1.0)
        },
        9,
    );
    let c = counts(&mut s, &logits, 4000);
    assert_eq!(c.keys().copied().collect::<Vec<_>>(), [0, 1, 2], "{c:?}");
    // Temperature first: at T=0.5 the probabilities are squared (0.25:0.09:0.0225:0.0025,
    // normalized), so 0.15 falls under the cut.
    let mut s = sampler(
        SamplingParams {
            min_p: 0.25,
            ..SamplingParams::with_temperature(0.5)
        },
        9,
    );
    let c = counts(&mut s, &logits, 4000);
    assert_eq!(c.keys().copied().collect::<Vec<_>>(), [0, 1], "{c:?}");
}

#[test]
fn temperature_draws_follow_the_softmax() {
    let logits = logits_of(&[0.6, 0.3, 0.1]);
    let mut s = sampler(SamplingParams::with_temperature(1.0), 11);
    let n = 20000;
    let c = counts(&mut s, &logits, n);
    for (id, p) in [(0, 0.6), (1, 0.3), (2, 0.1)] {
        let share = c[&id] as f64 / n as f64;
        assert!((share - p).abs() < 0.02, "id {id}: {share} vs {p}");
    }
}

#[test]
fn repetition_penalty_lowers_seen_tokens() {
    let logits = [2.0, 1.5, -1.0, -1.2];
    let mut s = Sampler::new(SamplingParams {
        repetition_penalty: 2.0,
        ..SamplingParams::greedy()
    });
    assert_eq!(s.sample(&logits), 0);
    s.observe(0); // 2.0 -> 1.0
    assert_eq!(s.sample(&logits), 1);
    s.observe(1); // 1.5 -> 0.75
    assert_eq!(s.sample(&logits), 0);
    // Negative logits are multiplied: -1.0 -> -2.0 falls below -1.5.
    let mut s = Sampler::new(SamplingParams {
        repetition_penalty: 2.0,
        ..SamplingParams::greedy()
    });
    assert_eq!(s.sample(&[-1.0, -1.5]), 0);
    s.observe(0);
    assert_eq!(s.sample(&[-1.0, -1.5]), 1);
    // Each seen token is penalized once, however often it was seen.
    s.observe_all(&[1, 1, 1]);
    assert_eq!(s.sample(&[-1.0, -1.5]), 0); // -2.0 vs -3.0
}

#[test]
fn truncated_candidates_give_the_full_result_or_none() {
    let logits: Vec<f32> = (0..500).map(|i| ((i * 37) % 500) as f32 / 50.0).collect();
    let mut order: Vec<u32> = (0..500).collect();
    order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    let top = |n: usize| -> Vec<Candidate> {
        order[..n]
            .iter()
            .rev() // any order
            .map(|&id| Candidate::new(id, logits[id as usize]))
            .collect()
    };
    // Top-k sampling from a top-N list equals sampling from all logits.
    let p = SamplingParams {
        top_k: 20,
        top_p: 0.9,
        min_p: 0.02,
        ..SamplingParams::with_temperature(0.8)
    };
    assert_eq!(p.logits_needed(), LogitsNeeded::Top(20));
    let mut full = sampler(p.clone(), 77);
    let mut part = sampler(p.clone(), 77);
    for _ in 0..300 {
        assert_eq!(Some(full.sample(&logits)), part.sample_candidates(&top(24)));
    }
    // Too short a list for top-k: no answer.
    assert_eq!(part.sample_candidates(&top(10)), None);
    // Greedy: the largest unpenalized candidate; none if all are penalized.
    let mut g = Sampler::new(SamplingParams {
        repetition_penalty: 1.5,
        ..SamplingParams::greedy()
    });
    g.observe_all(&order[..3]);
    assert_eq!(g.sample_candidates(&top(8)), Some(g.sample(&logits)));
    assert_eq!(g.sample_candidates(&top(3)), None);
    assert_eq!(
        SamplingParams::greedy().logits_needed(),
        LogitsNeeded::Argmax
    );
    // Top-p without top-k needs every logit.
    let mut tp = sampler(
        SamplingParams {
            top_p: 0.9,
            ..SamplingParams::with_temperature(1.0)
        },
        1,
    );
    assert_eq!(tp.params().logits_needed(), LogitsNeeded::Full);
    assert_eq!(tp.sample_candidates(&top(100)), None);
    // Min-p alone: exact when the cut falls inside the list.
    let mp = SamplingParams {
        min_p: 0.5,
        ..SamplingParams::with_temperature(1.0)
    };
    let mut a = sampler(mp.clone(), 4);
    let mut b = sampler(mp, 4);
    for _ in 0..100 {
        assert_eq!(Some(a.sample(&logits)), b.sample_candidates(&top(50)));
    }
}

#[test]
fn generation_config_defaults_like_transformers() {
    let path = PathBuf::from("generation_config.json");
    let cfg = GenerationConfig::from_json_str(
        r#"{"do_sample": true, "temperature": 0.6, "top_p": 0.95, "eos_token_id": [5, 7], "bos_token_id": 1}"#,
        &path,
    )
    .unwrap();
    assert_eq!(cfg.eos_token_ids, [5, 7]);
    let s = cfg.sampling();
    assert_eq!(
        (s.temperature, s.top_k, s.top_p, s.min_p),
        (0.6, 50, 0.95, 0.0)
    );
    let opts = GenerateOptions::from_generation_config(&cfg);
    assert_eq!(opts.eos_token_ids, [5, 7]);
    // Without do_sample transformers decodes greedily.
    let cfg = GenerationConfig::from_json_str(r#"{"temperature": 0.6, "eos_token_id": 2}"#, &path)
        .unwrap();
    assert!(cfg.sampling().is_greedy());
    assert_eq!(cfg.eos_token_ids, [2]);
    assert!(GenerationConfig::from_json_str(r#"{"top_k": "x"}"#, &path).is_err());
    let none = GenerationConfig::from_dir(fixtures_dir()).unwrap();
    assert_eq!(none, GenerationConfig::default());
    assert!(SamplingParams {
        top_p: 1.5,
        ..SamplingParams::greedy()
    }
    .validate()
    .is_err());
}
