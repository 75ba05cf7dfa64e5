"""The web app of `text2brain serve`: the page and a JSON/HTTP API over loaded predictors.

```python
from text2brain.inference import load_predictor
from text2brain.serve.app import create_app

app = create_app({"text-ridge-minilm": load_predictor()})  # any ASGI server runs it
```

Endpoints (every error is JSON, ``{"error": MESSAGE, "status": CODE}``, with a 4xx status):

- ``GET /``: the page (query box, viewer, glass brain, downloads, related articles, describe).
- ``GET /api/map?q=TEXT&model=NAME``: the map as gzip NIfTI; ``&format=json``: the masked
  vector with the grid's shape and affine; ``GET /api/map.png?q=...``: its glass-brain PNG.
- ``GET /api/related?q=TEXT&k=10&model=NAME``: the training articles nearest the text.
- ``POST /api/describe?k=10&model=NAME``: the articles nearest an uploaded NIfTI map (a
  multipart form field ``file``, or the raw bytes as the body).
- ``GET /api/models``, ``GET /healthz``; ``GET /api/template``: the page's background brain.

The models run in the server's thread pool, one request at a time per model (a lock each), so
concurrent requests are safe; glass brains are drawn one at a time (matplotlib). A model name
is only ever a key of the loaded models, and static files are a fixed list read at start:
nothing a request sends reaches the file system.
"""

from __future__ import annotations

import gzip
import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib.resources import files
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from text2brain.checkpoint import model_name
from text2brain.inference import MOSTLY_UNKNOWN
from text2brain.query.pictures import save_glass_brain
from text2brain.query.texts import slugify
from text2brain.serve.models import NAME
from text2brain.serve.uploads import (
    MAX_QUERY_CHARS,
    MAX_UPLOAD_BYTES,
    RequestError,
    check_k,
    check_query,
    parse_count,
    read_nifti,
    upload_too_large,
)

if TYPE_CHECKING:
    import nibabel as nib

    from text2brain.inference import Predictor
    from text2brain.models.contrastive.retrieval import RelatedArticle

logger = logging.getLogger(__name__)

#: The page's files (name under static/ -> media type); nothing else is served from disk.
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "niivue/niivue.umd.js": "text/javascript; charset=utf-8",
    "niivue/LICENSE": "text/plain; charset=utf-8",
}
NIFTI_TYPE = "application/gzip"
#: Room for a multipart form's boundaries and headers around the file.
FORM_OVERHEAD = 64 * 1024
#: Maps and glass brains kept per model, by query (the page asks for both of one query).
CACHED = 32
#: Headers of every response.
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY")]
#: One glass brain drawn at a time: matplotlib and nilearn keep global state.
_DRAWING = threading.Lock()


class ServedModel:
    """A loaded predictor, run one request at a time, with its recent maps and pictures."""

    def __init__(self, name: str, predictor: Predictor) -> None:
        self.name = name
        self.predictor = predictor
        self.lock = threading.Lock()
        # Contrastive heads do both; the retrieval head finds related articles only.
        self.relates = callable(getattr(predictor.model, "related_articles", None))
        self.describes = callable(getattr(predictor.model, "describe_maps", None))
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._pictures: OrderedDict[str, bytes] = OrderedDict()

    def info(self) -> dict[str, Any]:
        space = self.predictor.space
        return {
            "name": self.name,
            "head": model_name(type(self.predictor.model)),
            "grid": list(space.shape),
            "voxel_size_mm": space.voxel_size.tolist(),
            "n_voxels": space.n_voxels,
            "related": self.relates,
            "describe": self.describes,
            "device": str(self.predictor.device),
            "precision": self.predictor.precision,
        }

    def vector(self, query: str) -> np.ndarray:
        """The masked map of a query (run in a worker thread)."""
        with self.lock:
            if query not in self._vectors:
                with refused_as_bad_request():
                    vector = self.predictor.predict_vectors([query])[0]
                remember(self._vectors, query, vector)
            self._vectors.move_to_end(query)
            return self._vectors[query]

    def picture(self, query: str) -> bytes:
        """The glass-brain PNG of a query's map."""
        with self.lock:
            cached = self._pictures.get(query)
        if cached is not None:
            return cached
        image = self.predictor.space.to_nifti(self.vector(query))
        png = io.BytesIO()
        with _DRAWING:
            save_glass_brain(image, query, png)
        with self.lock:
            remember(self._pictures, query, png.getvalue())
        return png.getvalue()

    def warning(self, query: str) -> str | None:
        """What to tell about a query the tokenizer barely reads (ASCII, for a header)."""
        with self.lock:
            fraction = float(self.predictor.unknown_token_fraction([query])[0])
        if fraction >= MOSTLY_UNKNOWN:
            return (
                f"{fraction:.0%} of the query's tokens are unknown to the model's tokenizer "
                "([UNK]): its map says little about it"
            )
        return None

    def related(self, query: str, k: int) -> list[RelatedArticle]:
        with self.lock, refused_as_bad_request():
            return self.predictor.related_articles(query, k)

    def describe(self, image: nib.Nifti1Image, k: int) -> list[RelatedArticle]:
        with self.lock:
            try:
                return self.predictor.describe_map(image, k)
            except ValueError as err:  # unreadable data, NaN: the upload's fault
                raise RequestError(400, str(err).replace("the image", "the upload")) from err


