"""The class store over HTTP (FastAPI): teach classes from uploaded images, recognise images.

=========================  ===============================================================
``GET /``                  a small web page: name a class, drop images, see predictions
``GET /health``            status, number of classes and examples, the run (no token needed)
``GET /classes``           the classes with their numbers of examples
``POST /examples``         multipart form: ``class_name`` and one or more ``images`` files
``POST /predict``          multipart ``images``; query ``top`` (default 3), ``threshold``
``DELETE /classes/{name}``  forget a class (404 if there is none)
``GET /docs``              the OpenAPI page
=========================  ===============================================================

The run is loaded once, when the app is made; each request opens its own SQLite connection
(WAL: readers never wait for a writer; writers queue, see :mod:`lifelong.store.db`), and the
model's forward passes take turns. A response to ``POST /examples`` is sent after the
transaction has been committed and fsync'ed: an acknowledged example survives ``kill -9``.

Errors are JSON ``{"detail": "one line"}``: 401 for a missing or wrong bearer token (checked
before the body is read), 413 for a request over :class:`Limits` (too many files, a file or
image too large), 422 for a file that is not an image or an empty class name, 404 for an
unknown class, 409 for a prediction from a store without classes.

Example:
    >>> app = create_app("shop.db", Recognizer.load("runs/pn"), token="s3cret")
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)
    $ curl -H "Authorization: Bearer s3cret" -F class_name=mug -F images=@mug1.jpg \\
        http://127.0.0.1:8000/examples
"""

from __future__ import annotations

import base64
import io
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, Form, Query, Request, Security, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPBearer
from PIL import Image

import lifelong
from lifelong.store.db import ClassStore, EmptyStore, StoreError, UnknownClass
from lifelong.store.recognizer import MAX_PIXELS, ImageFile, ImageTooLarge, Recognizer

PAGE = Path(__file__).parent / "static" / "index.html"
PUBLIC = frozenset({"/", "/health", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})


@dataclass(frozen=True)
class Limits:
    """What one request may carry: files, bytes per file, pixels per image; the body as a
    whole is refused (413) beyond ``files * file_bytes`` plus 64 KiB of form overhead."""

    files: int = 64
    file_bytes: int = 10_000_000
    pixels: int = MAX_PIXELS

    @property
    def request_bytes(self) -> int:
        return self.files * self.file_bytes + 65536


class RequestTooLarge(ValueError):
    """A request over :class:`Limits`."""


STATUS: dict[type[Exception], int] = {
    UnknownClass: 404,
    EmptyStore: 409,
    StoreError: 500,
    ImageTooLarge: 413,
    RequestTooLarge: 413,
    ValueError: 422,  # an image that does not decode, an empty class name...
}
"""HTTP status of each kind of error (Starlette uses the handler of the nearest base class)."""
Images = Annotated[list[UploadFile] | None, File(description="image files")]


