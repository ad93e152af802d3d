"""verl 0.9.1's own reward loop (RewardLoopWorker, the class verl's RewardLoopManager runs as a Ray
actor; no Ray here, no GPU) configured with grm_client.verl's manager via importlib, against a
live router: a batch of 2 prompts x n=4 responses with their GRPO uids, scored on both of
verl's paths (streaming: one 1-sample call per finished rollout, concurrently; colocated:
compute_score_batch over the batch). Two workers share the streaming samples at random, as
verl's agent loop spreads them over reward.num_workers actors.

    PYTHONPATH=clients/python .venv-trainers/bin/python tests/python/verl_check.py GRPC_ADDR

Asserts what holds whatever the router (one score per sample in [0, 1], the manager class
loaded from `pkg://grm_client.verl`, its settings from reward.reward_kwargs, verl's
assemble_rm_scores places them, a "good" response beats a "bad" one of its group); where the
answers carry a GroupResult (grm_group_size > 1), also that each uid was judged as one group
of 4 on both paths. Prints one JSON line.
"""
import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import time

# The trainers write to stdout (logs, progress, blank lines, some through the file descriptor):
# send all of it to stderr and keep the real stdout for the one JSON line.
if __name__ == "__main__":
    RESULT_OUT = os.fdopen(os.dup(1), "w")
    sys.stdout.flush()
    os.dup2(2, 1)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VERL_USE_EXTERNAL_PLUGINS", "none")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from verl import DataProto  # noqa: E402
from verl.experimental.reward_loop.reward_loop import RewardLoopWorker  # noqa: E402
from verl.utils.ray_utils import get_event_loop  # noqa: E402

N = 4
from checks import CHECKS, WAITING, check  # noqa: E402


def build_tokenizer(out_dir):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<eos>", "<bos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["What is 2+2? The answer is 4, good.", "Hello world! 0123456789 bad"] * 20, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
    hf.save_pretrained(out_dir)
    return hf


def make_config(tok_dir, addr):
    """The keys RewardLoopWorker, load_reward_manager and the manager read (verl 0.9 layout). In a
    real run these are Hydra overrides of verl.trainer.main_ppo:
        reward.reward_manager.source=importlib reward.reward_manager.module.path=pkg://grm_client.verl
        reward.reward_manager.name=GRMRewardManager +reward.reward_kwargs.grm_addr=ADDR ..."""
    return OmegaConf.create({
        "actor_rollout_ref": {"model": {"path": tok_dir, "tokenizer_path": None}, "rollout": {"n": N}},
        "reward": {
            "num_workers": 2,
            "custom_reward_function": {"path": None, "name": "compute_score"},
            "reward_manager": {"source": "importlib", "name": "GRMRewardManager",
                               "module": {"path": "pkg://grm_client.verl", "name": "custom_reward_manager"}},
            "reward_kwargs": {"grm_addr": addr, "grm_k": 2, "grm_max_new_tokens": 32, "grm_seed": 3,
                              "grm_group_wait_ms": 20000, "grm_timeout_s": 120},
            "reward_model": {"enable": False, "model_path": None},
            "sandbox_fusion": {"url": None},
        },
    })


