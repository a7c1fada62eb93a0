"""Render template.yaml the way CloudFormation would, for the settings tests read.

The deploy tests must check what a deployed function actually gets (its handler, the
environment after Globals are merged and every `!If` is decided, its layers), not the
text of the template. This module parses the short-form tags, merges `Globals.Function`
into a function's properties as SAM does (maps merge, the function wins) and evaluates
the intrinsic functions the template uses against chosen parameter values. References
to resources render as `<LogicalId>`, since nothing exists yet.

It covers the intrinsics template.yaml uses, no more; an unknown one raises, so a
template change that this renderer cannot follow fails loudly instead of passing.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

NO_VALUE = object()
PSEUDO = {"AWS::Region": "us-east-1", "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com",
          "AWS::AccountId": "123456789012", "AWS::StackName": "strato"}


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads CloudFormation's short forms (`!Ref X` -> {"Ref": "X"})."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_Loader.add_multi_constructor("!", _tag)


def load(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - SafeLoader subclass


class Renderer:
    """Evaluates intrinsics for one set of parameter values (defaults + overrides)."""

    def __init__(self, template: dict[str, Any], **overrides: str) -> None:
        self.template = template
        self.params: dict[str, Any] = {}
        for name, spec in template.get("Parameters", {}).items():
            value = str(overrides.pop(name, spec.get("Default", "")))
            if spec["Type"] == "CommaDelimitedList":
                self.params[name] = [] if value == "" else value.split(",")
            else:
                self.params[name] = value
        if overrides:
            raise KeyError(f"unknown parameters: {sorted(overrides)}")
        self._conditions: dict[str, bool] = {}

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            self._conditions[name] = bool(self.render(self.template["Conditions"][name]))
        return self._conditions[name]

    def render(self, node: Any) -> Any:
        """The value CloudFormation would see; NO_VALUE entries are dropped."""
        if isinstance(node, list):
            return [v for v in (self.render(n) for n in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, arg), = node.items()
            if key == "Ref" or key == "Condition" or key.startswith("Fn::"):
                return self._intrinsic(key, arg)
        out = {k: self.render(v) for k, v in node.items()}
        return {k: v for k, v in out.items() if v is not NO_VALUE}

    def _intrinsic(self, key: str, arg: Any) -> Any:
        if key == "Ref":
            if arg == "AWS::NoValue":
                return NO_VALUE
            if arg in PSEUDO:
                return PSEUDO[arg]
            return self.params[arg] if arg in self.params else f"<{arg}>"
        if key == "Condition":
            return self.condition(arg)
        if key == "Fn::If":
            name, yes, no = arg
            return self.render(yes if self.condition(name) else no)
        if key == "Fn::Equals":
            left, right = (self.render(a) for a in arg)
            return str(left) == str(right)
        if key == "Fn::Not":
            return not self.render(arg[0])
        if key == "Fn::And":
            return all(self.render(a) for a in arg)
        if key == "Fn::Or":
            return any(self.render(a) for a in arg)
        if key == "Fn::Join":
            sep, items = arg
            return sep.join(str(i) for i in self.render(items))
        if key == "Fn::Split":
            sep, text = arg
            return str(self.render(text)).split(sep)
        if key == "Fn::Select":
            index, items = arg
            return self.render(items)[int(index)]
        if key == "Fn::GetAtt":
            return f"<{'.'.join(arg)}>"
        if key == "Fn::Sub":
            return self._sub(arg)
        raise NotImplementedError(f"renderer does not know {key}")

    def _sub(self, arg: Any) -> str:
        text, local = (arg, {}) if isinstance(arg, str) else (arg[0], self.render(arg[1]))
        out, i = [], 0
        while (start := text.find("${", i)) != -1:
            end = text.index("}", start)
            out.append(text[i:start])
            name = text[start + 2:end]
            if name in local:
                out.append(str(local[name]))
            else:
                value = self._intrinsic("Ref", name) if "." not in name else f"<{name}>"
                out.append(str(value))
            i = end + 1
        out.append(text[i:])
        return "".join(out)

    def function(self, logical_id: str) -> dict[str, Any]:
        """A function's properties after SAM's Globals merge, rendered."""
        resource = self.template["Resources"][logical_id]
        merged = copy.deepcopy(self.template.get("Globals", {}).get("Function", {}))
        for key, value in resource["Properties"].items():
            if key == "Environment":
                variables = merged.setdefault("Environment", {}).setdefault("Variables", {})
                variables.update(value.get("Variables", {}))
            else:
                merged[key] = value
        rendered = self.render(merged)
        rendered["Condition"] = resource.get("Condition")
        rendered["Metadata"] = resource.get("Metadata", {})
        return rendered
