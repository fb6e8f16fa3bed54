//! The OpenAI-compatible server (feature `server`) on small synthetic models, driven over
//! raw HTTP: whole and streamed replies of both endpoints, tools and reasoning, logprobs,
//! malformed requests, a client that goes away mid-stream, the queue's 429, concurrent
//! clients against the same requests one at a time, and the prompt cache against fresh
//! prefills (KV and recurrent-state models).

#[path = "server/fixture.rs"]
mod fixture;
#[path = "server/http.rs"]
mod http;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fixture::{model_dir, server, NAMED_TOKEN, REQUIRED_TOKEN, TOOL_TOKEN};
use http::{get, metric, post, post_stream, request};
use serde_json::{json, Value};

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

/// The text of a streamed chat reply's content deltas.
fn streamed_content(chunks: &[Value], field: &str) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"][field].as_str())
        .collect()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "timed out waiting: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn models_health_metrics_and_unknown_routes() {
    let s = server(model_dir("kv", false, false), |_| {});
    let a = s.local_addr();
    let r = get(a, "/health");
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")));
    let m = get(a, "/v1/models").json();
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], "test");
    assert_eq!(m["data"][0]["object"], "model");
    assert_eq!(get(a, "/v1/models/test").json()["id"], "test");
    let r = get(a, "/v1/models/other");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    let text = get(a, "/metrics").body;
    for name in [
        "moestream_decode_tokens_per_second",
        "moestream_time_to_first_token_seconds_bucket",
        "moestream_expert_cache_hit_rate",
        "moestream_storage_read_bytes_total",
        "moestream_queue_length",
        "moestream_active_generations",
        "moestream_prompt_cache_hit_tokens_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name}")) || text.contains(name),
            "{name}"
        );
    }
    let r = get(a, "/v1/nothing");
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]["message"].is_string());
    let r = get(a, CHAT);
    assert_eq!(r.status, 405);
    assert!(r.json()["error"]["message"].is_string());
}

/// A greedy chat reply whole and streamed: the same text, token log-probabilities and
/// usage (in the last chunk; `include_usage` adds OpenAI's usage-only chunk); a logit bias
/// against the first token changes it.
#[test]
fn chat_whole_and_streamed_agree() {
    let s = server(model_dir("kv", false, false), |c| c.prompt_cache_bytes = 0);
    let a = s.local_addr();
    let body = json!({
        "model": "test", "messages": user("bako bimu bive"), "max_tokens": 6,
        "temperature": 0, "logprobs": true, "top_logprobs": 3,
    });
    let r = post(a, CHAT, &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let whole = r.json();
    assert_eq!(whole["object"], "chat.completion");
    assert!(whole["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &whole["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["finish_reason"], "length");
    let text = choice["message"]["content"].as_str().unwrap().to_string();
    assert!(!text.is_empty());
    let lps = choice["logprobs"]["content"].as_array().unwrap();
    assert_eq!(lps.len(), 6);
    for lp in lps {
        let top = lp["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(lp["token"], top[0]["token"]);
        assert!(lp["logprob"].as_f64().unwrap() <= 0.0);
    }
    let usage = &whole["usage"];
    assert_eq!(usage["completion_tokens"], 6);
    let prompt_tokens = usage["prompt_tokens"].as_u64().unwrap();
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), prompt_tokens + 6);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);

    let mut sb = body.clone();
    sb["stream"] = json!(true);
    sb["stream_options"] = json!({"include_usage": true});
    let chunks = post_stream(a, CHAT, &sb);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    assert_eq!(streamed_content(&chunks, "content"), text);
    let streamed_lps: Vec<Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array())
        .flatten()
        .cloned()
        .collect();
    assert_eq!(&streamed_lps, lps);
    let n = chunks.len();
    assert_eq!(chunks[n - 2]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[n - 2]["usage"], *usage);
    assert_eq!(chunks[n - 1]["choices"], json!([]));
    assert_eq!(chunks[n - 1]["usage"], *usage);

    // Ban the first token: the reply changes.
    let first = lps[0]["token"].as_str().unwrap();
    let id = word_id(first);
    let mut biased = body.clone();
    biased["logit_bias"] = json!({ id.to_string(): -100 });
    let r = post(a, CHAT, &biased).json();
    assert_ne!(r["choices"][0]["logprobs"]["content"][0]["token"], first);
}

