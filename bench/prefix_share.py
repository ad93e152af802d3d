"""Prompt positions computed for one GRM request in `grm serve`, against its prompts' trie.

A request of n responses and k samples has up to n! distinct prompts (each sample its own
order) sharing a header; the router cuts the k samples into chunks that a worker runs at once.
The ideal is each position of the prompts' trie computed once. Usage:

    python3 bench/prefix_share.py GRM [CHUNK_SAMPLES ...]

GRM is the `grm` binary (run from the checkout: the tokenizer is models/grm's); `grm serve` runs with the embedded models and no prefix cache (so
that nothing is served from an earlier request), once per --chunk-samples value given
(default: 8, the default, and 64, one chunk). Prints one JSON line per run.
"""

import json
import socket
import subprocess
import sys
import time

QUERY = "A shop sells 17 boxes of 24 pencils and 9 boxes of 36 pencils. How many pencils in all?"
RESPONSES = [
    "17 boxes of 24 is 17 * 24 = 408 pencils. 9 boxes of 36 is 9 * 36 = 324 pencils. "
    "Together 408 + 324 = 732. The shop sells 732 pencils.",
    "First 17 * 24 = 398, then 9 * 36 = 324, and 398 + 324 = 722 pencils in all.",
    "Each box has about 30 pencils and there are 26 boxes, so 780 pencils.",
    "24 + 36 = 60 pencils a pair of boxes; 17 + 9 = 26 boxes; 60 * 13 = 780. Answer: 780.",
]
K = 32
SEED = 7


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args, stdin=""):
    out = subprocess.run(args, input=stdin, capture_output=True, text=True, check=True)
    return out.stdout


def trie_nodes(grm, request):
    nodes = set()
    for s in range(K):
        text = run([grm, "judge", "prompt", "--sample", str(s)], json.dumps(request))
        ids = json.loads(run([grm, "model", "tokenize", "--model", "models/grm"], text))["tokens"]
        for i in range(1, len(ids) + 1):
            nodes.add(tuple(ids[:i]))
    return len(nodes)


def measure(grm, chunk_samples, request):
    port = free_port()
    serve = subprocess.Popen(
        [grm, "serve", "--listen", f"127.0.0.1:{port}", "--http-listen", "",
         "--no-prefix-cache", "--chunk-samples", str(chunk_samples)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        serve.stdout.readline()  # the ready line
        args = [grm, "score", "--addr", f"127.0.0.1:{port}", "--json", "--query", QUERY,
                "--k", str(K), "--seed", str(SEED)]
        for r in RESPONSES:
            args += ["--response", r]
        t = time.time()
        answer = json.loads(run(args))
        wall = time.time() - t
        usage = answer["usage"]
        return usage["prompt_tokens"] - usage.get("cached_prompt_tokens", 0), wall
    finally:
        serve.terminate()
        serve.wait()


def main():
    grm = sys.argv[1]
    sizes = [int(a) for a in sys.argv[2:]] or [8, 64]
    request = {"query": QUERY, "responses": RESPONSES, "sampling": {"k": K, "seed": SEED}}
    ideal = trie_nodes(grm, request)
    for c in sizes:
        computed, wall = measure(grm, c, request)
        print(json.dumps({"n": len(RESPONSES), "k": K, "chunk_samples": c,
                          "computed": computed, "trie": ideal,
                          "over_trie": round(computed / ideal - 1, 4), "wall_s": round(wall, 2)}))


if __name__ == "__main__":
    main()
