"""The class store over HTTP (FastAPI): teach classes from uploaded images, recognise images.

==============================  ==========================================================
``GET /``                       a small web page: name a class, drop images, see predictions
``GET /health``                 status, numbers of classes and examples, whether a token is
                                needed (no token needed)
``GET /classes``                the classes with their numbers of examples
``POST /examples``              multipart form: ``class_name`` and one or more ``images``
``POST /predict``               multipart ``images``; query ``top`` (default 3), ``threshold``
``DELETE /classes``             query ``class_name``: forget a class (404 if there is none)
``DELETE /classes/{name}``      the same, for names without ``/``
``GET /docs``                   the OpenAPI page
==============================  ==========================================================

The run is loaded once, when the app is made; each request opens its own SQLite connection
(WAL: readers never wait for a writer; writers queue, see :mod:`lifelong.store.db`) and checks
that the file is still the store of the run's weights (and, to write, the very store the
server started with: a store copied over it or made anew is refused with 409); the model's
forward passes take turns. A response to ``POST /examples`` is sent after the transaction has
been committed and fsync'ed: an acknowledged example survives ``kill -9``.

Hostile input is bounded (:class:`Limits`): the body is read up to its limit whatever its
transfer encoding; an uploaded part must say the image type that its content is; the pixels
of the files' headers are capped per file and per request before anything is decoded; large
images are decoded reduced (:func:`lifelong.data.images.open_image`); and at most
``Limits.decoders`` requests decode and embed at once. Without a token, a writing request
(any method but GET/HEAD/OPTIONS) from a browser must come from the server's own page
(``Sec-Fetch-Site``, else ``Origin`` or ``Referer``, against ``Host``): no other web page can
teach or forget classes (CSRF). With a token, browsers never send it on their own.

Errors are JSON ``{"detail": "one line"}`` (and so documented in the OpenAPI document): 400
for a body that is not valid multipart, 401 for a missing or wrong bearer token (checked
before the body is read), 403 for a cross-origin write without a token, 413 for a request over
:class:`Limits` (bytes, files, pixels), 422 for an invalid parameter, a file that is not an
image or not of its stated type, or an empty class name, 404 for an unknown class, 409 for a
prediction from a store without classes or a store that changed under the server.

Example:
    >>> app = create_app("shop.db", Recognizer.load("runs/pn"), token="s3cret")
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)
    $ curl -H "Authorization: Bearer s3cret" -F class_name=mug -F images=@mug1.jpg \\
        http://127.0.0.1:8000/examples
"""

from __future__ import annotations

import base64
import io
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import numpy as np
from fastapi import FastAPI, File, Form, Query, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPBearer
from PIL import Image
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import lifelong
from lifelong.data.images import open_header
from lifelong.store.db import ClassStore, EmptyStore, StoreError, UnknownClass, check_name
from lifelong.store.recognizer import MAX_PIXELS, ImageFile, ImageTooLarge, Recognizer