/// A word's id in the demo word tokenizer ("user", "assistant", "system", then the
/// consonant-vowel-consonant-vowel words in order).
fn word_id(word: &str) -> u32 {
    let (c, v) = ("bdfghklmnprstvz", "aeiou");
    let w: Vec<char> = word.chars().collect();
    let pos = |set: &str, ch: char| set.find(ch).unwrap() as u32;
    3 + ((pos(c, w[0]) * 5 + pos(v, w[1])) * 15 + pos(c, w[2])) * 5 + pos(v, w[3])
}

/// Completions: text and token-id prompts give the same reply; streamed equals whole;
/// echo writes the prompt first; a stop string ends the text before it; legacy logprobs.
#[test]
fn completions_whole_streamed_echo_and_stop() {
    let s = server(model_dir("kv", false, false), |_| {});
    let a = s.local_addr();
    let body = json!({"model": "test", "prompt": "bako bimu bive basi", "max_tokens": 8,
                      "temperature": 0.9, "seed": 7, "logprobs": 2});
    let whole = post(a, COMPLETIONS, &body).json();
    assert_eq!(whole["object"], "text_completion");
    let choice = &whole["choices"][0];
    let text = choice["text"].as_str().unwrap().to_string();
    assert_eq!(choice["finish_reason"], "length");
    let lp = &choice["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 8);
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 8);
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
    assert_eq!(whole["usage"]["prompt_tokens"], 4);

    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let chunks = post_stream(a, COMPLETIONS, &sb);
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, text);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["usage"]["completion_tokens"], 8);

    // The same prompt as token ids.
    let ids: Vec<u32> = ["bako", "bimu", "bive", "basi"].map(word_id).to_vec();
    let mut by_ids = body.clone();
    by_ids["prompt"] = json!(ids);
    assert_eq!(
        post(a, COMPLETIONS, &by_ids).json()["choices"][0]["text"],
        text
    );

    let mut echo = body.clone();
    echo["echo"] = json!(true);
    echo.as_object_mut().unwrap().remove("logprobs");
    let e = post(a, COMPLETIONS, &echo).json();
    assert_eq!(
        e["choices"][0]["text"],
        format!("bako bimu bive basi{text}")
    );

    // Stop at the third word of the reply.
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut stop = body.clone();
    stop["stop"] = json!([words[2]]);
    let r = post(a, COMPLETIONS, &stop).json();
    let cut = r["choices"][0]["text"].as_str().unwrap();
    assert!(
        text.starts_with(cut) && !cut.contains(words[2]),
        "{cut:?} of {text:?}"
    );
    assert_eq!(r["choices"][0]["finish_reason"], "stop");

    // Legacy default: 16 tokens.
    let mut d = body.clone();
    d.as_object_mut().unwrap().remove("max_tokens");
    assert_eq!(
        post(a, COMPLETIONS, &d).json()["usage"]["completion_tokens"],
        16
    );
}

fn weather_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "get_time", "description": "The time",
         "parameters": {"type": "object", "properties": {}}}}
    ])
}

