"""Adapters loaded and unloaded at run time, while requests are being served; graceful shutdown; a client that goes
away mid-stream frees its row."""

import json
import shutil
import threading
import time

import httpx
import pytest

from lntune.serve.server import serving_in_thread
from lntune.serve.service import ChatService
from lntune.serve.settings import ServeSettings
from tests.helpers import make_image
from tests.serve.helpers import data_url, serve_threads, write_adapter


@pytest.fixture(scope="module")
def adapters_dir(tmp_path_factory, adapter_dirs):
    root = tmp_path_factory.mktemp("served-adapters")
    shutil.copytree(adapter_dirs["simple-b"], root / "simple-b")
    shutil.copytree(adapter_dirs["qv"], root / "run-qv" / "adapter")  # a run folder with its adapter/ inside
    return root


@pytest.fixture(scope="module")
def server(serve_model, adapters_dir):
    service = ChatService(serve_model, ServeSettings(max_batch=8, batch_wait_ms=5), adapters_dir=adapters_dir,
                          say=lambda m: None)
    with serving_in_thread(service) as (url, _):
        with httpx.Client(base_url=url, timeout=120) as http:
            yield http, service
    assert serve_threads() == []


def _ask(model, seed=0, max_tokens=8, stream=False):
    return {"model": model, "max_tokens": max_tokens, "temperature": 0, "stream": stream,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(make_image(seed))}},
                                                      {"type": "text", "text": "describe the image."}]}]}


def _answer(http, model, seed=0, max_tokens=8):
    response = http.post("/v1/chat/completions", json=_ask(model, seed, max_tokens))
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]


def _models(http):
    return {entry["id"]: entry for entry in http.get("/v1/models").json()["data"]}


def test_adapters_dir_is_served_from_the_start(server):
    http, _ = server
    models = _models(http)
    assert models["simple-b"]["method"] == "layernorm-simple" and models["run-qv"]["method"] == "attn-qv"


def test_load_use_unload(server):
    http, service = server
    loaded = http.post("/v1/adapters", json={"name": "b2", "path": "simple-b"})
    assert loaded.status_code == 201, loaded.text
    assert loaded.json()["id"] == "b2" and loaded.json()["base_fingerprint"] == service.adapters.base_fingerprint
    assert "b2" in _models(http)
    assert _answer(http, "b2") == _answer(http, "simple-b")  # the same adapter under two names
    assert _answer(http, "b2")["message"] != _answer(http, service.adapters.base.name)["message"]
    deleted = http.delete("/v1/adapters/b2")
    assert deleted.status_code == 200 and deleted.json() == {"id": "b2", "object": "model", "deleted": True}
    assert "b2" not in _models(http)
    assert http.post("/v1/chat/completions", json=_ask("b2")).status_code == 404
    assert http.delete("/v1/adapters/b2").status_code == 404
    # the freed bank row is reused by the next adapter, which serves its own weights
    again = http.post("/v1/adapters", json={"name": "qv2", "path": "run-qv"})
    assert again.status_code == 201 and _answer(http, "qv2") == _answer(http, "run-qv")
    assert http.delete("/v1/adapters/qv2").status_code == 200


def test_refused_loads(server, adapters_dir, adapter_dirs, serve_model, tmp_path):
    http, service = server
    foreign = adapters_dir / "foreign"
    shutil.copytree(adapter_dirs["simple-a"], foreign)
    manifest = json.loads((foreign / "adapter.json").read_text())
    manifest["base_fingerprint"] = "0" * 32
    (foreign / "adapter.json").write_text(json.dumps(manifest))
    write_adapter(serve_model, adapters_dir / "lora", method="lora", seed=5)
    write_adapter(serve_model, adapters_dir / "plain-with-system", seed=6,
                  prompt={"template": "plain", "system": "Be brief.", "image_placement": "front"})
    (adapters_dir / "empty").mkdir()
    outside = tmp_path / "outside"
    shutil.copytree(adapter_dirs["simple-a"], outside)
    cases = [
        ({"name": "x", "path": "foreign"}, 409, "trained on another base model"),
        ({"name": "x", "path": "lora"}, 400, "LoRA adapter"),
        ({"name": "x", "path": "empty"}, 400, "not an adapter folder"),
        ({"name": "x", "path": "plain-with-system"}, 400, "template 'plain' has none"),
        ({"name": "x", "path": "missing"}, 404, "not an adapter folder"),
        ({"name": "x", "path": str(outside)}, 403, "outside --adapters-dir"),
        ({"name": "x", "path": "../outside"}, 403, "outside --adapters-dir"),
        ({"name": "simple-b", "path": "simple-b"}, 409, "already served"),
        ({"name": service.adapters.base.name, "path": "simple-b"}, 409, "already served"),
        ({"name": "bad name!", "path": "simple-b"}, 400, "not valid"),
    ]
    for body, status, message in cases:
        response = http.post("/v1/adapters", json=body)
        assert response.status_code == status, (body, response.text)
        assert message in response.json()["error"]["message"], (body, response.text)
    assert http.delete(f"/v1/adapters/{service.adapters.base.name}").status_code == 400
    assert set(_models(http)) == {service.adapters.base.name, "simple-b", "run-qv"}  # nothing half-loaded


