"""Drives OpenRLHF 0.11.2's own SingleTurnAgentExecutor (openrlhf/utils/agent.py) against a live
router's `POST /get_reward?group_size=4&k=2`: two prompts in the policy's chat markup (Gemma and
ChatML), four samples each run concurrently (as OpenRLHF's rollout actor runs
n_samples_per_prompt executes), one POST per sample; a stub tokenizer and engine (byte-level,
fixed responses: two ending in "good", two in "bad" per prompt, each followed by the
template's end-of-turn token) stand in for the HF tokenizer and vLLM. No torch.

    PYTHONPATH=clients/python .venv-trainers/bin/python tests/python/openrlhf_check.py HTTP_ADDR [QUERY]

QUERY (default "group_size=4&k=2") is appended to the URL. Asserts what holds whatever the
router, and the grouping and markup parsing where the answers show them (extra_logs
grm/group_size). Prints one JSON line: per sample the prompt's template, the response, and what
execute() returned (reward, scores, extra_logs).
"""
import asyncio
import importlib.util
import json
import os
import sys
import time
import types


def import_openrlhf_agent():
    """openrlhf/utils/agent.py without running openrlhf's package __init__s (they import torch,
    deepspeed, ...): bare package modules with the real __path__ stand in for them."""
    spec = importlib.util.find_spec("openrlhf")
    assert spec is not None and spec.submodule_search_locations, "openrlhf not installed (scripts/setup-trainers.sh)"
    root = list(spec.submodule_search_locations)[0]
    for name, path in (("openrlhf", root), ("openrlhf.utils", os.path.join(root, "utils"))):
        if name not in sys.modules:
            mod = types.ModuleType(name)
            mod.__path__ = [path]
            sys.modules[name] = mod
    import openrlhf.utils.agent as agent

    return agent


class Ids(list):
    def tolist(self):
        return list(self)


class StubTokenizer:
    """Byte-level: decode(encode(s)) == s, so the query OpenRLHF sends is prompt + response exactly."""

    def __call__(self, text, add_special_tokens=False, return_tensors=None):
        return {"input_ids": [Ids(text.encode("utf-8"))]}

    def decode(self, ids, skip_special_tokens=False):
        return bytes(ids).decode("utf-8", errors="replace")


class StubEngine:
    """vLLM stand-in: answers each prompt with its responses in turn."""

    def __init__(self, responses_by_prompt):
        self.responses = responses_by_prompt
        self.count = {p: 0 for p in responses_by_prompt}

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        prompt = bytes(prompt_token_ids).decode("utf-8")
        i = self.count[prompt]
        self.count[prompt] += 1
        text = self.responses[prompt][i % len(self.responses[prompt])]
        await asyncio.sleep(0.01 * i)  # samples finish at different times, as in a real rollout
        out = types.SimpleNamespace(token_ids=list(text.encode("utf-8")), text=text, finish_reason="stop", logprobs=None)
        return types.SimpleNamespace(outputs=[out])


GEMMA = "<bos><start_of_turn>user\nIs the sky blue on a clear day?<end_of_turn>\n<start_of_turn>model\n"
CHATML = "<|im_start|>user\nName a prime number.<|im_end|>\n<|im_start|>assistant\n"
PROMPTS = {
    "gemma": (GEMMA, [f"{t}<end_of_turn>" for t in ["Yes, it is good", "No bad", "Blue is good", "Green bad"]]),
    "chatml": (CHATML, [f"{t}<|im_end|>" for t in ["7 is good", "8 bad", "13 is good", "9 bad"]]),
}


async def main(url):
    agent = import_openrlhf_agent()
    assert "torch" not in sys.modules
    executor = agent.SingleTurnAgentExecutor(remote_rm_url=url)
    engine = StubEngine({p: rs for p, rs in PROMPTS.values()})
    tok = StubTokenizer()
    jobs, meta = [], []
    for name, (prompt, responses) in PROMPTS.items():
        for i in range(4):
            sp = types.SimpleNamespace(temperature=1.0, top_p=1.0, max_tokens=64, logprobs=None)
            jobs.append(executor.execute(prompt=prompt, label="", sampling_params=sp, max_length=512,
                                         hf_tokenizer=tok, llm_engine=engine))
            meta.append((name, i))
    t0 = time.time()
    outs = await asyncio.gather(*jobs)
    wall = time.time() - t0
    samples = []
    for (name, i), o in zip(meta, outs):
        response = tok.decode(o["observation_tokens"])[len(PROMPTS[name][0]):]
        samples.append({"template": name, "response": response, "reward": o["reward"], "scores": o["scores"],
                        "extra_logs": o["extra_logs"], "truncated": o["truncated"]})
    return samples, wall


from checks import CHECKS, WAITING, check  # noqa: E402


def verify(samples, query):
    """What holds whatever the router; and, where the answers show the group barrier and the
    chat-markup parsing (extra_logs grm/group_size), what they promise."""
    check("8 samples", len(samples) == 8)
    for s in samples:
        check("a reward per sample", isinstance(s["reward"], list) and len(s["reward"]) == 1
              and 0 <= s["reward"][0] <= 1, s)
        check("numeric extra_logs", isinstance(s["extra_logs"], dict) and all(
            isinstance(v, (int, float)) or (isinstance(v, list) and all(isinstance(x, (int, float)) for x in v))
            for v in s["extra_logs"].values()), s["extra_logs"])
    if "group_size=4" in query and all("grm/group_size" in s["extra_logs"] for s in samples):
        for s in samples:
            check("judged as a group of 4", s["extra_logs"]["grm/group_size"] == [4], s)
            check("scores are rewards in [0, 1] (scores=unit)", s["scores"] == s["reward"], s)
            check("every sample voted", s["extra_logs"]["grm/unscored"] == [0], s)
        for name in PROMPTS:
            good = [s["reward"][0] for s in samples if s["template"] == name and "good" in s["response"]]
            bad = [s["reward"][0] for s in samples if s["template"] == name and "bad" in s["response"]]
            check(f"{name}: end-of-turn stripped, good beats bad", min(good) > max(bad), (good, bad))
    else:
        WAITING.append("group_size=4 grouping, chat-markup parsing, per-entry grm/* extra_logs (router support)")


if __name__ == "__main__":
    addr = sys.argv[1]
    query = sys.argv[2] if len(sys.argv) > 2 else "group_size=4&k=2"
    url = f"http://{addr}/get_reward" + (f"?{query}" if query else "")
    samples, wall = asyncio.run(main(url))
    verify(samples, query)
    print(json.dumps({"url": url, "wall_s": round(wall, 3), "samples": samples, "checks": len(CHECKS),
                      "waiting_on_server": WAITING}))
