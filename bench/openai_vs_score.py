"""Generated tokens per second of n = 8 samples through the /v1 API against k = 8 judgements
through Score, on the same `grm serve`, alternating, in one run (bench/README.md has the figures).

    PYTHONPATH=clients/python .venv-test/bin/python bench/openai_vs_score.py GRPC_ADDR HTTP_ADDR MODEL [ROUNDS]

Each round: one Score request (k = 8, its judgements' generated tokens from `usage`) and one
chat completion (n = 8, max_tokens as Score's max_new_tokens, the same conversation and
responses in a judging prompt), timed end to end on the client. Prints one JSON line.
"""
import json
import sys
import time

import openai
from grm_client.client import RewardClient

grpc_addr, http_addr, model = sys.argv[1:4]
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 10
query = "What is 17 * 3?"
responses = ["17 * 3 = 51. The answer is 51.", "17 * 3 = 41. The answer is 41."]
judge = (f"Question: {query}\nResponse 1: {responses[0]}\nResponse 2: {responses[1]}\n"
         "Rate each response from 1 to 10. Answer as: Scores: \\boxed{x, y}")
grm = RewardClient(grpc_addr, timeout=600)
oai = openai.OpenAI(base_url=f"http://{http_addr}/v1", api_key="unused", max_retries=0, timeout=600)
max_new = 256
stats = {"score": [0, 0.0], "api": [0, 0.0]}
for r in range(rounds + 1):
    t = time.time()
    s = grm.score(query, responses, k=8, seed=r, max_new_tokens=max_new, temperature=0.5)
    dt = time.time() - t
    tokens = s.raw.usage.generated_tokens
    t = time.time()
    c = oai.chat.completions.create(model=model, messages=[{"role": "user", "content": judge}], n=8,
                                    max_tokens=max_new, temperature=0.5, seed=r)
    da = time.time() - t
    if r == 0:
        continue  # warm-up
    stats["score"][0] += tokens
    stats["score"][1] += dt
    stats["api"][0] += c.usage.completion_tokens
    stats["api"][1] += da
score_tps = stats["score"][0] / stats["score"][1]
api_tps = stats["api"][0] / stats["api"][1]
print(json.dumps({
    "rounds": rounds,
    "score": {"tokens": stats["score"][0], "seconds": round(stats["score"][1], 2), "tokens_per_s": round(score_tps, 1)},
    "api": {"tokens": stats["api"][0], "seconds": round(stats["api"][1], 2), "tokens_per_s": round(api_tps, 1)},
    "api_over_score": round(api_tps / score_tps, 3),
}))
