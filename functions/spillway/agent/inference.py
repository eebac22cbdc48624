"""The agent's contract with a model server on the same host: KServe's Open Inference Protocol (v2), REST.

Why v2: it is the protocol GPU model servers already share — NVIDIA Triton, KServe, Seldon MLServer,
OpenVINO Model Server, TorchServe — so a real server is fronted as it is, or behind a thin model
wrapper, rather than through an API invented here; its health route is the readiness probe the agent
folds into its own `/readyz`; and its binary-data extension (Triton's) carries the image as raw bytes
after a small JSON header, instead of base64 in JSON (a third larger, and parsed as text).

    GET  {model_url}/v2/health/ready           200: the server and its models are ready; else not ready
    POST {model_url}/v2/models/{service}/infer one model per Spillway service, named as the service
         Content-Type: application/octet-stream
         Inference-Header-Content-Length: <length of the JSON header>
         {"parameters": {"output_format": "png"},
          "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                      "parameters": {"binary_data_size": 4 + len(image)}}],
          "outputs": [{"name": "image", "parameters": {"binary_data": true}}]}
         then the input image (PNG, JPEG ...) as one BYTES element: its length (4 bytes, little-endian), its bytes

    200  the same framing back: output "image", the result as a PNG
    400, 413, 415, 422  the input is unusable                        -> BadInput: the job fails, no retry
    any other answer, a timeout, no connection, a result not a PNG   -> ModelError: another GPU may do it

Errors carry `{"error": "..."}` (v2's error body). Per-job parameters, when jobs grow them, go in the
request's `parameters` beside `output_format`. `python -m spillway.agent.model_server` is a stand-in
that speaks this contract with the built-in demo model: a reference for wrapping a real one.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import httpx

from spillway.agent.model import BadImage

HEADER_LENGTH = "Inference-Header-Content-Length"
TENSOR = "image"  # the one input and the one output
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
INPUT_REFUSED = frozenset({400, 413, 415, 422})  # the model server says the input is at fault
READY_TIMEOUT = httpx.Timeout(1.0)  # /readyz answers the control plane's probe within its own 2 s


class ModelServerError(Exception):
    """The model server failed, could not be reached, or answered outside the contract: a ModelError."""


# ---- the wire format, shared by the agent and the stand-in server


def encode(header: dict[str, Any], tensors: str, image: bytes) -> tuple[bytes, dict[str, str]]:
    """A v2 request or response with `image` as the one binary BYTES tensor of its `tensors` ("inputs" or
    "outputs"): (body, its HTTP headers)."""
    element = struct.pack("<I", len(image)) + image
    (tensor,) = header[tensors]
    tensor.setdefault("parameters", {})["binary_data_size"] = len(element)
    head = json.dumps(header).encode()
    return head + element, {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}


def decode(body: bytes, header_length: str | None, tensors: str) -> tuple[dict[str, Any], bytes]:
    """The JSON header and the one BYTES element of its `tensors` ("inputs" or "outputs") named `image`.
    ValueError when the body does not follow that framing."""
    try:
        length = int(header_length) if header_length is not None else len(body)
        header = json.loads(body[:length])
        (tensor,) = [t for t in header[tensors] if t.get("name") == TENSOR]
        size = int(tensor["parameters"]["binary_data_size"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a v2 message with one binary {TENSOR!r} tensor in {tensors}: {exc!r}") from None
    element = body[length:length + size]
    if len(element) != size or size < 4 or struct.unpack("<I", element[:4])[0] != size - 4:
        raise ValueError(f"the binary {TENSOR!r} tensor is not one BYTES element of {size} bytes")
    return header, element[4:]


def error_of(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])[:1000]
    except (ValueError, KeyError, TypeError):
        return response.text[:1000]


# ---- the agent's side


@dataclass
class RemoteModel:
    """A model server at `url`, as the agent's model: `run(service, image) -> PNG`, and its readiness."""

    url: str
    timeout: httpx.Timeout
    _http: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        self._http = httpx.Client(timeout=self.timeout)

    def run(self, service: str, image: bytes) -> bytes:
        request = {"parameters": {"output_format": "png"},
                   "inputs": [{"name": TENSOR, "datatype": "BYTES", "shape": [1]}],
                   "outputs": [{"name": TENSOR, "parameters": {"binary_data": True}}]}
        body, headers = encode(request, "inputs", image)
        try:
            response = self._http.post(f"{self.url}/v2/models/{service}/infer", content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise ModelServerError(f"the model server at {self.url} did not answer: {exc!r}") from exc
        if response.status_code in INPUT_REFUSED:
            raise BadImage(f"the model server refused the input ({response.status_code}): {error_of(response)}")
        if response.status_code != 200:
            raise ModelServerError(f"the model server answered {response.status_code}: {error_of(response)}")
        try:
            _, output = decode(response.content, response.headers.get(HEADER_LENGTH), "outputs")
        except ValueError as exc:
            raise ModelServerError(f"the model server's answer is outside the contract: {exc}") from None
        if not output.startswith(PNG_SIGNATURE):
            raise ModelServerError(f"the model server's result is not a PNG ({len(output)} bytes)")
        return output

    def not_ready(self) -> str | None:
        """None when the model server is ready for inference; else why not."""
        try:
            response = self._http.get(f"{self.url}/v2/health/ready", timeout=READY_TIMEOUT)
        except httpx.HTTPError as exc:
            return f"the model server at {self.url} did not answer: {exc!r}"
        return None if response.status_code == 200 else f"the model server answered {response.status_code}"

    def close(self) -> None:
        self._http.close()
