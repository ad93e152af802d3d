"""Scores one request through the Python client with a token and/or TLS; prints
{"best": ...} or {"error": code} as one JSON line.
Usage: secure_check.py ADDR [--token T] [--ca CA.pem]"""
import argparse
import json

from grm_client import RewardClient, ScoreError

ap = argparse.ArgumentParser()
ap.add_argument("addr")
ap.add_argument("--token")
ap.add_argument("--ca")
a = ap.parse_args()
ca = open(a.ca, "rb").read() if a.ca else None
client = RewardClient(a.addr, timeout=60, token=a.token, root_certificates=ca)
try:
    r = client.score("q?", ["a good", "b bad"], k=2, seed=1)
    print(json.dumps({"best": r.best}))
except ScoreError as e:
    print(json.dumps({"error": e.code}))
