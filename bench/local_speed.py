"""Local generation speed of a model (the embedded SmolLM2-135M by default, or `--model FILE.gguf`):
the floor (raw fp32 `model.generate`) beside `TransformersBackend` as configured by default, the
llama.cpp engine on the GGUF as it is, and (for the embedded model) each candidate precision, in one
run; then the one-shot `kernelchat "What is 2**100? Use Python."` wall time, cold and warm, split into
its phases, on each engine: with the model kept loaded in the background (the command line's default)
and loaded in the command.

    python bench/local_speed.py [--model hf:smollm2|FILE.gguf] [--tokens 128] [--baseline REV] [--skip-oneshot]

Each candidate runs in its own process (peak memory is that process's), greedy, on two prompts of
about 150 and 1000 tokens: prompt tokens/s (a 1-token reply from an empty cache), generated tokens/s
(the rest of `--tokens`), peak RSS, and whether the greedy tokens equal raw fp32's.

`--baseline REV` also times the one-shot of an older commit (checked out into a temporary git
worktree, run with this venv): today's code beside the one before, on the same machine, alternately.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUESTION = "What is 2**100? Use Python."
ESSAY = ("Explain step by step, in detail, how you would check each stage of this project for mistakes, which "
         "plots you would draw, and what numbers you would expect to see for accuracy and calibration.")
PROJECT = ("You are reviewing a small data-analysis project. The project loads a CSV of passengers, cleans "
           "missing ages by the median of their class, encodes sex and port of embarkation, trains a "
           "logistic regression and a gradient-boosted tree, and compares them on a held-out split. ")
REPEATS = 2  # generation timed this many times per prompt, the best kept
CANDIDATES = {
    "fp32 generate (floor)": dict(kind="raw", precision="fp32"),
    "TransformersBackend default": dict(kind="backend", precision=None),
    "LlamaCppBackend (llama.cpp, the GGUF)": dict(kind="llama", precision="gguf"),
    "TransformersBackend fp32": dict(kind="backend", precision="fp32"),
    "fp16 weights, Linear (incl. lm_head)": dict(kind="raw", precision="fp16"),
    "fp16 weights, Linear but lm_head": dict(kind="raw", precision="fp16-body"),
    "bf16 weights": dict(kind="raw", precision="bf16"),
}


def prompts() -> dict[str, list]:
    """About 150 and 1000 prompt tokens, as chat messages."""
    table = "\n".join(f"{i},{'male' if i % 3 else 'female'},{20 + i % 50},{i % 3 + 1},{'SCQ'[i % 3]},{i % 2}"
                      for i in range(120))
    return {"150": [{"role": "user", "content": PROJECT + ESSAY}],
            "1000": [{"role": "user", "content": PROJECT + "The first rows of the data:\n"
                      "id,sex,age,class,port,survived\n" + table + "\n\n" + ESSAY}]}


ENGINE_ROWS = 3  # the floor, the transformers default and llama.cpp: the rows for a model other than the embedded


def measure(spec: dict, n: int, model: str = "hf:smollm2") -> dict:
    """In this process: load one candidate and time it on both prompts."""
    import torch

    from agent.core.messages import Message
    from agent.models.transformers_backend import TransformersBackend
    from agent.models.precision import apply as apply_precision

    t0 = time.perf_counter()
    precision = spec["precision"]
    if spec["kind"] == "llama":
        return measure_llama(n, t0, model)
    if spec["kind"] == "backend":
        backend = TransformersBackend(model, progress=False, **({} if precision is None else {"precision": precision}))
        if backend.fp16 is not None:
            backend.fp16.wait()  # packed in the background; the warm-up request swaps it in
    else:
        backend = TransformersBackend(model, progress=False, precision="bf16" if precision == "bf16" else "fp32")
        if precision in ("fp16", "fp16-body"):
            apply_precision(backend.hf_model, "cpu", "fp16", frozenset({"lm_head"}) if precision == "fp16-body" else frozenset())
    load = time.perf_counter() - t0
    out: dict = {"load_s": load, "precision": getattr(backend, "precision", precision)}
    tok = backend.tokenizer
    for name, msgs in prompts().items():
        if spec["kind"] == "raw":
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            x = ids["input_ids"]
            kw = dict(attention_mask=torch.ones_like(x), do_sample=False, temperature=None, top_p=None, top_k=None,
                      pad_token_id=backend.stop_ids[0], eos_token_id=backend.stop_ids)
            model = backend.hf_model
            with torch.inference_mode():
                model.generate(x, max_new_tokens=2, **kw)  # warm-up
                t = time.perf_counter()
                model.generate(x, max_new_tokens=1, **kw)
                t1 = time.perf_counter() - t
                tn = math.inf
                for _ in range(REPEATS):  # the best of a few: the machine's other work only slows
                    t = time.perf_counter()
                    seq = model.generate(x, max_new_tokens=n, **kw)[0, x.shape[1]:].tolist()
                    tn = min(tn, time.perf_counter() - t)
            n_prompt = x.shape[1]
        else:
            m = [Message(role=d["role"], content=d["content"]) for d in msgs]

            def run(k: int):
                backend._cache, backend._cache_ids = None, []  # noqa: SLF001 - from an empty cache, like raw
                for ev in backend.stream(m, max_tokens=k, temperature=0):
                    pass
                return ev.reply

            t1, tn, reply = timed(run, n)
            seq = backend.last_tokens
            n_prompt = reply.usage.prompt_tokens
        out[name] = {"prompt_tokens": n_prompt, "prompt_tps": n_prompt / t1,
                     "gen_tps": (len(seq) - 1) / max(tn - t1, 1e-9), "tokens": seq}
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def guides_cost(calls: int = 300) -> tuple[float, float]:
    """Microseconds per generated token of the small-model decoding guides (grounded numbers and the
    example bonus, agent/models/transformers_guides.py) inside a code block, 40 and 200 tokens into the reply."""
    import torch
    from transformers import AutoTokenizer

    from agent.models.embedded import embedded_model_dir
    from agent.models.transformers_guides import GroundedCode

    tok = AutoTokenizer.from_pretrained(embedded_model_dir(progress=False), local_files_only=True)
    prompt = tok("What is 2**100? " * 10, add_special_tokens=False)["input_ids"]
    favoured = tok("result = 2 ** 64\nprint(result)", add_special_tokens=False)["input_ids"]
    out = []
    for code in ("```python\nresult = 2 ** 10", "```python\n" + "total = 0\nfor i in range(100):\n    total += i\n" * 8):
        ids = torch.tensor([prompt + tok(code, add_special_tokens=False)["input_ids"]])
        guide = GroundedCode(tok, len(prompt), {"2", "100", "10", "0", "1"}, favoured, 2.0)
        scores = torch.zeros(1, len(tok))
        guide(ids, scores)  # warm-up
        t = time.perf_counter()
        for _ in range(calls):
            guide(ids, scores)
        out.append((time.perf_counter() - t) / calls * 1e6)
    return out[0], out[1]


def timed(run, n: int):
    """(seconds for a 1-token reply, best seconds for an n-token one, that reply), after a warm-up."""
    run(2)
    t = time.perf_counter()
    run(1)
    t1 = time.perf_counter() - t
    tn, reply = math.inf, None
    for _ in range(REPEATS):  # the best of a few: the machine's other work only slows
        t = time.perf_counter()
        reply = run(n)
        tn = min(tn, time.perf_counter() - t)
    return t1, tn, reply


def measure_llama(n: int, t0: float, model: str) -> dict:
    """The llama.cpp engine on the model's GGUF, from an empty KV cache each time."""
    from agent.core.messages import Message
    from agent.models.llamacpp_backend import LlamaCppBackend

    backend = LlamaCppBackend(model)
    out: dict = {"load_s": time.perf_counter() - t0, "precision": "gguf"}
    for name, msgs in prompts().items():
        m = [Message(role=d["role"], content=d["content"]) for d in msgs]

        def run(k: int):
            backend.llm.reset()  # from an empty cache, like raw
            for ev in backend.stream(m, max_tokens=k, temperature=0):
                pass
            return ev.reply

        t1, tn, reply = timed(run, n)
        out[name] = {"prompt_tokens": reply.usage.prompt_tokens, "prompt_tps": reply.usage.prompt_tokens / t1,
                     "gen_tps": (len(backend.last_tokens) - 1) / max(tn - t1, 1e-9), "tokens": backend.last_tokens}
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_candidate(name: str, n: int, model: str) -> dict:
    cmd = [sys.executable, __file__, "--one", name, "--tokens", str(n), "--model", model]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)  # a 1.5B's first conversion
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def oneshot(python: str, cwd: Path, env: dict, timings: bool, flags: list[str] = ()) -> tuple[float, dict]:
    """One `kernelchat QUESTION` in a fresh process: (wall seconds, its phase timings if asked)."""
    cmd = [python, "-m", "agent", QUESTION, *flags] + (["--timings"] if timings else [])
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"one-shot failed in {cwd}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    phases = {}
    for line in done.stderr.splitlines():
        if line.startswith("timings: "):
            phases = json.loads(line.removeprefix("timings: "))
    return wall, phases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--model", default="hf:smollm2", help="the embedded model, or a .gguf file")
    ap.add_argument("--baseline", help="a git revision to time the one-shot of, beside this tree's")
    ap.add_argument("--runs", type=int, default=3, help="warm one-shot runs per tree")
    ap.add_argument("--skip-oneshot", action="store_true")
    ap.add_argument("--oneshot-only", action="store_true", help="only the one-shot table")
    ap.add_argument("--only", help="a comma-separated subset of the candidates")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(CANDIDATES[args.one], args.tokens, args.model)))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    import torch
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
                  f"greedy, {args.tokens} generated tokens")
    embedded = args.model == "hf:smollm2"
    default = list(CANDIDATES) if embedded else list(CANDIDATES)[:ENGINE_ROWS]
    names = [] if args.oneshot_only else [n for n in default if not args.only or n in args.only.split(",")]
    results = {name: run_candidate(name, args.tokens, args.model) for name in names}
    if names:
        candidates_table(console, results, args.tokens, args.model)
    if args.skip_oneshot:
        return
    oneshot_table(console, args)


