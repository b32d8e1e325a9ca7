"""The FastAPI application of ``pcamlab serve``: a versioned JSON API and the web page, in one process.

Routes (the OpenAPI schema is at ``/openapi.json``, browsable at ``/docs``, a local page without a CDN):

- ``GET /health``: liveness and the worker pool's load; never needs the token.
- ``GET /v1/model``: the model card (architecture, input contract, threshold, training data,
  validation metrics).
- ``POST /v1/predict``: multipart ``files`` (patch images, a zip of them, or a ``.npy`` / ``.h5``
  array) and ``tta`` -> per-patch probability, class and the threshold used.
- ``POST /v1/explain``: multipart ``file`` (one patch image) -> Grad-CAM overlay PNG.
- ``GET /``: the web page (plain HTML/JS/CSS shipped in the package; works offline).

Errors are JSON ``{"detail": "one line"}``: 400 unusable input (the CLI's message), 401 missing or
wrong token, 409 Grad-CAM on an exported model, 413 request too large or too many patches, 415 a file
kind the server does not read, 503 every worker busy (with ``Retry-After``). A bug still answers one
line of JSON with 500, never a traceback.

Example:
    >>> from pcamlab.serve import ServeSettings, ServedModel, create_app
    >>> app = create_app(ServedModel.load("runs/demo/best.safetensors"), ServeSettings(token="s3cret"))
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)
"""

import io
import logging
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
import pathlib
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, File, Form, Path, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

import pcamlab
from pcamlab.errors import ConfigError, DataError, PcamlabError, plain_line
from pcamlab.serve.inputs import TooManyPatches, UnsupportedUpload, Upload, decode_one_image, decode_uploads
from pcamlab.serve.limits import BodySizeLimit
from pcamlab.serve.model import ExplainUnavailable, ServedModel
from pcamlab.serve.pool import PoolBusy, WorkerPool
from pcamlab.serve.slides import JobNotFound, JobNotReady, SlideJobs, SlideNotFound, SlideQueueFull

__all__ = ["API_VERSION", "ServeSettings", "check_token", "create_app", "STATIC_DIR"]

API_VERSION = "v1"
STATIC_DIR = pathlib.Path(__file__).resolve().parent / "static"
logger = logging.getLogger("pcamlab.serve")


def check_token(token: str | None, name: str = "token") -> str | None:
    """The bearer token as clients send it: surrounding whitespace stripped, or refused.

    A token file written on Windows ends in a carriage return, and ``$(cat token)`` keeps it; compared as
    given, such a token would lock every client out. A token must be something an HTTP client can send
    after ``Authorization: Bearer``: printable ASCII (RFC 9110 field values; RFC 6750 bearer tokens are
    a subset), no control characters.

    Args:
        token: the token, or None for no token.
        name: what the message calls it (``token``, or the environment variable it came from).

    Returns:
        The stripped token, or None when ``token`` is None.

    Raises:
        ConfigError: the token is blank, or holds control characters or non-ASCII characters.
    """
    if token is None:
        return None
    stripped = token.strip()
    if not stripped:
        blank = f"{len(token)} whitespace character{'s' if len(token) != 1 else ''}: {token!r}"
        raise ConfigError(f"{name} is blank ({blank}); give a token, or leave it unset to serve without one",
                          parameters=(name,))
    bad = sorted({character for character in stripped if not " " <= character <= "~"})
    if bad:
        raise ConfigError(f"{name} holds characters an HTTP client cannot send after 'Authorization: Bearer' "
                          f"({', '.join(repr(character) for character in bad)}); use printable ASCII only, e.g. the "
                          "output of: python -c 'import secrets; print(secrets.token_urlsafe())'", parameters=(name,))
    return stripped


