"""Slide heatmap jobs of ``pcamlab serve``: start, poll, fetch the map, and no path outside the slide root.

The slide is a small synthetic pyramidal TIFF of real PCam patches (``pcamlab.slide.make_synthetic_slide``)
and the model the 44 KB slide test model, so a whole job takes a few seconds.
"""

from __future__ import annotations

import io
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="pcamlab serve needs fastapi (pip install 'pcamlab[serve]')")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from pcamlab.errors import DataError  # noqa: E402
from pcamlab.serve import ServedModel, ServeSettings, create_app  # noqa: E402
from pcamlab.serve.slides import resolve_slide  # noqa: E402
from pcamlab.slide import make_synthetic_slide, sample_pools  # noqa: E402

MODEL = Path(__file__).parent / "assets" / "slide_model.safetensors"


@pytest.fixture(scope="module")
def slide_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("slides")
    (root / "cases").mkdir()
    make_synthetic_slide(root / "cases" / "little.tif", *sample_pools("valid"), width=1152, height=960, seed=3)
    outside = make_synthetic_slide(tmp_path_factory.mktemp("elsewhere") / "secret.tif", *sample_pools("valid"),
                                   width=480, height=480, seed=1)
    (root / "link.tif").symlink_to(outside.path)  # a link leading out of the root
    return root


@pytest.fixture(scope="module")
def served() -> ServedModel:
    return ServedModel.load(MODEL)