/// Tools go through the chat template (the prompt grows with them; `tool_choice: none`
/// leaves them out, a named choice keeps that one); a reply that spells a reasoning block
/// and a Qwen-style tool call comes back as `reasoning_content` and `tool_calls`, whole
/// and streamed.
#[test]
fn tools_and_reasoning() {
    let s = server(model_dir("tools", false, true), |_| {});
    let a = s.local_addr();
    let prompt_tokens = |extra: Value| {
        let mut body = json!({"model": "test", "messages": user("bako bimu"), "max_tokens": 1, "temperature": 0});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = post(a, CHAT, &body);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["usage"]["prompt_tokens"].as_u64().unwrap()
    };
    let plain = prompt_tokens(json!({}));
    let both = prompt_tokens(json!({"tools": weather_tools()}));
    let none = prompt_tokens(json!({"tools": weather_tools(), "tool_choice": "none"}));
    let one = prompt_tokens(json!({"tools": weather_tools(),
        "tool_choice": {"type": "function", "function": {"name": "get_time"}}}));
    assert!(both > one && one > plain, "{plain} {one} {both}");
    assert_eq!(none, plain);

    let body = json!({"model": "test", "messages": user("bako bive?"), "max_tokens": 1,
        "temperature": 0, "tools": weather_tools(), "tool_choice": "auto",
        "logit_bias": {TOOL_TOKEN.to_string(): 100}});
    let r = post(a, CHAT, &body).json();
    let choice = &r["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{r}");
    let m = &choice["message"];
    assert_eq!(m["reasoning_content"], "Paris, then.");
    assert!(m["content"].is_null(), "{m}");
    let call = &m["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));

    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let chunks = post_stream(a, CHAT, &sb);
    assert_eq!(
        streamed_content(&chunks, "reasoning_content"),
        "Paris, then."
    );
    assert_eq!(streamed_content(&chunks, "content"), "");
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["index"], 0);
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );

    // Without tools the same text stays content (reasoning is still split off).
    let mut no_tools = body.clone();
    no_tools.as_object_mut().unwrap().remove("tools");
    no_tools.as_object_mut().unwrap().remove("tool_choice");
    let m = post(a, CHAT, &no_tools).json()["choices"][0]["message"].clone();
    assert_eq!(m["reasoning_content"], "Paris, then.");
    assert!(
        m["content"].as_str().unwrap().starts_with("<tool_call>"),
        "{m}"
    );
    assert!(m.get("tool_calls").is_none());

    // A conversation with the call and its result renders (arguments as JSON text).
    let follow = json!({"model": "test", "max_tokens": 2, "temperature": 0, "tools": weather_tools(),
    "messages": [
        {"role": "user", "content": "bako bive?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "user", "content": [{"type": "text", "text": "and"}, {"type": "text", "text": "bimu"}]}
    ]});
    let r = post(a, CHAT, &follow);
    assert_eq!(r.status, 200, "{}", r.body);
}

/// `tool_choice: "required"` and a named function are enforced: the prompt goes on with
/// the opening of a call (`<tool_call>\n`, or with the named function's name and
/// `"arguments": `), and the reply is read as its continuation: a well-formed one (a token
/// of the fixture that spells it, by a logit bias) is a tool call with `finish_reason`
/// `tool_calls`, whole and streamed; gibberish stays text after the opening.
#[test]
fn forced_tool_calls() {
    let s = server(model_dir("tools", false, true), |_| {});
    let a = s.local_addr();
    let body = |choice: Value, bias: Option<u32>| {
        let mut b = json!({"model": "test", "messages": user("bako bive?"), "max_tokens": 1,
            "temperature": 0, "tools": weather_tools(), "tool_choice": choice});
        if let Some(id) = bias {
            b["logit_bias"] = json!({ id.to_string(): 100 });
        }
        b
    };
    let named = json!({"type": "function", "function": {"name": "get_weather"}});
    let prompt_tokens = |b: Value| {
        post(a, CHAT, &b).json()["usage"]["prompt_tokens"]
            .as_u64()
            .unwrap()
    };
    // The named choice renders one tool, fewer tokens than both, then its opening.
    let auto = prompt_tokens(body(json!("auto"), None));
    let required = prompt_tokens(body(json!("required"), None));
    let one = prompt_tokens(body(named.clone(), None));
    let one_unforced = {
        // The same render as the named choice, unforced: only that tool, "auto".
        let mut b = body(json!("auto"), None);
        b["tools"] = json!([weather_tools()[0]]);
        prompt_tokens(b)
    };
    assert!(required > auto, "{auto} {required}");
    assert!(one > one_unforced + 1, "{one_unforced} {one}");

    for (choice, token, name, args) in [
        (json!("required"), REQUIRED_TOKEN, "get_time", json!({})),
        (
            named.clone(),
            NAMED_TOKEN,
            "get_weather",
            json!({"city": "Rome"}),
        ),
    ] {
        let b = body(choice.clone(), Some(token));
        let r = post(a, CHAT, &b).json();
        let c = &r["choices"][0];
        assert_eq!(c["finish_reason"], "tool_calls", "{choice}: {r}");
        assert!(c["message"]["content"].is_null(), "{choice}: {r}");
        let call = &c["message"]["tool_calls"][0]["function"];
        assert_eq!(call["name"], name, "{choice}");
        let got: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(got, args, "{choice}");

        let mut sb = b.clone();
        sb["stream"] = json!(true);
        let chunks = post_stream(a, CHAT, &sb);
        let calls: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
            .flatten()
            .collect();
        assert_eq!(calls.len(), 1, "{choice}");
        assert_eq!(calls[0]["function"]["name"], name, "{choice}");
        assert_eq!(streamed_content(&chunks, "content"), "", "{choice}");
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "tool_calls",
            "{choice}"
        );
    }

    // A reply that does not continue the opening as JSON: no call, the text kept.
    let r = post(a, CHAT, &body(json!("required"), None)).json();
    let c = &r["choices"][0];
    assert!(c["message"].get("tool_calls").is_none(), "{r}");
    assert!(
        c["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("<tool_call>"),
        "{r}"
    );
}

