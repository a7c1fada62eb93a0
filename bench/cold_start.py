"""Cold start to the first token: strato beside the plain path and the memfd approach.

Every run is a fresh process on empty local caches, against an S3 stand-in that
behaves like S3 where it matters (bench/s3_standin.py: nginx, each connection capped,
80 MB/s by default, as many connections as the client opens); the objects sit in the
store's page cache. Timed from `Popen` to the first byte of the token on stdout:

  plain    boto3 `download_file` into /tmp, `Llama()`, one token: a handler without strato
  memfd    the approach of AWS's SnapStart sample: parallel ranged GETs (boto3, one
           thread per stream, strato's stream count) into a memfd, `Llama()` on
           /proc/self/fd/N, one token
  strato   `strato run NAME PROMPT --max-tokens 1 --timings --raw` (the prompt as-is, like
           the two above: no chat template): manifest, verified fetch
           into the RAM tier (disk behind it), llama.cpp built while the bytes stream

and the floor, measured in the same rounds: process start + max(fetch of the bytes at
strato's stream count, import llama_cpp + `Llama()` on a page-cached file) + first token.
The floor's fetch is the memfd path's client (boto3, a thread per stream, 8 MiB ranges,
bytes discarded), the fastest here: s3fs, used before, took twice as long on two cores.
`Llama()` is llama-cpp-python's default (repacking on), as in the two peers.

Beside it, a diagnostic, the CPU floor: the floor takes each half's time alone, as if
each had the machine to itself. Run in one process, they share its CPUs, and a verified
load must also hash the bytes and give them memory to land in. So: process start +
max(the floor's longer half, (fetch CPU + load CPU to `Llama()`'s return + BLAKE3 of
the file + a memfd's pages of its size) / CPUs) + first token. Where the CPU term is the
larger, no single process that does the floor's work and verifies what it loads reaches
the floor on this machine.

strato's own packages are compiled to bytecode first (`compileall`, checked against the
sources' mtimes), as its deployments ship them (layers/compile-bytecode.sh, the images):
the peers' libraries were compiled by pip when they were installed, and a run on source
alone recompiles every strato module in every cold process (0.13 s here, median of 8).

Between two timed runs (untimed) the machine is brought back to rest: `sync` writes out
the dirty pages the last run left (the plain path's /tmp download, strato's disk-tier
copy: 2.4 GB each with the large model), so the next run does not share the CPU and the
disk with the kernel's writeback of the previous one.

Two models: the bundled Gemma 3 270M (253 MB) and a Gemma-3-4B-shaped Q4_K file with
random weights (~2.4 GB, bench/synthetic_gguf.py, cached under --cache). Rounds
alternate the order of the paths. Printed: per-path medians, spread and CPU seconds
(each process's user + system CPU at its first token; the floor's: its fetch's plus its
load's, what running both would cost), ratios (the CPU floor's among them), the per-phase
table of strato's median round, and the RAM-tier swap. Not a test.

    make bench-deps      # nginx-light
    .venv/bin/python bench/cold_start.py [--rounds 3] [--rate 80] [--models 270m,4b]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from s3_standin import S3StandIn  # noqa: E402

BUCKET = "bench"
PROMPT = "The sky is"
CPUS = len(os.sched_getaffinity(0))

# --- the child processes (each a fresh interpreter) ------------------------------------

# Shared by the child scripts below, which each define what it reads first.
# _RANGED_GETS: bucket, key, streams -> s3, t1 (client made), size, get_range(offset).
_RANGED_GETS = """
s3 = boto3.client("s3", config=botocore.config.Config(max_pool_connections=streams))
t1 = time.monotonic()
size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
part = 8 << 20

def get_range(offset):
    end = min(offset + part, size) - 1
    return s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={offset}-{end}")["Body"].read()
"""
# _ANSWER: model, threads, prompt, t0-t2, FETCH (the fetch's label) -> one token, timings.
_ANSWER = """
from llama_cpp import Llama
t3 = time.monotonic()
llm = Llama(model, n_ctx=256, n_threads=threads, verbose=False)
t4 = time.monotonic()
out = llm.create_completion(prompt, max_tokens=1, temperature=0.0)
print(out["choices"][0]["text"] or ".", flush=True)
t5 = time.monotonic()
print(json.dumps({"import boto3": t1 - t0, FETCH: t2 - t1,
                  "import llama_cpp": t3 - t2, "Llama()": t4 - t3,
                  "first token": t5 - t4, "CPU s": sum(os.times()[:2])}), file=sys.stderr)
