"""A reward manager for verl 0.9.1's reward loop, backed by a GRM Cluster router.

In the trainer's config (Hydra overrides of `verl.trainer.main_ppo`):

    reward.reward_manager.source=importlib
    reward.reward_manager.module.path=pkg://grm_client.verl
    reward.reward_manager.name=GRMRewardManager
    +reward.reward_kwargs.grm_addr=grm-router:50051
    +reward.reward_kwargs.grm_k=4

Every sample is sent to the router as a member of the group keyed by its `uid` (verl's GRPO
group id) with size `actor_rollout_ref.rollout.n`, so the router's group barrier judges a
group's responses together however verl spreads the samples over its reward workers
(`reward.num_workers`) and whenever they finish. The reward is (mean score - 1) / 9, in [0, 1].

Settings come from `reward.reward_kwargs` (keys `grm_*`), else from the environment (the same
names in capitals: GRM_ADDR, GRM_TOKEN, ...), else the defaults in `SETTINGS`. verl itself is
imported only when `GRMRewardManager` is first looked up.
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Optional

from ._convert import prompt_conversation
from .client import ScoreError

log = logging.getLogger("grm_client.verl")

__all__ = ["GRMRewardManager", "SETTINGS", "load_settings"]

# reward_kwargs key -> (type, default, meaning); the environment variable is the key in capitals.
SETTINGS = {
    "grm_addr": (str, None, "the router's gRPC address, host:port (required)"),
    "grm_k": (int, 4, "judgements sampled per group"),
    "grm_k_meta": (int, None, "judgements the meta RM keeps (default: the router's, k/2 with a meta RM)"),
    "grm_temperature": (float, None, "sampling temperature of the judgements (default: the router's, 0.5)"),
    "grm_max_new_tokens": (int, 0, "longest judgement in tokens (0: the router's --max-new-tokens)"),
    "grm_seed": (int, None, "seed of the judging (default: drawn by the router)"),
    "grm_group_size": (int, None, "responses per group (default: actor_rollout_ref.rollout.n)"),
    "grm_group_wait_ms": (int, 0, "how long the router waits for a group's last members (0: its default, 5000)"),
    "grm_timeout_s": (float, 600.0, "seconds per call, the group's wait included"),
    "grm_token": (str, None, "the router's bearer token"),
    "grm_token_file": (str, None, "a file holding the router's bearer token"),
    "grm_tls_ca": (str, None, "CA certificate (PEM file): connect over TLS"),
    "grm_tls_cert": (str, None, "client certificate chain (PEM file), for mutual TLS"),
    "grm_tls_key": (str, None, "client key (PEM file), for mutual TLS"),
    "grm_error_score": (float, 0.0, "the reward of a sample whose request failed"),
}


def _cfg_get(cfg: Any, path: str, default=None):
    cur = cfg
    for part in path.split("."):
        if cur is None:
            return default
        try:
            cur = cur.get(part) if hasattr(cur, "get") else getattr(cur, part, None)
        except Exception:  # noqa: BLE001 - OmegaConf raises on missing keys of structured configs
            return default
    return default if cur is None else cur


def load_settings(config: Any = None, environ: Optional[dict] = None) -> dict:
    """The manager's settings: `reward.reward_kwargs.grm_*` of the config, else the environment
    (GRM_ADDR, GRM_K, ...), else the defaults."""
    environ = os.environ if environ is None else environ
    given = _cfg_get(config, "reward.reward_kwargs", None) or {}
    out = {}
    for key, (typ, default, _) in SETTINGS.items():
        v = given.get(key) if hasattr(given, "get") else None
        if v is None:
            v = environ.get(key.upper())
            if v == "":
                v = None
        if v is None:
            out[key] = default
        else:
            try:
                out[key] = typ(v)
            except (TypeError, ValueError):
                raise ValueError(f"grm_client.verl: {key} (or {key.upper()}) must be a {typ.__name__}, got {v!r}")
    return out


def _read(path: Optional[str]) -> Optional[bytes]:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def _as_messages(raw: Any) -> Optional[list]:
    """verl's `raw_prompt` (a list or numpy array of message dicts) as a list, or None."""
    if raw is None:
        return None
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    try:
        msgs = [dict(m) for m in list(raw)]
    except (TypeError, ValueError):
        return None
    return msgs if msgs and all("role" in m for m in msgs) else None


