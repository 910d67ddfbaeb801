"""Bad requests get clear JSON errors with 4xx codes and never take the server down; the API key; the page."""

import base64
import json
import re

import httpx
import openai
import pytest
from openai import OpenAI
from PIL import Image

from lntune.serve.server import serving_in_thread
from lntune.serve.service import ChatService
from lntune.serve.settings import ServeSettings
from tests.helpers import make_image
from tests.serve.helpers import data_url, serve_threads

SETTINGS = ServeSettings(max_batch=4, batch_wait_ms=1, max_tokens_limit=64, max_image_pixels=100_000,
                         max_image_bytes=200_000, max_body_bytes=400_000, api_key="secret-key")


@pytest.fixture(scope="module")
def server(serve_model, adapter_dirs):
    service = ChatService(serve_model, SETTINGS, adapters={"ln": adapter_dirs["ln"]}, say=lambda m: None)
    with serving_in_thread(service) as (url, _):
        with httpx.Client(base_url=url, timeout=60, headers={"Authorization": "Bearer secret-key"}) as http:
            yield url, service, http
    assert serve_threads() == []


def _post(http, body, **options):
    return http.post("/v1/chat/completions", json=body, **options)


def _ask(content, **fields):
    return {"model": "ln", "messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0,
            **fields}


def _image_part(url):
    return {"type": "image_url", "image_url": {"url": url}}


def _error(response, status):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    return error


