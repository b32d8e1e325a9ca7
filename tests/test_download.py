"""Offline tests of pcamlab.data.download against a local HTTP server.

A ThreadingHTTPServer on 127.0.0.1 (port 0) serves small gzipped HDF5 files in the official PCam
layout, made here with a seeded generator; the table of official files is replaced by one holding
their md5s. The handler supports ``Range`` and can be told to cut a connection once, to serve
corrupt bytes, or to ignore ``Range``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import h5py
import numpy as np
import pytest

from pcamlab.data import download
from pcamlab.data.download import PcamFile, download_pcam, resolve_files
from pcamlab.errors import ConfigError, DataError, RunError

ROWS = 6


def _h5_bytes(name: str, array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        handle.create_dataset(name, data=array)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def release():
    """Bytes of a tiny 'valid' split plus one CSV, as a server would hold them."""
    generator = np.random.default_rng(2546921)
    images = generator.integers(0, 256, size=(ROWS, 96, 96, 3), dtype=np.uint8)
    labels = generator.integers(0, 2, size=(ROWS, 1, 1, 1), dtype=np.uint8)
    unpacked = {
        "camelyonpatch_level_2_split_valid_x.h5": _h5_bytes("x", images),
        "camelyonpatch_level_2_split_valid_y.h5": _h5_bytes("y", labels),
    }
    served = {name + ".gz": gzip.compress(data, mtime=0) for name, data in unpacked.items()}
    meta = b"patch_id,wsi\n0,test_001\n"
    served["camelyonpatch_level_2_split_valid_meta.csv"] = meta
    unpacked["camelyonpatch_level_2_split_valid_meta.csv"] = meta
    return {"served": served, "unpacked": unpacked, "images": images, "labels": labels}


@pytest.fixture
def table(release, monkeypatch):
    """Replace the official table by entries for the files the local server holds."""
    served = release["served"]

    def entry(short_name, remote_name, shape, dataset, with_size=True):
        data = served[remote_name]
        md5 = hashlib.md5(data).hexdigest()
        size = len(data) if with_size else None
        return PcamFile(short_name, remote_name, md5, size, shape, dataset)

    prefix = "camelyonpatch_level_2_split_valid"
    entries = {  # valid_y and valid_meta without a size, as for files no source gives one
        "valid_x": entry("valid_x", f"{prefix}_x.h5.gz", (ROWS, 96, 96, 3), "x"),
        "valid_y": entry("valid_y", f"{prefix}_y.h5.gz", (ROWS, 1, 1, 1), "y", with_size=False),
        "valid_meta": entry("valid_meta", f"{prefix}_meta.csv", None, None, with_size=False),
    }
    monkeypatch.setattr(download, "PCAM_FILES", entries)
    monkeypatch.setattr(download, "RETRY_WAIT_SECONDS", 0.0)
    return entries


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format, *args):  # keep test output clean
        pass

    def do_GET(self):
        state = self.server.state
        name = self.path.split("?")[0].rsplit("/", 1)[-1]
        range_header = self.headers.get("Range")
        state["requests"].append((name, range_header))
        if name not in state["files"]:
            self.send_error(404, "Not Found")
            return
        if state["web_page"] is not None:  # a mirror answering with a page (login, quota, moved file)
            body = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Log in to download</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", state["web_page"])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        data = state["files"][name]
        if state["corrupt"]:
            data = bytes(byte ^ 0xFF for byte in data[:64]) + data[64:]
        start = 0
        if range_header and not state["ignore_range"]:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        stall, state["stall_seconds"] = state["stall_seconds"], 0
        if stall:  # headers sent, body late: the client's read times out (once)
            time.sleep(stall)
            return
        cut = state["cut_after"].pop(name, None)
        if cut is not None:  # announce the whole body, send part of it, drop the connection
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server(release):
    """Local server; its ``state`` dict steers the handler and records every request."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = {
        "files": dict(release["served"]),
        "requests": [],
        "cut_after": {},  # remote name -> bytes to send before cutting (once)
        "corrupt": False,
        "ignore_range": False,
        "stall_seconds": 0,  # wait this long once before sending a body, then send none
        "web_page": None,  # a Content-Type: answer every request with an HTML page served as that type
    }
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    httpd.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/records/files"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _fetch(tmp_path, server, files, **options):
    options.setdefault("progress", False)
    options.setdefault("chunk_size", 4096)
    options.setdefault("timeout", 5)
    return download_pcam(tmp_path, base_url=server.base_url, files=files, **options)


