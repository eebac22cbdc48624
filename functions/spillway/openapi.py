"""Export the job API's OpenAPI document: `python -m spillway.openapi > docs/openapi.json`."""

from __future__ import annotations

import json


def document() -> str:
    from spillway.handlers.api import openapi_document

    return json.dumps(json.loads(openapi_document()), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(document(), end="")
