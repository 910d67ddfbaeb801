"""The chat page at `/`, used as a person uses it, in a real headless Chromium driven by Selenium: pick an adapter,
upload an image through the file input, ask, and the streamed answer shown is the API's greedy answer to the same
request. Chromium runs with every host name but the server's unresolvable, so the page must work with no internet.

Needs Chromium and its driver (Debian: `apt-get install chromium chromium-driver`; .ci/run installs them); skipped,
saying so, where neither can be found. Selenium is given the driver's path, so it never downloads one."""

import json
import shutil

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from lntune.serve.server import serving_in_thread
from lntune.serve.service import ChatService
from lntune.serve.settings import ServeSettings
from tests.helpers import make_image
from tests.serve.helpers import data_url

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
QUESTION = "what color is the square?"
MAX_TOKENS = 12


def _find(names):
    return next((path for path in map(shutil.which, names) if path), None)


@pytest.fixture(scope="module")
def browser():
    binary, driver_path = _find(BROWSERS), _find(("chromedriver",))
    if binary is None or driver_path is None:
        pytest.skip(f"no headless browser here (chromium found: {binary}, chromedriver found: {driver_path}); "
                    "install them with: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-extensions", "--no-first-run", "--window-size=1200,900",
                     # no internet: any host but the server's cannot be resolved, so a CDN asset would fail to load
                     "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def server(serve_model, adapter_dirs):
    service = ChatService(serve_model, ServeSettings(max_batch=4, batch_wait_ms=5),
                          adapters={name: adapter_dirs[name] for name in ("simple-a", "ln")}, say=lambda m: None)
    with serving_in_thread(service) as (url, _):
        yield url, service


def _api_answer(url: str, model: str, image_path, question: str) -> str:
    """The same request the page sends, through the API without streaming."""
    picture = data_url(_open(image_path))
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": picture}},
                                             {"type": "text", "text": question}]}]
    response = httpx.post(url + "/v1/chat/completions", timeout=120, json={
        "model": model, "messages": messages, "temperature": 0, "max_tokens": MAX_TOKENS})
    response.raise_for_status()
    return response.json()["choices"][0]["message"]["content"]


def _open(path):
    from PIL import Image

    with Image.open(path) as image:
        return image.copy()


def test_page_uploads_an_image_and_streams_the_api_answer(browser, server, tmp_path):
    url, service = server
    image_path = tmp_path / "square.png"
    make_image(5).save(image_path)
    browser.get(url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda driver: len(driver.find_elements(By.CSS_SELECTOR, "#model option")) == 3)
    model = Select(browser.find_element(By.ID, "model"))
    assert [option.get_attribute("value") for option in model.options] == [service.adapters.base.name, "simple-a", "ln"]
    model.select_by_value("ln")
    assert "adapter · layernorm" in browser.find_element(By.ID, "info").text

    browser.find_element(By.ID, "file").send_keys(str(image_path))
    wait.until(lambda driver: driver.find_element(By.ID, "preview").is_displayed())
    maximum = browser.find_element(By.ID, "max-tokens")
    maximum.clear()
    maximum.send_keys(str(MAX_TOKENS))
    browser.find_element(By.ID, "question").send_keys(QUESTION)
    browser.find_element(By.ID, "send").click()

    # The page adds the meta line (model, finish reason, token counts) once the stream has ended.
    meta = wait.until(lambda driver: driver.find_elements(By.CSS_SELECTOR, ".turn.assistant .meta")
                      or driver.find_elements(By.CSS_SELECTOR, ".turn.error"))[0]
    assert "error" not in meta.get_attribute("class"), meta.text
    shown = browser.find_element(By.CSS_SELECTOR, ".turn.assistant span").get_property("textContent")
    expected = _api_answer(url, "ln", image_path, QUESTION)
    assert shown == expected and shown.strip()
    assert meta.text.startswith("ln · ") and "answer tokens" in meta.text
    user_turn = browser.find_element(By.CSS_SELECTOR, ".turn.user")
    assert user_turn.find_element(By.TAG_NAME, "img").get_attribute("src").startswith("data:image/png;base64,")
    assert QUESTION in user_turn.text

    # Everything the page loaded came from the server itself, and the console holds no error.
    sources = browser.execute_script(
        "return performance.getEntriesByType('resource').map((entry) => entry.name)")
    assert all(source.startswith(url) for source in sources), sources
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == [], json.dumps(errors)