fn assert_error(r: &http::Response, status: u16, param: Option<&str>, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.body);
    let e = &r.json()["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {e}"
    );
    assert!(e["type"].is_string(), "{what}: {e}");
    assert!(
        e.get("code").is_some() && e.get("param").is_some(),
        "{what}: {e}"
    );
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{what}: {e}");
    }
}

/// Bad input gets OpenAI-style error JSON with the right status, and the server goes on.
#[test]
fn bad_requests_get_openai_errors() {
    let s = server(model_dir("kv", false, false), |c| {
        c.max_context = Some(64);
        c.max_body_bytes = 1 << 20;
    });
    let a = s.local_addr();
    let ok = json!({"model": "test", "messages": user("bako"), "max_tokens": 1});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    for (what, path, body) in [
        ("not JSON", CHAT, "{\"model\": ".to_string()),
        ("empty", CHAT, String::new()),
        ("not an object", CHAT, "[1, 2]".to_string()),
        ("no messages", CHAT, json!({"model": "test"}).to_string()),
        ("not JSON", COMPLETIONS, "nope".to_string()),
    ] {
        assert_error(&request(a, "POST", path, &body), 400, None, what);
    }
    let cases = [
        (
            "missing model",
            json!({"messages": user("bako")}),
            400,
            Some("model"),
        ),
        (
            "unknown model",
            with("model", json!("gpt-4")),
            404,
            Some("model"),
        ),
        (
            "temperature",
            with("temperature", json!(2.5)),
            400,
            Some("temperature"),
        ),
        (
            "temperature type",
            with("temperature", json!("hot")),
            400,
            Some("temperature"),
        ),
        ("top_p", with("top_p", json!(0)), 400, Some("top_p")),
        ("top_k", with("top_k", json!(-2)), 400, Some("top_k")),
        ("min_p", with("min_p", json!(1.5)), 400, Some("min_p")),
        (
            "presence",
            with("presence_penalty", json!(3)),
            400,
            Some("presence_penalty"),
        ),
        (
            "frequency",
            with("frequency_penalty", json!(-2.5)),
            400,
            Some("frequency_penalty"),
        ),
        (
            "max_tokens",
            with("max_tokens", json!(0)),
            400,
            Some("max_tokens"),
        ),
        (
            "max_tokens type",
            with("max_tokens", json!(-1.5)),
            400,
            Some("max_tokens"),
        ),
        ("n", with("n", json!(3)), 400, Some("n")),
        ("seed", with("seed", json!(1.5)), 400, Some("seed")),
        (
            "bias key",
            with("logit_bias", json!({"abc": 1})),
            400,
            Some("logit_bias"),
        ),
        (
            "bias id",
            with("logit_bias", json!({"99999": 1})),
            400,
            Some("logit_bias"),
        ),
        (
            "bias value",
            with("logit_bias", json!({"5": 101})),
            400,
            Some("logit_bias"),
        ),
        (
            "top_logprobs alone",
            with("top_logprobs", json!(2)),
            400,
            Some("top_logprobs"),
        ),
        (
            "too many top_logprobs",
            with("logprobs", json!(true)),
            200,
            None,
        ),
        (
            "empty messages",
            with("messages", json!([])),
            400,
            Some("messages"),
        ),
        (
            "unknown role",
            with("messages", json!([{"role": "wizard", "content": "x"}])),
            400,
            None,
        ),
        (
            "image part",
            with(
                "messages",
                json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
            ),
            400,
            None,
        ),
        ("message type", with("messages", json!(["hi"])), 400, None),
        ("tools", with("tools", json!({"a": 1})), 400, Some("tools")),
        (
            "tool shape",
            with("tools", json!([{"type": "function"}])),
            400,
            None,
        ),
        (
            "tool_choice",
            with("tool_choice", json!("sometimes")),
            400,
            Some("tool_choice"),
        ),
        (
            "tool_choice without tools",
            with("tool_choice", json!("required")),
            400,
            Some("tool_choice"),
        ),
        (
            "response_format",
            with("response_format", json!({"type": "json_object"})),
            400,
            Some("response_format"),
        ),
        (
            "stream type",
            with("stream", json!("yes")),
            400,
            Some("stream"),
        ),
        (
            "too long",
            with("messages", user(&"bako ".repeat(80))),
            400,
            Some("messages"),
        ),
    ];
    for (what, body, status, param) in cases {
        let r = post(a, CHAT, &body);
        if status == 200 {
            assert_eq!(r.status, 200, "{what}: {}", r.body);
        } else {
            assert_error(&r, status, param, what);
        }
    }
    let r = post(a, CHAT, &with("messages", user(&"bako ".repeat(80))));
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded");
    let mut lp = ok.clone();
    lp["logprobs"] = json!(true);
    lp["top_logprobs"] = json!(21);
    assert_error(
        &post(a, CHAT, &lp),
        400,
        Some("top_logprobs"),
        "top_logprobs 21",
    );

    let okc = json!({"model": "test", "prompt": "bako", "max_tokens": 1});
    let withc = |k: &str, v: Value| {
        let mut b = okc.clone();
        b[k] = v;
        b
    };
    for (what, body, param) in [
        ("no prompt", json!({"model": "test"}), Some("prompt")),
        (
            "token id",
            withc("prompt", json!([1, 99999])),
            Some("prompt"),
        ),
        ("empty ids", withc("prompt", json!([])), Some("prompt")),
        ("batch", withc("prompt", json!(["a", "b"])), Some("prompt")),
        (
            "prompt type",
            withc("prompt", json!({"a": 1})),
            Some("prompt"),
        ),
        ("logprobs", withc("logprobs", json!(30)), Some("logprobs")),
        ("suffix", withc("suffix", json!("x")), Some("suffix")),
        (
            "too long",
            withc("prompt", json!(vec![1; 64])),
            Some("prompt"),
        ),
    ] {
        assert_error(&post(a, COMPLETIONS, &body), 400, param, what);
    }
    // A body past the limit: 413, as JSON.
    let big = format!(
        "{{\"model\": \"test\", \"prompt\": \"{}\"}}",
        "a".repeat(2 << 20)
    );
    assert_error(
        &request(a, "POST", COMPLETIONS, &big),
        413,
        None,
        "too large",
    );
    // Huge max_tokens is capped by the context, not an error.
    let r = post(a, COMPLETIONS, &withc("max_tokens", json!(u64::MAX / 2)));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(get(a, "/health").status, 200);
    assert!(metric(a, "moestream_request_errors_total") >= 40.0);
}

