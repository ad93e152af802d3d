"""Reward functions for TRL's `GRPOTrainer` (TRL 1.16) backed by a GRM Cluster router.

    from grm_client.trl import GRMReward
    trainer = GRPOTrainer(model=..., reward_funcs=GRMReward("grm-router:50051", k=4, num_generations=8),
                          args=GRPOConfig(num_generations=8, ...), ...)

A GRM judges a prompt's responses relative to each other, so each GRPO group is sent as one
group (`ScoreRequest.group`): the router judges its responses together even when the group is
split across processes (torchrun, accelerate), each rank sending its share under the same key.
All of a call's requests go over one `ScoreStream`. The reward of a completion is
(mean score - 1) / 9, in [0, 1], or None where no judgement voted or its request failed (TRL
then leaves it out); nothing here imports torch or TRL.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from ._convert import _conv_hash, completion_text, prompt_conversation
from .client import RewardClient, ScoreError, ScoreResult

log = logging.getLogger("grm_client.trl")

__all__ = ["GRMReward", "AsyncGRMReward", "Member", "plan_members", "prompt_conversation", "completion_text"]


# ----------------------------------------------------------------------------- grouping


@dataclass
class Member:
    """The completions of one call that belong to one group: `indices` into the call's
    completions, `tag` naming the group within the call ("g<index of the group in the global
    batch>" or "r<occurrence of its prompt>"), `size` the group's total responses over all
    ranks (what the router waits for)."""
    tag: str
    size: int
    indices: list
    key: Optional[str] = None  # the group key sent (None: sent without a group)


def _runs(keys: Sequence[str]) -> list:
    runs = []
    for i, k in enumerate(keys):
        if runs and keys[runs[-1][-1]] == k:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def plan_members(keys: Sequence[str], *, num_generations: Optional[int] = None, rank: int = 0) -> list:
    """How one call's completions (identified by their prompt's `keys`) split into group members.

    TRL lays a step's completions out as whole groups of `num_generations` consecutive
    completions in one global batch, and gives process r the slice [r*n, (r+1)*n) (n = this
    call's length, the same on every rank), so a group may be split across ranks. With
    `num_generations` the groups are cut at their global positions: completion i is in group
    (r*n + i) // num_generations, and every rank names a group the same way ("g<index>"). If
    a group so cut holds different prompts (the layout is not TRL's, e.g. evaluation with
    another `num_generations_eval`), or without `num_generations`, runs of consecutive equal
    prompts are the groups (cut in pieces of `num_generations` when given), named by the
    prompt's occurrence ("r<n>"), each complete on this rank."""
    n = len(keys)
    g = num_generations if num_generations and num_generations > 0 else None
    if g is not None:
        parts: dict = {}
        for i in range(n):
            parts.setdefault((rank * n + i) // g, []).append(i)
        if all(len({keys[i] for i in idx}) == 1 for idx in parts.values()):
            return [Member(f"g{gi}", g, idx) for gi, idx in parts.items()]
    members, seen = [], {}
    for run in _runs(keys):
        pieces = [run[j:j + g] for j in range(0, len(run), g)] if g else [run]
        for p in pieces:
            occ = seen.get(keys[p[0]], 0)
            seen[keys[p[0]]] = occ + 1
            members.append(Member(f"r{occ}", len(p), p))
    return members


def _dist_rank_world() -> tuple[int, int]:
    """This process's rank and the world size: torch.distributed's when it is initialised
    (never imported here), else RANK / WORLD_SIZE from the launcher, else 0 and 1."""
    td = sys.modules.get("torch.distributed")
    try:
        if td is not None and td.is_available() and td.is_initialized():
            return td.get_rank(), td.get_world_size()
    except Exception:  # noqa: BLE001
        pass
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1


def _default_prefix(world_size: int) -> str:
    """A name for this training run, the same on every rank: from the launcher's environment
    when there are several processes, random otherwise."""
    if world_size > 1:
        env = [os.environ.get(v, "") for v in ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE")]
        return hashlib.sha256("|".join(env).encode()).hexdigest()[:12]
    return uuid.uuid4().hex[:12]


# ----------------------------------------------------------------------------- the reward function


@dataclass
class _Call:
    """One call's plan: the requests to send and where their answers go."""
    n: int
    requests: list  # dicts for score_many
    targets: dict  # request id -> list of completion indices
    members: list = field(default_factory=list)


class _GRMRewardBase:
    def __init__(self, addr: Optional[str] = None, *, k: int = 4, k_meta: Optional[int] = None,
                 num_generations: Optional[int] = None, group_wait_ms: Optional[int] = None,
                 token: Optional[str] = None, timeout: float = 600.0, max_new_tokens: int = 0,
                 temperature: Optional[float] = None, seed: Optional[int] = None, criteria: Sequence[str] = (),
                 model: str = "", root_certificates: Optional[bytes] = None, private_key: Optional[bytes] = None,
                 certificate_chain: Optional[bytes] = None, name: str = "grm", group_prefix: Optional[str] = None,
                 max_responses_per_request: int = 16, max_group_size: int = 64, retries: int = 2,
                 rank: Optional[int] = None, world_size: Optional[int] = None, client: Any = None):
        """`addr`: the router (host:port). `k`, `k_meta`, `temperature`, `max_new_tokens` (0: the
        router's default), `seed`, `criteria`, `model`: the judging (see `RewardClient.score`).
        `num_generations`: GRPOConfig's; without it a group is a run of equal consecutive prompts
        (right on one process; give it when several processes split groups).
        `group_wait_ms`: how long the router waits for a group's last members (None: its
        default, 5000). `timeout`: seconds for one call's stream. `token`, `root_certificates`,
        `private_key`, `certificate_chain`: as `RewardClient`. `name`: TRL logs
        `rewards/<name>/mean`. `group_prefix`: names this run in the group keys (default: from
        the launcher's environment, the same on every rank; set it, e.g. to the run's name,
        when several jobs launched alike share a router). `max_responses_per_request`: a
        member's completions are sent in requests of at most this many (the router's
        --max-responses); groups over `max_group_size` (the router's --max-group-size) are
        judged in independent requests, without a group. `retries`: attempts again, for the
        requests left unanswered, when the stream itself fails (then ScoreError is raised).
        `rank`, `world_size`: this process's (default: torch.distributed's, else RANK and
        WORLD_SIZE). `client`: an existing client to use instead of connecting to `addr`."""
        if addr is None and client is None:
            raise ValueError("GRMReward needs the router's address (or client=)")
        self.addr, self.token, self.timeout = addr, token, timeout
        self._tls = dict(root_certificates=root_certificates, private_key=private_key,
                         certificate_chain=certificate_chain)
        self.sampling = {"k": k, "max_new_tokens": max_new_tokens}
        for key, v in (("k_meta", k_meta), ("temperature", temperature), ("seed", seed)):
            if v is not None:
                self.sampling[key] = v
        if criteria:
            self.sampling["criteria"] = list(criteria)
        if model:
            self.sampling["model"] = model
        self.num_generations = num_generations
        self.group_wait_ms = group_wait_ms or 0
        self.max_responses_per_request = max(1, max_responses_per_request)
        self.max_group_size = max_group_size
        self.retries = max(0, retries)
        self.__name__ = name
        # Resolved at the first call, when the trainer has set up torch.distributed.
        self.rank, self.world_size, self.group_prefix = rank, world_size, group_prefix
        self._client = client
        self._calls = 0
        self._warned = set()
        # Running totals over all calls, and what the last call sent and got (for tests and logs).
        self.totals = {"calls": 0, "completions": 0, "unscored": 0, "errors": 0, "requests": 0, "stream_retries": 0}
        self.last: dict = {}

    def _warn_once(self, what: str, msg: str):
        if what not in self._warned:
            self._warned.add(what)
            log.warning(msg)

    # -- planning

    def _plan(self, prompts, completions, kwargs) -> _Call:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        n = len(prompts)
        convs, texts = [], []
        for p, c in zip(prompts, completions):
            conv, prefix = prompt_conversation(p)
            convs.append(conv)
            texts.append(prefix + completion_text(c))
        hashes = [_conv_hash(c) for c in convs]
        state = kwargs.get("trainer_state")
        step = getattr(state, "global_step", None)
        if self.rank is None or self.world_size is None or self.group_prefix is None:
            r, w = _dist_rank_world()
            self.rank = r if self.rank is None else self.rank
            self.world_size = w if self.world_size is None else self.world_size
            self.group_prefix = self.group_prefix or _default_prefix(self.world_size)
        call = self._calls
        self._calls += 1
        if self.num_generations is None and self.world_size > 1:
            self._warn_once("num_generations", "GRMReward: num_generations not given on several processes: a group "
                            "split across ranks is judged in parts; pass GRPOConfig's num_generations")
        members = plan_members(hashes, num_generations=self.num_generations, rank=self.rank)
        requests, targets = [], {}
        step_s = "-" if step is None else str(step)
        for m in members:
            first = m.indices[0]
            key = f"{self.group_prefix}:{hashes[first]}:{step_s}:{call}:{m.tag}"
            grouped = 2 <= m.size <= self.max_group_size
            if m.size > self.max_group_size:
                self._warn_once("max_group_size", f"GRMReward: groups of {m.size} completions are over "
                                f"max_group_size={self.max_group_size}: judged in independent requests")
            for j in range(0, len(m.indices), self.max_responses_per_request):
                idx = m.indices[j:j + self.max_responses_per_request]
                # The rank in the id: a member's id is its own, whichever rank sends a share.
                rid = f"{self.rank}.{call}.{len(requests)}"
                req = {"id": rid, "query": convs[first], "responses": [texts[i] for i in idx], **self.sampling}
                if grouped:
                    req["group"] = {"key": key, "size": m.size, "wait_ms": self.group_wait_ms}
                requests.append(req)
                targets[rid] = idx
            m.key = key if grouped else None
        return _Call(n=n, requests=requests, targets=targets, members=members)

    # -- results

    def _finish(self, plan: _Call, results: dict, kwargs) -> list:
        rewards: list = [None] * plan.n
        votes_sum, scored, unscored, errors = 0, 0, 0, 0
        group_sizes, partial, waits = [], 0, []
        answers = []
        for rid, idx in plan.targets.items():
            r: Optional[ScoreResult] = results.get(rid)
            if r is None or r.error is not None:
                errors += len(idx)
                err = r.error if r is not None else None
                answers.append({"id": rid, "n": len(idx), "error": str(err) if err else "no answer"})
                if err is not None:
                    self._warn_once(f"err:{err.code}", f"GRMReward: a request failed ({err}); its completions get None")
                continue
            votes = r.response_votes or [r.votes] * len(r.rewards)
            for i, mean, v in zip(idx, r.mean_scores, votes):
                if v > 0:
                    rewards[i] = (mean - 1.0) / 9.0
                    votes_sum += v
                    scored += 1
                else:
                    unscored += 1
            if r.group is not None:
                group_sizes.append(r.group.size)
                partial += int(r.group.partial)
                waits.append(r.group.wait_ms)
            else:
                group_sizes.append(len(idx))
            answers.append({"id": rid, "n": len(idx), "votes": votes, "mean_scores": r.mean_scores,
                            "group": r.group.__dict__ if r.group is not None else None})
        n = max(plan.n, 1)
        metrics = {
            "grm/votes": votes_sum / scored if scored else 0.0,
            "grm/unscored": unscored / n,
            "grm/errors": errors / n,
            "grm/group_size": sum(group_sizes) / len(group_sizes) if group_sizes else 0.0,
        }
        if waits:
            metrics["grm/group_partial"] = partial / len(group_sizes)
            metrics["grm/group_wait_ms"] = sum(waits) / len(waits)
        log_metric: Optional[Callable] = kwargs.get("log_metric")
        if callable(log_metric):
            for name, value in metrics.items():
                log_metric(name, float(value))
        self.totals["calls"] += 1
        self.totals["completions"] += plan.n
        self.totals["unscored"] += unscored
        self.totals["errors"] += errors
        self.totals["requests"] += len(plan.requests)
        self.last = {
            "members": [{"key": m.key, "size": m.size, "indices": m.indices} for m in plan.members],
            "requests": [{"id": q["id"], "n": len(q["responses"]), "group": q.get("group")} for q in plan.requests],
            "answers": answers,
            "metrics": metrics,
            "rewards": rewards,
        }
        return rewards


class GRMReward(_GRMRewardBase):
    """A TRL `GRPOTrainer` reward function: `(prompts, completions, completion_ids=None, **kwargs)`
    -> one reward in [0, 1] (or None) per completion. Blocking; all of a call's requests go over
    one ScoreStream. The arguments are described at `_GRMRewardBase.__init__`."""

    def _get_client(self) -> RewardClient:
        if self._client is None:
            self._client = RewardClient(self.addr, timeout=self.timeout, token=self.token, **self._tls)
        return self._client

    def _send(self, requests: list) -> dict:
        results: dict = {}
        pending = list(requests)
        for attempt in range(self.retries + 1):
            try:
                for r in self._get_client().score_many(pending, timeout=self.timeout):
                    results[r.id] = r
                return results
            except ScoreError as e:
                pending = [q for q in pending if q["id"] not in results]
                if attempt == self.retries or not pending:
                    raise
                self.totals["stream_retries"] += 1
                log.warning("GRMReward: the stream failed (%s); %d requests again in %d s", e, len(pending),
                            attempt + 1)
                time.sleep(attempt + 1)
        return results

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list:
        plan = self._plan(prompts, completions, kwargs)
        results = self._send(plan.requests) if plan.requests else {}
        return self._finish(plan, results, kwargs)

    def close(self):
        if self._client is not None and hasattr(self._client, "close"):
            self._client.close()


class AsyncGRMReward(_GRMRewardBase):
    """The asyncio form of `GRMReward` (`async __call__`; TRL 1.16 runs async reward functions
    concurrently on its own event loop). Uses `grm_client.aio.AsyncRewardClient`, created in
    the loop of the first call (and again if a later call runs in another loop)."""

    _loop = None

    def _get_client(self):
        loop = asyncio.get_running_loop()
        if self._client is None or (self._loop is not None and self._loop is not loop):
            from .aio import AsyncRewardClient

            self._client = AsyncRewardClient(self.addr, timeout=self.timeout, token=self.token, **self._tls)
            self._loop = loop
        return self._client

    async def _send(self, requests: list) -> dict:
        results: dict = {}
        pending = list(requests)
        for attempt in range(self.retries + 1):
            try:
                async for r in self._get_client().score_many(pending, timeout=self.timeout):
                    results[r.id] = r
                return results
            except ScoreError as e:
                pending = [q for q in pending if q["id"] not in results]
                if attempt == self.retries or not pending:
                    raise
                self.totals["stream_retries"] += 1
                log.warning("AsyncGRMReward: the stream failed (%s); %d requests again in %d s", e, len(pending),
                            attempt + 1)
                await asyncio.sleep(attempt + 1)
        return results

    async def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list:
        plan = self._plan(prompts, completions, kwargs)
        results = await self._send(plan.requests) if plan.requests else {}
        return self._finish(plan, results, kwargs)

    async def close(self):
        if self._client is not None and hasattr(self._client, "close"):
            await self._client.close()
