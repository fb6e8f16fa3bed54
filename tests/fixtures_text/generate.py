#!/usr/bin/env python3
"""Generate the text fixtures: small tokenizers with chat templates, saved by transformers,
and the ids / renders transformers produces for them (expected.json).

Usage:
    pip install tokenizers transformers jinja2
    python3 tests/fixtures_text/generate.py               # rewrite the committed set here
    python3 tests/fixtures_text/generate.py --out /tmp/ft  # the same set elsewhere

BPE training breaks frequency ties in hash order, so a rerun may learn a slightly
different llama_bos vocabulary; expected.json always matches the folders written with it.

Tokenizers (one folder each, written with `save_pretrained`, reloaded with
`AutoTokenizer.from_pretrained` for the expected values):

  chatml_bpe   byte-level BPE (Qwen2-style split regex + ByteLevel, NFC) trained on an
               embedded multilingual text; special tokens <|endoftext|> <|im_start|>
               <|im_end|>, non-special added tokens <think> </think>. Template: a
               Qwen3-style ChatML template (system, tools, reasoning split, tool calls,
               `enable_thinking`) in tokenizer_config.json.
  llama_bos    SentencePiece-style BPE (Metaspace, byte fallback, <s> added by the post
               processor). Template: Llama-2-style, uses `bos_token`/`eos_token` and
               `raise_exception` when roles do not alternate; tokenizer_config.json writes
               bos/eos as {"__type": "AddedToken", "content": ...} objects.
  jinja_file   the chatml_bpe tokenizer with a multi-line template relying on
               trim_blocks/lstrip_blocks, stored as chat_template.jinja (as mlx-lm and
               transformers >= 4.5x write it); tokenizer_config.json also carries a stale
               `chat_template`, which the file overrides.
  named        named templates as a list in tokenizer_config.json ("default" and
               "tool_use": tojson with indent, non-ASCII and HTML characters, Python
               printing of dicts, booleans and None).
"""

import argparse
import json
import os
import shutil
import sys

import tokenizers
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))

CORPUS = """\
The quick brown fox jumps over the lazy dog. Hello world, hello there!
héllo wörld, où est la bibliothèque? Grüße aus München, schöne Straße.
你好，世界！你好吗？我很好。 Emoji: 👋 🙂 🚀 — naïve café résumé.
User: What is 2 + 2? Assistant: 2 + 2 = 4. Numbers 12345 and 3.14159.
def add(a, b):\n    return a + b\n\nprint(add(1, 2))  # three
<think>Let me think about this step by step.</think> The answer is 42.
"""

TEXTS = [
    "Hello world",
    "héllo wörld 你好 👋",
    " leading space and  double  spaces\n\nnew lines\ttab",
    "<|im_start|>user\nhi<|im_end|>\n",
    "<think>\nreasoning\n</think>\n\nanswer",
    "Grüße 🚀🚀 naïve",
    "",
]

# --- templates (written for these fixtures, in the style of the public ones) ---

