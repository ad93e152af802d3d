"""The soak's load and its checks (bench/soak.sh runs it): unary Score, ScoreStream batches,
groups split over calls and routers, and OpenRLHF's HTTP /get_reward, against two routers of
the tiny judge ("... good" scores above "... bad"), until SIGTERM or SIGINT. Every answer is
checked. A call that fails with a status a client retries (UNAVAILABLE, DEADLINE_EXCEEDED,
RESOURCE_EXHAUSTED, ABORTED, or an HTTP 5xx/connection error) is retried up to 6 times with
backoff; one that still fails is lost, one answered wrongly is wrong. Counters go to stdout
as a JSON line every 10 s and at the end.

usage: soak_load.py ROUTER1_GRPC ROUTER2_GRPC ROUTER1_HTTP TOKEN
"""
import json
import random
import signal
import sys
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, "clients/python")
from grm_client.client import RewardClient, ScoreError  # noqa: E402

RETRYABLE = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "UNKNOWN", "INTERNAL"}
STOP = threading.Event()
LOCK = threading.Lock()
COUNTS = {kind: {"ok": 0, "retried": 0, "lost": 0, "wrong": 0} for kind in ("score", "stream", "group", "http")}
ERRORS: list = []


def count(kind, what, detail=None):
    with LOCK:
        COUNTS[kind][what] += 1
        if detail and len(ERRORS) < 200:
            ERRORS.append({"t": time.time(), "kind": kind, "what": what, "detail": str(detail)[:300]})


def question(rng):
    a, b = rng.randint(1, 99), rng.randint(1, 99)
    return f"question {a} plus {b}: the answer is"


def with_retries(kind, call):
    """Runs `call` until it answers or fails for good; (answer or None, retried)."""
    retried = False
    for attempt in range(7):
        if STOP.is_set() and attempt > 0:
            return None, retried
        try:
            return call(), retried
        except ScoreError as e:
            if e.code not in RETRYABLE or attempt == 6:
                count(kind, "lost", f"{e.code}: {e}")
                return None, retried
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            code = getattr(e, "code", 0) or 0
            if (code and code < 500) or attempt == 6:
                count(kind, "lost", repr(e))
                return None, retried
        retried = True
        time.sleep(min(2 ** attempt, 16))
    return None, retried


def good_above_bad(r, good_index):
    return r.votes > 0 and r.mean_scores[good_index] > r.mean_scores[1 - good_index]


def unary(addr, token, seed):
    rng = random.Random(seed)
    client = RewardClient(addr, timeout=120, token=token)
    while not STOP.is_set():
        good_first = rng.random() < 0.5
        responses = ["it is so good", "it is so bad"] if good_first else ["it is so bad", "it is so good"]
        r, retried = with_retries("score", lambda: client.score(question(rng), responses, k=4))
        if r is None:
            continue
        if good_above_bad(r, 0 if good_first else 1):
            count("score", "retried" if retried else "ok")
        else:
            count("score", "wrong", r)


def stream(addr, token, seed):
    rng = random.Random(seed)
    client = RewardClient(addr, timeout=300, token=token)
    batch = 0
    while not STOP.is_set():
        batch += 1
        items = {}
        for i in range(32):
            good_first = rng.random() < 0.5
            responses = ["it is so good", "it is so bad"] if good_first else ["it is so bad", "it is so good"]
            items[f"b{seed}-{batch}-{i}"] = ({"id": f"b{seed}-{batch}-{i}", "query": question(rng),
                                              "responses": responses, "k": 2}, good_first)
        pending = dict(items)
        for attempt in range(7):
            if not pending:
                break
            try:
                for r in client.score_many([v[0] for v in pending.values()], window=16):
                    if r.error is not None:
                        if r.error.code not in RETRYABLE:
                            count("stream", "lost", f"{r.error.code}: {r.error}")
                            pending.pop(r.id, None)
                        continue
                    _, good_first = pending.pop(r.id)
                    if good_above_bad(r, 0 if good_first else 1):
                        count("stream", "retried" if attempt else "ok")
                    else:
                        count("stream", "wrong", r)
            except ScoreError as e:
                if e.code not in RETRYABLE:
                    break
            if pending:
                time.sleep(min(2 ** attempt, 16))
        for _ in pending:
            count("stream", "lost", "still unanswered after retries")


def groups(addrs, token, seed):
    rng = random.Random(seed)
    clients = [RewardClient(a, timeout=120, token=token) for a in addrs]
    n = 0
    while not STOP.is_set():
        n += 1
        key = f"soak-{seed}-{n}"
        q = question(rng)
        members = ["it is so good", "it is so bad", "it is so good", "it is so bad"]
        out = [None] * 4

        def member(i):
            c = clients[i % len(clients)]
            out[i], _ = with_retries("group", lambda: c.score(
                q, [members[i]], k=2, id=f"{key}-{i}", group={"key": key, "size": 4, "wait_ms": 20000}))

        threads = [threading.Thread(target=member, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if any(o is None for o in out):
            continue
        good = min(out[0].mean_scores[0], out[2].mean_scores[0])
        bad = max(out[1].mean_scores[0], out[3].mean_scores[0])
        partial = any(o.group is not None and o.group.partial for o in out)
        for _ in range(4):
            count("group", "ok" if good > bad and not partial else "retried" if good > bad else "wrong",
                  None if good > bad else [str(o) for o in out])


def http(addr, token, seed):
    rng = random.Random(seed)
    while not STOP.is_set():
        q = question(rng)
        body = json.dumps({"query": [f"{q} it is so good", f"{q} it is so bad"],
                           "prompts": [q, q]}).encode()

        def call():
            req = urllib.request.Request(f"http://{addr}/get_reward?k=2", data=body, method="POST",
                                         headers={"content-type": "application/json",
                                                  "authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req, timeout=120) as resp:
                return json.loads(resp.read())

        r, retried = with_retries("http", call)
        if r is None:
            continue
        if r["rewards"][0] > r["rewards"][1]:
            count("http", "retried" if retried else "ok")
        else:
            count("http", "wrong", r)


def report(final=False):
    with LOCK:
        line = {"t": round(time.time(), 1), "final": final, "counts": COUNTS}
        if final:
            line["errors"] = ERRORS
        print(json.dumps(line), flush=True)


def main():
    r1, r2, h1, token = sys.argv[1:5]
    signal.signal(signal.SIGTERM, lambda *_: STOP.set())
    signal.signal(signal.SIGINT, lambda *_: STOP.set())
    workers = [
        threading.Thread(target=unary, args=(r1, token, 1)),
        threading.Thread(target=unary, args=(r2, token, 2)),
        threading.Thread(target=stream, args=(r2, token, 3)),
        threading.Thread(target=groups, args=([r1, r2], token, 4)),
        threading.Thread(target=http, args=(h1, token, 5)),
    ]
    for w in workers:
        w.daemon = True
        w.start()
    while not STOP.is_set():
        STOP.wait(10)
        report()
    for w in workers:
        w.join(timeout=150)
    report(final=True)


if __name__ == "__main__":
    main()
