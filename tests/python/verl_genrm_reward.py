"""A generative reward function for verl, written as verl's documentation shows one for a
generative reward model served behind an OpenAI-compatible endpoint
(`reward.custom_reward_function.path=<this file>`, `reward.custom_reward_function.name=compute_score`):
verl's reward loop calls it with `reward_router_address` (host:port of the judge server), and it
posts a judging prompt to `/v1/chat/completions` and reads a score from the reply. Here the
judge server is `grm serve` (its workers as a plain Gemma-2 server for a judge of one's own).
"""
import re

import aiohttp

JUDGE_PROMPT = """You are given a problem, its reference answer and a response.
Problem: {question}
Reference answer: {ground_truth}
Response: {solution}
Rate the response from 1 to 10 and give the rating as \\boxed{{x}}."""


async def compute_score(data_source, solution_str, ground_truth, extra_info=None, reward_router_address=None,
                        reward_model_tokenizer=None, **kwargs):
    question = (extra_info or {}).get("question", "")
    payload = {
        "model": kwargs.get("judge_model", "tiny-judge"),
        "messages": [{"role": "user", "content": JUDGE_PROMPT.format(
            question=question, ground_truth=ground_truth, solution=solution_str)}],
        "max_tokens": kwargs.get("max_tokens", 48),
        "temperature": 0.0,
        "seed": 0,
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://{reward_router_address}/v1/chat/completions", json=payload,
                                timeout=aiohttp.ClientTimeout(total=120)) as resp:
            resp.raise_for_status()
            out = await resp.json()
    judgement = out["choices"][0]["message"]["content"]
    found = re.findall(r"\\boxed\{\s*(\d+)", judgement)
    score = min(max(int(found[-1]), 1), 10) / 10.0 if found else 0.0
    return {"score": score, "judge_tokens": out["usage"]["completion_tokens"], "judged": 1.0}