def test_downloads_verifies_and_decompresses(tmp_path, table, server, release):
    paths = _fetch(tmp_path, server, ["valid"])
    assert [path.name for path in paths] == [
        "camelyonpatch_level_2_split_valid_x.h5",
        "camelyonpatch_level_2_split_valid_y.h5",
    ]
    with h5py.File(paths[0], "r") as handle:
        np.testing.assert_array_equal(handle["x"][3], release["images"][3])
    with h5py.File(paths[1], "r") as handle:
        np.testing.assert_array_equal(handle["y"][:], release["labels"])
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == sorted(f"{path.name}{suffix}" for path in paths for suffix in ("", ".md5"))
    sidecar = json.loads((tmp_path / "camelyonpatch_level_2_split_valid_x.h5.md5").read_text())
    assert sidecar["source_md5"] == table["valid_x"].md5
    assert sidecar["size"] == paths[0].stat().st_size
    assert [range_header for _, range_header in server.state["requests"]] == [None, None]


def test_uncompressed_csv_is_stored_as_served(tmp_path, table, server, release):
    (path,) = _fetch(tmp_path, server, ["valid_meta"])
    assert path.name == "camelyonpatch_level_2_split_valid_meta.csv"
    assert path.read_bytes() == release["unpacked"][path.name]


def test_good_files_are_skipped_on_rerun(tmp_path, table, server):
    first = _fetch(tmp_path, server, ["valid_x", "valid_y"])
    server.state["requests"].clear()
    second = _fetch(tmp_path, server, ["valid_x", "valid_y"])
    assert second == first
    assert server.state["requests"] == []


def test_file_whose_size_changed_is_fetched_again(tmp_path, table, server, release):
    (path,) = _fetch(tmp_path, server, ["valid_y"])
    path.write_bytes(path.read_bytes()[:100])  # truncated by something else
    server.state["requests"].clear()
    _fetch(tmp_path, server, ["valid_y"])
    assert len(server.state["requests"]) == 1
    assert path.read_bytes() == release["unpacked"][path.name]


def test_interrupted_download_resumes_with_range_on_next_call(tmp_path, table, server, release):
    name = table["valid_x"].remote_name
    server.state["cut_after"][name] = 5000
    expected = rf"download of {name} failed after 1 tries: .*run the same command again"
    with pytest.raises(RunError, match=expected):
        _fetch(tmp_path, server, ["valid_x"], retries=1)
    part = tmp_path / (name + ".part")
    assert part.stat().st_size == 5000
    assert not (tmp_path / "camelyonpatch_level_2_split_valid_x.h5").exists()

    (path,) = _fetch(tmp_path, server, ["valid_x"], retries=1)
    assert server.state["requests"][-1] == (name, "bytes=5000-")
    assert path.read_bytes() == release["unpacked"][path.name]
    assert not part.exists()


def test_cut_connection_is_retried_within_one_call(tmp_path, table, server, release):
    name = table["valid_y"].remote_name  # size unknown: relies on Content-Length to notice the cut
    server.state["cut_after"][name] = 100
    (path,) = _fetch(tmp_path, server, ["valid_y"], retries=3, chunk_size=16)
    assert server.state["requests"] == [(name, None), (name, "bytes=100-")]
    assert path.read_bytes() == release["unpacked"][path.name]


def test_stalled_connection_times_out_and_is_retried(tmp_path, table, server, release):
    server.state["stall_seconds"] = 0.6
    (path,) = _fetch(tmp_path, server, ["valid_y"], timeout=0.2, retries=2)
    assert len(server.state["requests"]) == 2
    assert path.read_bytes() == release["unpacked"][path.name]


def test_corrupt_download_is_rejected_and_moved_aside(tmp_path, table, server):
    server.state["corrupt"] = True
    name = table["valid_x"].remote_name
    with pytest.raises(DataError) as caught:
        _fetch(tmp_path, server, ["valid_x"])
    message = str(caught.value)
    assert name in message and table["valid_x"].md5 in message
    assert "run the same command again" in message
    assert "\n" not in message
    assert not (tmp_path / "camelyonpatch_level_2_split_valid_x.h5").exists()
    assert not (tmp_path / (name + ".part")).exists()
    assert (tmp_path / (name + ".corrupt")).is_file()

    server.state["corrupt"] = False  # the next run starts afresh rather than resuming bad bytes
    server.state["requests"].clear()
    _fetch(tmp_path, server, ["valid_x"])
    assert server.state["requests"] == [(name, None)]


def test_server_ignoring_range_restarts_from_zero(tmp_path, table, server, release):
    server.state["ignore_range"] = True
    name = table["valid_x"].remote_name
    (tmp_path / (name + ".part")).write_bytes(b"garbage that must not stay at the front" * 10)
    (path,) = _fetch(tmp_path, server, ["valid_x"])
    assert server.state["requests"] == [(name, "bytes=390-")]
    assert path.read_bytes() == release["unpacked"][path.name]


def test_complete_part_of_unknown_size_finishes_after_416(tmp_path, table, server, release):
    name = table["valid_y"].remote_name
    (tmp_path / (name + ".part")).write_bytes(release["served"][name])
    (path,) = _fetch(tmp_path, server, ["valid_y"])
    assert server.state["requests"] == [(name, f"bytes={len(release['served'][name])}-")]
    assert path.read_bytes() == release["unpacked"][path.name]


