"""Checks the deployment files that have no linter of their own (run by `make lint`).

cfn-lint, `sam validate --lint` and hadolint cover template.yaml and the Dockerfiles.
What is left is checked here, with the tools venv's Python (.venv-tools):

* every YAML, TOML and JSON file under infra/ and events/, plus samconfig.toml, parses;
* Knative Services (infra/knative, and Cloud Run, which speaks the same API):
  kubernetes-validate ships no Knative schema, so the pod template (`spec.template`) is
  validated strictly as a core/v1 Pod, after removing the two fields Knative adds to a
  PodSpec (`containerConcurrency`, `timeoutSeconds`); the Service around it and its
  autoscaling annotations are checked against Knative's documented rules here;
* the Azure Container App, the Fly config and the Lambda events: the fields each
  platform needs to route traffic to uvicorn on 8080 and to scale to zero.

Exit status 1 with one line per problem; silent on success except a summary line.
"""

from __future__ import annotations

import copy
import json
import sys
import tomllib
from pathlib import Path
from typing import Any, Callable

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
PORT = 8080
KNATIVE_ONLY_POD_FIELDS = ("containerConcurrency", "timeoutSeconds")
INT_ANNOTATIONS = ("autoscaling.knative.dev/min-scale", "autoscaling.knative.dev/max-scale",
                   "autoscaling.knative.dev/minScale", "autoscaling.knative.dev/maxScale",
                   "autoscaling.knative.dev/target")


def load(path: Path) -> Any:
    """Parse by extension; raises on malformed input (that is the check)."""
    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(text)
    if path.suffix == ".toml":
        return tomllib.loads(text)
    return yaml.safe_load(text)


def knative_service(doc: dict[str, Any]) -> list[str]:
    """Problems of one Knative Service: its shape, annotations and strict Pod template."""
    problems = []
    if doc.get("apiVersion") != "serving.knative.dev/v1" or doc.get("kind") != "Service":
        return ["not a serving.knative.dev/v1 Service"]
    template = doc.get("spec", {}).get("template", {})
    spec = template.get("spec", {})
    annotations = template.get("metadata", {}).get("annotations", {})
    for key in INT_ANNOTATIONS:
        if key in annotations and not str(annotations[key]).isdigit():
            problems.append(f"annotation {key} must be a non-negative integer")
    if str(annotations.get("autoscaling.knative.dev/min-scale",
                           annotations.get("autoscaling.knative.dev/minScale", "0"))) != "0":
        problems.append("min-scale must be 0 (scale to zero)")
    concurrency = spec.get("containerConcurrency", 0)
    if not isinstance(concurrency, int) or concurrency < 0:
        problems.append("containerConcurrency must be a non-negative integer")
    ports = [p.get("containerPort") for c in spec.get("containers", []) for p in c.get("ports", [])]
    if ports != [PORT]:
        problems.append(f"expected one container port {PORT}, got {ports}")
    pod_spec = {k: v for k, v in copy.deepcopy(spec).items() if k not in KNATIVE_ONLY_POD_FIELDS}
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": doc.get("metadata", {}).get("name", "strato"),
                        **{k: v for k, v in template.get("metadata", {}).items()
                           if k in ("labels", "annotations")}},
           "spec": pod_spec}
    try:
        kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(str(p) for p in exc.path)
        problems.append(f"pod template: {exc.message} (at {path})")
    return problems


def container_app(doc: dict[str, Any]) -> list[str]:
    """An Azure Container App that ingresses on 8080 and scales to zero on a GPU profile."""
    props = doc.get("properties", {})
    problems = []
    if doc.get("type") != "Microsoft.App/containerApps":
        problems.append("type must be Microsoft.App/containerApps")
    if props.get("configuration", {}).get("ingress", {}).get("targetPort") != PORT:
        problems.append(f"ingress.targetPort must be {PORT}")
    if not props.get("workloadProfileName"):
        problems.append("workloadProfileName (the serverless GPU profile) is missing")
    template = props.get("template", {})
    if template.get("scale", {}).get("minReplicas") != 0:
        problems.append("scale.minReplicas must be 0")
    if not template.get("containers"):
        problems.append("template.containers is empty")
    return problems


def fly_config(doc: dict[str, Any]) -> list[str]:
    """A Fly app whose machines stop when idle and serve 8080."""
    service = doc.get("http_service", {})
    problems = []
    if service.get("internal_port") != PORT:
        problems.append(f"http_service.internal_port must be {PORT}")
    if service.get("min_machines_running", 0) != 0 or not service.get("auto_start_machines"):
        problems.append("machines must start on demand (min_machines_running = 0)")
    if "STRATO_TIERS" not in doc.get("env", {}):
        problems.append("env.STRATO_TIERS is missing")
    return problems


def lambda_event(doc: dict[str, Any]) -> list[str]:
    """A proxy event naming one of our routes, in either payload format."""
    path = doc.get("rawPath") or doc.get("path")
    if path not in ("/v1/models", "/v1/chat/completions"):
        return [f"unexpected path {path!r}"]
    return []


CHECKS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "infra/knative/service.yaml": knative_service,
    "infra/cloudrun/service.yaml": knative_service,
    "infra/azure/containerapp.yaml": container_app,
    "infra/fly/fly.toml": fly_config,
}


def files() -> list[Path]:
    found = [ROOT / "samconfig.toml"]
    for folder in ("infra", "events"):
        for suffix in ("*.yaml", "*.yml", "*.toml", "*.json"):
            found.extend((ROOT / folder).rglob(suffix))
    return sorted(set(found))


def main() -> int:
    problems: list[str] = []
    checked = files()
    for path in checked:
        rel = path.relative_to(ROOT).as_posix()
        try:
            doc = load(path)
        except Exception as exc:  # any parse failure is the finding
            problems.append(f"{rel}: does not parse: {exc}")
            continue
        check = CHECKS.get(rel) or (lambda_event if rel.startswith("events/") else None)
        if check is not None:
            problems.extend(f"{rel}: {p}" for p in check(doc))
    for line in problems:
        print(line)
    print(f"infra/lint.py: {len(checked)} files, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
