#!/usr/bin/env python3
"""Drives `moestream-server` with the official `openai` Python client.

    python3 tests/server/openai_client.py target/release/moestream-server

Starts the binary on the synthetic demo model (no --model) at a free port, then a second
one on a copy of the demo model whose tokenizer has one token spelling a reasoning block
and a Qwen-style tool call (a logit bias makes the model say it) and whose chat template
renders `tools`. Checks: /v1/models, chat and completions whole and streamed, seeded
determinism, logprobs, usage (cached prompt tokens), tool calls and reasoning, and the
client's typed errors for bad requests. Exits non-zero on the first failure.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import openai

TOOL_TOKEN = 100
TOOL_TEXT = ('<think>Paris, then.</think><tool_call>{"name": "get_weather", '
             '"arguments": {"city": "Paris"}}</tool_call>')
TOOLS_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n# Tools\n<tools>{% for tool in tools %}\n"
    "{{ tool | tojson }}{% endfor %}\n</tools><|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]


def start(binary, *args):
    """Starts the server; returns (process, base URL, model id)."""
    p = subprocess.Popen([binary, "--port", "0", *args], stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.time() + 300
    while time.time() < deadline:
        line = p.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"Serving model `([^`]+)` at (http://\S+)", line)
        if m:
            return p, m.group(2), m.group(1)
    p.kill()
    sys.exit("the server did not start:\n" + "".join(lines))


def tools_model(demo_dir, out):
    """A copy of the demo model whose token TOOL_TOKEN spells TOOL_TEXT."""
    os.makedirs(out, exist_ok=True)
    for f in ["config.json", "model.safetensors"]:
        shutil.copy(os.path.join(demo_dir, f), os.path.join(out, f))
    with open(os.path.join(demo_dir, "tokenizer.json")) as f:
        tok = json.load(f)
    vocab = tok["model"]["vocab"]
    for word in [w for w, i in vocab.items() if i == TOOL_TOKEN]:
        del vocab[word]
    vocab[TOOL_TEXT] = TOOL_TOKEN
    tok["added_tokens"].append({"id": TOOL_TOKEN, "content": TOOL_TEXT, "single_word": False,
                                "lstrip": False, "rstrip": False, "normalized": False,
                                "special": False})
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(tok, f)
    with open(os.path.join(demo_dir, "tokenizer_config.json")) as f:
        cfg = json.load(f)
    cfg["chat_template"] = TOOLS_TEMPLATE
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f)
    return out


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")
    print(f"ok: {what}")


def demo_checks(client, model):
    check([m.id for m in client.models.list().data] == [model], "/v1/models lists the model")
    msgs = [{"role": "system", "content": "bako bimu"}, {"role": "user", "content": "kalo mipa rute"}]
    a = client.chat.completions.create(model=model, messages=msgs, max_tokens=8,
                                       temperature=0.7, seed=3)
    b = client.chat.completions.create(model=model, messages=msgs, max_tokens=8,
                                       temperature=0.7, seed=3)
    check(a.choices[0].message.content == b.choices[0].message.content,
          "the same seed gives the same reply")
    check(a.choices[0].finish_reason == "length" and a.usage.completion_tokens == 8,
          "finish_reason length, usage")
    check(b.usage.prompt_tokens_details.cached_tokens > 0, "the prompt cache serves a repeat")

    whole = client.chat.completions.create(model=model, messages=msgs, max_tokens=6,
                                           temperature=0, logprobs=True, top_logprobs=3)
    lps = whole.choices[0].logprobs.content
    check(len(lps) == 6 and all(len(t.top_logprobs) == 3 for t in lps), "chat logprobs")
    check(all(t.token == t.top_logprobs[0].token for t in lps), "greedy picks the top logprob")
    stream = client.chat.completions.create(model=model, messages=msgs, max_tokens=6,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    text, usage, reason = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            reason = chunk.choices[0].finish_reason or reason
        if chunk.usage:
            usage = chunk.usage
    check(text == whole.choices[0].message.content, "streamed chat equals the whole reply")
    check(reason == "length" and usage and usage.completion_tokens == 6, "stream usage")

    c = client.completions.create(model=model, prompt="kalo mipa rute basi", max_tokens=5,
                                  temperature=0, logprobs=2)
    check(len(c.choices[0].logprobs.tokens) == 5, "completion logprobs")
    s = "".join(ch.choices[0].text for ch in client.completions.create(
        model=model, prompt="kalo mipa rute basi", max_tokens=5, temperature=0, stream=True)
        if ch.choices)
    check(s == c.choices[0].text, "streamed completion equals the whole one")

    for what, kwargs, error in [
        ("temperature 5", {"temperature": 5}, openai.BadRequestError),
        ("unknown model", {"model": "nope"}, openai.NotFoundError),
        ("n = 2", {"n": 2}, openai.BadRequestError),
        ("top_logprobs 50", {"logprobs": True, "top_logprobs": 50}, openai.BadRequestError),
    ]:
        args = {"model": model, "messages": msgs, "max_tokens": 2, **kwargs}
        try:
            client.chat.completions.create(**args)
            check(False, f"{what} is refused")
        except error as e:
            check(e.body and e.body.get("message"), f"{what}: {type(e).__name__}")


def tool_checks(client, model):
    args = dict(model=model, messages=[{"role": "user", "content": "bako bimu"}],
                tools=TOOLS, tool_choice="auto", max_tokens=1, temperature=0,
                logit_bias={str(TOOL_TOKEN): 100})
    r = client.chat.completions.create(**args)
    m = r.choices[0].message
    check(r.choices[0].finish_reason == "tool_calls", "finish_reason tool_calls")
    check(m.tool_calls and m.tool_calls[0].function.name == "get_weather"
          and json.loads(m.tool_calls[0].function.arguments) == {"city": "Paris"},
          "tool_calls parsed from <tool_call>")
    check(getattr(m, "reasoning_content", None) == "Paris, then.", "reasoning_content from <think>")
    calls = {}
    for chunk in client.chat.completions.create(stream=True, **args):
        for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            calls.setdefault(tc.index, [tc.function.name, ""])
            calls[tc.index][1] += tc.function.arguments or ""
    check(list(calls.values()) == [["get_weather", '{"city":"Paris"}']], "streamed tool_calls")


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/moestream-server"
    procs = []
    try:
        p, url, model = start(binary)
        procs.append(p)
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        demo_checks(client, model)
        cache = os.environ.get("MOESTREAM_CACHE") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "moestream")
        with tempfile.TemporaryDirectory() as tmp:
            d = tools_model(os.path.join(cache, "synthetic-default"), os.path.join(tmp, "tools"))
            p2, url2, model2 = start(binary, "--model", d)
            procs.append(p2)
            tool_checks(openai.OpenAI(base_url=url2 + "/v1", api_key="none", max_retries=0),
                        model2)
        print("all openai-client checks passed")
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=60)


if __name__ == "__main__":
    main()