def _stream_in_thread(url, body, first_chunk: threading.Event, result: dict):
    def run():
        pieces, finish = [], None
        with httpx.Client(base_url=url, timeout=120) as http, http.stream("POST", "/v1/chat/completions",
                                                                            json=body) as response:
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choice = json.loads(line[6:])["choices"][0]
                pieces.append(choice["delta"].get("content") or "")
                finish = choice["finish_reason"] or finish
                if pieces[-1]:
                    first_chunk.set()  # generation has started (the role chunk comes before the batch does)
        result.update(text="".join(pieces), finish=finish)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_load_and_unload_while_a_stream_is_running(server):
    http, service = server
    expected = _answer(http, "simple-b", seed=4, max_tokens=40)
    first, result = threading.Event(), {}
    thread = _stream_in_thread(str(http.base_url), _ask("simple-b", seed=4, max_tokens=40, stream=True), first, result)
    assert first.wait(60)
    assert http.post("/v1/adapters", json={"name": "b3", "path": "simple-b"}).status_code == 201
    assert http.delete("/v1/adapters/run-qv").status_code == 200
    assert _answer(http, "b3", seed=4, max_tokens=40) == expected
    thread.join(120)
    assert result == {"text": expected["message"]["content"], "finish": expected["finish_reason"]}
    # unloading the adapter a stream is using waits for that stream's batch, which finishes intact
    first, result = threading.Event(), {}
    thread = _stream_in_thread(str(http.base_url), _ask("b3", seed=4, max_tokens=40, stream=True), first, result)
    assert first.wait(60)
    assert http.delete("/v1/adapters/b3").status_code == 200
    thread.join(120)
    assert result == {"text": expected["message"]["content"], "finish": expected["finish_reason"]}
    assert http.post("/v1/adapters", json={"name": "run-qv", "path": "run-qv"}).status_code == 201


def test_a_client_that_leaves_mid_stream_frees_its_row(server):
    http, service = server
    earlier = service.batcher.batches_done
    full = _answer(http, "simple-b", seed=6, max_tokens=200)
    # The decoder records a batch after its last token is sent: wait for this answer's record before counting.
    deadline = time.monotonic() + 60
    while service.batcher.batches_done == earlier and time.monotonic() < deadline:
        time.sleep(0.01)
    before = service.batcher.batches_done
    # Each decoding step takes at least 20 ms, so the 200 tokens take 4 s or more: the client's leaving, a few ms
    # after its third line, is seen mid-answer even on a machine busy enough to stall the server for a while.
    slow_steps = service.decoder.model.register_forward_pre_hook(lambda module, args: time.sleep(0.02))
    try:
        with http.stream("POST", "/v1/chat/completions",
                         json=_ask("simple-b", seed=6, max_tokens=200, stream=True)) as response:
            lines = response.iter_lines()
            for _ in range(3):
                next(lines)
        deadline = time.monotonic() + 60
        while service.batcher.batches_done == before and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        slow_steps.remove()
    assert full["finish_reason"] == "length"  # left alone, the answer runs to all 200 tokens
    assert service.batcher.batches_since(before)[0].tokens < 200


def test_graceful_shutdown_finishes_the_request_in_flight(serve_model, adapter_dirs):
    service = ChatService(serve_model, ServeSettings(batch_wait_ms=1), adapters={"ln": adapter_dirs["ln"]},
                          say=lambda m: None)
    with serving_in_thread(service) as (url, uvicorn_server):
        with httpx.Client(base_url=url, timeout=120) as http:
            expected = _answer(http, "ln", seed=8, max_tokens=60)
        first, result = threading.Event(), {}
        thread = _stream_in_thread(url, _ask("ln", seed=8, max_tokens=60, stream=True), first, result)
        assert first.wait(60)
        uvicorn_server.should_exit = True  # what Ctrl-C / SIGTERM does
        thread.join(120)
        assert result == {"text": expected["message"]["content"], "finish": expected["finish_reason"]}
    assert not service.batcher.running  # the decoder thread ended after the last request
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health", timeout=5)


def test_listing_models_does_not_wait_for_a_running_batch(server):
    http, service = server
    with service.adapters.lock:  # as the decoder holds it for a whole batch
        started = time.monotonic()
        listed = http.get("/v1/models", timeout=10).json()["data"]
        assert "simple-b" in {entry["id"] for entry in listed} and time.monotonic() - started < 10
