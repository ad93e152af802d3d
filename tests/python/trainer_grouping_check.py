"""Unit checks of the trainer adapters' grouping (grm_client.trl, grm_client.verl's settings)
with fake clients: no router, no torch, no trainer. Asserts as it goes; prints one JSON line.

    PYTHONPATH=clients/python .venv-test/bin/python tests/python/trainer_grouping_check.py
"""
import asyncio
import json
import types

from grm_client import Group, GroupResult, ScoreError, ScoreResult, build_request
from grm_client.grm.v1 import reward_pb2 as pb
from grm_client.trl import AsyncGRMReward, GRMReward, completion_text, plan_members, prompt_conversation
from grm_client.verl import load_settings

from checks import CHECKS, check  # noqa: E402


# ----------------------------------------------------------------------------- fakes


def fake_result(rid, responses, *, votes=4, group=None):
    """What a router would answer: 'good' endings 8, 'bad' endings 3, others 5; a response
    containing 'novote' gets no votes."""
    means = [8.0 if t.endswith("good") else 3.0 if t.endswith("bad") else 5.0 for t in responses]
    vs = [0 if "novote" in t else votes for t in responses]
    means = [m if v else 0.0 for m, v in zip(means, vs)]
    g = None
    if group is not None:
        g = GroupResult(size=group["size"], responses=group["size"], members=2, partial=False, subgroups=1,
                        wait_ms=1.5, mean_scores=means, positions=list(range(len(means))))
    return ScoreResult(id=rid, rewards=[int(m * v) for m, v in zip(means, vs)], mean_scores=means,
                       votes=vs[0], best=None, tie=False, seed=0, k_meta=0, correct=None,
                       response_votes=vs, group=g)


class FakeClient:
    """RewardClient's score_many: records each stream's requests; a request whose responses
    include 'toolong' fails in band (as an over-context completion does)."""

    def __init__(self, fail_stream_after=None):
        self.streams = []
        self.fail_stream_after = fail_stream_after

    def score_many(self, requests, *, window=512, timeout=None):
        reqs = [dict(r) for r in requests]
        for r in reqs:  # every request must build
            q = dict(r)
            build_request(q.pop("query"), q.pop("responses"), **{k: v for k, v in q.items()})
        self.streams.append(reqs)
        for i, r in enumerate(reqs):
            if self.fail_stream_after is not None and i == self.fail_stream_after:
                self.fail_stream_after = None
                raise ScoreError("UNAVAILABLE", "router went away")
            if any("toolong" in t for t in r["responses"]):
                yield ScoreResult.failed(r["id"], ScoreError("INVALID_ARGUMENT", "over the model's context", r["id"]))
            else:
                yield fake_result(r["id"], r["responses"], group=r.get("group"))


class FakeAsyncClient(FakeClient):
    async def score_many(self, requests, *, window=512, timeout=None):  # noqa: D401
        for r in FakeClient.score_many(self, requests, window=window, timeout=timeout):
            await asyncio.sleep(0)
            yield r


def state(step):
    return types.SimpleNamespace(global_step=step)


# ----------------------------------------------------------------------------- plan_members

m = plan_members(["A"] * 4 + ["B"] * 4, num_generations=4)
check("single rank: whole groups", [(x.tag, x.size, x.indices) for x in m] == [("g0", 4, [0, 1, 2, 3]),
                                                                               ("g1", 4, [4, 5, 6, 7])], m)
# torchrun, 2 ranks, per_device_train_batch_size=2, num_generations=4: a group split in halves.
r0 = plan_members(["A", "A"], num_generations=4, rank=0)
r1 = plan_members(["A", "A"], num_generations=4, rank=1)
check("split group: same tag and size on both ranks", [(x.tag, x.size) for x in r0] == [(x.tag, x.size) for x in r1]
      == [("g0", 4)], (r0, r1))
# global [A A A A B B | B B C C C C]: B is split between the ranks.
r0 = plan_members(list("AAAABB"), num_generations=4, rank=0)
r1 = plan_members(list("BBCCCC"), num_generations=4, rank=1)
check("split group in the middle", [(x.tag, x.indices) for x in r0] == [("g0", [0, 1, 2, 3]), ("g1", [4, 5])]
      and [(x.tag, x.indices) for x in r1] == [("g1", [0, 1]), ("g2", [2, 3, 4, 5])], (r0, r1))
# The same prompt twice in a row (two groups): cut at the global positions.
r0 = plan_members(list("AAAAAA"), num_generations=4, rank=0)
r1 = plan_members(list("AABBBB"), num_generations=4, rank=1)
check("adjacent groups of one prompt", [(x.tag, x.indices) for x in r0] == [("g0", [0, 1, 2, 3]), ("g1", [4, 5])]
      and [x.tag for x in r1] == ["g1", "g2"], (r0, r1))
