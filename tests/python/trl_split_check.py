"""TRL 1.16's GRPOTrainer on two CPU processes (torchrun, gloo) with per_device_train_batch_size=2
and num_generations=4, so that every GRPO group is split between the ranks, each rank calling
grm_client.trl.GRMReward with its half. Checks that both halves are sent under the same group
key and size 4 (the launcher's environment gives both ranks the same run prefix), and, where
the answers carry a GroupResult (a router with the group barrier), that the router judged the
two halves as one group of 4 from 2 members.

    PYTHONPATH=clients/python .venv-trainers/bin/python tests/python/trl_split_check.py GRPC_ADDR

Launches itself with `python -m torch.distributed.run --standalone --nproc_per_node 2`; prints
one JSON line.
"""
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

NUM_GENERATIONS, STEPS = 4, 2


def rank_main(addr, out_dir):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch
    from trl import GRPOConfig, GRPOTrainer

    import trl_check as tc
    from grm_client.trl import GRMReward

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    cls = tc.recording(GRMReward)
    cls.calls = []
    with contextlib.redirect_stdout(sys.stderr):
        tok = tc.build_tokenizer(os.path.join(out_dir, f"tok{rank}"))
        model = tc.build_model(tok)
        reward = cls(addr, k=2, num_generations=NUM_GENERATIONS, max_new_tokens=32, timeout=120,
                     group_wait_ms=30000, seed=1)
        args = GRPOConfig(output_dir=os.path.join(out_dir, f"out{rank}"), use_cpu=True, bf16=False,
                          gradient_checkpointing=False, per_device_train_batch_size=2,
                          num_generations=NUM_GENERATIONS, max_completion_length=8, max_steps=STEPS,
                          learning_rate=1e-3, logging_steps=1, report_to="none", save_strategy="no", use_vllm=False,
                          seed=0, dataloader_num_workers=0, ddp_backend="gloo")
        trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=[reward], args=args,
                              train_dataset=tc.dataset("standard"))
        trainer.train()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "world_size": reward.world_size, "prefix": reward.group_prefix,
                   "calls": [{"step": c["step"], "rewards": c["rewards"], "requests": c["requests"],
                              "answers": c["answers"]} for c in cls.calls],
                   "log_history": [{k: v for k, v in h.items() if k.startswith(("rewards/", "grm/"))}
                                   for h in trainer.state.log_history]}, f, default=str)


def check(name, cond, detail, checks):
    if not cond:
        print(json.dumps({"failed": name, "detail": detail}, default=str), file=sys.stderr)
        raise AssertionError(f"{name}: {detail}")
    checks.append(name)


def parent_main(addr):
    checks, waiting = [], []
    with tempfile.TemporaryDirectory() as wd:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        t0 = time.time()
        p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            os.path.abspath(__file__), addr, "--rank-out", wd], env=env, stdout=sys.stderr,
                           timeout=540)
        wall = time.time() - t0
        check("torchrun succeeded", p.returncode == 0, p.returncode, checks)
        ranks = [json.load(open(os.path.join(wd, f"rank{r}.json"))) for r in (0, 1)]
    check("two processes", [r["world_size"] for r in ranks] == [2, 2], [r["world_size"] for r in ranks], checks)
    check("same run prefix on both ranks", ranks[0]["prefix"] == ranks[1]["prefix"], [r["prefix"] for r in ranks], checks)
    check(f"{STEPS} calls per rank", all(len(r["calls"]) == STEPS for r in ranks), None, checks)
    grouped = 0
    for step in range(STEPS):
        q0, q1 = (r["calls"][step]["requests"] for r in ranks)
        check("each rank sends its half as one member", len(q0) == len(q1) == 1 and q0[0]["n"] == q1[0]["n"] == 2,
              (q0, q1), checks)
        check("both halves under one key, size 4", q0[0]["group"] == q1[0]["group"] and q0[0]["group"]["size"] == 4,
              (q0, q1), checks)
        for r in ranks:
            a = r["calls"][step]["answers"][0]
            check("answered", "error" not in a, a, checks)
            if a.get("group") is not None:
                grouped += 1
                g = a["group"]
                check("judged as one group of 4 from 2 members", g["responses"] == 4 and g["members"] == 2
                      and not g["partial"] and 1 <= g["size"] <= 4, g, checks)
    if grouped == 0:
        waiting.append("the two halves judged as one group (GroupResult members=2, the router's group barrier)")
    print(json.dumps({"wall_s": round(wall, 2), "ranks": ranks, "checks": len(checks), "waiting_on_server": waiting},
                     default=str))


if __name__ == "__main__":
    if "--rank-out" in sys.argv:
        rank_main(sys.argv[1], sys.argv[sys.argv.index("--rank-out") + 1])
    else:
        parent_main(sys.argv[1])
