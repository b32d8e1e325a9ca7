"""Fuzz the ``pcamlab serve`` OpenAPI schema with schemathesis: no input may produce a 500.

Schemathesis generates requests from the schema itself (valid and invalid bodies, multipart parts,
query strings, headers) and checks every answer: never a server error, and every answer conforms to
the status codes, content types and bodies the schema documents. One check is left out: "a
schema-valid request is accepted" cannot hold here, since the schema says "a binary file" and random
bytes are not a PCam patch (they get 400/415, as they should). Bounded: 15 examples per operation.
"""

from __future__ import annotations

import warnings

import pytest

pytest.importorskip("fastapi", reason="pcamlab serve needs fastapi (pip install 'pcamlab[serve]')")
schemathesis = pytest.importorskip("schemathesis", reason="the fuzz test needs schemathesis (pip install schemathesis)")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from fixtures_serve import serve_patches, write_serve_checkpoint  # noqa: E402
from pcamlab.serve import ServedModel, ServeSettings, create_app  # noqa: E402

TOKEN = "fuzz-token"


@pytest.fixture(scope="module")
def served_app(tmp_path_factory):
    patches = serve_patches(6)[0]
    path = write_serve_checkpoint(tmp_path_factory.mktemp("fuzz") / "best.safetensors", patches)
    return create_app(ServedModel.load(path), ServeSettings(token=TOKEN, max_images=16, max_request_bytes=2**20))


@pytest.fixture(scope="module")
def api_schema(served_app):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return schemathesis.openapi.from_asgi("/openapi.json", served_app)


# schemathesis' own pytest plugin (schema.parametrize) does not run under pytest 9 yet, so the test walks
# the operations itself and runs one bounded hypothesis search per operation.
def test_no_input_makes_the_server_fail(api_schema):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {operation.path for operation in operations} >= {"/v1/model", "/v1/predict", "/v1/explain", "/health"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def check(case):
            case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, excluded_checks=[positive_data_acceptance])

        check()
