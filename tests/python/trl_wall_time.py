"""Wall time of one GRPO step's rewards: 8 groups of 8 completions (k=4 judgements per group)
through grm_client.trl.GRMReward (every group a request on one ScoreStream, judged
concurrently) against one blocking RewardClient.score call per group, one after the other
(what a reward function looping over groups does). Different prompts for each way, so that
neither profits from the other's cached prefixes; a warm-up call first.

    PYTHONPATH=clients/python .venv-trainers/bin/python tests/python/trl_wall_time.py GRPC_ADDR [ROUNDS [GROUP_SIZE]]

Prints one JSON line: both wall times (best of ROUNDS, default 1), the ratio, and the mean reward
of "good" and "bad" completions each way (the tiny test judge writes at most 4 scores, so its
groups of 8 go unscored; GROUP_SIZE=4 shows rewards). Timings are the machine's; nothing
asserts on them.
"""
import json
import sys
import time
import types

from grm_client import RewardClient
from grm_client.trl import GRMReward

GROUPS, G, K, MAX_NEW = 8, 8, 4, 64


def batch(tag):
    prompts, completions = [], []
    for g in range(GROUPS):
        for i in range(G):
            prompts.append(f"[{tag}] Question {g}: give an answer.")
            completions.append(f"answer {g}.{i} is " + ("good" if i % 2 == 0 else "bad"))
    return prompts, completions


def means(prompts_completions, rewards):
    good = [r for (_, c), r in zip(prompts_completions, rewards) if r is not None and c.endswith("good")]
    bad = [r for (_, c), r in zip(prompts_completions, rewards) if r is not None and c.endswith("bad")]
    return {"good": sum(good) / len(good) if good else None, "bad": sum(bad) / len(bad) if bad else None,
            "unscored": sum(r is None for r in rewards)}


def stream_way(addr, tag):
    f = GRMReward(addr, k=K, num_generations=G, max_new_tokens=MAX_NEW, timeout=600, seed=1)
    prompts, completions = batch(tag)
    t0 = time.time()
    rewards = f(prompts, completions, trainer_state=types.SimpleNamespace(global_step=0))
    wall = time.time() - t0
    f.close()
    return wall, means(list(zip(prompts, completions)), rewards), len(f.last["requests"])


def blocking_way(addr, tag):
    client = RewardClient(addr, timeout=600)
    prompts, completions = batch(tag)
    rewards = []
    t0 = time.time()
    for g in range(GROUPS):
        r = client.score(prompts[g * G], completions[g * G:(g + 1) * G], k=K, max_new_tokens=MAX_NEW, seed=1)
        rewards += [(m - 1) / 9 if v else None for m, v in zip(r.mean_scores, r.response_votes)]
    wall = time.time() - t0
    client.close()
    return wall, means(list(zip(prompts, completions)), rewards)


if __name__ == "__main__":
    addr = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    if len(sys.argv) > 3:
        G = int(sys.argv[3])
    warm = RewardClient(addr, timeout=600)
    warm.score("warm-up?", ["a good", "b bad"], k=K, max_new_tokens=MAX_NEW)
    warm.close()
    best_stream = best_block = None
    for r in range(rounds):
        bw, bmeans = blocking_way(addr, f"block-{r}")
        sw, smeans, nreq = stream_way(addr, f"stream-{r}")
        best_block = bw if best_block is None else min(best_block, bw)
        best_stream = sw if best_stream is None else min(best_stream, sw)
    print(json.dumps({
        "groups": GROUPS, "group_size": G, "k": K, "max_new_tokens": MAX_NEW, "rounds": rounds,
        "grmreward_one_stream_s": round(best_stream, 3), "stream_requests": nreq,
        "blocking_score_per_group_s": round(best_block, 3),
        "speedup": round(best_block / best_stream, 2) if best_stream else None,
        "stream_rewards": smeans, "blocking_rewards": bmeans,
    }))