/// A client that goes away mid-stream (or while waiting for a whole reply) cancels its
/// generation and frees its slot at once;
/// with the one slot taken and the one queue place taken, a third request gets 429 with
/// `Retry-After`, and the queued one runs once the slot is free.
#[test]
fn disconnect_cancels_and_a_full_queue_gets_429() {
    use std::io::{BufRead, BufReader};
    let s = server(model_dir("kv", false, false), |c| {
        c.max_concurrent = 1;
        c.max_queue = 1;
    });
    let a = s.local_addr();
    let long = json!({"model": "test", "prompt": "bako bimu", "max_tokens": 3000,
                      "ignore_eos": true, "stream": true});
    let stream = http::send_raw(a, "POST", COMPLETIONS, long.to_string().as_bytes());
    let mut r = BufReader::new(stream);
    let (status, _) = http::read_head(&mut r);
    assert_eq!(status, 200);
    // Read until the first token arrives.
    let mut line = String::new();
    while !line.contains("\"text\"") {
        line.clear();
        r.read_line(&mut line).unwrap();
    }
    assert_eq!(metric(a, "moestream_active_generations"), 1.0);

    let queued = std::thread::spawn(move || {
        post(
            a,
            COMPLETIONS,
            &json!({"model": "test", "prompt": "bako", "max_tokens": 2}),
        )
    });
    wait_for("a queued request", || {
        metric(a, "moestream_queue_length") == 1.0
    });
    let r429 = post(
        a,
        COMPLETIONS,
        &json!({"model": "test", "prompt": "bako", "max_tokens": 2}),
    );
    assert_error(&r429, 429, None, "queue full");
    assert_eq!(r429.json()["error"]["code"], "rate_limit_exceeded");
    assert!(r429.header("retry-after").is_some(), "{:?}", r429.headers);
    assert_eq!(metric(a, "moestream_requests_rejected_total"), 1.0);

    // Hang up: the generation stops (long before its 3000 tokens) and the queued one runs.
    let t = Instant::now();
    drop(r);
    let done = queued.join().unwrap();
    assert_eq!(done.status, 200, "{}", done.body);
    wait_for("the cancelled count", || {
        metric(a, "moestream_generations_total{outcome=\"cancelled\"}") == 1.0
    });
    assert!(t.elapsed() < Duration::from_secs(60));
    wait_for("a free slot", || {
        metric(a, "moestream_active_generations") == 0.0
    });
    assert!(metric(a, "moestream_generated_tokens_total") < 2000.0);
    assert_eq!(
        metric(a, "moestream_prompt_cache_entries"),
        1.0,
        "the cancelled state is not kept"
    );

    // A client waiting for a whole reply that hangs up cancels it too.
    let mut whole = long.clone();
    whole["stream"] = json!(false);
    let conn = http::send_raw(a, "POST", COMPLETIONS, whole.to_string().as_bytes());
    wait_for("the whole reply's generation", || {
        metric(a, "moestream_active_generations") == 1.0
    });
    drop(conn);
    wait_for("the second cancel", || {
        metric(a, "moestream_generations_total{outcome=\"cancelled\"}") == 2.0
    });
    wait_for("a free slot again", || {
        metric(a, "moestream_active_generations") == 0.0
    });
}