def wait_done(client: TestClient, job_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/slides/jobs/{job_id}").json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"slide job {job_id} did not finish within {timeout:.0f} s")


def test_slide_job_makes_a_heatmap_laid_on_the_thumbnail_and_a_geojson(served, slide_root):
    with TestClient(create_app(served, ServeSettings(slide_root=slide_root))) as client:
        assert client.get("/v1/slides").json() == {"enabled": True, "slides": ["cases/little.tif"]}
        started = client.post("/v1/slides/jobs", json={"slide": "cases/little.tif"})
        assert started.status_code == 202 and started.json()["status"] in ("queued", "running", "done")
        job = wait_done(client, started.json()["id"])
        assert job["status"] == "done" and job["error"] is None and job["progress"] == 1.0
        summary = job["summary"]
        assert summary["tiles"] > 0 and 0 <= summary["score_top_k_mean"] <= summary["score_max"] <= 1
        assert summary["tissue_area_mm2"] > summary["tumour_area_mm2"] >= 0
        assert set(job["results"]) == {"thumbnail.png", "heatmap.png", "overlay.png", "heatmap.geojson"}

        thumbnail = Image.open(io.BytesIO(client.get(job["results"]["thumbnail.png"]).content))
        layer = np.asarray(Image.open(io.BytesIO(client.get(job["results"]["heatmap.png"]).content)))
        assert layer.shape == (thumbnail.size[1], thumbnail.size[0], 4)  # laid exactly on the thumbnail
        alpha = layer[..., 3]
        assert 0 < (alpha == 255).mean() < 1 and set(np.unique(alpha)) <= {0, 255}  # glass stays transparent
        geojson = client.get(job["results"]["heatmap.geojson"])
        assert geojson.headers["content-type"].startswith("application/geo+json")
        assert json.loads(geojson.content)["type"] == "FeatureCollection"
        assert client.get(job["results"]["overlay.png"]).headers["content-type"] == "image/png"

        again = client.post("/v1/slides/jobs", json={"slide": "cases/little.tif"}).json()
        assert again["id"] == job["id"] and again["status"] == "done"  # not computed twice


@pytest.mark.parametrize("name, status", [
    ("../elsewhere/secret.tif", 400),
    ("/etc/passwd", 400),
    ("cases/../../x.tif", 400),
    ("cases\\little.tif", 400),
    ("link.tif", 404),  # a link below the root that resolves outside it: not listed, refused
    ("cases/missing.tif", 404),
    ("cases/little.truth.png", 404),  # a file below the root, but not a slide
])
def test_slide_names_cannot_leave_the_root(served, slide_root, name, status):
    with TestClient(create_app(served, ServeSettings(slide_root=slide_root))) as client:
        response = client.post("/v1/slides/jobs", json={"slide": name})
        assert response.status_code == status and "slide" in response.json()["detail"]
    with pytest.raises(DataError):
        resolve_slide(slide_root, name)


def test_without_a_slide_root_slide_routes_say_how_to_enable_them(served):
    with TestClient(create_app(served, ServeSettings())) as client:
        assert client.get("/v1/slides").json() == {"enabled": False, "slides": []}
        response = client.post("/v1/slides/jobs", json={"slide": "a.svs"})
        assert response.status_code == 404 and "--slide-root" in response.json()["detail"]
        unknown = client.get("/v1/slides/jobs/0123456789abcdef")
        assert unknown.status_code == 404


def test_stopping_the_server_stops_a_running_slide_job_and_deletes_its_files(served, slide_root):
    import threading

    from pcamlab.serve.slides import SlideJobs

    started, release = threading.Event(), threading.Event()

    class HeldPredictor:  # the real predictor, held inside its first batch until the server is stopping
        contract = served.predictor.contract

        def predict_proba(self, images, **options):
            started.set()
            release.wait(30)
            return served.predictor.predict_proba(images, **options)

    jobs = SlideJobs(HeldPredictor(), slide_root, batch_size=8)
    job = jobs.submit("cases/little.tif")
    assert started.wait(30)
    stopper = threading.Thread(target=jobs.shutdown)
    stopper.start()
    time.sleep(0.2)  # shutdown has raised the stop flag and waits for the job
    release.set()
    stopper.join(30)
    assert job.status == "failed" and "server stopped" in job.error and not jobs.work.exists()


@pytest.fixture(scope="module")
def odd_root(tmp_path_factory) -> Path:
    """A bare slide (no resolution tags), a text file named .tif, and a good slide."""
    root = tmp_path_factory.mktemp("odd")
    make_synthetic_slide(root / "bare.tif", *sample_pools("valid"), width=480, height=480, seed=1,
                         resolution_tags=False)
    (root / "notes.tif").write_text("not a slide\n")
    return root


def test_slide_jobs_are_checked_before_202_and_take_an_mpp(served, odd_root):
    with TestClient(create_app(served, ServeSettings(slide_root=odd_root))) as client:
        assert client.get("/v1/slides").json()["slides"] == ["bare.tif"]  # the text file is not listed
        for body, words in (({"slide": "bare.tif"}, '"mpp"'),
                            ({"slide": "bare.tif", "mpp": 100}, "coarser than 2x"),
                            ({"slide": "bare.tif", "mpp": 0.972, "stride": 50}, "stride must divide"),
                            ({"slide": "notes.tif"}, "cannot read slide"),
                            ({"slide": "bare.tif", "mpp": 0.972, "x": 1}, "x: Extra inputs are not permitted"),
                            ({"slide": "bare.tif", "mpp": -1}, "mpp:")):
            response = client.post("/v1/slides/jobs", json=body)
            detail = response.json()["detail"]
            assert response.status_code == 400 and words in detail, (body, detail)
            assert isinstance(detail, str) and "\n" not in detail and str(odd_root) not in detail, detail
        started = client.post("/v1/slides/jobs", json={"slide": "bare.tif", "mpp": 0.972})
        assert started.status_code == 202 and started.json()["mpp"] == 0.972
        job = wait_done(client, started.json()["id"])
        assert job["status"] == "done", job["error"]


@pytest.mark.parametrize("request_args, words", [
    ({"url": "/v1/slides/jobs", "content": b"{not json", "headers": {"content-type": "application/json"}},
     "JSON"),
    ({"url": "/v1/slides/jobs", "json": {"slide": "", "stride": 0}}, "slide: String should have at least"),
    ({"url": "/v1/predict", "json": {"files": ["secret-body-text"]}}, "files: Field required"),
    ({"url": "/v1/predict", "data": {"tta": "maybe"}, "files": {"files": ("a.png", b"x", "image/png")}}, "tta:"),
])
def test_request_validation_errors_are_the_one_line_shape_without_echoing_the_body(served, odd_root,
                                                                                    request_args, words):
    with TestClient(create_app(served, ServeSettings(slide_root=odd_root))) as client:
        response = client.post(**request_args)
    detail = response.json()["detail"]
    assert response.status_code == 400 and isinstance(detail, str) and words in detail, detail
    assert "\n" not in detail and "secret-body-text" not in detail and "maybe" not in detail


@pytest.fixture(scope="module")
def untrusted_root(tmp_path_factory) -> Path:
    """A slide whose resolution tags are 10x too fine, one cut short, one with a tile that does not decode."""
    from slide_formats import cut_short, damage_tile

    root = tmp_path_factory.mktemp("untrusted")
    source = make_synthetic_slide(tmp_path_factory.mktemp("source") / "source.tif", *sample_pools("valid"),
                                  width=1152, height=960, seed=3)
    make_synthetic_slide(root / "fine_tags.tif", *sample_pools("valid"), width=1152, height=960, seed=3, mpp=0.0972)
    cut_short(source.path, root / "short.tif", 0.5)
    damage_tile(source.path, root / "damaged.tif", page=0, index=6)
    return root


def test_a_job_mpp_wins_and_a_damaged_slide_is_the_jobs_one_line_error(served, untrusted_root):
    with TestClient(create_app(served, ServeSettings(slide_root=untrusted_root))) as client:
        started = client.post("/v1/slides/jobs", json={"slide": "fine_tags.tif", "mpp": 0.972})
        assert started.status_code == 202
        job = wait_done(client, started.json()["id"])
        assert job["status"] == "done", job["error"]
        summary = job["summary"]
        assert summary["mpp_source"] == "given" and summary["slide_mpp"] == 0.972 and summary["tiles"] > 30
        assert summary["recorded_mpp"] == pytest.approx([0.0972, 0.0972]) and "overrides" in summary["notes"][0]

        short = client.post("/v1/slides/jobs", json={"slide": "short.tif"})  # found when the job is checked
        detail = short.json()["detail"]
        assert short.status_code == 400 and "slide 'short.tif' is damaged (cut short" in detail, detail
        assert "\n" not in detail and str(untrusted_root) not in detail

        started = client.post("/v1/slides/jobs", json={"slide": "damaged.tif"})  # found when its tile is read
        assert started.status_code == 202
        job = wait_done(client, started.json()["id"])
        error = job["error"]
        assert job["status"] == "failed" and "slide 'damaged.tif' is damaged (a tile of level 0" in error, error
        assert "copy it again" in error and "\n" not in error and str(untrusted_root) not in error
        assert job["results"] == {} and client.get(f"/v1/slides/jobs/{job['id']}/heatmap.png").status_code == 409