# Evaluation with num_generations_eval=2 while num_generations=4: the layout does not fit; runs.
m = plan_members(list("AABB"), num_generations=4)
check("layout mismatch falls back to runs", [(x.tag, x.size, x.indices) for x in m] == [("r0", 2, [0, 1]),
                                                                                        ("r0", 2, [2, 3])], m)
m = plan_members(list("AAABBA"))
check("no num_generations: runs", [(x.tag, x.size, x.indices) for x in m] == [("r0", 3, [0, 1, 2]), ("r0", 2, [3, 4]),
                                                                              ("r1", 1, [5])], m)

# ----------------------------------------------------------------------------- GRMReward


def run_rank(rank, prompts, completions, step=7, **kw):
    fc = FakeClient()
    metrics = {}
    f = GRMReward(client=fc, num_generations=4, rank=rank, world_size=2, group_prefix="run1", k=4, **kw)
    out = f(prompts, completions, completion_ids=None, trainer_state=state(step),
            log_metric=lambda n, v: metrics.__setitem__(n, v), answer=["x"] * len(prompts))
    return f, fc, out, metrics


# torchrun split: each rank has two completions of the same group.
f0, c0, out0, met0 = run_rank(0, ["Q1?", "Q1?"], ["a good", "b bad"])
f1, c1, out1, met1 = run_rank(1, ["Q1?", "Q1?"], ["c good", "d bad"])
g0 = c0.streams[0][0]["group"]
g1 = c1.streams[0][0]["group"]
check("torchrun split: one stream per call", len(c0.streams) == 1 and len(c1.streams) == 1)
check("torchrun split: same key, size = num_generations", g0["key"] == g1["key"] and g0["size"] == g1["size"] == 4,
      (g0, g1))
check("torchrun split: key has prefix and step", g0["key"].startswith("run1:") and ":7:0:g0" in g0["key"], g0)
check("torchrun split: each rank sends its share", c0.streams[0][0]["responses"] == ["a good", "b bad"])
check("rewards = (mean - 1) / 9", out0 == [(8 - 1) / 9, (3 - 1) / 9], out0)
check("metrics logged", met0["grm/votes"] == 4 and met0["grm/unscored"] == 0 and met0["grm/errors"] == 0
      and met0["grm/group_size"] == 4, met0)
check("__name__ for TRL's logs", f0.__name__ == "grm")
# The next call (same step, e.g. evaluation) gets another key.
out = f0(["Q1?", "Q1?"], ["a good", "b bad"], trainer_state=state(7))
check("call counter in the key", f0.last["requests"][0]["group"]["key"] != g0["key"])

# Whole groups on one rank, conversational, a system prompt and earlier turns kept.
conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "2+2?"}]
comps = [[{"role": "assistant", "content": t}] for t in ["4 good", "5 bad", "four good", "x novote"]]
fc = FakeClient()
f = GRMReward(client=fc, num_generations=4, rank=0, world_size=1, k=2, k_meta=1, max_new_tokens=32)
out = f([conv] * 4 + [[{"role": "user", "content": "Other?"}]] * 4, comps + comps, trainer_state=state(1))
reqs = fc.streams[0]
check("conversational: one request per group", len(reqs) == 2 and [len(r["responses"]) for r in reqs] == [4, 4])
check("conversational: the whole conversation", reqs[0]["query"] == conv, reqs[0]["query"])
check("conversational: completion text", reqs[0]["responses"] == ["4 good", "5 bad", "four good", "x novote"])
check("conversational: sampling passed", reqs[0]["k"] == 2 and reqs[0]["k_meta"] == 1 and reqs[0]["max_new_tokens"] == 32)
check("different prompts, different keys", reqs[0]["group"]["key"] != reqs[1]["group"]["key"])
check("no vote -> None", out[3] is None and out[7] is None and out[0] == 7 / 9, out)
check("unscored fraction", f.last["metrics"]["grm/unscored"] == 2 / 8, f.last["metrics"])

# A group larger than the router's --max-responses, and a completion over the judge's context.
fc = FakeClient()
f = GRMReward(client=fc, num_generations=20, rank=0, world_size=1)
texts = [f"r{i} good" for i in range(19)] + ["toolong " * 10]
metrics = {}
out = f(["Big?"] * 20, texts, trainer_state=state(2), log_metric=lambda n, v: metrics.__setitem__(n, v))
reqs = fc.streams[0]
check("large group: requests of at most 16", [len(r["responses"]) for r in reqs] == [16, 4], reqs)
check("large group: one key, size 20", {r["group"]["key"] for r in reqs} == {reqs[0]["group"]["key"]}
      and all(r["group"]["size"] == 20 for r in reqs))
check("failed request -> None, counted", out[:16] == [7 / 9] * 16 and out[16:] == [None] * 4
      and metrics["grm/errors"] == 4 / 20 and f.totals["errors"] == 4, (out, metrics))
