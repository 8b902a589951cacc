"""Schema-driven fuzzing of the HTTP API (issue 13): schemathesis makes valid and invalid
requests to every operation of a real server's OpenAPI document (on 127.0.0.1, with the bearer
token); the uploads of a valid request are either the bytes that it generates or real PNGs sent
as ``image/png``, so that learning and prediction run with the names, ``top`` and thresholds of
its making. Every answer must be 2xx or a 4xx that the document lists for its operation, with
the documented body (``{"detail": "one line"}``); a 5xx fails. All of schemathesis's checks
run but ``positive_data_acceptance``: the document cannot say that a file must be an image or
that a name must not be blank, so some schema-valid requests are refused (422) by design."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_serve import AUTH, LIMITS, TOKEN, png, serving, uploads
from test_store import trained_run

schemathesis = pytest.importorskip("schemathesis")  # a test extra: absent where only the library is

EXAMPLES = 200
"""Requests per operation, valid and invalid ones."""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def api(
    run_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[schemathesis.BaseSchema]:
    """The OpenAPI document of a server with a token and a class (so that predictions run)."""
    folder = tmp_path_factory.mktemp("fuzz")
    with serving(folder / "s.db", folder / "log", "--run", run_dir, "--token", TOKEN,
                 *LIMITS) as (url, _):  # fmt: skip
        known = {"class_name": "known"}
        httpx.post(
            f"{url}/examples", headers=AUTH, data=known, files=uploads([("k.png", png(0))])
        ).raise_for_status()
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


def pngs() -> st.SearchStrategy[list[bytes]]:
    """One to three PNGs of up to 64x64 pixels in Pillow's common modes."""
    sizes = st.tuples(st.integers(1, 64), st.integers(1, 64))
    modes = st.sampled_from(["1", "L", "LA", "P", "RGB", "RGBA"])
    images = st.builds(png, st.integers(0, 2**32 - 1), sizes, modes)
    return st.lists(images, min_size=1, max_size=3)


def test_every_operation_answers_2xx_or_a_documented_4xx(api):
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) == 7
    statuses: dict[str, set[int]] = defaultdict(set)
    for operation in operations:
        cases = st.one_of(
            [operation.as_strategy(mode) for mode in schemathesis.generation.GenerationMode]
        )

        @given(case=cases, images=st.none() | pngs())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
        def fuzz(case: schemathesis.Case, images: list[bytes] | None) -> None:
            if images and isinstance(case.body, dict) and case.meta.generation.mode.is_positive:
                case.body["images"] = images
                case.multipart_content_types = {"images": "image/png"}
            response = case.call_and_validate(
                headers=AUTH, excluded_checks=[schemathesis.checks.positive_data_acceptance]
            )
            statuses[case.operation.label].add(response.status_code)

        fuzz()
    assert 200 in statuses["POST /predict"]  # real images were recognised