@dataclass(frozen=True)
class ServeSettings:
    """How the server runs; every limit has a default safe for a 2-core machine.

    Attributes:
        token: bearer token required on every ``/v1`` call; None = no token. Surrounding whitespace is
            stripped; a blank token or one with control characters is refused (:func:`check_token`).
        max_request_bytes: largest request body accepted (413 above).
        max_images: most patches in one request, counting zip members and array rows (413 above).
        workers: inference jobs running at once (threads).
        max_queue: jobs waiting for a worker before new ones get 503.
        batch_size: patches per forward pass.
        slide_root: folder the slide jobs may read slides from (None = slide jobs off).
    """

    token: str | None = None
    max_request_bytes: int = 64 * 2**20  # 64 MiB: ~2,300 PNG patches, far above max_images
    max_images: int = 512  # one /v1/predict call; the page sends larger drops in several calls
    workers: int = 2  # one per core of a small machine; each runs torch on cores // workers threads
    max_queue: int = 32  # waiting jobs; a queue this deep already means seconds of latency on 2 cores
    batch_size: int = 64  # patches per forward pass inside one request
    slide_root: pathlib.Path | None = None  # slide heatmap jobs read only below this folder

    # (field, lowest allowed value) for the integer limits, checked by validate()
    _MINIMA = {"max_request_bytes": 1024, "max_images": 1, "workers": 1, "max_queue": 0, "batch_size": 1}

    def __post_init__(self) -> None:
        object.__setattr__(self, "token", check_token(self.token))  # every way of making settings strips or refuses

    def validate(self) -> "ServeSettings":
        """Check every limit; return self.

        Raises:
            ConfigError: a limit is not an integer at or above its minimum, or slide_root is not a folder.
        """
        for item in fields(self):
            if item.name not in self._MINIMA:
                continue
            value, lowest = getattr(self, item.name), self._MINIMA[item.name]
            if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
                raise ConfigError(f"serve setting {item.name} must be an integer >= {lowest}; got {value!r}")
        if self.slide_root is not None and not pathlib.Path(self.slide_root).is_dir():
            raise ConfigError(
                f"serve setting slide_root must be an existing folder of slides; got {str(self.slide_root)!r}"
            )
        return self


# -- response schemas: they make the OpenAPI document, and the fuzz test checks answers against them

class ErrorResponse(BaseModel):
    detail: str = Field(description="what is wrong and how to fix it, in one line")


class Health(BaseModel):
    status: str = Field(description="'ok' while the server answers")
    model: str = Field(description="file name of the model served")
    version: str = Field(description="pcamlab version")
    pool: dict[str, int] = Field(description="worker pool: workers, max_queue, busy, completed")


class ModelCard(BaseModel):
    file: str
    format: str = Field(description="safetensors | onnx | torchscript")
    sha256: str = Field(description="SHA-256 of the model file")
    architecture: dict[str, Any] = Field(description="registered model name, builder options, parameter count")
    input_contract: dict[str, Any] = Field(description="patch size, normalisation, class names, threshold")
    threshold: dict[str, Any] = Field(description="decision threshold on P(tumour) and how it was chosen")
    training_data: dict[str, Any] = Field(description="dataset path, format and splits used in training")
    validation: dict[str, Any] = Field(description="epoch of the checkpoint and its validation metrics")
    explain: bool = Field(description="whether POST /v1/explain (Grad-CAM) is available")
    limits: dict[str, int] = Field(description="max_images and max_request_bytes of this server")


class Prediction(BaseModel):
    name: str = Field(description="file name, 'archive.zip/member' or 'array.npy row i'")
    probability: float = Field(ge=0.0, le=1.0, description="P(tumour), class 1")
    predicted: int = Field(ge=0, le=1, description="1 when probability >= threshold")
    class_name: str


class PredictResponse(BaseModel):
    threshold: float = Field(description="decision threshold used (the model's)")
    tta: bool = Field(description="whether the 8 dihedral views were averaged")
    class_names: list[str]
    count: int
    seconds: float = Field(description="time spent decoding and predicting, server side")
    predictions: list[Prediction]


class SlideListing(BaseModel):
    enabled: bool = Field(description="whether this server runs slide heatmap jobs (it has a slide root)")
    slides: list[str] = Field(description="slide paths relative to the slide root, to name in a job")


class SlideJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slide: str = Field(min_length=1, max_length=1000, description="a path from GET /v1/slides (relative to the root)")
    stride: int | None = Field(default=None, ge=1, le=4096,
                               description="tile step in model pixels, dividing the patch size (default: the patch size)")
    mpp: float | None = Field(default=None, gt=0, le=100,
                              description="level-0 microns per pixel (e.g. 0.25); wins over the slide's own "
                              "metadata and TIFF resolution tags")


class SlideJobStatus(BaseModel):
    id: str
    slide: str
    stride: int | None
    mpp: float | None = Field(default=None, description="the mpp given in the request, if any")
    status: str = Field(description="queued | running | done | failed")
    progress: float = Field(ge=0.0, le=1.0, description="share of the tissue tiles predicted")
    error: str | None = Field(description="why a failed job failed, in one line")
    summary: dict[str, Any] | None = Field(description="slide score (max and top-k mean), tumour and tissue area "
                                                       "in mm2, tiles, seconds; when done")
    results: dict[str, str] = Field(description="result name -> URL, when done")


def create_app(model: ServedModel, settings: ServeSettings | None = None) -> Any:
    """Build the FastAPI app serving ``model`` (loaded once, shared by every request).

    Args:
        model: the loaded model (:meth:`ServedModel.load`).
        settings: limits, token and worker pool; defaults when None.

    Returns:
        A ``fastapi.FastAPI`` ASGI app, ready for ``uvicorn.run`` or ``fastapi.testclient.TestClient``.

    Raises:
        ConfigError: invalid settings.
    """
    settings = (settings or ServeSettings()).validate()
    pool = WorkerPool(settings.workers, settings.max_queue)
    jobs = (SlideJobs(model.predictor, settings.slide_root, batch_size=settings.batch_size)
            if settings.slide_root is not None else None)

    errors = {
        status: {"model": ErrorResponse, "description": description}
        for status, description in {
            400: "unusable input (unreadable, not RGB, wrong size), one line naming the file",
            401: "missing or wrong bearer token",
            413: "request body too large or too many patches",
            415: "a file kind the server does not read",
            503: "every worker is busy; retry after Retry-After seconds",
        }.items()
    }

    # -- the app, its error handlers and its token check

    @asynccontextmanager
    async def lifespan(_app: Any):
        yield
        pool.shutdown()
        if jobs is not None:
            jobs.shutdown()

    app = FastAPI(
        title="pcamlab serve",
        version=pcamlab.__version__,
        description="Tumour probability, Grad-CAM and the model card of a PCam patch classifier.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's Swagger UI and ReDoc load from a CDN; /docs is a local page instead
        redoc_url=None,
        form_limits={"max_files": settings.max_images},
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.state.model = model
    app.state.settings = settings
    app.state.pool = pool
    app.state.slide_jobs = jobs

    status_of = [(UnsupportedUpload, 415), (TooManyPatches, 413), (ExplainUnavailable, 409), (PoolBusy, 503),
                 (SlideNotFound, 404), (JobNotFound, 404), (JobNotReady, 409), (SlideQueueFull, 503),
                 (DataError, 400), (ConfigError, 400)]

    @app.exception_handler(PcamlabError)
    async def pcamlab_error(_request: Request, error: PcamlabError) -> JSONResponse:
        status = next((code for kind, code in status_of if isinstance(error, kind)), 500)
        headers = {"Retry-After": "1" if isinstance(error, PoolBusy) else "30"} if status == 503 else None
        return JSONResponse({"detail": str(error)}, status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        detail, status = error.detail, error.status_code
        cause = str(error.__cause__ or "")
        if "Too many files" in f"{detail} {cause}":  # the multipart parser stopped at max_images files
            status = 413
            detail = (f"the request holds more than {settings.max_images} files; the server accepts at most "
                      f"{settings.max_images} patches per request (its max_images): send them in several requests")
        elif cause and status == 400:
            detail = f"{detail}: {cause}"
        return JSONResponse({"detail": str(detail)}, status_code=status, headers=getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, error: RequestValidationError) -> JSONResponse:
        """FastAPI's field errors as the API's one line; the values sent are never echoed back."""
        problems = []
        for item in error.errors()[:4]:
            where = ".".join(str(part) for part in item.get("loc", ()) if part not in ("body", "query", "path", "form"))
            problems.append(f"{where or 'body'}: {item.get('msg', 'invalid')}")
        more = f" (and {len(error.errors()) - 4} more)" if len(error.errors()) > 4 else ""
        return JSONResponse({"detail": plain_line("invalid request: " + "; ".join(problems) + more, 500)},
                            status_code=400)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"detail": f"internal error ({type(error).__name__}); the server log has the details"}, status_code=500
        )

    bearer = HTTPBearer(auto_error=False, description="the server's --token, when it was started with one")

    def require_token(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if not settings.token:
            return
        if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), settings.token.encode()):
            raise StarletteHTTPException(
                401, "this server needs a bearer token: send the header 'Authorization: Bearer TOKEN' "
                "(the token pcamlab serve was started with)", headers={"WWW-Authenticate": "Bearer"},
            )

    # -- routes

    @app.get("/health", response_model=Health, tags=["service"])
    async def health() -> dict[str, Any]:
        """Liveness and load; needs no token."""
        return {"status": "ok", "model": model.path.name, "version": app.version, "pool": pool.stats()}

    api = APIRouter(prefix=f"/{API_VERSION}", dependencies=[Depends(require_token)], responses={401: errors[401]})

    @api.get("/model", response_model=ModelCard, tags=["model"])
    async def model_card() -> dict[str, Any]:
        """The model card: what the model is, what it takes, how it decides, how it scored on validation."""
        return {**model.card(), "limits": {"max_images": settings.max_images,
                                           "max_request_bytes": settings.max_request_bytes}}

    @api.post("/predict", response_model=PredictResponse, tags=["model"],
              responses={code: errors[code] for code in (400, 413, 415, 503)})
    async def predict(
        files: Annotated[list[UploadFile], File(description=f"patches: image files, a .zip of them, or a .npy/.h5 "
                                                            "array of uint8 (N, 96, 96, 3)")],
        tta: Annotated[bool, Form(description="average over the 8 dihedral views (8x the compute)")] = False,
    ) -> dict[str, Any]:
        """P(tumour), the predicted class and the threshold used, for every patch uploaded."""
        uploads = [Upload(file.filename or "", await file.read()) for file in files]

        def job() -> dict[str, Any]:
            started = time.perf_counter()
            names, images = decode_uploads(uploads, patch_size=model.patch_size, max_images=settings.max_images)
            probabilities = model.predict(images, tta=tta, batch_size=settings.batch_size)
            predicted = (probabilities >= model.threshold).astype(np.int64)
            return {
                "threshold": model.threshold,
                "tta": bool(tta),
                "class_names": model.class_names,
                "count": len(names),
                "seconds": round(time.perf_counter() - started, 4),
                "predictions": [
                    {"name": name, "probability": float(p), "predicted": int(label),
                     "class_name": model.class_names[int(label)]}
                    for name, p, label in zip(names, probabilities, predicted)
                ],
            }

        return await pool.run(job)

    @api.post("/explain", tags=["model"], response_class=Response,
              responses={200: {"content": {"image/png": {}}, "description": "Grad-CAM overlay, PNG of the patch size; "
                               "headers X-Probability, X-Predicted-Class, X-Gradcam-Layer"},
                         409: {"model": ErrorResponse, "description": "the model is an exported file without Grad-CAM"},
                         **{code: errors[code] for code in (400, 413, 415, 503)}})
    async def explain(
        http_request: Request,
        file: Annotated[UploadFile, File(description="one patch image (jpg/png/tif), 96x96 RGB")],
        alpha: Annotated[float, Form(ge=0.0, le=1.0, description="weight of the heat map over the patch")] = 0.45,
    ) -> Response:
        """Grad-CAM overlay of one patch: where the network found evidence of tumour (class 1)."""
        parts = len((await http_request.form()).getlist("file"))  # parsed once by starlette, cached
        if parts != 1:
            raise DataError(f"/v1/explain takes one 'file' part; this request has {parts}: send one patch per "
                            "request (POST /v1/predict takes many)")
        upload = Upload(file.filename or "", await file.read())

        def job() -> tuple[bytes, float, str]:
            from PIL import Image

            image = decode_one_image(upload)  # (H, W, 3) uint8
            picture, layer = model.explain(image, alpha=alpha)
            probability = float(model.predict(image[None])[0])
            buffer = io.BytesIO()
            Image.fromarray(picture).save(buffer, format="PNG")
            return buffer.getvalue(), probability, layer

        png, probability, layer = await pool.run(job)
        label = int(probability >= model.threshold)
        return Response(png, media_type="image/png", headers={
            "X-Probability": f"{probability:.6f}", "X-Predicted-Class": model.class_names[label],
            "X-Gradcam-Layer": layer, "Cache-Control": "no-store",
        })

    @api.get("/slides", response_model=SlideListing, tags=["slides"])
    async def slides() -> dict[str, Any]:
        """The slides heatmap jobs may read (below the server's slide root); ``enabled`` false without one."""
        if jobs is None:
            return {"enabled": False, "slides": []}
        return {"enabled": True, "slides": await pool.run(jobs.list)}

    def slide_jobs() -> SlideJobs:
        if jobs is None:
            raise JobNotFound("this server runs no slide jobs; start it with --slide-root DIR (a folder of slides)")
        return jobs

    slide_errors = {
        404: {"model": ErrorResponse, "description": "no such slide below the slide root, or no such job"},
        409: {"model": ErrorResponse, "description": "the job has not finished (or failed)"},
    }

    @api.post("/slides/jobs", response_model=SlideJobStatus, status_code=202, tags=["slides"],
              responses={400: errors[400], 404: slide_errors[404], 503: errors[503]})
    async def start_slide_job(request: SlideJobRequest) -> dict[str, Any]:
        """Start a tumour heatmap of a slide below the slide root (or return the job already made for it)."""
        return (await pool.run(lambda: slide_jobs().submit(request.slide, request.stride, request.mpp))).to_dict()

    @api.get("/slides/jobs/{job_id}", response_model=SlideJobStatus, tags=["slides"],
             responses={404: slide_errors[404]})
    async def slide_job(job_id: Annotated[str, Path(max_length=64)]) -> dict[str, Any]:
        """A slide job's status and progress; its summary and result URLs once done."""
        return slide_jobs().get(job_id).to_dict()

    @api.get("/slides/jobs/{job_id}/{name}", tags=["slides"], response_class=FileResponse,
             responses={200: {"content": {"image/png": {}, "application/geo+json": {}},
                              "description": "thumbnail.png (RGB), heatmap.png (RGBA, the map laid on the thumbnail), "
                                             "overlay.png (with a colour bar), heatmap.geojson (QuPath detections)"},
                        **slide_errors})
    async def slide_result(job_id: Annotated[str, Path(max_length=64)],
                           name: Literal["thumbnail.png", "heatmap.png", "overlay.png", "heatmap.geojson"]) -> FileResponse:
        """A result of a finished slide job."""
        path = slide_jobs().result(job_id, name)
        media = "application/geo+json" if name.endswith(".geojson") else "image/png"
        return FileResponse(path, media_type=media, headers={"Cache-Control": "no-store"})

    app.include_router(api)

    # -- the web page

    page_headers = {
        # everything comes from this server: no CDN, no inline script; pictures may be local blobs
        "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                                   "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=page_headers)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> FileResponse:
        """The routes of /openapi.json as a plain page that needs no network."""
        return FileResponse(STATIC_DIR / "docs.html", media_type="text/html", headers=page_headers)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app