PAGE = Path(__file__).parent / "static" / "index.html"
PUBLIC = frozenset({"/", "/health", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CONTENT_TYPES = {
    "JPEG": {"image/jpg", "image/pjpeg"},
    "MPO": {"image/jpeg"},  # a camera's JPEG with more than one frame
    "PNG": {"image/x-png"},
    "BMP": {"image/x-bmp", "image/x-ms-bmp"},
    "PPM": {"image/x-portable-bitmap", "image/x-portable-graymap", "image/x-portable-pixmap"},
}
"""Content-Types accepted for an image format besides Pillow's own (``Image.MIME``)."""
T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    """What one request may carry: files, bytes per file, pixels per image and per request
    (from the files' headers, before decoding); the body as a whole is refused (413) beyond
    ``files * file_bytes`` plus 64 KiB of form overhead. Images are decoded (and embedded) on
    ``decoders`` threads, each holding at most one image at full resolution at a time."""

    files: int = 64
    file_bytes: int = 10_000_000
    pixels: int = MAX_PIXELS
    request_pixels: int = 4 * MAX_PIXELS
    decoders: int = 2

    @property
    def request_bytes(self) -> int:
        return self.files * self.file_bytes + 65536


class RequestTooLarge(ValueError):
    """A request over :class:`Limits`."""


class StoreChanged(StoreError):
    """The store file was replaced, re-made or given to other weights while the server ran."""


STATUS: dict[type[Exception], int] = {
    UnknownClass: 404,
    EmptyStore: 409,
    StoreChanged: 409,
    StoreError: 500,
    ImageTooLarge: 413,
    RequestTooLarge: 413,
    ValueError: 422,  # an image that does not decode, an empty class name...
    RequestValidationError: 422,  # a parameter of the wrong type or out of its bounds
}
"""HTTP status of each kind of error (Starlette uses the handler of the nearest base class)."""
Images = Annotated[list[UploadFile], File(default_factory=list, description="image files")]
MEANING = {
    400: "a body that is not valid multipart form data",
    401: "missing or wrong bearer token",
    403: "a cross-origin write without a token",
    404: "no such class",
    409: "no classes yet, or the store changed under the server",
    413: "over the limits (bytes, files, pixels)",
    422: "an invalid parameter or file",
}
"""What each documented error status means (the module doc)."""


class Detail(BaseModel):
    """An error answer: one line."""

    detail: str


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route's error statuses, each ``{"detail": "one line"}``
    (replacing FastAPI's 422 list)."""
    return {s: {"model": Detail, "description": MEANING[s]} for s in statuses}


WRITE, FORGET = errors(400, 401, 403, 409, 413, 422), errors(401, 403, 404, 409, 422)


def one_line(err: Exception) -> str:
    """An error as the one line of ``{"detail": ...}`` (FastAPI's list of validation errors
    as ``name: message; ...``)."""
    if isinstance(err, RequestValidationError):
        text = "; ".join(
            f"{'.'.join(map(str, e['loc'][1:])) or e['loc'][0]}: {e['msg']}" for e in err.errors()
        )
    else:
        text = str(err)
    return " ".join(text.split())


def too_large(what: str, limit: int) -> JSONResponse:
    """413 for a body over the limit, closing the connection (the rest is not read)."""
    detail = {"detail": f"{what}; at most {limit:,}"}
    return JSONResponse(detail, status_code=413, headers={"Connection": "close"})


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 without being read
    further, whatever its transfer encoding: at once from its ``Content-Length``, else as soon
    as the bytes received pass the limit (the app then sees the client leave)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            await too_large(f"request of {int(length):,} bytes", self.limit)(scope, receive, send)
            return
        received, refused = 0, False

        async def counted() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                refused = True
                response = too_large(f"request of over {self.limit:,} bytes", self.limit)
                await response(scope, receive, send)
                return {"type": "http.disconnect"}
            return message

        async def unless_refused(message: Message) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, counted, unless_refused)
        except Exception:
            if not refused:  # after a 413, whatever the app made of the missing body is moot
                raise


def cross_origin(request: Request) -> str | None:
    """The header showing that a browser sent ``request`` from another site's page, or
    ``None`` (the server's own page, or not a browser)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return None if site in ("same-origin", "none") else f"Sec-Fetch-Site: {site}"
    host = request.headers.get("host", "")
    for header in ("origin", "referer"):
        value = request.headers.get(header)
        if value is not None:
            return None if urlsplit(value).netloc == host else f"{header.title()}: {value}"
    return None


def check_threshold(value: float | None) -> float | None:
    """A distance threshold: a number, ``inf`` (never unknown) or ``None`` (the default);
    NaN and ``-inf`` are refused."""
    if value is not None and (math.isnan(value) or value == -math.inf):
        raise ValueError(f"threshold must be a number or inf (never unknown), not {value}")
    return value


def check_type(upload: UploadFile, image: ImageFile) -> int:
    """The number of pixels of an uploaded image, whose part must be sent with the type of
    its content (e.g. ``image/png`` for PNG data)."""
    with open_header(image.data, image.name) as header:
        kind, (width, height) = header.format or "", header.size
    expected = Image.MIME.get(kind, f"image/{kind.lower()}")
    given = (upload.content_type or "").split(";")[0].strip().lower()
    if given != expected and given not in CONTENT_TYPES.get(kind, ()):
        raise ValueError(
            f"{image.name} is {kind} data but was sent as {given or 'no type'!r}: "
            f"send it as {expected}"
        )
    return width * height


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
    threshold of requests that give none (default: the store's calibrated one; ``inf``:
    never unknown)."""
    limits = limits or Limits()
    store_path = Path(store_path)
    threshold = check_threshold(threshold)
    with ClassStore.open(store_path) as store:
        recognizer.check_store(store)
        created = store.meta.get("created")
    decoders = ThreadPoolExecutor(limits.decoders, thread_name_prefix="decode")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        decoders.shutdown(cancel_futures=True)

    bearer = HTTPBearer(auto_error=False, description="the token given to `lifelong serve`")
    secured = [Security(bearer)] if token else []  # shown on /docs; checked by `guard`
    app = FastAPI(
        title="lifelong class store",
        version=lifelong.__version__,
        description="Teach a trained run new classes from a few images; recognise images.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, limit=limits.request_bytes)

    def authorized(request: Request) -> bool:
        given = request.headers.get("authorization", "")
        return secrets.compare_digest(given.encode(), f"Bearer {token}".encode())

    @app.middleware("http")
    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        """The token, or without one the origin of a writing request, before the body is
        read."""
        if token and request.url.path not in PUBLIC and not authorized(request):
            return JSONResponse(
                {"detail": "missing or wrong bearer token"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not token and request.method not in SAFE_METHODS and (why := cross_origin(request)):
            detail = (
                f"cross-origin request refused ({why}): without a token, only this server's "
                "own page may send it"
            )
            return JSONResponse({"detail": detail}, status_code=403)
        return await call_next(request)

    for error, status in STATUS.items():

        def handler(request: Request, err: Exception, status: int = status) -> JSONResponse:
            return JSONResponse({"detail": one_line(err)}, status_code=status)

        app.add_exception_handler(error, handler)

    @contextmanager
    def opened(write: bool = False) -> Iterator[ClassStore]:
        """The store, if it is still that of the run's weights and, to ``write``, the one the
        server started with (the same creation time); else :class:`StoreChanged`."""
        try:
            store = ClassStore.open(store_path)
            try:
                recognizer.check_store(store)
                if write and store.meta.get("created") != created:
                    raise StoreError(
                        f"{str(store_path)!r} is not the store the server started with (it "
                        "was replaced or made anew): restart the server to write to it"
                    )
            except BaseException:
                store.close()
                raise
        except StoreError as err:
            raise StoreChanged(f"the store changed while the server ran: {err}") from None
        with store:
            yield store

    def decoding(work: Callable[[ClassStore], T], write: bool = False) -> T:
        """``work(store)`` on a decoder thread (module doc), the store opened there (see
        ``opened``): a few threads, so the memory that decoding takes stays bounded."""

        def task() -> T:
            with opened(write) as store:
                return work(store)

        return decoders.submit(task).result()

    def read(uploads: list[UploadFile]) -> list[ImageFile]:
        if not uploads:
            raise ValueError("no images given (multipart field 'images')")
        if len(uploads) > limits.files:
            raise RequestTooLarge(f"{len(uploads)} files; at most {limits.files} per request")
        for f in uploads:
            if f.size is not None and f.size > limits.file_bytes:
                raise RequestTooLarge(
                    f"file {f.filename} has {f.size:,} bytes; at most {limits.file_bytes:,}"
                )
        files = [
            ImageFile(f.filename or f"image {i}", f.file.read()) for i, f in enumerate(uploads)
        ]
        pixels = sum(check_type(u, f) for u, f in zip(uploads, files, strict=True))
        if pixels > limits.request_pixels:
            raise RequestTooLarge(
                f"{pixels:,} pixels in {len(files)} images; at most {limits.request_pixels:,} "
                "per request"
            )
        return files

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(PAGE, media_type="text/html")

    @app.get("/health", responses=errors(409))
    def health(request: Request) -> dict[str, Any]:
        """Whether the server is up and what its store holds: the first 12 hex digits of its
        weights' fingerprint (all 64 with the bearer token), whether a token is needed; 409
        if the store changed (the paths involved only with the token)."""
        shown = bool(token) and authorized(request)
        try:
            with opened() as store:
                classes, meta = store.classes(), store.meta
        except StoreChanged:
            if token and not shown:
                raise StoreChanged("the store changed while the server ran") from None
            raise
        fingerprint = meta["fingerprint"]
        return {
            "status": "ok",
            "classes": len(classes),
            "examples": sum(c.examples for c in classes),
            "fingerprint": fingerprint if shown else fingerprint[:12],
            "threshold": finite(meta.get("threshold") if threshold is None else threshold),
            "auth": bool(token),
        }

    @app.get("/classes", dependencies=secured, responses=errors(401, 409))
    def classes() -> dict[str, Any]:
        """The classes, in the order they were first learned."""
        with opened() as store:
            rows = store.classes()
        return {"classes": [vars(c) for c in rows]}

    @app.post("/examples", dependencies=secured, responses=WRITE)
    def add_examples(
        images: Images,
        class_name: Annotated[str, Form(description="the class to add the images to")] = "",
    ) -> dict[str, Any]:
        """Add example images to a class (made if new). A file this class already learned
        (same content) is skipped and listed under ``duplicates``."""
        files = read(images)
        added = decoding(lambda s: recognizer.learn(s, class_name, files, limits.pixels), True)
        return vars(added)

    @app.post("/predict", dependencies=secured, responses=WRITE)
    def predict(
        images: Images,
        top: Annotated[int, Query(ge=1, le=100, description="classes listed per image")] = 3,
        distance: Annotated[
            float | None,
            Query(
                alias="threshold",
                description="unknown beyond this distance; inf: never unknown (default: the "
                "server's --threshold, else the store's calibrated one)",
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Recognise images: the nearest class, its probability (softmax over negative
        distances to all prototypes), or ``label: null, unknown: true``. The answer's
        ``threshold`` is the one used (``null``: never unknown)."""
        limit = threshold if distance is None else check_threshold(distance)
        files = read(images)
        results, calibrated = decoding(
            lambda s: (
                recognizer.recognize(s, files, top, limit, limits.pixels),
                s.meta.get("threshold"),
            )
        )
        used = calibrated if limit is None else limit
        return {"threshold": finite(used), "predictions": [r.to_dict() for r in results]}

    @app.get("/thumbnails", dependencies=secured, responses=errors(401, 404, 409, 422))
    def thumbnails(
        class_name: Annotated[str, Query(description="the class whose images to show")],
        limit: Annotated[int, Query(ge=1, le=50, description="images at most")] = 8,
    ) -> dict[str, Any]:
        """The first images a class was taught, as the model sees them (its resolution and
        ink convention), base64 PNGs."""
        name = check_name(class_name)
        with opened() as store:
            shape = store.meta["image_shape"]
            rows = store.images(name, limit)
        images = [{"source": source, "png": png_base64(image, shape)} for source, image in rows]
        return {"class_name": name, "images": images}

    @app.delete("/classes", dependencies=secured, responses=FORGET)
    def forget(
        class_name: Annotated[str, Query(description="the class to forget (any name)")],
    ) -> dict[str, Any]:
        """Forget a class and all its examples."""
        name = check_name(class_name)
        with opened(write=True) as store:
            count = store.forget(name)
        return {"deleted": name, "examples": count}

    @app.delete("/classes/{name}", dependencies=secured, responses=FORGET)
    def forget_by_path(name: str) -> dict[str, Any]:
        """Forget a class and all its examples (a name without ``/``; any name:
        ``DELETE /classes?class_name=...``)."""
        return forget(name)

    return app


def finite(threshold: float | None) -> float | None:
    """A threshold as JSON: ``None`` (never unknown) for ``inf``."""
    return None if threshold is None or math.isinf(threshold) else threshold


def png_base64(pixels: bytes, shape: list[int]) -> str:
    """A kept image (``uint8`` bytes of ``[C, H, W]``) as a base64 PNG."""
    array = np.frombuffer(pixels, dtype=np.uint8).reshape(shape).transpose(1, 2, 0)
    out = io.BytesIO()
    Image.fromarray(array[..., 0] if shape[0] == 1 else array).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")
