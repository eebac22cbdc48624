"""Translate template.yaml (SAM) to plain CloudFormation offline, as `sam build && sam package` would.

Local code and definition paths are what `sam package` would upload; offline, the state machine
definitions are inlined and the function code stays where it is (the runtime imports it).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import boto3
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator
from samtranslator.yaml_helper import yaml_parse

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
# Where `sam package` would have put the code; nothing is read from it offline.
CODE_PLACEHOLDER = "s3://spillway-embedded/functions.zip"


def load(template_path: Path) -> dict[str, Any]:
    """The SAM template as a dict, with CloudFormation's short-form tags (!Ref, !Sub ...) in long form."""
    return yaml_parse(template_path.read_text())


def parameter_defaults(template_path: Path = TEMPLATE) -> dict[str, Any]:
    """The template's parameters with their defaults (timeouts, attempts, ...), by name."""
    return {name: spec["Default"] for name, spec in load(template_path).get("Parameters", {}).items()
            if "Default" in spec}


def translate(
    template_path: Path, parameter_overrides: dict[str, str] | None = None, region: str = "us-east-1"
) -> dict[str, Any]:
    sam = _packaged(load(template_path), template_path.parent)
    parameters = {
        name: spec["Default"] for name, spec in sam.get("Parameters", {}).items() if "Default" in spec
    } | dict(parameter_overrides or {})
    unknown = set(parameter_overrides or {}) - set(sam.get("Parameters", {}))
    if unknown:
        raise ValueError(f"the template has no parameter(s) {', '.join(sorted(unknown))}")
    translator = Translator(
        managed_policy_map={}, sam_parser=Parser(), boto_session=boto3.Session(region_name=region)
    )
    cfn = translator.translate(sam_template=sam, parameter_values=dict(parameters))
    # The translator keeps the Parameters section; remember the values this translation used.
    for name, value in parameters.items():
        cfn.setdefault("Parameters", {}).setdefault(name, {})["Default"] = value
    return cfn


def _packaged(sam: dict[str, Any], base: Path) -> dict[str, Any]:
    sam = copy.deepcopy(sam)
    function_globals = sam.get("Globals", {}).get("Function", {})
    if isinstance(function_globals.get("CodeUri"), str):
        function_globals["CodeUri"] = CODE_PLACEHOLDER
    for resource in sam.get("Resources", {}).values():
        properties = resource.get("Properties", {})
        if resource.get("Type") == "AWS::Serverless::Function" and isinstance(properties.get("CodeUri"), str):
            properties["CodeUri"] = CODE_PLACEHOLDER
        if resource.get("Type") == "AWS::Serverless::StateMachine" and isinstance(properties.get("DefinitionUri"), str):
            properties["Definition"] = json.loads((base / properties.pop("DefinitionUri")).read_text())
    return sam