def make_batch(tok, prompt, responses, uid, prompt_len=24, resp_len=16):
    """Like the trainer's batch: left-padded prompts, right-padded responses ending in EOS,
    non-tensor columns data_source / reward_model / extra_info / uid / raw_prompt."""
    p = tok(prompt, add_special_tokens=False)["input_ids"][-prompt_len:]
    rows_p, rows_r, rows_m = [], [], []
    for r in responses:
        rid = (tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])[:resp_len]
        rows_p.append([tok.pad_token_id] * (prompt_len - len(p)) + p)
        rows_r.append(rid + [tok.pad_token_id] * (resp_len - len(rid)))
        rows_m.append([0] * (prompt_len - len(p)) + [1] * len(p) + [1] * len(rid) + [0] * (resp_len - len(rid)))
    prompts, resps, mask = torch.tensor(rows_p), torch.tensor(rows_r), torch.tensor(rows_m)
    n = len(responses)
    batch = TensorDict({"prompts": prompts, "responses": resps, "input_ids": torch.cat([prompts, resps], dim=1),
                        "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}, batch_size=n)
    raw = np.empty(n, dtype=object)
    for i in range(n):
        raw[i] = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": prompt}]
    non_tensor = {
        "data_source": np.array(["grm_check"] * n, dtype=object),
        "reward_model": np.array([{"style": "model", "ground_truth": ""}] * n, dtype=object),
        "extra_info": np.array([{"index": 0} for _ in range(n)], dtype=object),
        "uid": np.array([uid] * n, dtype=object),
        "raw_prompt": raw,
        "__num_turns__": np.array([2] * n),
    }
    return DataProto(batch=batch, non_tensor_batch=non_tensor)


def batch(tok, tag):
    return DataProto.concat([
        make_batch(tok, "What is 2+2?", ["4 good", "5 bad", "four good", "22 bad"], f"uid-A-{tag}"),
        make_batch(tok, "Say hello.", ["hello good", "bye bad", "hi good", "no bad"], f"uid-B-{tag}"),
    ])


def summarize(path, data, outs):
    scores = [o["reward_score"] for o in outs]
    infos = [o["reward_extra_info"] for o in outs]
    check(f"{path}: one score per sample in [0, 1]", len(scores) == 2 * N and all(0 <= s <= 1 for s in scores), scores)
    check(f"{path}: same extra keys on every sample", len({tuple(sorted(i)) for i in infos}) == 1, infos)
    check(f"{path}: no request failed", all(i["grm_error"] == 0 for i in infos), infos)
    for g in range(2):
        part = scores[g * N:(g + 1) * N]  # responses: good, bad, good, bad
        check(f"{path}: good beats bad in group {g}", min(part[0], part[2]) > max(part[1], part[3]), part)
    if all(i["grm_group_size"] > 1 for i in infos):
        check(f"{path}: each uid judged as one group of {N}", all(i["grm_group_size"] == N and i["grm_group_partial"] == 0
                                                                 for i in infos), infos)
    else:
        WAITING.append(f"{path}: samples judged as groups (grm_group_size {N}, the router's group barrier)")
    uids = list(data.non_tensor_batch["uid"])
    return {"uids": uids, "scores": scores, "extra_info": infos}


def main(addr):
    wd = tempfile.mkdtemp(prefix="verl_check_")
    tok_dir = os.path.join(wd, "tok")
    tok = build_tokenizer(tok_dir)
    cfg = make_config(tok_dir, addr)
    loop = get_event_loop()  # the managers capture this loop when built: run everything on it
    workers = [RewardLoopWorker(cfg, reward_router_address=None) for _ in range(cfg.reward.num_workers)]
    mgr = workers[0].reward_manager
    check("manager loaded by importlib from pkg://grm_client.verl",
          type(mgr).__name__ == "GRMRewardManager" and type(mgr).__module__ == "grm_client.verl", type(mgr))
    check("settings from reward.reward_kwargs", mgr.settings["grm_addr"] == addr and mgr.settings["grm_k"] == 2
          and mgr.group_size == N, mgr.settings)
    out = {}
    # Streaming: one 1-sample DataProto per finished rollout, sent to a random reward worker.
    data = batch(tok, "stream")
    rng = random.Random(0)
    order = list(range(len(data)))
    rng.shuffle(order)

    async def one(i):
        await asyncio.sleep(0.02 * order.index(i))  # rollouts finish at different times
        return await rng.choice(workers).compute_score(data[i:i + 1])

    t0 = time.time()
    outs = loop.run_until_complete(asyncio.gather(*[one(i) for i in range(len(data))]))
    out["streaming"] = summarize("streaming", data, outs)
    out["streaming"]["wall_s"] = round(time.time() - t0, 3)
    # Colocated: RewardLoopManager.compute_rm_score -> worker.compute_score_batch(chunk).
    data = batch(tok, "batch")
    t0 = time.time()
    outs = loop.run_until_complete(workers[0].compute_score_batch(data))
    out["colocated"] = summarize("colocated", data, outs)
    out["colocated"]["wall_s"] = round(time.time() - t0, 3)
    rm = type(mgr).assemble_rm_scores(data, [o["reward_score"] for o in outs])
    check("assemble_rm_scores places one score per row", rm.shape[0] == 2 * N and int((rm != 0).sum()) <= 2 * N)
    out["rm_scores_rows"] = [round(float(rm[i].sum()), 4) for i in range(rm.shape[0])]
    return out


if __name__ == "__main__":
    with contextlib.redirect_stdout(sys.stderr):
        out = main(sys.argv[1])
    out["checks"] = len(CHECKS)
    out["waiting_on_server"] = WAITING
    print(json.dumps(out, default=str), file=RESULT_OUT, flush=True)