CHATML_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou can call these functions:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools><|im_end|>\n" }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- set ns = namespace(last_user=messages|length - 1, seeking=true) %}
{%- for message in messages[::-1] %}
    {%- if ns.seeking and message.role == 'user' and message.content is string and not message.content.startswith('<tool_response>') %}
        {%- set ns.seeking = false %}
        {%- set ns.last_user = messages|length - 1 - loop.index0 %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>\n' }}
    {%- elif message.role == 'assistant' %}
        {%- set thought = '' %}
        {%- if message.reasoning_content is string %}
            {%- set thought = message.reasoning_content %}
        {%- elif '</think>' in content %}
            {%- set thought = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_user and (loop.last or thought) %}
            {{- '<|im_start|>assistant\n<think>\n' + thought.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
        {%- else %}
            {{- '<|im_start|>assistant\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for call in message.tool_calls %}
                {%- if (loop.first and content) or not loop.first %}
                    {{- '\n' }}
                {%- endif %}
                {%- if call.function %}
                    {%- set call = call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' + call.name + '", "arguments": ' }}
                {%- if call.arguments is string %}
                    {{- call.arguments }}
                {%- else %}
                    {{- call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' + content + '\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}
"""

LLAMA_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Roles must alternate user/assistant/user/... (after an optional system message)') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

# Multi-line, no whitespace control: only trim_blocks + lstrip_blocks make this right.
JINJA_FILE_TEMPLATE = """{% for message in messages %}
    {% if loop.first and message['role'] != 'system' %}
<|im_start|>system
You are a helpful assistant.<|im_end|>
    {% endif %}
<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}
"""

STALE_TEMPLATE = "{{ 'this stale template must not be used' }}"

NAMED_DEFAULT = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

NAMED_TOOL_USE = r"""{%- if tools is not none %}
    {{- 'Tools (' ~ tools|length ~ '):\n' + tools | tojson(indent=2) + '\n' }}
    {{- 'compact: ' + tools[0] | tojson + '\n' }}
    {{- 'sorted: ' + tools[0].function.parameters | tojson(sort_keys=true) + '\n' }}
{%- endif %}
{%- for message in messages %}
    {{- '<|' + message.role + '|>\n' }}
    {%- if message.tool_calls is defined %}
        {%- for c in message.tool_calls %}
            {{- c.function.name }}({{ c.function.arguments }}) strict={{ c.strict }} extra={{ c.extra }} n={{ c.n }} x={{ c.x }}
        {%- endfor %}
    {%- else %}
        {{- message.content | trim }}
    {%- endif %}
    {{- eos_token + '\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|assistant|>\n' }}
{%- endif %}"""

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Météo <b>now</b> & later — 天气",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
                "required": ["city"],
            },
        },
    }
]

# --- tokenizers ---


def chatml_bpe():
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    split = (
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
        r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS] * 4, trainer=trainer)
    tok.add_tokens([tokenizers.AddedToken("<think>", special=False), tokenizers.AddedToken("</think>", special=False)])
    return tok


def llama_bos():
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    trainer = trainers.BpeTrainer(
        vocab_size=200,
        min_frequency=2,
        limit_alphabet=40,
        special_tokens=["<unk>", "<s>", "</s>"],
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS] * 4, trainer=trainer)
    # Insert the 256 byte-fallback tokens <0x00>..<0xFF> after the specials, as SentencePiece does.
    spec = json.loads(tok.to_str())
    old = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    specials = [t for t, _ in old if t in ("<unk>", "<s>", "</s>")]
    rest = [t for t, _ in old if t not in specials]
    order = specials + [f"<0x{b:02X}>" for b in range(256)] + rest
    spec["model"]["vocab"] = {t: i for i, t in enumerate(order)}
    for added in spec["added_tokens"]:
        added["id"] = spec["model"]["vocab"][added["content"]]
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", spec["model"]["vocab"]["<s>"])]
    )
    return tok


def save(tok, out, name, save_jinja_files, **kwargs):
    d = os.path.join(out, name)
    if os.path.exists(d):
        shutil.rmtree(d)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    fast.save_pretrained(d, save_jinja_files=save_jinja_files)
    return d


def edit_config(d, fn):
    p = os.path.join(d, "tokenizer_config.json")
    with open(p, encoding="utf-8") as f:
        cfg = json.load(f)
    fn(cfg)
    with open(p, "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
        f.write("\n")


# --- conversations ---

SYS_USER = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hello world, héllo wörld 你好 👋"},
]
USER = [{"role": "user", "content": "What is 2 + 2?"}]
MULTI = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "2 + 2 = 4."},
    {"role": "user", "content": "And  3.14159 * 2?\n"},
]
THINKING = [
    {"role": "user", "content": "Think first."},
    {"role": "assistant", "content": "<think>\nLet me think.\n</think>\n\nThe answer is 42."},
    {"role": "user", "content": "Again?"},
    {"role": "assistant", "content": "<think>step by step</think>Still 42."},
]
TOOL_CALLS = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}}
        ],
    },
    {"role": "tool", "content": '{"temp": 21}'},
    {"role": "tool", "content": "sunny"},
]
NOT_ALTERNATING = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
NAMED_TOOL_CALLS = [
    {"role": "user", "content": "  Weather in Paris?  "},
    {
        "role": "assistant",
        "tool_calls": [
            {
                "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 3, "ok": True}},
                "strict": False,
                "extra": None,
                "n": 1.5,
                "x": [1, "a", True],
            }
        ],
    },
]


def cases(name):
    """(messages, add_generation_prompt, extra) per tokenizer; extra: tools, template name, kwargs."""
    if name == "chatml_bpe":
        return [
            (SYS_USER, True, {}),
            (USER, True, {}),
            (USER, False, {}),
            (MULTI, True, {}),
            (MULTI, False, {}),
            (THINKING, False, {}),
            (THINKING[:3], True, {}),
            (USER, True, {"kwargs": {"enable_thinking": False}}),
            (TOOL_CALLS, True, {"tools": TOOLS}),
            (TOOL_CALLS[:2], False, {}),
        ]
    if name == "llama_bos":
        return [
            (SYS_USER, True, {}),
            (USER, True, {}),
            (MULTI[1:], True, {}),
            (MULTI, True, {}),
            (NOT_ALTERNATING, True, {}),
        ]
    if name == "jinja_file":
        return [(SYS_USER, True, {}), (USER, True, {}), (USER, False, {}), (MULTI, True, {})]
    if name == "named":
        return [
            (USER, True, {}),
            (MULTI[1:], False, {}),
            (NAMED_TOOL_CALLS, True, {"tools": TOOLS}),
            (USER, True, {"template": "tool_use"}),
            (MULTI[1:], True, {"template": "default", "tools": TOOLS}),
        ]
    raise KeyError(name)


def expected_for(d, name):
    tok = AutoTokenizer.from_pretrained(d)
    out = {"encode": [], "decode": [], "chat": []}
    for text in TEXTS:
        out["encode"].append(
            {
                "text": text,
                "ids": tok.encode(text),
                "ids_no_special": tok.encode(text, add_special_tokens=False),
            }
        )
        ids = tok.encode(text)
        out["decode"].append(
            {
                "ids": ids,
                "text": tok.decode(ids),
                "text_skip_special": tok.decode(ids, skip_special_tokens=True),
            }
        )
    for messages, gen, extra in cases(name):
        entry = {"messages": messages, "add_generation_prompt": gen}
        kw = dict(extra.get("kwargs", {}))
        if "tools" in extra:
            entry["tools"] = extra["tools"]
            # Key order matters to `tojson`; a JSON parser that sorts keys loses it.
            entry["tools_json"] = json.dumps(extra["tools"], ensure_ascii=False)
            kw["tools"] = extra["tools"]
        if "template" in extra:
            entry["template"] = extra["template"]
            kw["chat_template"] = extra["template"]
        if "kwargs" in extra:
            entry["kwargs"] = extra["kwargs"]
        try:
            text = tok.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False, **kw)
            ids = tok.apply_chat_template(messages, add_generation_prompt=gen, tokenize=True, return_dict=False, **kw)
            if not isinstance(ids, list) or (ids and not isinstance(ids[0], int)):
                raise SystemExit(f"unexpected apply_chat_template output {ids!r}")
            entry["text"] = text
            entry["ids"] = ids
            # apply_chat_template tokenizes the render without adding special tokens again.
            assert ids == tok.encode(text, add_special_tokens=False), (name, messages)
        except Exception as e:  # noqa: BLE001 (raise_exception cases are expected)
            if "alternate" not in str(e):
                raise
            entry["error"] = str(e)
        out["chat"].append(entry)
    out["eos_token"] = tok.eos_token
    out["bos_token"] = tok.bos_token
    out["vocab_size"] = len(tok)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=HERE)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    chatml = chatml_bpe()
    dirs = {}
    dirs["chatml_bpe"] = save(
        chatml,
        args.out,
        "chatml_bpe",
        False,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    )
    dirs["llama_bos"] = save(
        llama_bos(),
        args.out,
        "llama_bos",
        False,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        chat_template=LLAMA_TEMPLATE,
    )

    def added_token_objects(cfg):
        for key in ("bos_token", "eos_token"):
            cfg[key] = {
                "__type": "AddedToken",
                "content": cfg[key],
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }

    edit_config(dirs["llama_bos"], added_token_objects)
    dirs["jinja_file"] = save(
        chatml,
        args.out,
        "jinja_file",
        True,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=JINJA_FILE_TEMPLATE,
    )
    assert os.path.exists(os.path.join(dirs["jinja_file"], "chat_template.jinja"))
    edit_config(dirs["jinja_file"], lambda cfg: cfg.__setitem__("chat_template", STALE_TEMPLATE))
    dirs["named"] = save(
        chatml,
        args.out,
        "named",
        False,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        chat_template={"default": NAMED_DEFAULT, "tool_use": NAMED_TOOL_USE},
    )
    with open(os.path.join(dirs["named"], "tokenizer_config.json"), encoding="utf-8") as f:
        assert isinstance(json.load(f)["chat_template"], list), "named templates must be a list"

    expected = {
        "versions": {
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "python": sys.version.split()[0],
        },
        "tokenizers": {name: expected_for(d, name) for name, d in dirs.items()},
    }
    with open(os.path.join(args.out, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)
        f.write("\n")
    for name in dirs:
        e = expected["tokenizers"][name]
        print(f"{name}: vocab {e['vocab_size']}, {len(e['chat'])} conversations")


if __name__ == "__main__":
    main()
