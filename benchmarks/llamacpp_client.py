"""Run by benchmarks/serve_latency.py inside its own llama-cpp-python venv (not a project dependency).

Reads {"gguf", "prompts", "new_tokens", "threads"} as JSON on stdin; serves the prompts one after
another (llama-cpp-python's Llama object decodes one sequence at a time), streaming, greedy; prints
one JSON line per request: {"start", "first", "end", "tokens"} (perf_counter seconds), then peak RSS.
"""

import json
import sys
import time

from llama_cpp import Llama

job = json.load(sys.stdin)
llm = Llama(model_path=job["gguf"], n_ctx=512, n_threads=job["threads"], n_batch=512, verbose=False)
llm.create_completion(job["prompts"][0], max_tokens=4, temperature=0)  # warm-up
for prompt in job["prompts"]:
    start = time.perf_counter()
    first, tokens = None, 0
    for _ in llm.create_completion(prompt, max_tokens=job["new_tokens"], temperature=0, stream=True):
        first = first or time.perf_counter()
        tokens += 1
    print(
        json.dumps({"start": start, "first": first, "end": time.perf_counter(), "tokens": tokens}), flush=True
    )
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over execve, so it would report the parent's peak
with open("/proc/self/status") as status:
    hwm = next(line for line in status if line.startswith("VmHWM:"))
print(json.dumps({"peak_rss_mb": int(hwm.split()[1]) / 1024}), flush=True)
