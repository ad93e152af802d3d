"""OpenRLHF 0.11.2's own SingleTurnAgentExecutor with prompts as a trainer really makes them:
a system turn and a user question rendered by transformers' `apply_chat_template` (a ChatML
template, as Qwen-style policies use), one prompt of over 1 KiB and one of over 4 KiB, with
non-ASCII text, and `n_samples_per_prompt` = 8: sixteen concurrent one-sample POSTs to
`/get_reward?group_size=8`. Every sample must come back judged in its whole group of 8.

    PYTHONPATH=clients/python .venv-trainers/bin/python tests/python/openrlhf_long_check.py HTTP_ADDR TOKENIZER_JSON

The stub tokenizer and engine of openrlhf_check.py stand in for the policy's tokenizer and vLLM
(byte-level, so the query OpenRLHF sends is exactly prompt + response). Prints one JSON line.
"""
import asyncio
import json
import os
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checks import CHECKS, WAITING, check  # noqa: E402
from openrlhf_check import StubEngine, StubTokenizer, import_openrlhf_agent  # noqa: E402

# ChatML, as a Jinja chat template: what a policy's tokenizer_config.json carries.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SYSTEM = (
    "You are a careful assistant. Answer the user's arithmetic question with the result, "
    "and say so plainly. Réponds aussi en français si l'on te le demande; 答えは数字で。\n"
)
EXAMPLE = "Example: What is {a} + {b}? The answer is {c}.\n"


def prompts(tokenizer):
    """Two conversations with a system turn of few-shot examples: > 1 KiB and > 4 KiB."""
    out = []
    for shots in (20, 100):
        system = SYSTEM + "".join(EXAMPLE.format(a=i, b=2 * i, c=3 * i) for i in range(shots))
        messages = [{"role": "system", "content": system},
                    {"role": "user", "content": f"the answer is (question {shots})"}]
        out.append(tokenizer.apply_chat_template(messages, chat_template=CHATML, tokenize=False,
                                                 add_generation_prompt=True))
    return out


async def main(url, tokenizer_json):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=tokenizer_json)
    ps = prompts(hf)
    check("a prompt over 1 KiB", len(ps[0].encode()) > 1024, len(ps[0].encode()))
    check("a prompt over 4 KiB", len(ps[1].encode()) > 4096, len(ps[1].encode()))
    check("the system turn is in the prompt", all(p.startswith("<|im_start|>system\n") for p in ps))
    agent = import_openrlhf_agent()
    executor = agent.SingleTurnAgentExecutor(remote_rm_url=url)
    words = ["so good", "so bad", "it is good", "it is bad", "all good", "all bad", "one good", "one bad"]
    engine = StubEngine({p: [f"{w}<|im_end|>" for w in words] for p in ps})
    tok = StubTokenizer()
    jobs, meta = [], []
    for pi, prompt in enumerate(ps):
        for i in range(8):
            sp = types.SimpleNamespace(temperature=1.0, top_p=1.0, max_tokens=64, logprobs=None)
            jobs.append(executor.execute(prompt=prompt, label="", sampling_params=sp, max_length=16384,
                                         hf_tokenizer=tok, llm_engine=engine))
            meta.append(pi)
    t0 = time.time()
    outs = await asyncio.gather(*jobs)
    wall = time.time() - t0
    samples = []
    for pi, o in zip(meta, outs):
        response = tok.decode(o["observation_tokens"])[len(ps[pi]):]
        samples.append({"prompt": pi, "prompt_bytes": len(ps[pi].encode()), "response": response,
                        "reward": o["reward"], "extra_logs": o["extra_logs"]})
    return samples, wall


def verify(samples):
    check("16 samples", len(samples) == 16)
    for s in samples:
        check("a reward per sample", isinstance(s["reward"], list) and len(s["reward"]) == 1
              and 0 <= s["reward"][0] <= 1, s)
        check("judged in its whole group of 8", s["extra_logs"].get("grm/group_size") == [8], s)


if __name__ == "__main__":
    addr, tokenizer_json = sys.argv[1], sys.argv[2]
    url = f"http://{addr}/get_reward?group_size=8&k=2&group_wait_ms=60000"
    samples, wall = asyncio.run(main(url, tokenizer_json))
    verify(samples)
    print(json.dumps({"url": url, "wall_s": round(wall, 3), "samples": samples, "checks": len(CHECKS),
                      "waiting_on_server": WAITING}))
