"""core.engine.bindings: the engine loads llama.cpp's C API without llama_cpp's high-level
package (numpy, jinja2, the Llama class), and the package still works for whoever asks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
import core.engine.llama as engine
heavy = sorted(m for m in ("numpy", "jinja2", "llama_cpp.llama", "diskcache") if m in sys.modules)
has_api = callable(engine.ll.llama_model_load_from_file)
import llama_cpp
version = llama_cpp.__version__
from llama_cpp import Llama
from llama_cpp.llama_grammar import json_schema_to_gbnf
try:
    llama_cpp.no_such_name
    missing = "found"
except AttributeError as exc:
    missing = str(exc)
print(json.dumps({"heavy": heavy, "api": has_api, "version": version,
                  "Llama": Llama.__module__, "same_api": llama_cpp.llama_cpp is engine.ll,
                  "missing": missing}))
"""


def test_engine_import_skips_the_high_level_package_which_still_completes() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert got["heavy"] == []                 # nothing of llama_cpp.llama's imports
    assert got["api"] and got["same_api"]
    assert got["version"].count(".") == 2     # the package's __init__ ran when asked
    assert got["Llama"] == "llama_cpp.llama"
    assert got["missing"] == "module 'llama_cpp' has no attribute 'no_such_name'"
