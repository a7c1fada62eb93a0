"""Model-load benchmark: `llama_model_load_from_file` with strato's patched llama.cpp
beside upstream's (layers/llama-cpp/patches; README "llama.cpp patches").

Not a test: a script a human runs, printing one table of load times and the ratios to
the first library set. Each round loads the model once per library set, each in a fresh
process (llama_cpp reads LLAMA_CPP_LIB_PATH at its first import), the sets alternating
so that a busy neighbour hurts both alike; medians over rounds. Two modes: `vocab`
(vocab_only: the GGUF header, metadata and vocabulary, where the patches act) and `full`
(the whole model on the CPU, mmap, as strato builds it). llama.cpp's log goes to a
callback that drops it, as in strato (core/engine/llama.py), so the timings include the
metadata dump's formatting but no terminal I/O.

    bench/build_llama_server.sh                       # once: the upstream llama-cpp-python
    .venv/bin/python bench/llama_load.py              # bundled Gemma 3 270M, 5 rounds
    .venv/bin/python bench/llama_load.py --libs old=DIR new=DIR --model m.gguf --rounds 9

Default sets: `upstream`, the llama_cpp/lib of the benchmark's own llama-cpp-python venv
(bench/.build/venv-llama-server-py, built unpatched from PyPI's sdist with the same CPU
flags), and `strato`, the portable llama_cpp/lib of strato's .venv.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("vocab", "full")


def default_libs() -> dict[str, str]:
    """upstream = the benchmark venv's llama_cpp/lib, strato = .venv's."""
    found = {}
    for name, venv in (("upstream", ROOT / "bench" / ".build" / "venv-llama-server-py"),
                       ("strato", ROOT / ".venv")):
        hits = glob.glob(str(venv / "lib" / "python3*" / "site-packages" / "llama_cpp" / "lib"))
        if not hits:
            sys.exit(f"no llama_cpp/lib under {venv}: run bench/build_llama_server.sh / make install")
        found[name] = hits[0]
    return found


def measure(model: str, mode: str) -> dict:
    """In this process: one load, timed around llama_model_load_from_file alone."""
    import ctypes

    import llama_cpp as ll

    ll.llama_backend_init()

    @ll.llama_log_callback
    def drop(_level: int, _text: bytes, _user: ctypes.c_void_p) -> None:
        pass

    ll.llama_log_set(drop, ctypes.c_void_p(0))
    params = ll.llama_model_default_params()
    params.vocab_only = mode == "vocab"
    start = time.perf_counter()
    model_ptr = ll.llama_model_load_from_file(model.encode(), params)
    seconds = time.perf_counter() - start
    if not model_ptr:
        sys.exit(f"llama.cpp could not load {model}")
    n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(model_ptr))
    ll.llama_model_free(model_ptr)
    return {"seconds": seconds, "n_vocab": n_vocab}


def run_child(lib: str, model: str, mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "STRATO_CPU_VARIANT_LIB_PATH"}
    env["LLAMA_CPP_LIB_PATH"] = lib
    done = subprocess.run([sys.executable, __file__, "--child", "--model", model, "--mode", mode],
                          env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"load with {lib} failed (rc {done.returncode}):\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def render(results: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> str:
    names = list(results)
    base = names[0]
    lines = [f"model {Path(args.model).name}, {args.rounds} rounds, fresh process per load "
             "(median, range), seconds in llama_model_load_from_file", "",
             "| mode | " + " | ".join(names) + " | " +
             " | ".join(f"{n} / {base}" for n in names[1:]) + " |",
             "| --- |" + " ---: |" * (2 * len(names) - 1)]
    for mode in args.modes:
        med = {n: statistics.median(results[n][mode]) for n in names}
        cells = [f"{med[n]:.3f} ({min(results[n][mode]):.3f}-{max(results[n][mode]):.3f})"
                 for n in names]
        ratios = [f"{med[n] / med[base]:.2f}" for n in names[1:]]
        lines.append(f"| {mode} | " + " | ".join(cells + ratios) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="GGUF (default: the bundled Gemma 3 270M)")
    parser.add_argument("--libs", nargs="+", metavar="NAME=DIR",
                        help="library sets to compare; ratios are to the first")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model is None:
        sys.path.insert(0, str(ROOT))
        from core.catalog.bundled import default_model_path

        args.model = str(default_model_path())
    if args.child:
        print(json.dumps(measure(args.model, args.mode)))
        return
    libs = dict(pair.split("=", 1) for pair in args.libs) if args.libs else default_libs()
    results: dict[str, dict[str, list[float]]] = {n: {m: [] for m in args.modes} for n in libs}
    for rnd in range(args.rounds):
        order = list(libs) if rnd % 2 == 0 else list(reversed(libs))
        for mode in args.modes:
            for name in order:
                out = run_child(libs[name], args.model, mode)
                results[name][mode].append(out["seconds"])
                print(f"round {rnd + 1} {mode} {name}: {out['seconds']:.3f} s "
                      f"({out['n_vocab']} tokens)", file=sys.stderr)
    print(render(results, args))


if __name__ == "__main__":
    main()
