"""The page of `text2brain serve` in real headless Chromium (Debian's chromium and
chromium-driver, driven by selenium), on a server on a free loopback port.

Types a query and submits it; checks that the viewer draws the map (warm overlay pixels in the
canvas, fewer above a higher threshold), the glass brain loads, the NIfTI download is the
model's map, the address reproduces the page, related articles and describing an uploaded map
work with a contrastive head, and errors are shown. Skipped when Chromium is absent.

``TEXT2BRAIN_SERVE_SCREENSHOT=experiments/figures/serve.png`` keeps the page's screenshot.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from urllib.request import urlopen  # bound at import: loopback only, see the autouse fixture

import nibabel as nib
import numpy as np
import pytest

from text2brain.inference import Predictor, load_predictor

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WEB_EXTRA = 'the web extra is not installed: pip install "text2brain[web]"'
pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="the browser test needs headless Chromium: apt-get install chromium chromium-driver",
    ),
    pytest.mark.usefixtures("one_thread"),
]
pytest.importorskip("starlette", reason=WEB_EXTRA)
pytest.importorskip("multipart", reason=WEB_EXTRA)
webdriver = pytest.importorskip(
    "selenium.webdriver", reason="the browser test needs selenium (the dev extra)"
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from text2brain.releases import DEFAULT_MODEL  # noqa: E402
from text2brain.serve.app import create_app  # noqa: E402
from text2brain.serve.runner import running  # noqa: E402

SCREENSHOT_ENV = "TEXT2BRAIN_SERVE_SCREENSHOT"
RELEASED = DEFAULT_MODEL
QUERY = "self-generated thought"
WAIT_S = 90
#: WebGL without a GPU: Chromium's software renderer (SwiftShader).
CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--window-size=1400,780",
)


@pytest.fixture(scope="module")
def models(served: dict[str, Predictor]) -> dict[str, Predictor]:
    """The released model (its maps make the screenshot) and the tiny CLIP."""
    return {RELEASED: load_predictor(device="cpu"), "clip": served["clip"]}


@pytest.fixture(scope="module")
def base_url(models: dict[str, Predictor]) -> Iterator[str]:
    with running(create_app(models)) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in CHROMIUM_ARGS:
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, condition: Callable[[Any], Any], what: str) -> Any:
    """The first truthy value of `condition(driver)`; a timeout says what did not happen."""
    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition)
    except Exception as err:
        status = driver.find_element(By.ID, "status").text
        raise AssertionError(f"{what} (the page says: {status!r})") from err


def page_state(driver: Any) -> str | None:
    state = driver.find_element(By.ID, "status").get_attribute("data-state")
    return state if state in ("ready", "warning", "error") else None


def warm_pixels(driver: Any) -> int:
    """Overlay-coloured (orange to yellow) pixels in the viewer's slices, colour bar left out."""
    from matplotlib.image import imread

    canvas = driver.find_element(By.ID, "gl")
    pixels = imread(io.BytesIO(canvas.screenshot_as_png), format="png")
    slices = pixels[: int(pixels.shape[0] * 0.8), :, :3]
    red, green, blue = slices[..., 0], slices[..., 1], slices[..., 2]
    return int(((red > 0.75) & (blue < 0.35) & (red - blue > 0.45) & (green > 0.2)).sum())


def table_rows(driver: Any, table: str) -> list[list[str]]:
    rows = driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")
    return [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")] for row in rows]


def submit(driver: Any, query: str) -> None:
    box = driver.find_element(By.ID, "query")
    box.clear()
    box.send_keys(query)
    driver.find_element(By.ID, "submit").click()


def test_query_shows_the_map_and_downloads_it(
    browser: Any, base_url: str, models: dict[str, Predictor], tmp_path: Path
) -> None:
    browser.get(f"{base_url}/")
    wait_for(browser, lambda d: len(Select(d.find_element(By.ID, "model")).options) == 2, "models")
    submit(browser, QUERY)
    wait_for(browser, page_state, "the map was not shown")
    assert page_state(browser) == "ready", browser.find_element(By.ID, "status").text
    address = urlsplit(browser.current_url)
    assert parse_qs(address.query) == {"q": [QUERY], "model": [RELEASED]}

    glass = "const g = document.getElementById('glass'); return g.complete && g.naturalWidth;"
    assert wait_for(browser, lambda d: d.execute_script(glass), "the glass brain did not load") > 0
    drawn = wait_for(browser, warm_pixels, "the viewer shows no map")
    assert drawn > 500
    screenshot = tmp_path / "serve.png"
    browser.save_screenshot(str(screenshot))
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(screenshot, os.environ[SCREENSHOT_ENV])

    # A higher threshold leaves fewer voxels coloured.
    browser.execute_script(
        "const s = document.getElementById('threshold'); s.value = 0.8 * Number(s.max);"
        "s.dispatchEvent(new Event('input'));"
    )
    wait_for(browser, lambda d: warm_pixels(d) < drawn / 2, "the threshold changed nothing")

    link = browser.find_element(By.ID, "download-nifti").get_attribute("href")
    with urlopen(link, timeout=60) as response:
        assert response.headers["content-disposition"].endswith('.nii.gz"')
        image = nib.Nifti1Image.from_bytes(gzip.decompress(response.read()))
    predictor = models[RELEASED]
    expected = predictor.predict_vectors([QUERY])[0]
    np.testing.assert_allclose(predictor.space.from_nifti_image(image), expected, atol=1e-6)
    png = browser.find_element(By.ID, "download-png").get_attribute("href")
    with urlopen(png, timeout=60) as response:
        assert response.read(8) == b"\x89PNG\r\n\x1a\n"


def test_related_articles_and_describe(
    browser: Any, base_url: str, models: dict[str, Predictor], tmp_path: Path
) -> None:
    browser.get(f"{base_url}/?q=visual+cortex&model=clip")  # the address reproduces the page
    wait_for(browser, page_state, "the map was not shown")
    assert page_state(browser) == "ready"
    assert browser.find_element(By.ID, "query").get_attribute("value") == "visual cortex"
    assert Select(browser.find_element(By.ID, "model")).first_selected_option.text.startswith(
        "clip"
    )
    related = wait_for(browser, lambda d: table_rows(d, "related"), "no related articles")
    expected = models["clip"].related_articles("visual cortex", k=10)
    assert [row[2] for row in related] == [article.article_id for article in expected]

    path = tmp_path / "upload.nii.gz"
    image = models["clip"].predict_maps(["pain"])[0]
    image.to_filename(path)
    browser.find_element(By.ID, "describe-file").send_keys(str(path))
    browser.find_element(By.CSS_SELECTOR, "#describe-form button").click()
    described = wait_for(browser, lambda d: table_rows(d, "described"), "no description")
    expected = models["clip"].describe_map(image, k=10)
    assert [row[2] for row in described] == [article.article_id for article in expected]


def test_errors_are_shown_on_the_page(browser: Any, base_url: str) -> None:
    browser.get(f"{base_url}/?q=fear%07")
    wait_for(browser, page_state, "no answer")
    assert page_state(browser) == "error"
    assert "control characters" in browser.find_element(By.ID, "status").text