"""

PLAIN = """
import json, os, sys, time
t0 = time.monotonic()
import boto3
s3 = boto3.client("s3")
t1 = time.monotonic()
s3.download_file(sys.argv[1], sys.argv[2], sys.argv[3])
t2 = time.monotonic()
model, threads, prompt, FETCH = sys.argv[3], int(sys.argv[4]), sys.argv[5], "download_file"
""" + _ANSWER

MEMFD = """
import json, os, sys, time
from concurrent.futures import ThreadPoolExecutor
t0 = time.monotonic()
import boto3, botocore.config
bucket, key, threads, prompt, streams = sys.argv[1], sys.argv[2], int(sys.argv[3]), \\
    sys.argv[4], int(sys.argv[5])
""" + _RANGED_GETS + """
fd = os.memfd_create("model", 0)
os.ftruncate(fd, size)

def get(offset):
    os.pwrite(fd, get_range(offset), offset)

with ThreadPoolExecutor(streams) as pool:
    list(pool.map(get, range(0, size, part)))
t2 = time.monotonic()
model, FETCH = f"/proc/self/fd/{fd}", "ranged GETs into memfd"
""" + _ANSWER

FLOOR_FETCH = """
import json, os, sys, time
from concurrent.futures import ThreadPoolExecutor
import boto3, botocore.config
bucket, key, expected, streams = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
""" + _RANGED_GETS + """
t0, cpu0 = time.monotonic(), sum(os.times()[:2])  # the connection pool is set up (the HEAD)
with ThreadPoolExecutor(streams) as pool:
    got = sum(pool.map(lambda offset: len(get_range(offset)), range(0, size, part)))
seconds = time.monotonic() - t0
assert got == size == expected
print(json.dumps({"fetch": seconds, "fetch CPU s": sum(os.times()[:2]) - cpu0}), flush=True)
"""

FLOOR_LOAD = """
import json, os, sys, time
t0 = time.monotonic()
from llama_cpp import Llama
llm = Llama(sys.argv[1], n_ctx=256, n_threads=int(sys.argv[2]), verbose=False)
t1, cpu1 = time.monotonic(), sum(os.times()[:2])
llm.create_completion(sys.argv[3], max_tokens=1, temperature=0.0)
t2 = time.monotonic()
print(json.dumps({"import + Llama()": t1 - t0, "first token": t2 - t1,
                  "load CPU s": sum(os.times()[:2]), "to Llama() CPU s": cpu1}), flush=True)