def candidates_table(console, results: dict, n: int, model: str) -> None:
    from rich.table import Table

    floor = results.get("fp32 generate (floor)") or run_candidate("fp32 generate (floor)", n, model)
    default = results.get("TransformersBackend default")
    name = "embedded SmolLM2-135M" if model == "hf:smollm2" else Path(model).name
    table = Table(title=f"Local generation, {name} (ratios against raw fp32 generate and the transformers default)")
    for col in ("candidate", "prompt tok/s @150", "prompt tok/s @1000", "gen tok/s @150", "gen tok/s @1000",
                "gen vs floor", "gen vs default", "peak MB", "greedy = fp32"):
        table.add_column(col, justify="left" if col == "candidate" else "right")
    for name, r in results.items():
        same = all(r[p]["tokens"] == floor[p]["tokens"] for p in ("150", "1000"))
        ratio = statistics.mean(r[p]["gen_tps"] / floor[p]["gen_tps"] for p in ("150", "1000"))
        vs_default = (f"{statistics.mean(r[p]['gen_tps'] / default[p]['gen_tps'] for p in ('150', '1000')):.2f}x"
                      if default else "-")
        table.add_row(name, *(f"{r[p]['prompt_tps']:.0f}" for p in ("150", "1000")),
                      *(f"{r[p]['gen_tps']:.1f}" for p in ("150", "1000")), f"{ratio:.2f}x", vs_default,
                      f"{r['peak_mb']:.0f}", "yes" if same else "NO")
    console.print(table)
    console.print(f"prompt tokens: {floor['150']['prompt_tokens']} and {floor['1000']['prompt_tokens']}; "
                  f"load (s): " + ", ".join(f"{k.split(' (')[0]} {r['load_s']:.2f}" for k, r in results.items()))
    if model != "hf:smollm2":
        return
    near, far = guides_cost()
    per_token = 1e6 / default["150"]["gen_tps"] if default else None
    console.print(f"small-model decoding guides: {near:.0f} us per token 40 tokens into a code block, {far:.0f} us "
                  f"200 tokens in" + (f" ({far / per_token:.1%} of a generated token's {per_token / 1000:.0f} ms)"
                                      if per_token else ""))