fn seeded(i: usize) -> Value {
    let words = [
        "bako bimu",
        "bive basi bako",
        "bimu bimu",
        "basi bive bive bako",
        "bako",
    ];
    json!({"model": "test", "messages": user(words[i % words.len()]), "max_tokens": 8,
           "temperature": 0.8, "top_p": 0.95, "seed": 100 + i, "logprobs": true, "top_logprobs": 2})
}

fn reply_of(r: &http::Response) -> Value {
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    json!([v["choices"][0]["message"], v["choices"][0]["logprobs"]])
}

/// N clients at once get, each, exactly what the same request gets alone (bit for bit;
/// without the prompt cache, so that every request prefills its whole prompt).
#[test]
fn concurrent_clients_equal_one_at_a_time() {
    const N: usize = 5;
    let s = server(model_dir("kv", false, false), |c| {
        c.max_concurrent = 3;
        c.max_queue = 8;
        c.prompt_cache_bytes = 0;
    });
    let a = s.local_addr();
    let alone: Vec<Value> = (0..N)
        .map(|i| reply_of(&post(a, CHAT, &seeded(i))))
        .collect();
    let threads: Vec<_> = (0..N)
        .map(|i| std::thread::spawn(move || reply_of(&post(a, CHAT, &seeded(i)))))
        .collect();
    let together: Vec<Value> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for i in 0..N {
        assert_eq!(together[i], alone[i], "client {i}");
    }
    // Different seeds give different replies (the comparison can fail).
    assert_ne!(alone[0], alone[N - 1]);
}

