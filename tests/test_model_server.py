"""The agent's contract with a model server (KServe's v2 over HTTP, see spillway/agent/inference.py): the
agent's client against the stand-in server, over real HTTP, and each way the server can fail mapped to the
agent's error types. The agent and the stand-in as real processes are in test_agent.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from spillway.agent import model
from spillway.agent.inference import HEADER_LENGTH, ModelServerError, RemoteModel, decode, encode
from spillway.agent.model_server import ModelServer
from spillway.rooms import render_room

TIMEOUT = httpx.Timeout(10.0, connect=2.0)


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[ModelServer, RemoteModel]]]:
    started: list[tuple[ModelServer, RemoteModel]] = []

    def start(run_model: Callable[[str, bytes], bytes] = model.run, ready: bool = True) -> tuple[ModelServer,
                                                                                                   RemoteModel]:
        server = ModelServer(("127.0.0.1", 0), run_model=run_model)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        if ready:
            server.ready.set()
        started.append((server, RemoteModel(server.url, TIMEOUT)))
        return started[-1]

    yield start
    for server, client in started:
        client.close()
        server.shutdown()
        server.server_close()


def test_the_model_runs_behind_the_contract_as_it_does_in_process(serve: Callable[..., tuple]) -> None:
    _, remote = serve()
    room = render_room(4, 320, 240)
    for service in ("remove_furniture", "upscale_2x"):
        assert remote.run(service, room) == model.run(service, room), "the same PNG, byte for byte"
    assert remote.not_ready() is None


def test_the_wire_format_is_v2s_binary_tensor_extension() -> None:
    image = b"\x89PNG\r\n\x1a\n" + b"pixels"
    body, headers = encode({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}]}, "inputs", image)
    header = json.loads(body[: int(headers[HEADER_LENGTH])])
    assert header["inputs"][0]["parameters"] == {"binary_data_size": 4 + len(image)}
    assert body[int(headers[HEADER_LENGTH]):] == len(image).to_bytes(4, "little") + image, "a BYTES element"
    assert decode(body, headers[HEADER_LENGTH], "inputs")[1] == image
    with pytest.raises(ValueError, match="one BYTES element"):
        decode(body[:-1], headers[HEADER_LENGTH], "inputs")


def test_an_unusable_image_is_bad_input(serve: Callable[..., tuple]) -> None:
    _, remote = serve()
    with pytest.raises(model.BadImage, match="refused the input \\(400\\).*does not decode"):
        remote.run("remove_furniture", b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)


def test_a_request_outside_the_contract_is_a_400_with_a_reason(serve: Callable[..., tuple]) -> None:
    server, _ = serve()
    answer = httpx.post(f"{server.url}/v2/models/upscale_2x/infer", json={"inputs": []}, timeout=TIMEOUT)
    assert answer.status_code == 400 and "binary 'image' tensor" in answer.json()["error"]


def test_an_unknown_model_is_a_model_error_not_bad_input(serve: Callable[..., tuple]) -> None:
    """This GPU's server lacks the model: another GPU may have it."""
    server, remote = serve()
    with pytest.raises(ModelServerError, match="answered 404.*no model 'paint_it_pink'"):
        remote.run("paint_it_pink", render_room(1))
    assert httpx.get(f"{server.url}/v2/models/paint_it_pink/ready", timeout=TIMEOUT).status_code == 404
    assert httpx.get(f"{server.url}/v2/models/upscale_2x/ready", timeout=TIMEOUT).json()["ready"] is True


def test_a_model_crash_is_a_model_error(serve: Callable[..., tuple]) -> None:
    def crashing(service: str, image: bytes) -> bytes:
        raise MemoryError("CUDA out of memory")

    _, remote = serve(run_model=crashing)
    with pytest.raises(ModelServerError, match="answered 500.*CUDA out of memory"):
        remote.run("upscale_2x", render_room(1))


def test_a_result_that_is_not_a_png_is_a_model_error(serve: Callable[..., tuple]) -> None:
    _, remote = serve(run_model=lambda service, image: b"GIF89a...")
    with pytest.raises(ModelServerError, match="not a PNG"):
        remote.run("upscale_2x", render_room(1))


def test_not_ready_while_warming_up_and_when_gone(serve: Callable[..., tuple]) -> None:
    server, remote = serve(ready=False)
    assert remote.not_ready() == "the model server answered 503"
    with pytest.raises(ModelServerError, match="answered 503.*warming up"):
        remote.run("upscale_2x", render_room(1))
    server.warm_up()
    assert remote.not_ready() is None
    server.shutdown()
    server.server_close()
    gone = RemoteModel(server.url, TIMEOUT)  # a fresh client: in-process, the old keep-alive connection lives on
    assert "did not answer" in (gone.not_ready() or "")
    with pytest.raises(ModelServerError, match="did not answer"):
        gone.run("upscale_2x", render_room(1))
    gone.close()
