"""`text2brain serve`: a local web page and JSON/HTTP API over the zoo's models.

```bash
pip install "text2brain[web]"
text2brain serve                                   # the released model, http://127.0.0.1:8000/
text2brain serve --model checkpoints/clip/best.ckpt --model mine=exports/my-model
```

The package's modules: `models` (which models to load: `--model` specs, names, loading),
`uploads` (queries and NIfTI uploads checked before any model work; framework-free), `app`
(the Starlette app: the page, the API, errors as JSON), `runner` (uvicorn in this process or
a thread) and `cli` (the command). Only `app` and `runner` import the web framework, the
`web` extra; nothing outside this package imports either, and `text2brain serve` without the
extra stops with one line saying what to install. `static/` holds the page and the NIfTI
viewer (niivue, from its npm package; version and licence in static/niivue/).
"""
