"""The API of `text2brain serve` through Starlette's test client: every endpoint, every bad
input (a 4xx JSON error naming the problem, never a traceback), and concurrent requests on a
real server."""

from __future__ import annotations

import gzip
import io
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.request import urlopen

import nibabel as nib
import numpy as np
import pytest

from text2brain.inference import Predictor, UnknownTokensWarning
from text2brain.serve.uploads import MAX_K, MAX_QUERY_CHARS

WEB_EXTRA = 'the web extra is not installed: pip install "text2brain[web]"'
pytest.importorskip("starlette", reason=WEB_EXTRA)
pytest.importorskip("multipart", reason=WEB_EXTRA)
from starlette.testclient import TestClient  # noqa: E402

from text2brain.serve.app import CACHED, STATIC_FILES, create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

QUERY = "working memory in the prefrontal cortex"


def nifti(content: bytes) -> nib.Nifti1Image:
    """A .nii.gz download as an image (checks that it is gzip and NIfTI)."""
    image = nib.Nifti1Image.from_bytes(gzip.decompress(content))
    image.get_fdata()  # the whole data is there
    return image


def nii_gz(image: nib.Nifti1Image) -> bytes:
    return gzip.compress(image.to_bytes())


def assert_error(response: Any, status: int, *words: str) -> None:
    """A JSON error with this status whose message names the problem, without a traceback."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["status"] == status and set(body) == {"error", "status"}
    for word in words:
        assert word in body["error"], body["error"]
    assert "Traceback" not in response.text


# -- what the server tells about itself -------------------------------------------------------
def test_health_and_models(client: TestClient, served: dict[str, Predictor]) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "models": ["tiny", "clip"]}
    listed = client.get("/api/models").json()
    assert listed["default"] == "tiny"
    by_name = {model["name"]: model for model in listed["models"]}
    assert list(by_name) == ["tiny", "clip"]
    assert by_name["tiny"]["head"] == "Text2Brain" and by_name["clip"]["head"] == "CLIP"
    assert (by_name["tiny"]["related"], by_name["clip"]["related"]) == (False, True)
    assert (by_name["tiny"]["describe"], by_name["clip"]["describe"]) == (False, True)
    space = served["tiny"].space
    assert by_name["tiny"]["grid"] == list(space.shape)
    assert by_name["tiny"]["n_voxels"] == space.n_voxels
    assert by_name["tiny"]["precision"] == "fp32"


def test_page_and_its_files(client: TestClient) -> None:
    page = client.get("/", params={"q": QUERY})  # the page reads ?q= itself
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("/static/app.js", "/static/style.css", "/static/niivue/niivue.umd.js"):
        assert f'"{asset}"' in page.text
    for name, media_type in STATIC_FILES.items():
        if name != "index.html":
            response = client.get(f"/static/{name}")
            assert response.status_code == 200 and response.content
            assert response.headers["content-type"] == media_type
    assert "BSD 2-Clause" in client.get("/static/niivue/LICENSE").text
    assert page.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "path",
    ["/static/index.htm", "/static/../app.py", "/static/%2e%2e/app.py", "/static/niivue/", "/x"],
)
def test_no_other_file_is_served(client: TestClient, path: str) -> None:
    assert_error(client.get(path), 404)


def test_template_is_the_viewers_background(client: TestClient) -> None:
    response = client.get("/api/template")
    assert response.status_code == 200 and response.headers["content-type"] == "application/gzip"
    template = nifti(response.content)
    assert len(template.shape) == 3 and np.ptp(template.get_fdata()) > 0


# -- maps ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny", "clip"])
def test_map_is_the_predictors_nifti(
    client: TestClient, served: dict[str, Predictor], name: str
) -> None:
    response = client.get("/api/map", params={"q": QUERY, "model": name})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/gzip"
    assert response.headers["content-disposition"] == (
        'attachment; filename="working_memory_in_the_prefrontal_cortex.nii.gz"'
    )
    image = nifti(response.content)
    predictor = served[name]
    expected = predictor.predict_vectors([QUERY])[0]
    np.testing.assert_allclose(predictor.space.from_nifti_image(image), expected, atol=1e-6)
    np.testing.assert_allclose(image.affine, predictor.space.affine)


def test_map_without_a_model_is_the_defaults(client: TestClient) -> None:
    default = client.get("/api/map", params={"q": QUERY})
    named = client.get("/api/map", params={"q": QUERY, "model": "tiny"})
    assert default.content == named.content


def test_map_as_json(client: TestClient, served: dict[str, Predictor]) -> None:
    body = client.get("/api/map", params={"q": QUERY, "format": "json"}).json()
    space = served["tiny"].space
    assert body["model"] == "tiny" and body["query"] == QUERY and body["warning"] is None
    assert body["shape"] == list(space.shape) and body["n_voxels"] == space.n_voxels
    np.testing.assert_allclose(body["affine"], space.affine)
    expected = served["tiny"].predict_vectors([QUERY])[0]
    np.testing.assert_allclose(np.asarray(body["vector"], np.float32), expected, atol=1e-6)


def test_map_of_a_query_the_tokenizer_cannot_read_warns(client: TestClient) -> None:
    with pytest.warns(UnknownTokensWarning):  # the server's log says it too
        response = client.get("/api/map", params={"q": "😀🧠"})
    assert response.status_code == 200
    assert "unknown to the model's tokenizer" in response.headers["x-text2brain-warning"]
    body = client.get("/api/map", params={"q": "😀🧠", "format": "json"}).json()
    assert "says little" in body["warning"]
    assert "x-text2brain-warning" not in client.get("/api/map", params={"q": QUERY}).headers


def test_glass_brain_png(client: TestClient) -> None:
    from matplotlib.image import imread

    response = client.get("/api/map.png", params={"q": QUERY, "model": "clip"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["content-disposition"].startswith("inline; filename=")
    picture = imread(io.BytesIO(response.content), format="png")
    assert picture.shape[0] > 100 and picture.shape[1] > 300 and np.ptp(picture) > 0


def test_cache_keeps_the_latest_maps(client: TestClient, served: dict[str, Predictor]) -> None:
    queries = [f"pain number {i}" for i in range(CACHED + 3)]
    for query in queries:
        assert client.get("/api/map", params={"q": query}).status_code == 200
    cached = client.app.state.models["tiny"]._vectors  # type: ignore[attr-defined]
    assert list(cached)[-CACHED:] == queries[-CACHED:] and len(cached) == CACHED


# -- related articles and describing a map -----------------------------------------------------
def test_related_articles(client: TestClient, served: dict[str, Predictor]) -> None:
    body = client.get("/api/related", params={"q": QUERY, "model": "clip", "k": 5}).json()
    expected = served["clip"].related_articles(QUERY, k=5)
    assert body["model"] == "clip" and body["query"] == QUERY
    assert [row["rank"] for row in body["articles"]] == [1, 2, 3, 4, 5]
    assert [row["article_id"] for row in body["articles"]] == [a.article_id for a in expected]
    assert body["articles"][0]["title"] == expected[0].title
    assert body["articles"][0]["keywords"] == list(expected[0].keywords)
    distances = [row["distance"] for row in body["articles"]]
    assert distances == sorted(distances)
    default_k = client.get("/api/related", params={"q": QUERY, "model": "clip"}).json()
    assert len(default_k["articles"]) == 10


def describe_upload(predictor: Predictor) -> tuple[bytes, list[str]]:
    """A map on the predictor's grid as .nii.gz bytes, and its nearest articles' ids."""
    image = predictor.predict_maps(["visual cortex"])[0]
    return nii_gz(image), [a.article_id for a in predictor.describe_map(image, k=3)]


def test_describe_an_uploaded_map(client: TestClient, served: dict[str, Predictor]) -> None:
    data, expected = describe_upload(served["clip"])
    url = "/api/describe?model=clip&k=3"
    as_form = client.post(url, files={"file": ("map.nii.gz", data, "application/gzip")})
    assert as_form.status_code == 200, as_form.text
    assert [row["article_id"] for row in as_form.json()["articles"]] == expected
    as_body = client.post(url, content=data, headers={"content-type": "application/gzip"})
    assert as_body.json() == as_form.json()
    plain = client.post(url, content=gzip.decompress(data))  # an uncompressed .nii
    assert plain.json() == as_form.json()


# -- bad input: a 4xx that names the problem --------------------------------------------------
@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({}, ["missing"]),
        ({"q": ""}, ["empty"]),
        ({"q": " \t\n "}, ["empty"]),
        ({"q": "x" * (MAX_QUERY_CHARS + 1)}, ["too long", f"{MAX_QUERY_CHARS + 1:,}"]),
        ({"q": "fear\x00of faces"}, ["control characters", "U+0000"]),
        ({"q": "fear\x07"}, ["control characters", "U+0007"]),
        ({"q": ["pain", "fear"]}, ["one query"]),
        ({"q": QUERY, "model": ["tiny", "clip"]}, ["one model"]),
        ({"q": QUERY, "format": "csv"}, ["format", "csv"]),
    ],
)
@pytest.mark.parametrize("path", ["/api/map", "/api/map.png", "/api/related"])
def test_bad_queries(client: TestClient, path: str, params: dict, words: list[str]) -> None:
    if path != "/api/map" and "format" in params:
        return
    if path == "/api/related":
        params = {"model": "clip", **params}
    assert_error(client.get(path, params=params), 400, *words)


def test_query_that_is_not_utf8(client: TestClient) -> None:
    assert_error(client.get("/api/map?q=fear%FF%FEfaces"), 400, "not UTF-8")


@pytest.mark.parametrize("path", ["/api/map", "/api/map.png", "/api/related"])
def test_unknown_model(client: TestClient, path: str) -> None:
    for name in ("bert", "../../checkpoints/clip.ckpt", "/etc/passwd"):
        assert_error(
            client.get(path, params={"q": QUERY, "model": name}), 404, "unknown model", "clip"
        )
    response = client.post("/api/describe", params={"model": "nope"}, content=b"x")
    assert_error(response, 404, "unknown model")


@pytest.mark.parametrize("k", ["0", str(MAX_K + 1), "x", "-1", "2.5", "", "²", "9" * 5000])
def test_bad_k(client: TestClient, k: str) -> None:
    response = client.get("/api/related", params={"q": QUERY, "model": "clip", "k": k})
    assert_error(response, 400, "k must be a whole number")
    response = client.post("/api/describe", params={"model": "clip", "k": k}, content=b"x")
    assert_error(response, 400, "k must be a whole number")


def test_heads_without_an_embedding_space(client: TestClient) -> None:
    response = client.get("/api/related", params={"q": QUERY})
    assert_error(response, 400, "'tiny'", "no bank of training articles", "clip or mnm")
    response = client.post("/api/describe", content=b"x")
    assert_error(response, 400, "cannot describe a map")


def grid_image(predictor: Predictor, data: np.ndarray | None = None, **kwargs: Any) -> bytes:
    space = predictor.space
    data = space.to_volume(np.ones(space.n_voxels, np.float32)) if data is None else data
    return nii_gz(nib.Nifti1Image(data, kwargs.get("affine", space.affine)))


@pytest.mark.parametrize(
    ("make", "status", "words"),
    [
        (lambda p: b"", 400, ["empty"]),
        (lambda p: b"this is not a brain map" * 20, 400, ["not a NIfTI image"]),
        (lambda p: gzip.compress(b"not a map"), 400, ["not a NIfTI image"]),
        (lambda p: b"\x1f\x8b" + b"\x00" * 64, 400, ["not valid gzip"]),
        (
            lambda p: grid_image(p, np.ones((7, 8, 9), np.float32)),
            400,
            ["grid (7, 8, 9)", "resample"],
        ),
        (lambda p: grid_image(p, affine=np.diag([2.0, 2, 2, 1])), 400, ["grid", "resample"]),
        (
            lambda p: grid_image(p, np.ones((*p.space.shape, 3), np.float32)),
            400,
            ["4-D", "one 3-D map"],
        ),
        (lambda p: grid_image(p, np.full(p.space.shape, np.nan, np.float32)), 400, ["NaN"]),
        (lambda p: b"\x00" * (2**20 + 1), 413, ["too large", "1 MiB"]),
        (lambda p: gzip.compress(b"\x00" * (65 * 2**20)), 413, ["decompresses to more"]),
    ],
    ids=[
        "empty",
        "text",
        "gzip-text",
        "bad-gzip",
        "other-shape",
        "other-affine",
        "4d",
        "nan",
        "too-large",
        "gzip-bomb",
    ],
)
def test_bad_uploads(
    client: TestClient,
    served: dict[str, Predictor],
    make: Callable[[Predictor], bytes],
    status: int,
    words: list[str],
) -> None:
    data = make(served["clip"])
    url = "/api/describe?model=clip"
    assert_error(client.post(url, content=data), status, *words)
    response = client.post(url, files={"file": ("map.nii.gz", data, "application/gzip")})
    assert_error(response, status, *words)


def test_one_volume_4d_upload_is_a_3d_map(client: TestClient, served: dict[str, Predictor]) -> None:
    space = served["clip"].space
    volume = space.to_volume(np.linspace(0, 1, space.n_voxels, dtype=np.float32))[..., None]
    response = client.post("/api/describe?model=clip", content=grid_image(served["clip"], volume))
    assert response.status_code == 200 and len(response.json()["articles"]) == 10


def test_form_without_the_file_field(client: TestClient) -> None:
    response = client.post("/api/describe?model=clip", files={"map": ("m.nii", b"x")})
    assert_error(response, 400, "form field 'file'")
    response = client.post(
        "/api/describe?model=clip", data={"file": "not a file"}, files={"map": ("m", b"x")}
    )
    assert_error(response, 400, "form field 'file'")


def test_wrong_methods(client: TestClient) -> None:
    assert_error(client.post("/api/map", params={"q": QUERY}), 405)
    assert_error(client.get("/api/describe"), 405)


def test_an_unexpected_failure_is_a_json_500_without_traceback(
    served: dict[str, Predictor], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app({"tiny": served["tiny"]})
    model = app.state.models["tiny"]
    monkeypatch.setattr(model, "vector", lambda query: 1 / 0)
    with TestClient(app, raise_server_exceptions=False) as failing:
        response = failing.get("/api/map", params={"q": QUERY})
    assert_error(response, 500, "ZeroDivisionError")


def test_a_query_the_model_refuses_is_a_400(
    served: dict[str, Predictor], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(texts: list[str], batch_size: int = 64) -> np.ndarray:
        raise ValueError("texts[0] has no tokens")

    app = create_app({"tiny": served["tiny"]})
    monkeypatch.setattr(app.state.models["tiny"].predictor, "predict_vectors", refuse)
    with TestClient(app) as refusing:
        assert_error(refusing.get("/api/map", params={"q": QUERY}), 400, "has no tokens")


def test_create_app_checks_its_models(served: dict[str, Predictor]) -> None:
    with pytest.raises(ValueError, match="at least one"):
        create_app({})
    with pytest.raises(ValueError, match="model names"):
        create_app({"a/b": served["tiny"]})


def test_concurrent_requests_on_a_real_server(served: dict[str, Predictor]) -> None:
    """20 requests at once over HTTP, on two models: all answered, each with its own map."""
    from text2brain.serve.runner import running

    queries = [
        (f"{['pain', 'fear', 'reward', 'vision'][i % 4]} task {i}", i % 2) for i in range(20)
    ]
    names = ["tiny", "clip"]

    def fetch(base: str, query: str, model: int) -> bytes:
        url = f"{base}/api/map?model={names[model]}&q={query.replace(' ', '+')}"
        with urlopen(url, timeout=60) as response:
            assert response.status == 200
            return response.read()

    with running(create_app(served)) as base:
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda args: fetch(base, *args), queries))
        models = json.loads(urlopen(f"{base}/api/models", timeout=10).read())["models"]
    assert [model["name"] for model in models] == names
    for (query, model), content in zip(queries, answers, strict=True):
        predictor = served[names[model]]
        expected = predictor.predict_vectors([query])[0]
        got = predictor.space.from_nifti_image(nifti(content))
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_the_page_files_are_package_data() -> None:
    """pyproject.toml's package data holds every file the app serves (installs carry them)."""
    from pathlib import Path, PurePosixPath

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    patterns = data["tool"]["setuptools"]["package-data"]["text2brain.serve"]
    for name in STATIC_FILES:
        path = PurePosixPath("static", name)
        assert any(
            path.match(pattern) and len(path.parts) == len(PurePosixPath(pattern).parts)
            for pattern in patterns
        ), name


def test_a_bad_content_length_is_a_400(client: TestClient) -> None:
    headers = {"content-length": "9" * 5000}  # int() refuses so many digits
    response = client.post("/api/describe", params={"model": "clip"}, headers=headers)
    assert_error(response, 400, "bad Content-Length")


def test_a_client_disconnect_is_logged_once_without_a_traceback(
    served: dict[str, Predictor], caplog: pytest.LogCaptureFixture
) -> None:
    """20 abandoned uploads gave 41 tracebacks, some "Exception in ASGI application"."""
    import asyncio

    app = create_app({"clip": served["clip"]})
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/describe",
        "raw_path": b"/api/describe",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/gzip")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    messages = [{"type": "http.request", "body": b"\x1f\x8b", "more_body": True}]
    messages.append({"type": "http.disconnect"})

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        pass

    with caplog.at_level(logging.DEBUG):
        asyncio.run(app(scope, receive, send))  # raises nothing
    disconnects = [r for r in caplog.records if "disconnect" in r.getMessage()]
    assert len(disconnects) == 1 and disconnects[0].exc_info is None
    assert not any(r.exc_info for r in caplog.records)
