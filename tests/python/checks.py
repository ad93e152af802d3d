"""The checks the trainer scripts share: each named check that held, and what the scripts leave
waiting on the server (asserted empty by tests/trainers.rs)."""
import json
import sys

CHECKS, WAITING = [], []


def check(name, cond, detail=""):
    if not cond:
        print(json.dumps({"failed": name, "detail": detail}, default=str), file=sys.stderr)
        raise AssertionError(f"{name}: {detail}")
    CHECKS.append(name)
