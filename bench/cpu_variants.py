"""CPU kernel benchmark: strato's portable (AVX2) llama.cpp build beside its AVX-512 build.

Not a test: a script a human runs on a quiet x86_64 machine with AVX-512, printing one
table (llama-bench's two figures: prompt processing and token generation, tokens/s) and
the AVX-512 / portable ratios. Each round runs each variant in a fresh process, chosen
the way strato chooses at start-up (STRATO_CPU_VARIANT through core/engine/cpu_variant.py),
the variants alternating so that a busy neighbour hurts both alike; medians over rounds.

    .venv/bin/python bench/cpu_variants.py                      # bundled Gemma 3 270M
    .venv/bin/python bench/cpu_variants.py --model big.gguf --rounds 5 --threads 2
    .venv/bin/python bench/cpu_variants.py --quick              # proves it works

Like llama-bench: pp = one batch of `--prompt` tokens on an empty cache; tg = `--gen`
single-token decodes from an empty cache; a short warm-up eval first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("portable", "avx512")


def measure(model: str, threads: int, prompt: int, gen: int) -> dict:
    """In this process: load through strato's choice, time pp and tg."""
    from core.engine import cpu_variant
    from core.engine.llama import ll

    llm = ll.Llama(model_path=model, n_ctx=max(512, prompt + gen + 8), n_batch=max(prompt, 8),
                   n_ubatch=max(prompt, 8), n_threads=threads, n_threads_batch=threads,
                   verbose=False)
    text = " ".join(f"{i} apples and {i + 1} pears," for i in range(prompt))
    tokens = llm.tokenize(text.encode())[:prompt]
    llm.eval(tokens[:8])                                  # warm-up: pages, repacking
    llm.reset()
    start = time.perf_counter()
    llm.eval(tokens)
    pp = time.perf_counter() - start
    llm.reset()
    start = time.perf_counter()
    for i in range(gen):
        llm.eval([tokens[i % len(tokens)]])
    tg = time.perf_counter() - start
    return {"variant": cpu_variant.CHOICE.variant, "pp_tps": len(tokens) / pp,
            "tg_tps": gen / tg, "system_info": ll.llama_print_system_info().decode()}


def run_child(variant: str, args: argparse.Namespace) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LLAMA_CPP_LIB_PATH", "STRATO_CPU_VARIANT_LIB_PATH")}
    env |= {"STRATO_CPU_VARIANT": variant, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, __file__, "--child", "--model", args.model, "--threads",
         str(args.threads), "--prompt", str(args.prompt), "--gen", str(args.gen)],
        env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{variant} run failed (rc {done.returncode}):\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["variant"] == variant, out
    return out


def render(results: dict[str, list[dict]], args: argparse.Namespace) -> str:
    med = {v: {k: statistics.median(r[k] for r in rs) for k in ("pp_tps", "tg_tps")}
           for v, rs in results.items()}
    span = {v: {k: (min(r[k] for r in rs), max(r[k] for r in rs)) for k in ("pp_tps", "tg_tps")}
            for v, rs in results.items()}
    lines = [(f"model {Path(args.model).name}, {args.threads} threads, pp{args.prompt} / "
              f"tg{args.gen}, {args.rounds} rounds (median, range)"), "",
             "| build | prompt tokens/s | decode tokens/s |", "| --- | --- | --- |"]
    for v in VARIANTS:
        cells = [f"{med[v][k]:.1f} ({span[v][k][0]:.1f}-{span[v][k][1]:.1f})"
                 for k in ("pp_tps", "tg_tps")]
        lines.append(f"| {v} | {cells[0]} | {cells[1]} |")
    lines.append("| avx512 / portable, of the medians | "
                 + " | ".join(f"{med['avx512'][k] / med['portable'][k]:.2f}x"
                              for k in ("pp_tps", "tg_tps")) + " |")
    # Paired within a round (the two runs back to back): steadier on a shared machine.
    paired = {k: [a[k] / p[k] for a, p in zip(results["avx512"], results["portable"])]
              for k in ("pp_tps", "tg_tps")}
    lines.append("| avx512 / portable, per round: median (range) | "
                 + " | ".join(f"{statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f})"
                              for r in paired.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a GGUF (default: the bundled Gemma)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=256, help="pp tokens")
    parser.add_argument("--gen", type=int, default=64, help="tg tokens")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 round, pp64, tg8")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model is None:
        sys.path.insert(0, str(ROOT))
        from core.catalog.bundled import default_model_path

        args.model = str(default_model_path())
    if args.child:
        print(json.dumps(measure(args.model, args.threads, args.prompt, args.gen)))
        return
    if args.quick:
        args.rounds, args.prompt, args.gen = 1, 64, 8
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        for v in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
            results[v].append(run_child(v, args))
            print(f"round {r + 1} {v}: pp {results[v][-1]['pp_tps']:.1f} tok/s, "
                  f"tg {results[v][-1]['tg_tps']:.1f} tok/s", file=sys.stderr)
    print(render(results, args))


if __name__ == "__main__":
    main()
