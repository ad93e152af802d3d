"""Drives grm_client.aio.AsyncRewardClient (and the blocking client's group= and timeout=) against a
live router; prints what it got as one JSON line.

    PYTHONPATH=clients/python .venv-test/bin/python tests/python/aio_check.py GRPC_ADDR

`group_members` / `group_blocking` hold each member's GroupResult (None from a router without
the group barrier).
"""
import asyncio
import dataclasses
import json
import sys
import threading

from grm_client import Group, RewardClient, ScoreError
from grm_client.aio import AsyncRewardClient


def group_json(r):
    return dataclasses.asdict(r.group) if r.group is not None else None


async def main(addr):
    async with AsyncRewardClient(addr, timeout=120) as client:
        r = await client.score("red sun?", ["tree bad", "apple good"], k=4, seed=5, max_new_tokens=32, timeout=60)
        reqs = [{"id": f"s{i}", "query": "cat?", "responses": ["a good", "b bad"], "k": 2, "seed": i,
                 "max_new_tokens": 32} for i in range(6)]
        reqs.append({"id": "bad", "query": "cat?", "responses": [], "k": 1})

        async def agen():
            for q in reqs:
                yield q

        stream = [x async for x in client.score_many(agen(), window=4)]
        try:
            await client.score("q?", [], k=1)
            refused = None
        except ScoreError as e:
            refused = [e.code, e.message]
        # Two members of one group of 4, concurrently.
        key = f"aio-{id(client)}"
        members = await asyncio.gather(
            client.score("Which is right?", ["x good", "y bad"], k=2, max_new_tokens=32, seed=1,
                         group={"key": key, "size": 4, "wait_ms": 30000}, timeout=60),
            client.score("Which is right?", ["z bad", "w good"], k=2, max_new_tokens=32, seed=1,
                         group=Group(key, 4, 30000), timeout=60))
    return {
        "best": r.best, "rewards": r.rewards, "votes": r.votes,
        "stream_ids": sorted(x.id for x in stream if x.ok),
        "stream_best": [x.best for x in stream if x.ok],
        "stream_errors": {x.id: x.error.code for x in stream if not x.ok},
        "refused": refused,
        "group_members": [{"rewards": m.rewards, "mean_scores": m.mean_scores, "group": group_json(m)}
                          for m in members],
    }


def blocking_group(addr):
    """The same through the blocking client: two threads, each a member."""
    client = RewardClient(addr, timeout=120)
    out = [None, None]

    def member(i, responses):
        out[i] = client.score("Pick one.", responses, k=2, max_new_tokens=32, seed=2, timeout=60,
                              group={"key": f"blocking-{id(client)}", "size": 4, "wait_ms": 30000})

    ts = [threading.Thread(target=member, args=(0, ["p good", "q bad"])),
          threading.Thread(target=member, args=(1, ["r bad", "s good"]))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    client.close()
    return [{"rewards": m.rewards, "mean_scores": m.mean_scores, "group": group_json(m)} for m in out]


if __name__ == "__main__":
    out = asyncio.run(main(sys.argv[1]))
    out["group_blocking"] = blocking_group(sys.argv[1])
    print(json.dumps(out))
