"""Process start to the first ranged GET's bytes: strato's SDK-free S3 reader vs botocore.

A cold start's first S3 reads (the manifest, the header's ranges) are on the critical
path; this times only that stretch, from fresh processes, against the nginx S3 stand-in
(bench/s3_standin.py), the two clients alternating round by round. Each round is a new
`python` that imports tiers.remote and reads 1 MiB at offset 0 of a 64 MiB object;
its own clock (tiers.timing: the process's start on CLOCK_BOOTTIME) gives the figure,
so interpreter start-up counts. The reader is chosen by the environment alone, as in
production: botocore is forced by pointing AWS_CONFIG_FILE at an (empty) file.

    .venv/bin/python bench/s3_first_bytes.py [--rounds 9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from s3_standin import S3StandIn  # noqa: E402

PROBE = """\
from tiers.timing import boottime, process_start
from tiers import remote
data = remote.read_range("s3://bkt/model.gguf", 0, 1 << 20)
took = boottime() - process_start()
assert len(data) == 1 << 20
import sys
print(took, "botocore" in sys.modules)
"""


def one(env: dict[str, str]) -> tuple[float, bool]:
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), out[1] == "True"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="strato-first-bytes-") as tmp:
        (Path(tmp) / "bkt").mkdir()
        (Path(tmp) / "bkt" / "model.gguf").write_bytes(os.urandom(64 << 20))
        empty = Path(tmp) / "aws-config"
        empty.write_text("")
        with S3StandIn(tmp, rate_mb=80) as s3:
            base = {**os.environ, **s3.env(), "PYTHONPATH": str(ROOT)}
            base.pop("AWS_PROFILE", None)
            paths = {"reader": {**base, "AWS_CONFIG_FILE": str(Path(tmp) / "absent")},
                     "botocore": {**base, "AWS_CONFIG_FILE": str(empty)}}
            times: dict[str, list[float]] = {name: [] for name in paths}
            for _ in range(args.rounds):
                for name, env in paths.items():
                    took, imported = one(env)
                    assert imported == (name == "botocore"), f"{name} path took the other"
                    times[name].append(took)
    for name, values in times.items():
        print(f"{name:9} median {statistics.median(values):.3f} s  "
              f"range {min(values):.3f}-{max(values):.3f} s  ({len(values)} rounds)")
    ratio = statistics.median(times["reader"]) / statistics.median(times["botocore"])
    print(f"reader / botocore (medians): {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
