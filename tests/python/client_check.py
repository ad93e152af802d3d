"""Drives the Python client against a live router; prints what it got as one JSON line."""
import json
import sys

from grm_client import RewardClient, ScoreError

client = RewardClient(sys.argv[1], timeout=120)
r = client.score("red sun?", ["tree bad", "apple good"], k=4, seed=5, return_samples=True)
stream = list(client.score_many(
    {"id": f"s{i}", "query": "cat?", "responses": ["a good", "b bad"], "k": 2, "seed": i} for i in range(10)
))
try:
    client.score("q?", [], k=1)
    refused = None
except ScoreError as e:
    refused = [e.code, e.message]
print(json.dumps({
    "best": r.best,
    "rewards": r.rewards,
    "votes": r.votes,
    "samples": len(r.samples),
    "stream_ids": sorted(x.id for x in stream),
    "stream_best": [x.best for x in stream],
    "refused": refused,
}))