BAD_REQUESTS = {
    "unknown model": (lambda: dict(_ask("hi"), model="nope"), 404, "model_not_found", "not served; valid: .*ln"),
    "bad base64": (lambda: _ask([_image_part("data:image/png;base64,@@@not-base64@@@"), {"type": "text", "text": "x"}]),
                   400, "bad_base64", "not valid base64"),
    "remote url": (lambda: _ask([_image_part("https://example.com/cat.png")]), 400, "remote_image_refused",
                   "https URLs are not fetched"),
    "not an image": (lambda: _ask([_image_part("data:image/png;base64," + base64.b64encode(b"hello").decode())]),
                     400, "bad_image", "cannot read the image"),
    "too many pixels": (lambda: _ask([_image_part(data_url(Image.new("RGB", (400, 400))))]), 413, "image_too_large",
                        "400x400 = 160,000 pixels, over the 100,000-pixel guard"),
    "padded square over the guard": (lambda: _ask([_image_part(data_url(Image.new("RGB", (20, 400))))]), 413,
                                     "image_too_large", "padded to a 400x400 square"),
    "too many image bytes": (lambda: _ask([_image_part(data_url(make_image(0, size=(250, 300))))]), 413,
                             "image_too_large", "over the 200,000-byte limit"),
    "too many images": (lambda: {"model": "ln", "max_tokens": 4, "messages": [
        {"role": "user", "content": [_image_part(data_url(make_image(0))), {"type": "text", "text": "a"}]},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": [_image_part(data_url(make_image(1))), {"type": "text", "text": "c"}]}]},
        400, "too_many_images", "at most 1 per request"),
    "two images in one message": (lambda: _ask([_image_part(data_url(make_image(0))), _image_part(data_url(make_image(1)))]),
                                  400, None, "one image per message"),
    "over-long prompt": (lambda: _ask("red square " * 400), 400, "context_length_exceeded", "the prompt is \\d+ tokens"),
    "max_tokens over the limit": (lambda: dict(_ask("hi"), max_tokens=65), 400, None, "over this server's limit 64"),
    "n > 1": (lambda: dict(_ask("hi"), n=2), 400, None, "n > 1 is not supported"),
    "assistant last": (lambda: {"model": "ln", "messages": [{"role": "assistant", "content": "hi"}]}, 400, None,
                       "last message must be the user's"),
    "image placeholder in text": (lambda: _ask("look: <image>"), 400, None, "image placeholder"),
    "temperature out of range": (lambda: dict(_ask("hi"), temperature=3), 400, None, "temperature"),
    "no messages": (lambda: {"model": "ln", "messages": []}, 400, None, "messages"),
    "tool role": (lambda: {"model": "ln", "messages": [{"role": "tool", "content": "x"}]}, 400, None, "messages"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_a_clear_4xx(server, case):
    _, _, http = server
    body, status, code, message = BAD_REQUESTS[case]
    error = _error(_post(http, body()), status)
    if code:
        assert error["code"] == code
    assert re.search(message, error["message"]), error["message"]


def test_invalid_json_and_oversized_bodies(server):
    _, _, http = server
    _error(http.post("/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}), 400)
    large = json.dumps(_ask("x" * 500_000)).encode()
    error = _error(http.post("/v1/chat/completions", content=large, headers={"Content-Type": "application/json"}), 413)
    assert "400,000-byte limit" in error["message"]

    def chunks():  # no Content-Length: the limit counts what arrives
        yield large[:300_000]
        yield large[300_000:]

    _error(http.post("/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"}), 413)
    _error(http.get("/v1/nowhere"), 404)


def test_the_official_client_raises_the_documented_errors(server):
    url, _, _ = server
    with OpenAI(base_url=url + "/v1", api_key="secret-key", max_retries=0) as client:
        with pytest.raises(openai.NotFoundError, match="not served"):
            client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.BadRequestError, match="remote_image_refused|not fetched"):
            client.chat.completions.create(model="ln", messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]}])
    with OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            client.models.list()


def test_api_key_guards_v1_but_not_the_page_or_health(server):
    url, _, _ = server
    with httpx.Client(base_url=url, timeout=30) as anonymous:
        assert _error(anonymous.get("/v1/models"), 401)["code"] == "invalid_api_key"
        assert _error(_post(anonymous, _ask("hi")), 401)
        assert anonymous.get("/health").json()["api_key_required"] is True
        assert anonymous.get("/").status_code == 200


def test_the_server_survives_bad_requests_and_a_failing_batch(server):
    _, service, http = server
    for case in BAD_REQUESTS.values():
        _post(http, case[0]())
    decoder = service.decoder
    original = decoder._forward

    def broken(*args, **kwargs):
        raise RuntimeError("simulated device failure")

    decoder._forward = broken
    try:
        error = _error(_post(http, _ask("hi")), 500)
        assert "simulated device failure" in error["message"]
        streamed = _post(http, _ask("hi", stream=True)).text
        assert '"error"' in streamed and "simulated device failure" in streamed
    finally:
        decoder._forward = original
    response = _post(http, _ask([_image_part(data_url(make_image(2))), {"type": "text", "text": "color?"}]))
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] is not None
    assert http.get("/health").json()["status"] == "ok"


def test_loading_adapters_at_run_time_needs_an_adapters_dir(server):
    _, _, http = server
    error = _error(http.post("/v1/adapters", json={"name": "x", "path": "/tmp"}), 403)
    assert "--adapters-dir" in error["message"]


def test_the_chat_page_is_served_and_needs_no_internet(server):
    url, _, _ = server
    page = httpx.get(url + "/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "/v1/chat/completions" in html and "/v1/models" in html and 'type="file"' in html
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.IGNORECASE)  # no CDN, no remote asset
    # nothing loaded from anywhere (an inline data: URL, the page's icon, is not loaded: it is in the page)
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=(?![\"']data:)", html)


def test_exposed_host_without_key_is_warned_and_settings_are_checked():
    from lntune.errors import LntuneError

    assert ServeSettings(host="0.0.0.0").exposed and not ServeSettings().exposed
    with pytest.raises(LntuneError, match="--max-batch must be >= 1"):
        ServeSettings(max_batch=0)
    with pytest.raises(LntuneError, match="--default-max-tokens 300 is over --max-tokens-limit 200"):
        ServeSettings(default_max_tokens=300, max_tokens_limit=200)
