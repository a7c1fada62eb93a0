"""template.yaml's Lambda modes: SnapStart and Managed Instances, rendered as CloudFormation
would (tests/cfn_template.py), with the template's Rules evaluated for the parameter sets
a user could pick: what SnapStart forbids is refused with its message, and each mode's
tier defaults are what handlers.lambda_modes accepts at init."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.config import Settings
from handlers.lambda_modes import Mode, problems
from tests.cfn_template import Renderer, load

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = load(ROOT / "template.yaml")
SNAP = {"SnapStart": "PublishedVersions", "EphemeralStorage": "512"}
VPC = {"SubnetIds": "subnet-a,subnet-b", "SecurityGroupIds": "sg-1"}


class RuleRenderer(Renderer):
    """Renderer plus the rule-only intrinsic the template's Rules use."""

    def _intrinsic(self, key: str, arg: Any) -> Any:
        if key == "Fn::EachMemberEquals":
            items, value = self.render(arg[0]), self.render(arg[1])
            return all(str(i) == str(value) for i in items)
        return super()._intrinsic(key, arg)


def refusals(**params: str) -> list[str]:
    """AssertDescriptions of every rule assertion the parameters break."""
    r = RuleRenderer(TEMPLATE, **params)
    out = []
    for rule in TEMPLATE["Rules"].values():
        if "RuleCondition" in rule and not r.render(rule["RuleCondition"]):
            continue
        out += [a["AssertDescription"] for a in rule["Assertions"] if not r.render(a["Assert"])]
    return out


def test_defaults_pass_every_rule() -> None:
    assert refusals() == []


def test_snapstart_renders_published_versions_and_its_tiers() -> None:
    r = Renderer(TEMPLATE, **SNAP)
    assert refusals(**SNAP) == []
    for logical_id in ("ApiFunction", "StreamFunction"):
        fn = r.function(logical_id)
        assert fn["SnapStart"] == {"ApplyOn": "PublishedVersions"}
        assert fn["AutoPublishAlias"] == "live"
        tiers = fn["Environment"]["Variables"]["STRATO_TIERS"]
        assert tiers == "ram:2GiB"
        assert problems(Settings(tiers=tiers), Mode.SNAPSTART) == []
    stream = r.function("StreamFunction")["Environment"]["Variables"]
    assert stream["AWS_LWA_READINESS_CHECK_PATH"] == "/ready"
    from handlers.lambda_stream import AFTER, BEFORE

    assert stream["AWS_LWA_SNAPSTART_BEFORE_CHECKPOINT_PATH"] == BEFORE
    assert stream["AWS_LWA_SNAPSTART_AFTER_RESTORE_PATH"] == AFTER
    assert "SnapStart" not in Renderer(TEMPLATE).function("ApiFunction")


@pytest.mark.parametrize("extra,reason", [
    (VPC, "SnapStart does not support EFS"),
    ({"ProvisionedConcurrency": "2"}, "provisioned concurrency exclude each other"),
    ({"EphemeralStorage": "10240"}, "at most 512 MB of /tmp"),
    ({"ManagedInstances": "true", **VPC}, "not available on Lambda Managed Instances"),
])
def test_snapstart_refuses_what_it_cannot_run(extra: dict[str, str], reason: str) -> None:
    found = refusals(**{**SNAP, **extra})
    assert any(reason in text for text in found), found


def test_managed_instances_get_a_capacity_provider_and_disk_tiers() -> None:
    params = {"ManagedInstances": "true", "ManagedInstancesImageUri": "repo:api-py313", **VPC}
    assert refusals(**params) == []
    r = Renderer(TEMPLATE, **params)
    fn = r.function("ApiManagedFunction")
    assert fn["Condition"] == "ManagedOn" and fn["PackageType"] == "Image"
    assert fn["ImageUri"] == "repo:api-py313"
    assert fn["CapacityProviderConfig"] == {"Arn": "<CapacityProvider.Arn>",
                                            "PerExecutionEnvironmentMaxConcurrency": "4"}
    # SAM refuses these next to CapacityProviderConfig, even resolved to nothing.
    raw = TEMPLATE["Resources"]["ApiManagedFunction"]["Properties"]
    assert not {"VpcConfig", "ProvisionedConcurrencyConfig"} & (
        set(raw) | set(TEMPLATE["Globals"]["Function"]))
    tiers = fn["Environment"]["Variables"]["STRATO_TIERS"]
    assert problems(Settings(tiers=tiers), Mode.MANAGED) == []
    assert not r.condition("HasEfs")                  # the subnets are the provider's
    provider = r.render(TEMPLATE["Resources"]["CapacityProvider"]["Properties"])
    assert provider["VpcConfig"] == {"SubnetIds": ["subnet-a", "subnet-b"],
                                     "SecurityGroupIds": ["sg-1"]}
    assert not Renderer(TEMPLATE).condition("ManagedOn")
    assert any("VPC" in text for text in refusals(ManagedInstances="true"))
    assert any("PYTHON_VERSION=3.13" in text
               for text in refusals(ManagedInstances="true", **VPC))


def test_on_demand_default_tiers_and_budget_pass_the_init_check() -> None:
    env = Renderer(TEMPLATE).function("ApiFunction")["Environment"]["Variables"]
    assert problems(Settings(tiers=env["STRATO_TIERS"]), Mode.ON_DEMAND) == []
    assert 0 < float(env["STRATO_INIT_BUDGET"]) < 10
