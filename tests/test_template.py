"""The template is the single source of truth: it must lint clean and wire what the code expects."""

from __future__ import annotations

import json
import re

import yaml
from cfnlint.api import lint_all

from conftest import ROOT, TEMPLATE


def test_template_passes_cfn_lint_with_the_sam_transform() -> None:
    problems = [str(m) for m in lint_all(TEMPLATE.read_text()) if m.rule.severity in ("error", "warning")]
    assert problems == []


def test_state_machine_definitions_are_json_with_only_declared_substitutions() -> None:
    template = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)
    for name, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Serverless::StateMachine":
            continue
        text = (ROOT / resource["Properties"]["DefinitionUri"]).read_text()
        json.loads(text)
        used = set(re.findall(r"\$\{(\w+)\}", text))
        assert used == set(resource["Properties"]["DefinitionSubstitutions"]), name


class _CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation short-form tags (!Ref, !GetAtt ...) as plain values: enough to inspect."""


_CfnLoader.add_multi_constructor("!", lambda loader, suffix, node: None)