def create_app(
    store_path: str | Path,
    recognizer: Recognizer,
    token: str | None = None,
    limits: Limits | None = None,
    threshold: float | None = None,
) -> FastAPI:
    """The HTTP app of the store at ``store_path`` (which must exist and belong to the
    recognizer's run); with ``token``, every endpoint but the page, ``/health`` and the
    OpenAPI page needs ``Authorization: Bearer <token>``; ``threshold``: the unknown
    threshold of requests that give none (default: the store's calibrated one)."""
    limits = limits or Limits()
    store_path = Path(store_path)
    with ClassStore.open(store_path) as store:
        recognizer.check_store(store)
    bearer = HTTPBearer(auto_error=False, description="the token given to `lifelong serve`")
    secured = [Security(bearer)] if token else []  # shown on /docs; checked by `guard`
    app = FastAPI(
        title="lifelong class store",
        version=lifelong.__version__,
        description="Teach a trained run new classes from a few images; recognise images.",
    )

    @app.middleware("http")
    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        """Token and body size, before the body is read."""
        if token and request.url.path not in PUBLIC:
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return JSONResponse(
                    {"detail": "missing or wrong bearer token"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limits.request_bytes:
            return JSONResponse(
                {"detail": f"request of {int(length):,} bytes; at most {limits.request_bytes:,}"},
                status_code=413,
            )
        return await call_next(request)

    for error, status in STATUS.items():

        def handler(request: Request, err: Exception, status: int = status) -> JSONResponse:
            return JSONResponse({"detail": " ".join(str(err).split())}, status_code=status)

        app.add_exception_handler(error, handler)

    def read(images: list[UploadFile] | None) -> list[ImageFile]:
        files = images or []
        if not files:
            raise ValueError("no images given (multipart field 'images')")
        if len(files) > limits.files:
            raise RequestTooLarge(f"{len(files)} files; at most {limits.files} per request")
        for f in files:
            if f.size is not None and f.size > limits.file_bytes:
                raise RequestTooLarge(
                    f"file {f.filename} has {f.size:,} bytes; at most {limits.file_bytes:,}"
                )
        return [ImageFile(f.filename or f"image {i}", f.file.read()) for i, f in enumerate(files)]

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(PAGE, media_type="text/html")

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Whether the server is up, and what its store holds."""
        with ClassStore.open(store_path) as store:
            classes, meta = store.classes(), store.meta
        return {
            "status": "ok",
            "classes": len(classes),
            "examples": sum(c.examples for c in classes),
            "run_dir": meta["run_dir"],
            "fingerprint": meta["fingerprint"],
            "threshold": meta.get("threshold") if threshold is None else threshold,
            "auth": bool(token),
        }

    @app.get("/classes", dependencies=secured)
    def classes() -> dict[str, Any]:
        """The classes, in the order they were first learned."""
        with ClassStore.open(store_path) as store:
            rows = store.classes()
        return {"classes": [vars(c) for c in rows]}

    @app.post("/examples", dependencies=secured)
    def add_examples(
        images: Images = None,
        class_name: Annotated[str, Form(description="the class to add the images to")] = "",
    ) -> dict[str, Any]:
        """Add example images to a class (made if new). A file this class already learned
        (same content) is skipped and listed under ``duplicates``."""
        files = read(images)
        with ClassStore.open(store_path) as store:
            added = recognizer.learn(store, class_name, files, limits.pixels)
        return vars(added)

    @app.post("/predict", dependencies=secured)
    def predict(
        images: Images = None,
        top: Annotated[int, Query(ge=1, le=100, description="classes listed per image")] = 3,
        distance: Annotated[
            float | None,
            Query(
                alias="threshold",
                description="unknown beyond this distance (default: the "
                "server's --threshold, else the store's calibrated one)",
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Recognise images: the nearest class, its probability (softmax over negative
        distances to all prototypes), or ``label: null, unknown: true``."""
        files = read(images)
        limit = threshold if distance is None else distance
        with ClassStore.open(store_path) as store:
            results = recognizer.recognize(store, files, top, limit, limits.pixels)
            used = store.meta.get("threshold") if limit is None else limit
        return {"threshold": used, "predictions": [r.to_dict() for r in results]}

    @app.get("/thumbnails", dependencies=secured)
    def thumbnails(
        class_name: Annotated[str, Query(description="the class whose images to show")],
        limit: Annotated[int, Query(ge=1, le=50, description="images at most")] = 8,
    ) -> dict[str, Any]:
        """The first images a class was taught, as the model sees them (its resolution and
        ink convention), base64 PNGs."""
        with ClassStore.open(store_path) as store:
            shape = store.meta["image_shape"]
            rows = store.images(class_name, limit)
        images = [{"source": source, "png": png_base64(image, shape)} for source, image in rows]
        return {"class_name": class_name, "images": images}

    @app.delete("/classes/{name}", dependencies=secured)
    def forget(name: str) -> dict[str, Any]:
        """Forget a class and all its examples."""
        with ClassStore.open(store_path) as store:
            count = store.forget(name)
        return {"deleted": name, "examples": count}

    return app


def png_base64(pixels: bytes, shape: list[int]) -> str:
    """A kept image (``uint8`` bytes of ``[C, H, W]``) as a base64 PNG."""
    array = np.frombuffer(pixels, dtype=np.uint8).reshape(shape).transpose(1, 2, 0)
    out = io.BytesIO()
    Image.fromarray(array[..., 0] if shape[0] == 1 else array).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")
