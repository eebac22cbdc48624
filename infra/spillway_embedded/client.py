"""What a client of the job API does to send a photo, as the demo, the benchmarks and the tests do it."""

from __future__ import annotations

import httpx


def upload(api: httpx.Client, image: bytes, content_type: str = "image/png") -> str:
    """POST the image through a fresh upload ticket (a form with its signed policy); its `input_key`."""
    ticket = api.post("/v1/uploads", json={"content_type": content_type}).raise_for_status().json()
    # Straight to the storage, without the API's credentials: the signed form is the authority there.
    httpx.post(ticket["upload_url"], data=ticket["fields"], files={"file": ("image", image, content_type)},
               timeout=api.timeout).raise_for_status()
    return ticket["input_key"]
