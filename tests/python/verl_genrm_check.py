"""verl 0.9.1's reward loop with a generative reward function of the kind verl's documentation
shows (tests/python/verl_genrm_reward.py: it posts to /v1/chat/completions), loaded by verl's own
custom_reward_function machinery and run by its NaiveRewardManager against `grm serve`'s
OpenAI-compatible API. Prints one JSON line.

    PYTHONPATH=clients/python .venv-trainers/bin/python tests/python/verl_genrm_check.py HTTP_ADDR
"""
import contextlib
import json
import os
import sys
import tempfile

if __name__ == "__main__":
    RESULT_OUT = os.fdopen(os.dup(1), "w")
    sys.stdout.flush()
    os.dup2(2, 1)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VERL_USE_EXTERNAL_PLUGINS", "none")

from omegaconf import OmegaConf  # noqa: E402

from verl import DataProto  # noqa: E402
from verl.experimental.reward_loop.reward_loop import RewardLoopWorker  # noqa: E402
from verl.utils.ray_utils import get_event_loop  # noqa: E402

from checks import CHECKS, check  # noqa: E402
from verl_check import build_tokenizer, make_batch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main(addr):
    wd = tempfile.mkdtemp(prefix="verl_genrm_")
    tok_dir = os.path.join(wd, "tok")
    tok = build_tokenizer(tok_dir)
    cfg = OmegaConf.create({
        "actor_rollout_ref": {"model": {"path": tok_dir, "tokenizer_path": None}, "rollout": {"n": 4}},
        "reward": {
            "num_workers": 1,
            "custom_reward_function": {"path": os.path.join(HERE, "verl_genrm_reward.py"), "name": "compute_score",
                                       "reward_kwargs": {"max_tokens": 48}},
            "reward_manager": {"source": "register", "name": "naive"},
            "reward_kwargs": {},
            "reward_model": {"enable": False, "model_path": None},
            "sandbox_fusion": {"url": None},
        },
    })
    loop = get_event_loop()
    worker = RewardLoopWorker(cfg, reward_router_address=addr)
    check("verl's naive manager runs the custom function",
          type(worker.reward_manager).__name__ == "NaiveRewardManager", type(worker.reward_manager))
    data = DataProto.concat([
        make_batch(tok, "What is 2+2?", ["4 good", "5 bad", "four good", "22 bad"], "uid-A"),
    ])
    for i in range(len(data)):
        data.non_tensor_batch["extra_info"][i] = {"index": i, "question": "What is 2+2?"}
        data.non_tensor_batch["reward_model"][i] = {"style": "model", "ground_truth": "4"}
    outs = loop.run_until_complete(worker.compute_score_batch(data))
    scores = [o["reward_score"] for o in outs]
    infos = [o["reward_extra_info"] for o in outs]
    check("one score per sample in [0, 1]", len(scores) == 4 and all(0 <= s <= 1 for s in scores), scores)
    check("every sample was judged through /v1/chat/completions",
          all(i["judged"] == 1.0 and i["judge_tokens"] > 0 for i in infos), infos)
    return {"scores": scores, "judge_tokens": [i["judge_tokens"] for i in infos]}


if __name__ == "__main__":
    with contextlib.redirect_stdout(sys.stderr):
        out = main(sys.argv[1])
    out["checks"] = len(CHECKS)
    print(json.dumps(out, default=str), file=RESULT_OUT, flush=True)