@contextmanager
def refused_as_bad_request() -> Iterator[None]:
    """A query the model refuses (its ValueError) is the request's fault: a 400 saying why."""
    try:
        yield
    except ValueError as err:
        raise RequestError(400, f"the model cannot read the query: {err}") from err


def remember(cache: OrderedDict[str, Any], key: str, value: Any) -> None:
    cache[key] = value
    while len(cache) > CACHED:
        cache.popitem(last=False)


class Endpoints:
    """The request handlers, over the served models and the request limits."""

    def __init__(
        self, models: dict[str, ServedModel], max_query_chars: int, max_upload_bytes: int
    ) -> None:
        self.models = models
        self.default = next(iter(models))
        self.max_query_chars = max_query_chars
        self.max_upload_bytes = max_upload_bytes
        static = files("text2brain.serve") / "static"
        self.static = {name: (static / name).read_bytes() for name in STATIC_FILES}
        self._template: bytes | None = None
        self._template_lock = threading.Lock()

    # -- parameters --------------------------------------------------------------------------
    def model(self, request: Request) -> ServedModel:
        names = request.query_params.getlist("model")
        if len(names) > 1:
            raise RequestError(400, f"give one model, got {len(names)}")
        name = names[0] if names and names[0] else self.default
        if name not in self.models:
            loaded = ", ".join(self.models)
            raise RequestError(404, f"unknown model {name[:80]!r}; loaded: {loaded}")
        return self.models[name]

    def query(self, request: Request) -> str:
        return check_query(request.query_params.getlist("q"), self.max_query_chars)

    def retrieving(self, request: Request, what: str, able: str) -> ServedModel:
        model = self.model(request)
        if not getattr(model, able):
            raise RequestError(
                400,
                f"model {model.name!r} ({model.info()['head']}) cannot {what}: it has no "
                "bank of training articles in a shared text-brain space; use a clip or mnm "
                "checkpoint (or, for related articles, a retrieval one)",
            )
        return model

    # -- the page ----------------------------------------------------------------------------
    async def page(self, request: Request) -> Response:
        return self.static_response("index.html", cache="no-cache")

    async def static_file(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES or name == "index.html":
            raise RequestError(404, f"no static file {name[:80]!r}")
        return self.static_response(name, cache="public, max-age=3600")

    def static_response(self, name: str, cache: str) -> Response:
        headers = {"cache-control": cache}
        return Response(self.static[name], media_type=STATIC_FILES[name], headers=headers)

    async def template(self, request: Request) -> Response:
        return Response(
            await run_in_threadpool(self.template_bytes),
            media_type=NIFTI_TYPE,
            headers={"cache-control": "public, max-age=86400"},
        )

    def template_bytes(self) -> bytes:
        """The MNI152 template (2 mm) that nilearn ships: the viewer's background brain."""
        with self._template_lock:
            if self._template is None:
                from nilearn.datasets import load_mni152_template

                self._template = nifti_bytes(load_mni152_template(resolution=2))
            return self._template

    # -- the API -----------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": list(self.models)})

    async def list_models(self, request: Request) -> Response:
        models = [model.info() for model in self.models.values()]
        return JSONResponse({"default": self.default, "models": models})

    async def brain_map(self, request: Request) -> Response:
        query, model = self.query(request), self.model(request)
        kind = request.query_params.get("format", "nifti")
        if kind not in ("nifti", "json"):
            raise RequestError(400, f"format must be nifti or json, got {kind[:40]!r}")
        space = model.predictor.space

        def predict() -> tuple[np.ndarray, str | None, bytes]:  # one trip to a worker thread
            vector = model.vector(query)
            data = nifti_bytes(space.to_nifti(vector)) if kind == "nifti" else b""
            return vector, model.warning(query), data

        vector, warning, data = await run_in_threadpool(predict)
        if kind == "json":
            content = {
                "model": model.name,
                "query": query,
                "shape": list(space.shape),
                "affine": space.affine.tolist(),
                "n_voxels": space.n_voxels,
                "vector": vector.tolist(),
                "warning": warning,
            }
            return JSONResponse(content)
        headers = download_headers(f"{slugify(query) or 'map'}.nii.gz", warning)
        return Response(data, media_type=NIFTI_TYPE, headers=headers)

    async def picture(self, request: Request) -> Response:
        query, model = self.query(request), self.model(request)
        png = await run_in_threadpool(model.picture, query)
        headers = download_headers(f"{slugify(query) or 'map'}.png", None, inline=True)
        return Response(png, media_type="image/png", headers=headers)

    async def related(self, request: Request) -> Response:
        query = self.query(request)
        model = self.retrieving(request, "find the articles related to a text", "relates")
        k = check_k(request.query_params.getlist("k"))
        articles = await run_in_threadpool(model.related, query, k)
        return JSONResponse({"model": model.name, "query": query, "articles": rows(articles)})

    async def describe(self, request: Request) -> Response:
        model = self.retrieving(request, "describe a map", "describes")
        k = check_k(request.query_params.getlist("k"))
        data = await self.upload(request)
        space, limit = model.predictor.space, self.max_upload_bytes
        image = await run_in_threadpool(read_nifti, data, space, limit)  # gunzip, parse
        articles = await run_in_threadpool(model.describe, image, k)
        return JSONResponse({"model": model.name, "articles": rows(articles)})

    async def upload(self, request: Request) -> bytes:
        """The uploaded file: a multipart form's ``file`` field, or the whole body."""
        limit = self.max_upload_bytes
        length = request.headers.get("content-length", "")
        multipart = request.headers.get("content-type", "").startswith("multipart/form-data")
        if length:
            size = parse_count(length)
            if size is None:
                raise RequestError(400, f"bad Content-Length {length[:20]!r}")
            if size > limit + FORM_OVERHEAD * multipart:
                raise RequestError(413, upload_too_large(size, limit))
        elif multipart:
            raise RequestError(411, "send the upload with a Content-Length header")
        if not multipart:
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise RequestError(413, upload_too_large(len(body), limit))
            return bytes(body)
        async with request.form(max_files=1, max_fields=4) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise RequestError(400, "send the map as the multipart form field 'file'")
            return await upload.read(limit + 1)


def rows(articles: list[RelatedArticle]) -> list[dict[str, Any]]:
    return [
        {
            "rank": rank,
            "article_id": article.article_id,
            "title": article.title,
            "keywords": list(article.keywords),
            "distance": float(article.distance),
        }
        for rank, article in enumerate(articles, start=1)
    ]


def nifti_bytes(image: nib.Nifti1Image) -> bytes:
    """A NIfTI image as the bytes of a .nii.gz file, with no timestamp (reproducible).

    Level 1: a 4 mm map takes 3 ms (88 kB) against 9 ms at level 6 (85 kB).
    """
    return gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)


