"""The API keeps its OpenAPI contract: schemathesis fuzzes a live `cliplab serve` on 127.0.0.1.

Every operation in /openapi.json gets generated requests, valid and invalid ones (a bounded number, about a
minute in all); each answer must not be a server error, must use a status code the document declares for
that operation, and must match the body schema declared for it. Routes with a `{run_id}` mostly address one
real run, so their logic runs instead of a 404; the event-ingest route carries that run's own token.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.backend_fixtures import LiveServer, make_data_dir, running_run_in_live_server

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance  # noqa: E402

# ~28 operations x 80: about a minute on a loaded 2-core machine; CLIPLAB_FUZZ_EXAMPLES for a deeper run.
EXAMPLES_PER_OPERATION = int(os.environ.get("CLIPLAB_FUZZ_EXAMPLES", "80"))
RUN_TOKEN = "fuzz-run-token"
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]
pytestmark = pytest.mark.slow  # a live server fuzzed for about a minute


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, demo_dataset: Path) -> Iterator[LiveServer]:
    data_dir = make_data_dir(tmp_path_factory.mktemp("fuzz"), demo_dataset)
    server = LiveServer(data_dir, {"CLIPLAB_MAX_CPU_RUNS": "0"}).start()
    yield server
    server.stop()
    server.client.close()


def _fuzz_operation(operation: Any, base_url: str, run_id: str, tally: dict[str, int]) -> None:
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases, pin=st.booleans())
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def check(case: Any, pin: bool) -> None:
        headers = {}
        if case.path_parameters and "run_id" in case.path_parameters and (pin or operation.path.endswith("/events")):
            if operation.method.upper() != "DELETE":
                case.path_parameters["run_id"] = run_id
        if operation.path.endswith("/events") and operation.method.upper() == "POST":
            headers["Authorization"] = f"Bearer {RUN_TOKEN}"
        tally["requests"] += 1
        case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS, timeout=30)

    check()


def test_every_operation_keeps_its_openapi_contract_under_fuzzing(fuzz_server: LiveServer) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_server.base_url}/openapi.json")
    run_id = running_run_in_live_server(fuzz_server, RUN_TOKEN)
    tally = {"requests": 0}
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        if operation.path.endswith("/stream"):
            continue  # endless event streams: covered by the SSE tests
        try:
            _fuzz_operation(operation, fuzz_server.base_url, run_id, tally)
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - report every operation's failures together
            found = len(getattr(exc, "exceptions", [exc]))
            failures.append(f"{operation.method.upper()} {operation.path} ({found} distinct): {str(exc)[:1500]}")
            tally["failures"] = tally.get("failures", 0) + found
    print(f"\nfuzzed {tally['requests']} requests over {len(operations)} operations; "
          f"{tally.get('failures', 0)} distinct failures in {len(failures)} operations")
    assert not failures, f"{len(failures)} operations broke their contract:\n\n" + "\n\n".join(failures)
