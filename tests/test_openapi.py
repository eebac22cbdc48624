"""docs/openapi.json is what the API serves: regenerate it with `python -m spillway.openapi`."""

from __future__ import annotations

import json

from conftest import ROOT

DOC = ROOT / "docs" / "openapi.json"


def test_exported_openapi_document_is_in_sync_with_the_api(monkeypatch) -> None:
    from spillway.openapi import document

    assert json.loads(DOC.read_text()) == json.loads(document()), "run: python -m spillway.openapi"