"""

# What a verified cold start must do to the bytes beyond the floor's fetch (which reads
# and drops them): hash them (strato's chunk digests are BLAKE3) and give them memory
# llama.cpp can map (a memfd's pages, allocated and zeroed by the kernel). CPU seconds
# of each, on the page-cached file: the least either can cost.
FLOOR_EXTRAS = """
import json, mmap, os, sys, time
import blake3
with open(sys.argv[1], "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
    cpu0 = time.process_time()          # nanoseconds, not os.times()'s 10 ms ticks
    blake3.blake3(m).digest()
    cpu1 = time.process_time()
    fd = os.memfd_create("land", 0)
    os.posix_fallocate(fd, 0, len(m))
    cpu2 = time.process_time()
print(json.dumps({"verify CPU s": cpu1 - cpu0, "memfd pages CPU s": cpu2 - cpu1}))
"""


@dataclass
class Run:
    seconds: float                         # Popen -> first byte of the token on stdout
    phases: dict[str, float] = field(default_factory=dict)


def first_output(argv: list[str], env: dict[str, str]) -> tuple[float, str, str]:
    """Seconds from Popen to the child's first stdout byte; then its stdout and stderr."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            bufsize=0)          # unbuffered: read(1) takes one byte
    assert proc.stdout is not None
    first = proc.stdout.read(1)
    seconds = time.monotonic() - start
    out, err = proc.communicate(timeout=600)
    if proc.returncode != 0 or not first:
        raise RuntimeError(f"{argv[:3]} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return seconds, (first + out).decode(errors="replace"), err.decode(errors="replace")


CPU_LINE = "process CPU to first token: "     # LoadTimings.table's


def strato_phases(stderr: str) -> dict[str, float]:
    """The rows of `strato run --timings` (core.serving.load_timings.LoadTimings.table)."""
    phases: dict[str, float] = {}
    for line in stderr.splitlines():
        parts = line.rsplit(None, 3)
        if line.startswith(CPU_LINE):
            phases["CPU s"] = float(line[len(CPU_LINE):].split()[0])
        elif len(parts) == 4:
            try:
                phases[parts[0].strip()] = float(parts[3])
                phases[parts[0].strip() + " (ends at)"] = float(parts[2])
            except ValueError:
                continue
        elif line.startswith("fetch: "):
            phases["fetch figures: " + line[len("fetch: "):]] = float("nan")
    return phases


@dataclass
class Model:
    name: str          # registry name:tag
    file: Path
    key: str           # raw object key in the bucket

    @property
    def size(self) -> int:
        return self.file.stat().st_size


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, s3: S3StandIn) -> None:
        self.args, self.work, self.s3 = args, work, s3
        self.env = {**os.environ, **s3.env(), "PYTHONPATH": str(ROOT),
                    "STRATO_REGISTRY": f"s3://{BUCKET}/registry",
                    "STRATO_LOG_LEVEL": "WARNING"}
        # The peers are what a user without strato runs: PyPI's llama-cpp-python. strato's
        # venv has the patched llama.cpp (layers/llama-cpp/patches), so --peer-libs names
        # an upstream build of the same version and ISA for the peers' children.
        self.peer_env = ({**self.env, "LLAMA_CPP_LIB_PATH": args.peer_libs}
                         if args.peer_libs else self.env)
        self.py = sys.executable
        self.strato_exe = str(Path(sys.executable).with_name("strato"))
        self.round = 0

    def fresh_dir(self, what: str) -> Path:
        self.round += 1
        path = self.work / f"{what}-{self.round}"
        path.mkdir(parents=True)
        return path

    def streams(self, model: Model) -> int:
        """strato's stream count for this object (what the loader will choose)."""
        from core.config import from_env
        from tiers.fetch import streams_for

        return streams_for(model.size, from_env(self.env).streams)

    def plain(self, model: Model) -> Run:
        target = self.fresh_dir("plain") / "model.gguf"
        seconds, _, err = first_output(
            [self.py, "-c", PLAIN, BUCKET, model.key, str(target), str(self.args.threads),
             PROMPT], self.peer_env)
        shutil.rmtree(target.parent, ignore_errors=True)
        return Run(seconds, json.loads(err.strip().splitlines()[-1]))

    def memfd(self, model: Model) -> Run:
        seconds, _, err = first_output(
            [self.py, "-c", MEMFD, BUCKET, model.key, str(self.args.threads), PROMPT,
             str(self.streams(model))], self.peer_env)
        return Run(seconds, json.loads(err.strip().splitlines()[-1]))

    def strato(self, model: Model, tiers: str | None = None) -> Run:
        where = self.fresh_dir("strato")
        gib = -(-model.size // 2**30) + 1
        env = {**self.env, "STRATO_TIERS": tiers or f"ram:{gib}GiB,disk:{where}:{2 * gib}GiB",
               "STRATO_THREADS": str(self.args.threads), "STRATO_CTX": "256"}
        seconds, _, err = first_output(
            [self.strato_exe, "run", model.name, PROMPT, "--max-tokens", "1", "--temperature",
             "0", "--timings", "--raw"], env)
        shutil.rmtree(where, ignore_errors=True)
        if self.args.show:
            print(err, file=sys.stderr)
        return Run(seconds, strato_phases(err))

    def floor(self, model: Model) -> Run:
        start, _, _ = first_output([self.py, "-c", "print(1, flush=True)"], self.env)
        _, out, _ = first_output([self.py, "-c", FLOOR_FETCH, BUCKET, model.key,
                                  str(model.size), str(self.streams(model))], self.env)
        fetched = json.loads(out)
        fetch = fetched["fetch"]
        with open(model.file, "rb") as f:                 # page-cached, as after a fetch
            while f.read(64 << 20):
                pass
        _, out, _ = first_output([self.py, "-c", FLOOR_LOAD, str(model.file),
                                  str(self.args.threads), PROMPT], self.env)
        load = json.loads(out)
        _, out, _ = first_output([self.py, "-c", FLOOR_EXTRAS, str(model.file)], self.env)
        extras = json.loads(out)
        longer = max(fetch, load["import + Llama()"])
        total = start + longer + load["first token"]
        # The CPU floor: the same halves in one process on this machine's CPUs cannot
        # take less than their CPU to the first token, and what a verified load adds to
        # the bytes (FLOOR_EXTRAS), spread over every CPU.
        work = (fetched["fetch CPU s"] + load["to Llama() CPU s"] + extras["verify CPU s"]
                + extras["memfd pages CPU s"])
        cpu_floor = start + max(longer, work / CPUS) + load["first token"]
        # Its CPU: the fetch's (from the HEAD on) and the load process's (all of it).
        return Run(total, {"process start": start, **fetched, **load, **extras,
                           "CPU floor": cpu_floor,
                           "CPU s": fetched["fetch CPU s"] + load["load CPU s"]})


def settle() -> None:
    """Untimed, before each run: write out what earlier runs left dirty (the module
    docstring says why)."""
    os.sync()


def compile_strato() -> None:
    """Bytecode for strato's packages, as a deployment has it (see the module docstring)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q",
                    *(str(ROOT / pkg) for pkg in ("core", "tiers", "handlers"))],
                   check=True, stdout=subprocess.DEVNULL)


def setup(args: argparse.Namespace, root: Path) -> list[Model]:
    """Raw objects and a registry (written with `strato push --registry file://`)."""
    from core.catalog.bundled import default_model_path

    bucket = root / BUCKET
    (bucket / "raw").mkdir(parents=True)
    models = []
    for which in args.models.split(","):
        if which == "270m":
            file, name = default_model_path(), "gemma3:270m"
        elif which == "4b":
            file, name = synthetic(Path(args.cache)), "gemma3-4b-shape:q4k"
        else:
            raise SystemExit(f"unknown model {which!r} (270m, 4b)")
        key = f"raw/{file.name}"
        os.link(file, bucket / key) if _same_fs(file, bucket) else shutil.copy(file, bucket / key)
        subprocess.run([str(Path(sys.executable).with_name("strato")), "push", str(file), name,
                        "--registry", f"file://{bucket / 'registry'}"], check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL)
        models.append(Model(name, file, key))
    for path in bucket.rglob("*"):                    # the store's page cache is warm
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(64 << 20):
                    pass
    return models


def _same_fs(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


def synthetic(cache: Path) -> Path:
    import synthetic_gguf

    from core.catalog.bundled import default_model_path

    out = cache / f"gemma3-4b-shape-q4k-v{synthetic_gguf.VERSION}.gguf"
    if not out.exists():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"writing {out} (once) ...", file=sys.stderr, flush=True)
        synthetic_gguf.write(default_model_path(), out)
    return out


async def swap_seconds(env: dict[str, str], threads: int) -> float:
    """First token of a model unloaded for memory whose bytes stay in the RAM tier (the
    README's swap figure), in one process: serve A, serve B (A is parked), serve A."""
    from core.config import Settings
    from core.engine.protocol import GenerationRequest, SamplingParams
    from core.serving.manager import ModelManager

    async def first_token(manager: ModelManager, model: str) -> float:
        start = time.monotonic()
        engine = await manager.engine(model)
        async for _ in engine.generate(GenerationRequest(PROMPT, 1,
                                                         SamplingParams(temperature=0.0))):
            break
        return time.monotonic() - start

    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    manager = ModelManager(Settings(registry=env["STRATO_REGISTRY"], ctx=256, parallel=2,
                                    threads=threads, tiers="ram:2GiB"), budget=1)
    try:
        await first_token(manager, "gemma3:270m")
        await first_token(manager, "other:v1")
        return await first_token(manager, "gemma3:270m")
    finally:
        await manager.close()


def push_other(root: Path, work: Path) -> None:
    """A second model (the 270M with another name byte) for the swap."""
    from core.catalog.bundled import default_model_path

    data = bytearray(default_model_path().read_bytes())
    at = data.index(b"general.name") + len(b"general.name") + 12
    data[at] = ord("X")
    other = work / "other.gguf"
    other.write_bytes(bytes(data))
    subprocess.run([str(Path(sys.executable).with_name("strato")), "push", str(other),
                    "other:v1", "--registry", f"file://{root / BUCKET / 'registry'}"],
                   check=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                   stdout=subprocess.DEVNULL)


# --- report ------------------------------------------------------------------------------


def spread(values: list[float]) -> float:
    """(max - min) / median: how far rounds of one path swing."""
    return (max(values) - min(values)) / statistics.median(values)


def report(model: Model, runs: dict[str, list[Run]], streams: int) -> None:
    med = {k: statistics.median(r.seconds for r in v) for k, v in runs.items()}
    print(f"\n### {model.name}: {model.size / 1e6:.0f} MB, strato's stream count {streams}\n")
    print("| path | median s | rounds | spread | CPU s (median) |")
    print("| --- | ---: | --- | ---: | ---: |")
    for k, v in runs.items():
        secs = [r.seconds for r in v]
        cpu = [r.phases["CPU s"] for r in v if "CPU s" in r.phases]
        print(f"| {k} | {med[k]:.2f} | {' / '.join(f'{s:.2f}' for s in secs)} | "
              f"{spread(secs):.0%} | {statistics.median(cpu) if cpu else float('nan'):.2f} |")
    print()
    print("| ratio (medians) | value | target |")
    print("| --- | ---: | --- |")
    for peer, target in (("plain", "<= 0.6"), ("memfd", "< 1"), ("floor", "<= 1.15")):
        if "strato" in med and peer in med:
            print(f"| strato / {peer} | {med['strato'] / med[peer]:.2f} | {target} |")
    if "floor" in med:
        cpu_floor = statistics.median(r.phases["CPU floor"] for r in runs["floor"])
        print(f"| CPU floor / floor: the floor's work, verified, on {CPUS} CPUs | "
              f"{cpu_floor / med['floor']:.2f} | (diagnostic) |")
        if "strato" in med:
            print(f"| strato / CPU floor | {med['strato'] / cpu_floor:.2f} | (diagnostic) |")
    if "strato, RAM tier only" in med:
        print(f"| strato (RAM + disk) / strato (RAM only): the write-behind's cost | "
              f"{med['strato'] / med['strato, RAM tier only']:.2f} | |")
    for k, v in runs.items():
        middle = sorted(v, key=lambda r: r.seconds)[len(v) // 2]
        print(f"\n{k}, median round ({middle.seconds:.2f} s): " + ", ".join(
            f"{name} {value:.3f}" if value == value else name
            for name, value in middle.phases.items() if not name.endswith("(ends at)")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=80.0, help="MB/s per connection")
    parser.add_argument("--models", default="270m,4b")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(),
                                                        "strato-bench-models"),
                        help="where the synthetic model is kept between runs")
    parser.add_argument("--write-behind-cost", action="store_true",
                        help="also time strato with the RAM tier alone (no disk behind)")
    parser.add_argument("--no-swap", action="store_true")
    parser.add_argument("--paths", default="plain,memfd,strato,floor",
                        help="which paths to time (comma-separated)")
    parser.add_argument("--peer-libs", help="upstream llama.cpp libraries (a directory with "
                        "libllama.so) for the plain and memfd paths; default: the venv's, "
                        "which carry strato's patches")
    parser.add_argument("--show", action="store_true",
                        help="print strato's own --timings table of every round")
    args = parser.parse_args()

    compile_strato()
    work = Path(tempfile.mkdtemp(prefix="strato-cold-"))
    root = work / "store"
    try:
        models = setup(args, root)
        push_other(root, work)
        with S3StandIn(root, rate_mb=args.rate) as s3:
            bench = Bench(args, work / "local", s3)
            print(f"S3 stand-in: nginx at {s3.endpoint}, {args.rate:g} MB/s per connection; "
                  f"{CPUS} CPUs, {args.threads} threads; {args.rounds} rounds; "
                  f"peers' llama.cpp: {args.peer_libs or 'the venv (patched)'}")
            every = {"plain": bench.plain, "memfd": bench.memfd, "strato": bench.strato,
                     "floor": bench.floor}
            paths = {name: every[name] for name in args.paths.split(",")}
            if args.write_behind_cost:
                paths["strato, RAM tier only"] = lambda m: bench.strato(
                    m, tiers=f"ram:{-(-m.size // 2**30) + 1}GiB")
            for model in models:
                runs: dict[str, list[Run]] = {k: [] for k in paths}
                for r in range(args.rounds):
                    order = list(paths) if r % 2 == 0 else list(reversed(paths))
                    for name in order:
                        settle()
                        run = paths[name](model)
                        runs[name].append(run)
                        print(f"  {model.name} round {r + 1} {name}: {run.seconds:.2f} s",
                              file=sys.stderr, flush=True)
                report(model, runs, bench.streams(model))
            if not args.no_swap:
                swap = asyncio.run(swap_seconds(bench.env, args.threads))
                print(f"\nRAM-tier swap (first token of a model unloaded for memory, bytes "
                      f"in the RAM tier): {swap:.3f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