def test_complete_part_of_known_size_needs_no_request(tmp_path, table, server, release):
    name = table["valid_x"].remote_name
    (tmp_path / (name + ".part")).write_bytes(release["served"][name])
    _fetch(tmp_path, server, ["valid_x"])
    assert server.state["requests"] == []


def test_missing_file_fails_at_once_naming_the_url(tmp_path, table, server):
    del server.state["files"][table["valid_y"].remote_name]
    with pytest.raises(RunError, match=r"HTTP 404 .*check base_url"):
        _fetch(tmp_path, server, ["valid_y"], retries=3)
    assert len(server.state["requests"]) == 1


def test_unreachable_server_fails_after_the_given_tries(tmp_path, table):
    with pytest.raises(RunError, match=r"failed after 2 tries: .*resume"):
        download_pcam(tmp_path, base_url="http://127.0.0.1:9", files=["valid_y"], progress=False,
                      retries=2, timeout=2)


def test_wrong_shape_is_rejected_and_nothing_is_left_in_place(tmp_path, table, server, monkeypatch):
    wrong = dict(table)
    wrong["valid_x"] = PcamFile(**{**table["valid_x"].__dict__, "shape": (ROWS + 1, 96, 96, 3)})
    monkeypatch.setattr(download, "PCAM_FILES", wrong)
    expected = r"valid_x\.h5: dataset 'x' has shape \(6, 96, 96, 3\), expected \(7, 96, 96, 3\)"
    with pytest.raises(DataError, match=expected):
        _fetch(tmp_path, server, ["valid_x"])
    names = [path.name for path in tmp_path.iterdir()]
    assert names == ["camelyonpatch_level_2_split_valid_x.h5.gz.corrupt"]


def test_failed_unpacking_leaves_an_existing_file_untouched(tmp_path, table, server, monkeypatch):
    final = tmp_path / "camelyonpatch_level_2_split_valid_x.h5"
    final.write_bytes(b"a file the user put here")  # no sidecar, so it is fetched again
    wrong = dict(table)
    wrong["valid_x"] = PcamFile(**{**table["valid_x"].__dict__, "shape": (1, 2, 3)})
    monkeypatch.setattr(download, "PCAM_FILES", wrong)
    with pytest.raises(DataError):
        _fetch(tmp_path, server, ["valid_x"])
    assert final.read_bytes() == b"a file the user put here"
    assert not (tmp_path / (final.name + ".tmp")).exists()


def test_unknown_file_name_suggests_the_closest(table):
    with pytest.raises(ConfigError, match=r"unknown file 'valid-x' \(did you mean 'valid_x'\?\)"):
        resolve_files(["valid-x"])


def test_official_table_selection_and_urls():
    entries = resolve_files(None, download.PCAM_FILES)
    names = [entry.short_name for entry in entries]
    assert names == ["train_x", "train_y", "valid_x", "valid_y", "test_x", "test_y"]
    chosen = resolve_files(["meta", "valid_x", "valid"], download.PCAM_FILES)
    names = [entry.short_name for entry in chosen]
    assert names == ["valid_x", "valid_y", "train_meta", "valid_meta", "test_meta"]
    valid_x = download.PCAM_FILES["valid_x"]
    assert valid_x.md5 == "d5b63470df7cfa627aeec8b9dc0c066e"  # not the README's swapped value
    assert valid_x.shape == (32768, 96, 96, 3)
    assert download.PCAM_FILES["train_x"].shape == (262144, 96, 96, 3)
    name = "camelyonpatch_level_2_split_valid_x.h5.gz"
    assert valid_x.url() == f"https://zenodo.org/records/2546921/files/{name}?download=1"
    assert valid_x.url("http://mirror/pcam/") == f"http://mirror/pcam/{name}"
    assert len({entry.md5 for entry in download.PCAM_FILES.values()}) == len(download.PCAM_FILES)


def test_progress_bars_can_be_silenced(tmp_path, table, server, capsys):
    _fetch(tmp_path, server, ["valid_x"], progress=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "application/octet-stream"])
def test_a_mirror_that_sends_a_web_page_is_named_not_retried(tmp_path, table, server, content_type):
    server.state["web_page"] = content_type  # announced as a page, or disguised as the file (md5 then differs)
    with pytest.raises(DataError) as caught:
        _fetch(tmp_path, server, ["valid_x"], retries=3)
    message = str(caught.value)
    assert "sent a web page instead of camelyonpatch_level_2_split_valid_x.h5.gz" in message
    assert "base_url" in message and "run the same command again" not in message and "\n" not in message
    assert len(server.state["requests"]) == 1  # fetching again would bring the same page
    assert list(tmp_path.iterdir()) == []  # nothing kept: no .part, no .corrupt
