"""Writes N small requests to one ScoreStream as fast as the client can (no pacing unless a
window is given) and counts the answers; prints one JSON line."""
import json
import sys
import time

from grm_client import RewardClient

addr, n = sys.argv[1], int(sys.argv[2])
window = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3] != "none" else None
client = RewardClient(addr, timeout=3600)
requests = ({"id": f"r{i}", "query": "cat?", "responses": [f"{i % 7} good"], "k": 1, "max_new_tokens": 1}
            for i in range(n))
t = time.time()
ids, errors, codes = set(), 0, {}
for r in client.score_many(requests, window=window):
    ids.add(r.id)
    if not r.ok:
        errors += 1
        codes[r.error.code] = codes.get(r.error.code, 0) + 1
print(json.dumps({"answered": len(ids), "errors": errors, "codes": codes, "seconds": round(time.time() - t, 1)}))