# Over max_group_size: no group field.
fc = FakeClient()
f = GRMReward(client=fc, num_generations=80, rank=0, world_size=1)
f(["Huge?"] * 80, ["x good"] * 80, trainer_state=state(0))
check("over max_group_size: no group", all("group" not in r for r in fc.streams[0]) and len(fc.streams[0]) == 5)
# num_generations inferred from runs.
fc = FakeClient()
f = GRMReward(client=fc, rank=0, world_size=1)
f(["A"] * 3 + ["B"] * 3, ["x good"] * 6)
check("inferred sizes", [r["group"]["size"] for r in fc.streams[0]] == [3, 3])
# A stream that fails half-way is retried for the unanswered requests only.
fc = FakeClient(fail_stream_after=1)
f = GRMReward(client=fc, num_generations=2, rank=0, world_size=1, retries=1)
f.retries = 1
import grm_client.trl as trl_mod  # noqa: E402

trl_mod.time.sleep = lambda s: None  # no back-off wait in the test
out = f(["A", "A", "B", "B"], ["a good", "b bad", "c good", "d bad"])
check("stream retry", len(fc.streams) == 2 and [r["id"] for r in fc.streams[1]] == ["0.0.1"] and None not in out,
      (fc.streams, out))
# A prefilled assistant turn continues into the completion.
conv2, prefix = prompt_conversation([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "The answer: "}])
check("prefill", conv2 == [{"role": "user", "content": "Q"}] and prefix == "The answer: ")
check("multimodal parts", prompt_conversation([{"role": "user", "content": [{"type": "text", "text": "hi"},
                                                                            {"type": "image"}]}])[0][0]["content"] == "hi")
check("tool calls", completion_text([{"role": "assistant", "content": "", "tool_calls": [{"name": "f"}]}]) ==
      '[{"name": "f"}]')

# ----------------------------------------------------------------------------- AsyncGRMReward

fa = FakeAsyncClient()
af = AsyncGRMReward(client=fa, num_generations=4, rank=1, world_size=2, group_prefix="run1", name="grm_async")
out = asyncio.run(af(["Q1?", "Q1?"], ["c good", "d bad"], trainer_state=state(7)))
check("async: same key as the sync rank", fa.streams[0][0]["group"] == g1, (fa.streams[0][0]["group"], g1))
check("async: rewards", out == [7 / 9, 2 / 9], out)
check("async: name", af.__name__ == "grm_async")
import inspect  # noqa: E402

check("async: TRL sees an async callable", inspect.iscoroutinefunction(af.__call__))

# ----------------------------------------------------------------------------- client

req = build_request("q", ["a"], group={"key": "k1", "size": 4})
check("build_request group dict", req.group.key == "k1" and req.group.size == 4 and req.group.wait_ms == 0)
req = build_request("q", ["a"], group=Group("k2", 8, 100))
check("build_request Group", (req.group.key, req.group.size, req.group.wait_ms) == ("k2", 8, 100))
check("no group: unset", not build_request("q", ["a"]).HasField("group"))
for bad in ({"key": "", "size": 2}, {"key": "x" * 257, "size": 2}, {"key": "k", "size": 2, "wait": 1}):
    try:
        build_request("q", ["a"], group=bad)
        raise AssertionError(f"accepted {bad}")
    except ValueError:
        pass
CHECKS.append("build_request refuses bad groups")
resp = pb.ScoreResponse(id="x", rewards=[pb.ResponseReward(reward=16, mean_score=8.0, votes=2)],
                        group=pb.GroupResult(size=4, responses=4, members=2, partial=True, subgroups=1, wait_ms=3.0,
                                             mean_scores=[8, 3, 8, 3], positions=[2]))
r = ScoreResult.from_proto(resp)
check("GroupResult parsed", r.group == GroupResult(4, 4, 2, True, 1, 3.0, [8, 3, 8, 3], [2]) and r.response_votes == [2])
check("no group -> None", ScoreResult.from_proto(pb.ScoreResponse(id="y")).group is None)

# ----------------------------------------------------------------------------- verl settings

s = load_settings(types.SimpleNamespace(get=lambda k, d=None: None), environ={"GRM_ADDR": "h:1", "GRM_K": "8"})
check("verl settings from the environment", s["grm_addr"] == "h:1" and s["grm_k"] == 8 and s["grm_k_meta"] is None)
cfg = {"reward": {"reward_kwargs": {"grm_addr": "r:2", "grm_k": 2, "grm_group_wait_ms": 100}}}
s = load_settings(cfg, environ={"GRM_ADDR": "h:1", "GRM_K": "8", "GRM_TIMEOUT_S": "30"})
check("verl settings: reward_kwargs first", s["grm_addr"] == "r:2" and s["grm_k"] == 2 and s["grm_timeout_s"] == 30.0
      and s["grm_group_wait_ms"] == 100, s)
import sys  # noqa: E402

check("nothing heavy imported", not any(m in sys.modules for m in ("torch", "trl", "verl", "transformers")),
      [m for m in ("torch", "trl", "verl", "transformers") if m in sys.modules])

print(json.dumps({"ok": True, "checks": len(CHECKS)}))
