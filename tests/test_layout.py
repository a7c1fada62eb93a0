"""The layering the README promises, checked on the source: handlers -> core -> tiers
with no edge back, llama_cpp imported by the engine only (core/engine/bindings.py), cloud SDKs by tiers/remote.py
only, and `core.serving`'s lazy public names all real."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("handlers", "core", "tiers")
CLOUD_SDKS = {"boto3", "botocore", "aioboto3", "aiobotocore", "s3fs", "gcsfs", "adlfs",
              "google", "azure"}


def imports(path: Path) -> set[str]:
    """Top-level names of every module `path` imports (at any depth, lazily or not)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_dependencies_point_handlers_to_core_to_tiers() -> None:
    forbidden = {"core": {"handlers"}, "tiers": {"handlers", "core"}}
    back_edges = [f"{p.relative_to(ROOT)} imports {name}"
                  for p in sources() for name in imports(p)
                  if name.split(".")[0] in forbidden.get(p.relative_to(ROOT).parts[0], ())]
    assert back_edges == []


def test_llama_cpp_only_in_the_engine_and_cloud_sdks_only_in_remote() -> None:
    # One known exception: core/openai/grammar.py lazily imports llama-cpp-python's
    # JSON-schema-to-GBNF converter (pure Python, the port of llama.cpp server's).
    llama = {(str(p.relative_to(ROOT)), n) for p in sources() for n in imports(p)
             if n.split(".")[0] == "llama_cpp"}
    assert llama == {("core/engine/bindings.py", "llama_cpp.llama_cpp"),
                     ("core/openai/grammar.py", "llama_cpp.llama_grammar")}
    clouds = {str(p.relative_to(ROOT)) for p in sources()
              if any(n.split(".")[0] in CLOUD_SDKS for n in imports(p))}
    assert clouds <= {"tiers/remote.py"}


def test_handlers_use_only_the_public_names_of_core_serving() -> None:
    private = [f"{p.relative_to(ROOT)} imports {name}"
               for p in sorted((ROOT / "handlers").glob("*.py")) for name in imports(p)
               if name.startswith("core.serving.")]
    assert private == []


@pytest.mark.parametrize("name", importlib.import_module("core.serving").__all__)
def test_every_public_name_of_core_serving_resolves(name: str) -> None:
    serving = importlib.import_module("core.serving")
    assert getattr(serving, name) is not None
    assert set(serving.__all__) == {"ModelService", *serving._LAZY}