def _make_manager_class():
    from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

    class GRMRewardManager(RewardManagerBase):
        """verl reward manager: each sample is a member of its `uid`'s group on the GRM router.

        `run_single(data)` returns {"reward_score": float, "reward_extra_info": {...}} with
        extra info `grm_mean_score` (1..10; 0 when nothing voted), `grm_votes`, `grm_unscored`
        (1 when no judgement voted: the score is then the group's mean reward, neutral),
        `grm_error` (1 when the request failed: the score is `grm_error_score`),
        `grm_group_size` (distinct responses judged together), `grm_group_partial`,
        `grm_group_wait_ms`."""

        def __init__(self, config, tokenizer, compute_score=None, reward_router_address=None,
                     reward_model_tokenizer=None, **kwargs):
            super().__init__(config, tokenizer, compute_score)
            self.settings = load_settings(config)
            if not self.settings["grm_addr"]:
                raise ValueError("grm_client.verl: no router address; set +reward.reward_kwargs.grm_addr=host:port "
                                 "or GRM_ADDR")
            size = self.settings["grm_group_size"] or _cfg_get(config, "actor_rollout_ref.rollout.n", 1)
            self.group_size = int(size)
            token = self.settings["grm_token"]
            if not token and self.settings["grm_token_file"]:
                token = _read(self.settings["grm_token_file"]).decode().strip()
            self._client_args = dict(
                timeout=self.settings["grm_timeout_s"], token=token,
                root_certificates=_read(self.settings["grm_tls_ca"]),
                private_key=_read(self.settings["grm_tls_key"]),
                certificate_chain=_read(self.settings["grm_tls_cert"]),
            )
            self.sampling = {"k": self.settings["grm_k"], "max_new_tokens": self.settings["grm_max_new_tokens"]}
            for key in ("k_meta", "temperature", "seed"):
                if self.settings[f"grm_{key}"] is not None:
                    self.sampling[key] = self.settings[f"grm_{key}"]
            self._client = None
            self._client_loop = None
            self._warned = set()

        def _get_client(self):
            loop = asyncio.get_running_loop()
            if self._client is None or self._client_loop is not loop:
                from .aio import AsyncRewardClient

                self._client = AsyncRewardClient(self.settings["grm_addr"], **self._client_args)
                self._client_loop = loop
            return self._client

        def _texts(self, item) -> tuple:
            """The sample's conversation and response text."""
            conv = None
            msgs = _as_messages(item.non_tensor_batch.get("raw_prompt"))
            prefix = ""
            if msgs is not None:
                conv, prefix = prompt_conversation(msgs)
            prompt_ids = item.batch["prompts"]
            prompt_len = prompt_ids.shape[-1]
            mask = item.batch["attention_mask"]
            response_ids = item.batch["responses"]
            valid = int(mask[-response_ids.shape[-1]:].sum())
            response = self.tokenizer.decode(response_ids[:valid], skip_special_tokens=True)
            if conv is None:
                ids = prompt_ids[mask[:prompt_len].bool()]
                conv = [{"role": "user", "content": self.tokenizer.decode(ids, skip_special_tokens=True)}]
            return conv, prefix + response

        async def run_single(self, data) -> dict:
            item = data[-1]  # multi-sequence outputs: the last sequence, as verl's own managers do
            conv, response = await self.loop.run_in_executor(None, self._texts, item)
            uid = item.non_tensor_batch.get("uid")
            group = None
            if uid is not None and 2 <= self.group_size <= 64:
                group = {"key": f"verl:{uid}", "size": self.group_size, "wait_ms": self.settings["grm_group_wait_ms"]}
            info = {"grm_mean_score": 0.0, "grm_votes": 0, "grm_unscored": 0, "grm_error": 0,
                    "grm_group_size": 1, "grm_group_partial": 0, "grm_group_wait_ms": 0.0}
            try:
                r = await self._get_client().score(conv, [response], group=group, **self.sampling)
            except ScoreError as e:
                if e.code not in self._warned:
                    self._warned.add(e.code)
                    log.warning("grm_client.verl: a request failed (%s); its reward is %s", e,
                                self.settings["grm_error_score"])
                info["grm_error"] = 1
                return {"reward_score": float(self.settings["grm_error_score"]), "reward_extra_info": info}
            votes = (r.response_votes or [r.votes])[0]
            mean = r.mean_scores[0] if r.mean_scores else 0.0
            info["grm_votes"] = int(votes)
            if r.group is not None:
                info["grm_group_size"] = int(r.group.size)
                info["grm_group_partial"] = int(r.group.partial)
                info["grm_group_wait_ms"] = float(r.group.wait_ms)
            if votes > 0:
                info["grm_mean_score"] = float(mean)
                score = (mean - 1.0) / 9.0
            else:
                info["grm_unscored"] = 1
                voted = [m for m in (r.group.mean_scores if r.group is not None else []) if m > 0]
                score = (sum(voted) / len(voted) - 1.0) / 9.0 if voted else float(self.settings["grm_error_score"])
            return {"reward_score": float(score), "reward_extra_info": info}

    GRMRewardManager.__module__ = __name__
    return GRMRewardManager


def __getattr__(name: str):
    if name == "GRMRewardManager":
        cls = _make_manager_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