fn completion(a: SocketAddr, prompt: &str) -> (Value, u64) {
    let r = post(
        a,
        COMPLETIONS,
        &json!({"model": "test", "prompt": prompt, "max_tokens": 5, "temperature": 0, "logprobs": 5}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    (
        json!([v["choices"][0]["text"], v["choices"][0]["logprobs"]]),
        cached,
    )
}

/// Prompts sharing prefixes with earlier ones, on a server with the prompt cache and one
/// without: the same tokens and bit for bit the same log-probabilities (the cache keeps
/// sessions at the end of their prompts, whose states prefill passes computed, and a
/// prefill's results do not depend on how the prompt was split into passes), and the
/// cached lengths reported where the cache can serve them. `hybrid`: a model with
/// recurrent states, where only a cached session holding exactly a prefix of the prompt
/// serves.
fn prompt_cache_equals_fresh_prefill(hybrid: bool) {
    let name = if hybrid { "hybrid" } else { "kv" };
    let cached = server(model_dir(name, hybrid, false), |_| {});
    let fresh = server(model_dir(name, hybrid, false), |c| c.prompt_cache_bytes = 0);
    let system = "bako bimu bive basi ".repeat(6);
    let p1 = format!("{system}dafa dega");
    let (r1, c1) = completion(cached.local_addr(), &p1);
    assert_eq!((r1.clone(), c1), (completion(fresh.local_addr(), &p1).0, 0));
    // The same prefix, another ending: a cut-back copy of the first session (KV only).
    let p2 = format!("{system}bovu bihi dadi");
    let (r2, c2) = completion(cached.local_addr(), &p2);
    assert_eq!(
        r2,
        completion(fresh.local_addr(), &p2).0,
        "diverging prompt"
    );
    assert_eq!(c2, if hybrid { 0 } else { 24 });
    // The first prompt, its reply and more: the first session as it is, at the end of
    // its prompt (26 tokens; the reply's tokens, run by decode steps, were not kept).
    let p3 = format!("{p1}{} bute bodi", r1[0].as_str().unwrap());
    let (r3, c3) = completion(cached.local_addr(), &p3);
    assert_eq!(r3, completion(fresh.local_addr(), &p3).0, "grown prompt");
    assert_eq!(c3, 26);
    // Exactly the same prompt again: all but its last token (KV only).
    let (r4, c4) = completion(cached.local_addr(), &p3);
    assert_eq!(r4, r3, "the same prompt again");
    assert_eq!(c4, if hybrid { 0 } else { 32 });
    let hits = metric(
        cached.local_addr(),
        "moestream_prompt_cache_hit_tokens_total",
    );
    assert_eq!(hits as u64, c2 + c3 + c4);
}

#[test]
fn prompt_cache_equals_fresh_prefill_kv() {
    prompt_cache_equals_fresh_prefill(false);
}

#[test]
fn prompt_cache_equals_fresh_prefill_recurrent() {
    prompt_cache_equals_fresh_prefill(true);
}
