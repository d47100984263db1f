"""Local-model benchmark for the embedded SmolLM2: raw model.generate vs TransformersBackend vs `transformers serve`.

    python bench/backend_bench.py [--tokens 64] [--skip-cold] [--skip-serve] [--skip-resident] [--steps 10]

Prints: load times (cold GGUF conversion into a temp cache, cached load), prompt and generated
tokens/s for each path, a growing multi-turn conversation with and without KV-cache reuse, and
tiktoken counting throughput (when agent.models.tokens exists).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from agent.models import embedded  # noqa: E402
from agent.models.transformers_backend import TransformersBackend  # noqa: E402
from agent.core.messages import Message  # noqa: E402

console = Console()
PROMPT = ("You are reviewing a small data-analysis project. The project loads a CSV of passengers, cleans "
          "missing ages by the median of their class, encodes sex and port of embarkation, trains a "
          "logistic regression and a gradient-boosted tree, and compares them on a held-out split. "
          "Explain step by step, in detail, how you would check each stage for mistakes, which plots "
          "you would draw, and what numbers you would expect to see for accuracy and calibration.")
FOLLOW_UPS = ["What is 12 * 7?", "Now add 5 to that.", "Write it in words.", "Is it prime?",
              "Name a prime near it.", "What is its square?", "Halve the square.", "Is that an integer?",
              "Summarise our numbers so far.", "Thanks, one last word?"]


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def in_own_thread(fn):
    """fn() on a thread that then ends. Measured: once the main thread has run one parallel torch op
    (OpenMP), generation on TransformersBackend's generation thread runs at half speed for the rest of the
    process (38 -> 19 tok/s here); a thread that ends takes its OpenMP team with it."""
    result = []
    t = threading.Thread(target=lambda: result.append(fn()))
    t.start()
    t.join()
    return result[0]


def raw_generate(backend: TransformersBackend, ids: list[int], n: int) -> tuple[float, float]:
    """Plain model.generate: (prompt tok/s from a 1-token run, generated tok/s over n forced tokens)."""
    model = backend.hf_model
    x = torch.tensor([ids])
    kw = dict(attention_mask=torch.ones_like(x), do_sample=False, temperature=None, top_p=None, top_k=None,
              pad_token_id=backend.stop_ids[0])
    with torch.inference_mode():
        model.generate(x, max_new_tokens=2, **kw)  # warm-up
        _, t1 = timed(lambda: model.generate(x, max_new_tokens=1, **kw))
        _, tn = timed(lambda: model.generate(x, max_new_tokens=n, min_new_tokens=n, **kw))
    return len(ids) / t1, (n - 1) / (tn - t1)


def backend_speed(backend: TransformersBackend, msgs: list[Message], n: int) -> tuple[float, float, int]:
    """TransformersBackend.stream from an empty KV cache, timed like raw_generate: (prompt tok/s from a
    1-token reply, generated tok/s over the rest, tokens generated; the model may stop before n)."""
    def run(k: int):
        backend._cache, backend._cache_ids = None, []
        for ev in backend.stream(msgs, max_tokens=k):
            pass
        return ev.reply.usage

    u1, t1 = timed(lambda: run(1))
    un, tn = timed(lambda: run(n))
    return u1.prompt_tokens / t1, (un.completion_tokens - 1) / (tn - t1), un.completion_tokens


def resident_speed(msgs: list[Message], n: int) -> tuple[float, int, int]:
    """The command line's default path: a ResidentBackend (its server started in a private runtime
    folder, fp16 weights packed) streaming over the socket. Generated tok/s from the first text to the
    end (the prompt comes from the server's KV cache after the warm-up, as for a second command):
    (generated tok/s, tokens generated, prompt tokens from the cache)."""
    from agent.models.resident import ResidentBackend, stop_servers

    runtime = tempfile.mkdtemp(prefix="kc-", dir="/tmp")
    old = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = runtime
    try:
        backend = ResidentBackend("hf:smollm2", keep_alive=60, progress=False)
        for _ in range(3):  # the first runs while the fp16 weights are packed; then they are swapped in
            list(backend.stream(msgs, max_tokens=4))
        time.sleep(3)
        list(backend.stream(msgs, max_tokens=2))
        best = (0.0, 0, 0)
        for _ in range(2):
            first = None
            t = time.perf_counter()
            for ev in backend.stream(msgs, max_tokens=n):
                if first is None and getattr(ev, "text", ""):
                    first = time.perf_counter()
            end = time.perf_counter()
            u = ev.reply.usage
            g = (u.completion_tokens - 1) / (end - (first or t))
            if g > best[0]:
                best = (g, u.completion_tokens, u.cached_tokens)
        return best
    finally:
        stop_servers()
        if old is None:
            os.environ.pop("XDG_RUNTIME_DIR", None)
        else:
            os.environ["XDG_RUNTIME_DIR"] = old
        shutil.rmtree(runtime, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_speed(folder: Path, msgs: list[Message], n: int) -> tuple[float, float, float, int] | None:
    """`transformers serve` on the converted folder, streamed with the openai SDK:
    (startup s, prompt tok/s ~ prompt / time to first chunk (includes HTTP), generated chunks/s, chunks)."""
    exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
    if exe is None:
        console.print("[yellow]transformers CLI missing: skipping serve[/]")
        return None
    from openai import OpenAI

    port = free_port()
    log = open(Path(tempfile.gettempdir()) / f"kernelchat-serve-{port}.log", "wb")
    t0 = time.perf_counter()
    proc = subprocess.Popen([exe, "serve", "--host", "127.0.0.1", "--port", str(port), str(folder)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.perf_counter() - t0 > 120:
                    console.print(f"[red]serve failed; see {log.name}[/]")
                    return None
                time.sleep(0.3)
        startup = time.perf_counter() - t0
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        model = str(folder)
        body = [m.to_openai() for m in msgs]
        warm = client.chat.completions.create(model=model, messages=body, max_tokens=4, temperature=0)
        prompt_tokens = warm.usage.prompt_tokens if warm.usage else 0
        start = time.perf_counter()
        first, chunks = None, 0
        for chunk in client.chat.completions.create(model=model, messages=body, max_tokens=n, temperature=0,
                                                    stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                chunks += 1
                first = first or time.perf_counter()
        end = time.perf_counter()
        return startup, prompt_tokens / (first - start), (chunks - 1) / (end - first), chunks
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def conversation(backend: TransformersBackend, steps: int, reuse: bool) -> tuple[float, list[str], int]:
    """A growing conversation end to end: (seconds, replies, prompt tokens served from the cache)."""
    backend.reuse_cache = reuse
    backend._cache, backend._cache_ids = None, []
    msgs: list[Message] = []
    replies, cached = [], 0
    start = time.perf_counter()
    for q in FOLLOW_UPS[:steps]:
        msgs.append(Message(role="user", content=q))
        r = backend.complete(msgs, max_tokens=24)
        msgs.append(r.message)
        replies.append(r.message.content or "")
        cached += r.usage.cached_tokens
    backend.reuse_cache = True
    return time.perf_counter() - start, replies, cached


def cell_output(step: int) -> str:
    """About 300 tokens of what a cell prints: a small data frame."""
    rows = [f"{i:>3}  {step * 17 + i * 3:>6}  {((step + 1) * (i + 7)) % 101:>5}.{i % 10}  category_{(i + step) % 5}"
            for i in range(24)]
    return "Output of python:\n     id   value   score  label\n" + "\n".join(rows)


def agent_loop(backend: TransformersBackend, steps: int, reuse: bool) -> tuple[float, int]:
    """The code-interpreter loop's shape: each step adds the model's cell and the cell's printed
    output (~300 tokens) to a prefix that is sent again in full. (seconds, tokens reused)"""
    backend.reuse_cache = reuse
    backend._cache, backend._cache_ids = None, []
    msgs: list[Message] = [Message(role="user", content="Explore the data set step by step with Python.")]
    cached = 0
    start = time.perf_counter()
    for step in range(steps):
        r = backend.complete(msgs, max_tokens=24)
        msgs += [r.message, Message(role="user", content=cell_output(step))]
        cached += r.usage.cached_tokens
    backend.reuse_cache = True
    return time.perf_counter() - start, cached


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--skip-cold", action="store_true", help="skip the ~30 s cold conversion")
    ap.add_argument("--skip-serve", action="store_true")
    ap.add_argument("--fp16", action="store_true", help="also measure the default precision (fp16 weights on a CPU)")
    ap.add_argument("--only-loops", action="store_true", help="only the two multi-step measurements")
    ap.add_argument("--skip-resident", action="store_true", help="skip the kept-loaded model server")
    args = ap.parse_args()
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
                  f"cuda={torch.cuda.is_available()}")

    loads = Table(title="Load times (embedded SmolLM2-135M-Instruct)")
    loads.add_column("step")
    loads.add_column("seconds", justify="right")
    if not args.skip_cold:
        with tempfile.TemporaryDirectory() as tmp:
            old = os.environ.get("KERNELCHAT_CACHE")
            os.environ["KERNELCHAT_CACHE"] = tmp
            try:
                _, cold = timed(lambda: embedded.embedded_model_dir(progress=False))
            finally:
                os.environ.pop("KERNELCHAT_CACHE") if old is None else os.environ.__setitem__("KERNELCHAT_CACHE", old)
        loads.add_row("cold: GGUF -> safetensors conversion (temp cache)", f"{cold:.1f}")
    folder, check = timed(lambda: embedded.embedded_model_dir(progress=False))
    loads.add_row("cached: cache validity check", f"{check:.3f}")
    # fp32 here: raw generate on the same weights is the floor (bench/local_speed.py compares precisions)
    backend, load = timed(lambda: TransformersBackend("hf:smollm2", progress=False, precision="fp32"))
    loads.add_row("cached: TransformersBackend load (tokenizer + weights)", f"{load:.2f}")
    console.print(loads)

    msgs = [Message(role="user", content=PROMPT)]
    ids = backend.encode(msgs)
    n = args.tokens
    if args.only_loops:
        args.skip_serve = True
    speed = Table(title=f"Speed: {len(ids)}-token prompt, {n} generated tokens, greedy, {backend.device}")
    for col in ("path", "prompt tok/s", "generated tok/s", "note"):
        speed.add_column(col, justify="right" if "tok" in col else "left")
    p, g = in_own_thread(lambda: raw_generate(backend, ids, n))
    speed.add_row("raw model.generate (fp32)", f"{p:.0f}", f"{g:.1f}", "min_new_tokens forced")
    backend_speed(backend, msgs, 2)  # warm-up
    runs = [backend_speed(backend, msgs, n) for _ in range(2)]
    p, g, k = max(runs, key=lambda r: r[1])
    speed.add_row("TransformersBackend.stream (fp32)", f"{p:.0f}", f"{g:.1f}", f"{k} tokens, best of 2")
    if args.fp16:
        fp16 = TransformersBackend("hf:smollm2", progress=False)  # the default: fp16 weights on a CPU
        fp16.fp16 and fp16.fp16.wait()
        backend_speed(fp16, msgs, 2)
        p, g, k = backend_speed(fp16, msgs, n)
        speed.add_row(f"TransformersBackend default ({fp16.precision})", f"{p:.0f}", f"{g:.1f}", f"{k} tokens")
        del fp16
    if not args.skip_resident:
        g, k, reuse = resident_speed(msgs, n)
        speed.add_row("ResidentBackend.stream (kept-loaded server, Unix socket)", "-", f"{g:.1f}",
                      f"{k} tokens; {reuse} of the prompt's tokens from the server's KV cache")
    if not args.skip_serve:
        s = serve_speed(folder, msgs, n)
        if s:
            startup, p, g, k = s
            speed.add_row("transformers serve (HTTP, stream)", f"{p:.0f}", f"{g:.1f}",
                          f"{k} chunks; ready after {startup:.1f} s")
    console.print(speed)

    conv = Table(title=f"{args.steps}-step growing conversation (max 24 tokens per reply)")
    for col in ("KV cache", "seconds", "prompt tokens reused"):
        conv.add_column(col)
    # Alternate and keep the best of two each: the machine is shared, single runs are noisy.
    t_reuse, r_reuse, cached = conversation(backend, args.steps, reuse=True)
    t_fresh, r_fresh, _ = conversation(backend, args.steps, reuse=False)
    t_reuse = min(t_reuse, conversation(backend, args.steps, reuse=True)[0])
    t_fresh = min(t_fresh, conversation(backend, args.steps, reuse=False)[0])
    conv.add_row("reused (prefix)", f"{t_reuse:.1f}", str(cached))
    conv.add_row("recomputed", f"{t_fresh:.1f}", "0")
    console.print(conv)
    same = sum(a == b for a, b in zip(r_reuse, r_fresh))
    console.print(f"speedup from KV reuse: [bold]{t_fresh / t_reuse:.2f}x[/]; identical replies {same}/{len(r_reuse)}")

    loop = Table(title=f"{args.steps}-step code-interpreter loop (24-token cells, ~300-token outputs)")
    for col in ("KV cache", "seconds", "prompt tokens reused"):
        loop.add_column(col)
    (a_reuse, a_cached), (a_fresh, _) = agent_loop(backend, args.steps, True), agent_loop(backend, args.steps, False)
    a_reuse = min(a_reuse, agent_loop(backend, args.steps, True)[0])
    a_fresh = min(a_fresh, agent_loop(backend, args.steps, False)[0])
    loop.add_row("reused (prefix)", f"{a_reuse:.1f}", str(a_cached))
    loop.add_row("recomputed", f"{a_fresh:.1f}", "0")
    console.print(loop)
    console.print(f"speedup from KV reuse in the loop: [bold]{a_fresh / a_reuse:.2f}x[/]")

    try:
        tokens = importlib.import_module("agent.models.tokens")
        tps = tokens.counting_throughput("gpt-4o")
        console.print(f"tiktoken (o200k) counting: {tps / 1e6:.2f} M tokens/s")
    except (ImportError, AttributeError) as e:
        console.print(f"[yellow]tiktoken counting skipped: {e}[/]")
    except Exception as e:  # e.g. encodings unavailable offline
        console.print(f"[yellow]tiktoken counting failed: {e}[/]")


if __name__ == "__main__":
    main()