def download_headers(filename: str, warning: str | None, inline: bool = False) -> dict[str, str]:
    headers = {
        "content-disposition": f'{"inline" if inline else "attachment"}; filename="{filename}"'
    }
    if warning:
        headers["x-text2brain-warning"] = warning
    return headers


# -- errors as JSON ------------------------------------------------------------------------------
def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


async def request_error(request: Request, err: Exception) -> Response:
    assert isinstance(err, RequestError)
    return error_response(err.status, err.message)


async def http_error(request: Request, err: Exception) -> Response:
    assert isinstance(err, HTTPException)
    return error_response(err.status_code, str(err.detail))


async def client_disconnect(request: Request, err: Exception) -> Response:
    """A client that went away mid-request (an abandoned upload): one line, no traceback.

    It is no failure of the server; as the generic handler's, it was logged twice with a
    traceback (Starlette re-raises what that handler saw, and the server logs it again).
    """
    logger.info("%s %s: the client disconnected", request.method, request.url.path)
    return Response(status_code=400)  # nobody reads it


async def server_error(request: Request, err: Exception) -> Response:
    """The last resort: logged with its traceback, answered without it."""
    logger.error("%s %s failed", request.method, request.url.path, exc_info=err)
    return error_response(500, f"the server failed on this request ({type(err).__name__})")


class SecurityHeaders:
    """ASGI middleware adding `SECURITY_HEADERS` to every response."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(
    predictors: Mapping[str, Predictor],
    *,
    max_query_chars: int = MAX_QUERY_CHARS,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
) -> Starlette:
    """The ASGI app serving `predictors` (name -> loaded `Predictor`; the first is the default).

    Names are what ``model=`` and the page's selector use (letters, digits, ".", "_", "-").
    """
    if not predictors:
        raise ValueError("create_app needs at least one predictor")
    bad = [name for name in predictors if not NAME.fullmatch(name)]
    if bad:
        raise ValueError(f"model names must be letters, digits, '.', '_' or '-'; got {bad}")
    models = {name: ServedModel(name, predictor) for name, predictor in predictors.items()}
    api = Endpoints(models, max_query_chars, max_upload_bytes)
    routes = [
        Route("/", api.page),
        Route("/static/{name:path}", api.static_file),
        Route("/healthz", api.health),
        Route("/api/models", api.list_models),
        Route("/api/map", api.brain_map),
        Route("/api/map.png", api.picture),
        Route("/api/related", api.related),
        Route("/api/describe", api.describe, methods=["POST"]),
        Route("/api/template", api.template),
    ]
    handlers = {
        RequestError: request_error,
        HTTPException: http_error,
        ClientDisconnect: client_disconnect,
        Exception: server_error,
    }
    app = Starlette(routes=routes, exception_handlers=handlers)  # type: ignore[arg-type]
    app.add_middleware(SecurityHeaders)
    app.state.models = models
    return app