def oneshot_table(console, args) -> None:
    """The one shot three ways: this tree with the model kept loaded (the command line's default),
    this tree with the model loaded in the command (--keep-alive 0), and the baseline commit."""
    from rich.table import Table

    runtime = tempfile.mkdtemp(prefix="kc-", dir="/tmp")  # the resident servers' sockets, apart
    kept = {"KERNELCHAT_KEEP_ALIVE": "600", "XDG_RUNTIME_DIR": runtime}
    variants = {"kept loaded (default)": (ROOT, kept, []),
                "in the command (--keep-alive 0)": (ROOT, {"KERNELCHAT_KEEP_ALIVE": "0"}, []),
                "transformers, kept loaded": (ROOT, kept, ["--engine", "transformers"]),
                "transformers, in the command": (ROOT, {"KERNELCHAT_KEEP_ALIVE": "0"}, ["--engine", "transformers"])}
    tmp = None
    if args.baseline:
        tmp = tempfile.mkdtemp(prefix="kernelchat-baseline-")
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", tmp, args.baseline], check=True,
                       capture_output=True)
        variants[f"baseline {args.baseline}"] = (Path(tmp), {}, [])

    def env_of(label: str) -> dict:
        tree, extra, _ = variants[label]
        env = {**os.environ, "PYTHONPATH": str(tree), **extra}
        env.pop("OPENAI_API_KEY", None)
        return env

    def stop_servers() -> None:
        subprocess.run([sys.executable, "-m", "agent", "models", "--stop"], capture_output=True,
                       env=env_of("kept loaded (default)"), cwd=ROOT)

    try:
        rows = {}
        for label, (tree, _, flags) in variants.items():
            with tempfile.TemporaryDirectory() as cache:  # cold: nothing cached (a GGUF converted again), no server
                cold, _ = oneshot(sys.executable, tree, {**env_of(label), "KERNELCHAT_CACHE": cache}, False, flags)
            rows[label] = {"cold": cold, "first": None, "warm": [], "warm_phases": []}
        stop_servers()  # the cold run's server (of the cache just deleted)
        for label in ("kept loaded (default)", "transformers, kept loaded"):  # after keep_alive ran out
            rows[label]["first"], _ = oneshot(sys.executable, ROOT, env_of(label), False, variants[label][2])
        for _ in range(args.runs):  # alternately, so that the machine's load falls on all alike
            for label, (tree, _, flags) in variants.items():
                wall, phases = oneshot(sys.executable, tree, env_of(label), tree == ROOT, flags)
                rows[label]["warm"].append(wall)
                rows[label]["warm_phases"].append(phases)
        shot = Table(title=f"One shot: kernelchat {QUESTION!r}, embedded model (seconds; warm: median of {args.runs}; "
                           f"default engine: llama.cpp)")
        for col in ("model", "cold", "server starts", "warm", "warm vs baseline", "import", "model load",
                    "kernel start", "generation", "execution"):
            shot.add_column(col, justify="left" if col == "model" else "right")
        base = next((r for k, r in rows.items() if k.startswith("baseline")), None)
        keys = ("import", "model_load", "kernel_start", "generation", "execution")
        for label, r in rows.items():
            warm = statistics.median(r["warm"])
            phases = ({k: statistics.median(p.get(k, 0.0) for p in r["warm_phases"]) for k in keys}
                      if r["warm_phases"][0] else {})
            ratio = f"{warm / statistics.median(base['warm']):.2f}x" if base else "-"
            shot.add_row(label, f"{r['cold']:.1f}", "-" if r["first"] is None else f"{r['first']:.1f}", f"{warm:.1f}",
                         ratio, *(f"{phases[k]:.2f}" if phases else "-" for k in keys))
        console.print(shot)
        console.print("cold: nothing cached (for transformers the GGUF converted again; no server). server starts: the first command "
                      "after keep_alive ran out. warm: the model files cached (and, kept loaded, the server up). "
                      "Phases overlap: the kernel starts while the model loads.")
    finally:
        stop_servers()
        subprocess.run(["rm", "-rf", runtime])
        if tmp:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", tmp], capture_output=True)


if __name__ == "__main__":
    main()
