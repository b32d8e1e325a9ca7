"""``pcamlab serve``: the JSON API through FastAPI's test client, on a real (small) checkpoint.

Every probability the server returns is compared with the predictor ``pcamlab predict`` uses, for
each way of sending patches (images, zip, .npy, .h5); every bad input must give its one-line message
with a 4xx status, never a 500.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import threading
import warnings
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from fixtures_serve import METADATA, png_bytes, serve_patches, write_serve_checkpoint
from pcamlab.data.readers import BadImageError, decode_image_file
from pcamlab.runtime import load_predictor

pytest.importorskip("fastapi", reason="pcamlab serve needs fastapi (pip install 'pcamlab[serve]')")
with warnings.catch_warnings():  # starlette 1.x deprecates its httpx-based client; it still works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from pcamlab.serve import PoolBusy, ServedModel, ServeSettings, WorkerPool, create_app  # noqa: E402

needs_onnx = pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="onnx and onnxruntime are not installed (pip install 'pcamlab[deploy]')",
)


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    return serve_patches(6)[0]


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory, patches) -> Path:
    return write_serve_checkpoint(tmp_path_factory.mktemp("serve") / "best.safetensors", patches)


@pytest.fixture(scope="module")
def served(checkpoint_path) -> ServedModel:
    return ServedModel.load(checkpoint_path)


@pytest.fixture(scope="module")
def expected(checkpoint_path, patches) -> np.ndarray:
    return load_predictor(checkpoint_path).predict_proba(patches)


def client_for(model: ServedModel, **settings) -> TestClient:
    return TestClient(create_app(model, ServeSettings(**settings)))


@pytest.fixture(scope="module")
def client(served):
    with client_for(served) as test_client:
        yield test_client


def image_files(patches: np.ndarray) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"patch{index}.png", png_bytes(image), "image/png")) for index, image in enumerate(patches)]


def test_model_card_reports_architecture_contract_threshold_and_validation(client, served, checkpoint_path):
    card = client.get("/v1/model").json()
    assert card["file"] == "best.safetensors" and card["format"] == "safetensors" and len(card["sha256"]) == 64
    assert card["architecture"]["name"] == "simple-cnn" and card["architecture"]["options"] == {"width": 4}
    assert card["architecture"]["parameters"] == sum(p.numel() for p in served.predictor.model.parameters())
    assert card["input_contract"]["patch_size"] == 96 and card["input_contract"]["mean"] == [0.70, 0.54, 0.69]
    assert card["threshold"]["value"] == served.threshold == card["input_contract"]["threshold"]
    assert card["training_data"]["path"] == "sample" and card["training_data"]["train_split"] == "train"
    assert card["validation"]["epoch"] == METADATA["epoch"] and card["validation"]["val_auc"] == METADATA["val_auc"]
    assert card["explain"] is True and card["limits"]["max_images"] == 512


def test_predict_images_equal_the_predictor_with_the_model_threshold(client, served, patches, expected):
    answer = client.post("/v1/predict", files=image_files(patches)).json()
    assert answer["count"] == len(patches) and answer["threshold"] == served.threshold and answer["tta"] is False
    probabilities = np.array([row["probability"] for row in answer["predictions"]])
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-6)
    assert [row["name"] for row in answer["predictions"]] == [f"patch{i}.png" for i in range(len(patches))]
    predicted = [row["predicted"] for row in answer["predictions"]]
    assert predicted == [int(p >= served.threshold) for p in probabilities] and 0 < sum(predicted) < len(patches)
    assert {row["class_name"] for row in answer["predictions"]} == {"normal", "tumour"}


def test_zip_npy_and_h5_uploads_give_the_same_probabilities(client, patches, expected):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for index, image in enumerate(patches):
            zipped.writestr(f"batch/p{index}.png", png_bytes(image))
        zipped.writestr("__MACOSX/batch/._p0.png", b"resource fork")  # ignored, like hidden files
        zipped.writestr("batch/notes.txt", b"not a patch")  # ignored: not an image
    array = io.BytesIO()
    np.save(array, patches)
    h5_file = io.BytesIO()
    with h5py.File(h5_file, "w") as file:
        file.create_dataset("x", data=patches)
    for name, data in [("patches.zip", archive.getvalue()), ("x.npy", array.getvalue()), ("x_x.h5", h5_file.getvalue())]:
        answer = client.post("/v1/predict", files=[("files", (name, data, "application/octet-stream"))]).json()
        probabilities = np.array([row["probability"] for row in answer["predictions"]])
        np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-6, err_msg=name)
    names = [row["name"] for row in answer["predictions"]]
    assert names[:2] == ["x_x.h5 row 0", "x_x.h5 row 1"]


def test_tta_option_averages_the_eight_views_like_the_predictor(client, checkpoint_path, patches):
    expected = load_predictor(checkpoint_path).predict_proba(patches[:2], tta=True)
    answer = client.post("/v1/predict", files=image_files(patches[:2]), data={"tta": "true"}).json()
    assert answer["tta"] is True
    np.testing.assert_allclose([row["probability"] for row in answer["predictions"]], expected, rtol=0, atol=1e-6)


def test_explain_returns_a_gradcam_overlay_png_of_the_patch(client, patches, expected):
    response = client.post("/v1/explain", files={"file": ("p.png", png_bytes(patches[0]), "image/png")})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    overlay = np.asarray(Image.open(io.BytesIO(response.content)))
    assert overlay.shape == (96, 96, 3) and overlay.dtype == np.uint8
    assert np.abs(overlay.astype(int) - patches[0].astype(int)).mean() > 5  # a heat map was drawn over it
    assert float(response.headers["x-probability"]) == pytest.approx(expected[0], abs=1e-6)
    assert response.headers["x-gradcam-layer"].startswith("features")


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A PNG header declaring width x height RGB pixels (Pillow refuses it as a decompression bomb on open)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("kind", ["grayscale", "wrong_size", "truncated", "rgba", "bomb"])
def test_bad_images_get_400_with_the_cli_message(client, patches, tmp_path, monkeypatch, kind):
    image = patches[0]
    if kind == "grayscale":
        data = png_bytes(image, "L")
    elif kind == "rgba":  # transparent pixels: refused (an opaque alpha channel is simply dropped)
        rgba = np.dstack([image, np.full(image.shape[:2], 255, dtype=np.uint8)])
        rgba[:16, :16, 3] = 0
        data = png_bytes(rgba)
    elif kind == "wrong_size":
        data = png_bytes(np.ascontiguousarray(image[:64, :80]))
    elif kind == "bomb":
        data = bomb_png()
    else:
        data = png_bytes(image)[:200]
    monkeypatch.chdir(tmp_path)
    Path("bad.png").write_bytes(data)
    with pytest.raises(BadImageError) as cli_error:
        decode_image_file(Path("bad.png"))  # what pcamlab predict says about the same file
    good = ("files", ("good.png", png_bytes(image), "image/png"))
    response = client.post("/v1/predict", files=[good, ("files", ("bad.png", data, "image/png"))])
    assert response.status_code == 400
    said = str(cli_error.value).replace("delete it, or pass skip_bad=True to skip such files",
                                        "or leave it out of the request")  # the API has no skip_bad
    assert response.json() == {"detail": said} and "\n" not in response.json()["detail"]
    assert "skip_bad" not in said and "config" not in said
    explained = client.post("/v1/explain", files={"file": ("bad.png", data, "image/png")})
    assert explained.status_code == 400 and explained.json()["detail"] == said
    if kind == "bomb":
        assert "900,000,000 pixels" in str(cli_error.value)
        from pcamlab.data.readers import validate_headers

        with pytest.raises(BadImageError, match="decompression bomb"):
            validate_headers([Path("bad.png")])


@pytest.mark.parametrize("name, data, words", [
    ("notes.txt", b"hello", "suffix '.txt'"),
    ("noext", b"hello", "suffix '(none)'"),
])
def test_unknown_file_kinds_get_415(client, name, data, words):
    response = client.post("/v1/predict", files=[("files", (name, data, "text/plain"))])
    assert response.status_code == 415 and words in response.json()["detail"]


def test_bad_arrays_get_400_naming_the_upload_and_never_unpickle(client, patches):
    cases = {
        "float.npy": patches.astype(np.float32) / 255,  # wrong dtype
        "chw.npy": np.ascontiguousarray(patches.transpose(0, 3, 1, 2)),  # channels first
        "objects.npy": np.array([{"a": 1}], dtype=object),  # would need pickle
    }
    for name, array in cases.items():
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=True)
        response = client.post("/v1/predict", files=[("files", (name, buffer.getvalue(), "application/octet-stream"))])
        assert response.status_code == 400 and name in response.json()["detail"], name
    labels = io.BytesIO()
    with h5py.File(labels, "w") as file:
        file.create_dataset("y", data=np.zeros((2, 1, 1, 1), dtype=np.uint8))
    response = client.post("/v1/predict", files=[("files", ("y.h5", labels.getvalue(), "application/x-hdf5"))])
    assert response.status_code == 400 and "labels file" in response.json()["detail"]
    response = client.post("/v1/predict", files=[("files", ("a.zip", b"PK not a zip", "application/zip"))])
    assert response.status_code == 400 and "a.zip" in response.json()["detail"]


def test_limits_answer_413_before_predicting(served, patches):
    with client_for(served, max_images=3, max_request_bytes=200_000) as limited:
        response = limited.post("/v1/predict", files=image_files(patches[:4]))  # 4 files > 3
        assert response.status_code == 413 and "at most 3" in response.json()["detail"]
        array = io.BytesIO()
        np.save(array, patches[:4])  # 4 rows in one file
        response = limited.post("/v1/predict", files=[("files", ("x.npy", array.getvalue(), "application/octet-stream"))])
        assert response.status_code == 413 and "at most 3" in response.json()["detail"]
        big = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)  # noise: ~28 KB as PNG
        response = limited.post("/v1/predict", files=[("files", (f"n{i}.png", png_bytes(big), "image/png")) for i in range(8)])
        assert response.status_code == 413 and "200000 bytes" in response.json()["detail"]

        def chunks():  # no Content-Length: the limit must hold on a streamed body too
            for _ in range(10):
                yield b"x" * 50_000

        response = limited.post("/v1/predict", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert response.status_code == 413
        assert limited.post("/v1/predict", files=image_files(patches[:3])).status_code == 200


def test_token_guards_the_api_but_not_health_or_the_page(served, patches):
    with client_for(served, token="s3cret") as guarded:
        assert guarded.get("/health").status_code == 200 and guarded.get("/").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"}):
            response = guarded.get("/v1/model", headers=headers)
            assert response.status_code == 401 and "Authorization: Bearer" in response.json()["detail"]
            assert response.headers["www-authenticate"] == "Bearer"
        files = image_files(patches[:1])
        assert guarded.post("/v1/predict", files=files).status_code == 401
        assert guarded.post("/v1/predict", files=files, headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_a_token_with_surrounding_whitespace_is_stripped_and_a_blank_or_control_one_refused(served, patches):
    from pcamlab.errors import ConfigError

    # a token file written on Windows ends in CR LF, and $(cat token) keeps the CR: the client sends 's3cret'
    with client_for(served, token="s3cret\r\n") as guarded:
        assert guarded.get("/v1/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert guarded.get("/v1/model", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert ServeSettings(token="  s3cret\t").token == "s3cret"
    for bad, message in [("", "token is blank"), (" \r\n", "token is blank"), ("s3c\nret", "'\\n'"),
                         ("s3c\x00ret", "'\\x00'"), ("geheim\u00e9", "'\u00e9'")]:
        with pytest.raises(ConfigError, match=message.replace("\\", "\\\\")) as raised:
            ServeSettings(token=bad)
        assert "\n" not in str(raised.value)  # one line, the bad character shown escaped


def test_cli_serve_token_from_the_flag_or_the_variable(checkpoint_path, monkeypatch, capsys):
    import uvicorn

    from pcamlab.cli.main import main

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append((app, options)))
    monkeypatch.setattr("pcamlab.cli.serve.check_port", lambda host, port: None)
    monkeypatch.setenv("PCAMLAB_SERVE_TOKEN", "s3cret\r")  # written on Windows
    assert main(["serve", str(checkpoint_path), "--host", "0.0.0.0"]) == 0
    assert calls[-1][0].state.settings.token == "s3cret" and "warning" not in capsys.readouterr().err
    monkeypatch.setenv("PCAMLAB_SERVE_TOKEN", "")  # empty counts as unset, and the warning says it is empty
    assert main(["serve", str(checkpoint_path), "--host", "0.0.0.0"]) == 0
    err = capsys.readouterr().err
    assert calls[-1][0].state.settings.token is None
    assert "without a token" in err and "PCAMLAB_SERVE_TOKEN is set but empty" in err
    started = len(calls)
    monkeypatch.setenv("PCAMLAB_SERVE_TOKEN", "   ")
    assert main(["serve", str(checkpoint_path)]) == 2
    err = capsys.readouterr().err
    assert "$PCAMLAB_SERVE_TOKEN is blank" in err and err.count("\n") == 1, err
    monkeypatch.delenv("PCAMLAB_SERVE_TOKEN")
    assert main(["serve", str(checkpoint_path), "--token", "a\x1bb"]) == 2
    err = capsys.readouterr().err
    assert "--token holds characters" in err and err.count("\n") == 1, err
    assert main(["serve", str(checkpoint_path), "--token", ""]) == 2
    assert "--token is blank" in capsys.readouterr().err
    assert len(calls) == started  # refused at start: no server ran


def test_worker_pool_refuses_beyond_its_queue_with_503(served, patches):
    release = threading.Event()

    async def scenario():
        pool = WorkerPool(workers=1, max_queue=1)
        running = asyncio.ensure_future(pool.run(release.wait, 10))
        waiting = asyncio.ensure_future(pool.run(lambda: "second"))
        await asyncio.sleep(0.05)
        with pytest.raises(PoolBusy, match="limit 1 running \\+ 1 waiting"):
            await pool.run(lambda: "third")
        release.set()
        assert await waiting == "second" and await running is True
        assert pool.stats()["busy"] == 0 and pool.stats()["completed"] == 2
        pool.shutdown()

    asyncio.run(scenario())
    app = create_app(served, ServeSettings(workers=1, max_queue=0))
    with TestClient(app) as busy:
        app.state.pool.running = 1  # as if one long job were running
        response = busy.post("/v1/predict", files=image_files(patches[:1]))
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        app.state.pool.running = 0
        assert busy.post("/v1/predict", files=image_files(patches[:1])).status_code == 200


def test_page_and_its_script_come_from_this_server_only(client):
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "DecompressionStream" in script.text
    for text in (page.text, script.text, client.get("/static/style.css").text):
        assert "http://" not in text and "https://" not in text  # no CDN: works offline
    schema = client.get("/openapi.json").json()
    assert {"/v1/model", "/v1/predict", "/v1/explain", "/health"} <= set(schema["paths"])
    docs = client.get("/docs")  # FastAPI's default Swagger UI loads from a CDN: a local page instead
    assert docs.status_code == 200 and "/static/docs.js" in docs.text and "default-src 'self'" in docs.headers[
        "content-security-policy"]
    docs_script = client.get("/static/docs.js")
    assert docs_script.status_code == 200 and 'fetch("/openapi.json")' in docs_script.text
    for text in (docs.text, docs_script.text):
        assert "http://" not in text and "https://" not in text and "swagger" not in text.lower()
    assert client.get("/redoc").status_code == 404


@needs_onnx
def test_onnx_model_predicts_the_same_and_explain_says_why_not(tmp_path, checkpoint_path, patches, expected):
    from pcamlab.deploy import export_checkpoint

    onnx_path = export_checkpoint(checkpoint_path, tmp_path / "model.onnx", exporter="legacy")["path"]
    with client_for(ServedModel.load(onnx_path)) as onnx_client:
        card = onnx_client.get("/v1/model").json()
        assert card["format"] == "onnx" and card["architecture"]["name"] == "simple-cnn" and card["explain"] is False
        answer = onnx_client.post("/v1/predict", files=image_files(patches)).json()
        np.testing.assert_allclose([row["probability"] for row in answer["predictions"]], expected, rtol=0, atol=1e-4)
        response = onnx_client.post("/v1/explain", files={"file": ("p.png", png_bytes(patches[0]), "image/png")})
        assert response.status_code == 409 and ".safetensors checkpoint" in response.json()["detail"]


def test_cli_serve_binds_loopback_by_default_and_warns_when_exposed(checkpoint_path, monkeypatch, capsys):
    import uvicorn

    from pcamlab.cli.main import main
    from pcamlab.cli.serve import exposure_warning

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append((app, options)))
    monkeypatch.setattr("pcamlab.cli.serve.check_port", lambda host, port: None)  # another server may hold 8000
    monkeypatch.delenv("PCAMLAB_SERVE_TOKEN", raising=False)
    assert main(["serve", str(checkpoint_path), "--port", "8123"]) == 0
    assert calls[-1][1]["host"] == "127.0.0.1" and calls[-1][1]["port"] == 8123
    out, err = capsys.readouterr()
    assert "http://127.0.0.1:8123/" in out and "warning" not in err
    assert main(["serve", str(checkpoint_path), "--host", "0.0.0.0"]) == 0
    assert "warning: serving on 0.0.0.0 without a token" in capsys.readouterr().err
    monkeypatch.setenv("PCAMLAB_SERVE_TOKEN", "s3cret")
    assert main(["serve", str(checkpoint_path), "--host", "0.0.0.0"]) == 0
    out, err = capsys.readouterr()
    assert "token required" in out and "warning" not in err and calls[-1][0].state.settings.token == "s3cret"
    assert exposure_warning("::1", None) is None and exposure_warning("localhost", None) is None
    assert main(["serve", str(checkpoint_path.parent / "missing.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_serve_on_a_busy_port_is_one_line_before_serving(checkpoint_path, capsys):
    import socket

    from pcamlab.cli.main import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", str(checkpoint_path), "--port", str(port)]) == 2
    out, err = capsys.readouterr()
    assert f"--port {port} on --host 127.0.0.1 is already in use" in err and len(err.strip().splitlines()) == 1
    assert "serving" not in out


def test_zip_members_with_unsafe_paths_are_refused_as_such(client, patches):
    for member in ("../../evil.jpg", "/etc/evil.png"):
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as zipped:
            zipped.writestr("ok.png", png_bytes(patches[0]))
            zipped.writestr(member, png_bytes(patches[1]))
        response = client.post("/v1/predict", files=[("files", ("x.zip", archive.getvalue(), "application/zip"))])
        detail = response.json()["detail"]
        assert response.status_code == 400 and "unsafe path" in detail and member in detail, detail


def test_explain_refuses_two_file_parts(client, patches):
    parts = [("file", ("a.png", png_bytes(patches[0]), "image/png")),
             ("file", ("b.png", png_bytes(patches[1]), "image/png"))]
    response = client.post("/v1/explain", files=parts)
    assert response.status_code == 400 and "one 'file' part" in response.json()["detail"]


def test_unreadable_file_advice_is_the_flag_on_the_cli_and_absent_in_the_api(client, checkpoint_path, tmp_path, capsys):
    from pcamlab.cli.main import main

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    assert main(["predict", str(checkpoint_path), str(bad)]) == 2
    err = capsys.readouterr().err
    assert "pass --skip-bad to skip such files" in err and "config" not in err and "skip_bad" not in err
    detail = client.post("/v1/predict", files=[("files", ("bad.png", b"junk", "image/png"))]).json()["detail"]
    assert "leave it out of the request" in detail and "skip" not in detail


def test_cli_serve_says_an_empty_token_variable_on_any_host_and_exits_with_the_signal(checkpoint_path, monkeypatch,
                                                                                       capsys):
    """Tester 1 item 10: PCAMLAB_SERVE_TOKEN="" on 127.0.0.1 served silently; SIGINT/SIGTERM exited 0, not 130/143;
    a blank token's message did not say how many spaces it held."""
    import signal

    import uvicorn

    from pcamlab.cli.main import main

    def uvicorn_run(app, **options):  # what uvicorn.run does on a signal: shuts down, re-raises it, swallows it
        try:
            signal.raise_signal(stop_with)
        except KeyboardInterrupt:
            pass

    monkeypatch.setattr(uvicorn, "run", uvicorn_run)
    monkeypatch.setattr("pcamlab.cli.serve.check_port", lambda host, port: None)
    monkeypatch.setenv("PCAMLAB_SERVE_TOKEN", "")
    for stop_with, status in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        assert main(["serve", str(checkpoint_path), "--port", "8123"]) == status
        err = capsys.readouterr().err
        assert "PCAMLAB_SERVE_TOKEN is set but empty, which counts as unset: serving on 127.0.0.1 without a token" in err
    monkeypatch.setenv("PCAMLAB_SERVE_TOKEN", "  ")
    assert main(["serve", str(checkpoint_path)]) == 2
    assert "is blank (2 whitespace characters" in capsys.readouterr().err
