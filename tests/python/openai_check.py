"""OpenAI's own Python client (pinned in scripts/setup.sh) against the router's /v1 API, as a user
of vLLM or TGI drives one: blocking and async, streaming and not, n > 1, a seed reproduced,
log-probabilities, stop strings, the legacy completions endpoint, errors for what the server
does not do, and a client that goes away mid-stream (its KV blocks must be freed and its
generation stopped, seen on the router's /metrics).

    PYTHONPATH=clients/python .venv-test/bin/python tests/python/openai_check.py HTTP_ADDR MODEL

Prints one JSON line: the checks that held and a few figures.
"""
import asyncio
import json
import sys
import time
import urllib.request

import openai

from checks import CHECKS, check

ADDR, MODEL = sys.argv[1], sys.argv[2]
BASE = f"http://{ADDR}/v1"
client = openai.OpenAI(base_url=BASE, api_key="unused", max_retries=0, timeout=120)
CONV = [
    {"role": "system", "content": "Réponds brièvement. 简短回答。"},
    {"role": "user", "content": "the answer is"},
]


def metric(name):
    text = urllib.request.urlopen(f"http://{ADDR}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def chat(**kw):
    args = dict(model=MODEL, messages=CONV, max_tokens=24, temperature=1.0, seed=11)
    args.update(kw)
    return client.chat.completions.create(**args)


def streamed(**kw):
    """The choices' texts and finish reasons, and the usage, from a streamed chat request."""
    texts, finish, usage, roles = {}, {}, None, set()
    for c in chat(stream=True, stream_options={"include_usage": True}, **kw):
        if c.usage is not None:
            usage = c.usage
        for ch in c.choices:
            if ch.delta.role:
                roles.add(ch.delta.role)
            texts[ch.index] = texts.get(ch.index, "") + (ch.delta.content or "")
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
    return texts, finish, usage, roles


def main():
    out = {}
    ids = [m.id for m in client.models.list().data]
    check("models lists the served model", MODEL in ids, ids)

    # Blocking, n = 3, with a seed: the same answer twice.
    a = chat(n=3)
    b = chat(n=3)
    check("n = 3 choices, indexed", [c.index for c in a.choices] == [0, 1, 2], a)
    check("the object and the model", a.object == "chat.completion" and a.model == MODEL, a)
    check("every choice has text and a finish reason",
          all(c.message.role == "assistant" and c.message.content and c.finish_reason in ("stop", "length")
              for c in a.choices), a)
    check("a seed reproduces the choices", [c.message.content for c in a.choices] == [c.message.content for c in b.choices],
          (a.choices, b.choices))
    u = a.usage
    check("usage counts prompt and completion tokens", u.prompt_tokens > 10 and 0 < u.completion_tokens <= 3 * 24
          and u.total_tokens == u.prompt_tokens + u.completion_tokens, u)
    check("the repeated prompt was served from the cache", b.usage.prompt_tokens_details.cached_tokens > 0, b.usage)

    # Streaming: the same choices, piece by piece, then the usage.
    texts, finish, usage, roles = streamed(n=3)
    check("a stream opens each choice with the assistant role", roles == {"assistant"}, roles)
    check("a stream's pieces add up to the blocking answer",
          [texts[i] for i in range(3)] == [c.message.content for c in a.choices], (texts, a.choices))
    check("a stream's finish reasons", [finish[i] for i in range(3)] == [c.finish_reason for c in a.choices], finish)
    check("a stream ends with the usage", usage is not None and usage.completion_tokens == a.usage.completion_tokens,
          usage)

    # Log-probabilities: one entry per token, its alternatives sorted, the token among them
    # when greedy.
    g = chat(n=1, temperature=0, logprobs=True, top_logprobs=3)
    lp = g.choices[0].logprobs.content
    check("a log-probability per completion token", len(lp) == g.usage.completion_tokens, (len(lp), g.usage))
    check("log-probabilities are <= 0 and their alternatives sorted",
          all(t.logprob <= 0 and len(t.top_logprobs) == 3
              and [x.logprob for x in t.top_logprobs] == sorted([x.logprob for x in t.top_logprobs], reverse=True)
              for t in lp), lp[:2])
    check("greedy: each token is its most likely", all(t.token == t.top_logprobs[0].token for t in lp), lp[:3])
    check("the tokens spell the text", "".join(t.token for t in lp) == g.choices[0].message.content,
          ("".join(t.token for t in lp), g.choices[0].message.content))

    # Stop strings: the text ends before the first one, blocking and streamed.
    whole = g.choices[0].message.content
    stop = whole[len(whole) // 2: len(whole) // 2 + 2]
    s = chat(n=1, temperature=0, stop=[stop, "never-there"])
    cut = whole[: whole.index(stop)]
    check("stop: the text ends before the stop string", s.choices[0].message.content == cut
          and s.choices[0].finish_reason == "stop", (stop, s.choices[0], cut))
    texts, finish, _, _ = streamed(n=1, temperature=0, stop=[stop])
    check("stop: streamed too, nothing of it sent", texts[0] == cut and finish[0] == "stop", (texts, finish))

    # The legacy completions endpoint: a list of prompts, n each.
    c = client.completions.create(model=MODEL, prompt=["the answer is", "Scores:"], n=2, max_tokens=6, seed=5,
                                  logprobs=2)
    check("completions: n choices per prompt, in order", [x.index for x in c.choices] == [0, 1, 2, 3], c)
    check("completions: logprobs in the legacy form", all(len(x.logprobs.tokens) == len(x.logprobs.token_logprobs)
                                                          and x.logprobs.text_offset[0] == 0 for x in c.choices), c)

    # What the server does not do: OpenAI's error shape, naming the field.
    for kw, param in [
        (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]), "tools"),
        (dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]),
         "messages[0].content[0]"),
        (dict(presence_penalty=0.5), "presence_penalty"),
        (dict(max_tokens=10 ** 7), "max_tokens"),
    ]:
        try:
            chat(**kw)
            check(f"refused: {param}", False)
        except openai.BadRequestError as e:
            check(f"refused with a 400 naming {param}", e.status_code == 400 and e.param == param, (e.param, e.message))
    try:
        chat(model="no-such-model")
        check("an unknown model is refused", False)
    except openai.NotFoundError as e:
        check("an unknown model: 404 naming it", "no-such-model" in e.message, e.message)
    # No max_tokens: as long as the model's context leaves (a 512-token model here).
    d = client.chat.completions.create(model=MODEL, messages=CONV, temperature=0)
    check("no max_tokens: the context's room", d.choices[0].finish_reason in ("stop", "length")
          and d.choices[0].message.content, d)
    # Unknown fields are ignored, as OpenAI's clients expect.
    x = chat(n=1, extra_body={"some_new_field": {"x": 1}}, user="u-1", metadata=None)
    check("unknown fields are ignored", x.choices[0].message.content, x)

    # Async: four at once, two of them streamed.
    async def many():
        ac = openai.AsyncOpenAI(base_url=BASE, api_key="unused", max_retries=0, timeout=120)

        async def one(i, stream):
            args = dict(model=MODEL, messages=CONV, max_tokens=16, seed=100 + i, n=2)
            if not stream:
                r = await ac.chat.completions.create(**args)
                return [ch.message.content for ch in r.choices]
            got = {}
            async for ch in await ac.chat.completions.create(stream=True, **args):
                for x in ch.choices:
                    got[x.index] = got.get(x.index, "") + (x.delta.content or "")
            return [got[0], got[1]]

        r = await asyncio.gather(*[one(i, i % 2 == 1) for i in range(4)])
        await ac.close()
        return r

    r = asyncio.run(many())
    check("async: four requests, two streamed, all answered", len(r) == 4 and all(all(t for t in x) for x in r), r)

    # A client that goes away mid-stream: the generation stops, its blocks are freed.
    used = 'grm_kv_blocks{role="grm",state="used"}'
    generated = 'grm_engine_generated_tokens_total{role="grm"}'
    before = metric(generated)
    n, max_tokens = 64, 400
    stream = chat(n=n, max_tokens=max_tokens, stream=True, seed=3)
    seen = 0
    for _ in stream:
        seen += 1
        if seen == 3:
            break
    stream.close()
    t0 = time.time()
    while time.time() - t0 < 20 and metric(used) > 0:
        time.sleep(0.05)
    freed_s = time.time() - t0
    time.sleep(0.5)
    drawn = metric(generated) - before
    check("a dropped stream frees its KV blocks", metric(used) == 0, metric(used))
    check("a dropped stream stops its generation", drawn < 0.5 * n * max_tokens, (drawn, n * max_tokens))
    out["dropped_stream"] = {"freed_within_s": round(freed_s, 3), "tokens_drawn": drawn,
                             "tokens_asked": n * max_tokens}
    return out


if __name__ == "__main__":
    out = main()
    out["checks"] = len(CHECKS)
    print(json.dumps(out, default=str))
