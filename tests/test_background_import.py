"""core.engine.background_import: the build waits for llama.cpp's bindings and the
engine module only; the scheduler and the chat templates (with core.openai's tools and
schemas) come after `done`, on the same thread, while llama.cpp builds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LATER = ("core.engine.scheduler", "core.engine.chat_template", "core.openai.schemas")

PROBE = """
import json, sys
later = %r
import core.engine.llama
alone = [m for m in later if m in sys.modules]
from core.engine import background_import
background_import.start()
background_import._thread.join(120)
print(json.dumps({"alone": alone, "done": background_import.done.is_set(),
                  "after": [m for m in later if m in sys.modules]}))
""" % (LATER,)


def test_the_build_waits_for_less_than_the_engine_needs_later() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["alone"] == []                      # not in the module the build needs
    assert result["done"] and result["after"] == list(LATER)   # brought in beside it
