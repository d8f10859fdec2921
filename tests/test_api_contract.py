"""The API contract: schemathesis runs every check over the service's own OpenAPI spec, in-process (no network),
once without and once with an API key, and any failed check fails the test."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import AcceptedNegativeData
from schemathesis.engine import events, from_schema
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.python.asgi import shutdown_lifespans
from serving_helpers import settings_for

from app.main import create_app

API_KEY = "contract-key"
MAX_EXAMPLES = 25  # per operation and phase; the whole run stays within a few seconds per setting
# schemathesis' default list plus 413: the service refuses a batch over max_batch_items (the spec's maxItems)
# with 413 too_many_items, which is a rejection as much as a 422 is.
NEGATIVE_STATUSES = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, "5xx"]


@dataclass
class ContractRun:
    """What one schemathesis run did: cases sent, checks by name and outcome, and the failures in words."""

    cases: int = 0
    checks: Counter[tuple[str, str]] = field(default_factory=Counter)
    filtered: int = 0
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        passed = sum(count for (_, status), count in self.checks.items() if status == "success")
        return (
            f"{self.cases} cases, {sum(self.checks.values())} checks ({passed} passed) of "
            f"{len({name for name, _ in self.checks})} kinds, {len(self.failures)} failed, "
            f"{self.filtered} dropped as inapplicable"
        )


def contract_config(api_key: str | None) -> SchemathesisConfig:
    """Every check and phase, a fixed seed and no example database (nothing written to the repository)."""
    config: dict[str, Any] = {
        "seed": 14,
        "checks": {"enabled": True, "negative_data_rejection": {"expected-statuses": NEGATIVE_STATUSES}},
        "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
    }
    if api_key is not None:
        config["headers"] = {"X-API-Key": api_key}
    return SchemathesisConfig.from_dict(config)


def _as_sent(value: Any) -> Any:
    """A multipart value as the JSON schema sees the part: text (binary parts byte for byte)."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, list):
        return [_as_sent(item) for item in value]
    return value


def _valid_as_sent(case: Any, spec: dict[str, Any]) -> bool:
    """Whether a multipart body is schema-valid as it goes on the wire, where a field holding [] or {} is no part.

    schemathesis means to skip such negative cases itself (``_form_body_is_valid_as_sent``: "empty lists and
    objects send nothing at all"), but 4.32 cannot re-validate a body with binary file parts and reports them.
    """
    if case.media_type != "multipart/form-data" or not isinstance(case.body, dict):
        return False
    operation = spec["paths"][case.operation.path][case.method.lower()]
    schema = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    sent = {name: _as_sent(value) for name, value in case.body.items() if value not in ([], {})}
    return jsonschema_rs.validator_for(schema).is_valid(sent)


def install_applicability_filter(schema: Any, spec: dict[str, Any]) -> None:
    """Drop the two kinds of failure that say nothing about the service (each case is explained in place)."""

    @schema.hook
    def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
        # "Bytes that decode as an image" has no OpenAPI form: a schema-valid body of random bytes is rightly
        # 415 unsupported_image. Any other 415 (an unsupported content type) still fails.
        if isinstance(failure, RejectedPositiveData) and response.status_code == 415:
            return response.json().get("error") != "unsupported_image"
        if isinstance(failure, AcceptedNegativeData):
            return not _valid_as_sent(case, spec)
        return True


def run_contract(schema: Any) -> ContractRun:
    """Run every phase of schemathesis' engine (as ``st run`` does) and collect what it did."""
    run = ContractRun()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            run.cases += len(recorder.cases)
            run.filtered += sum(recorder.filtered_failures.values())
            for checks in recorder.checks.values():
                for check in checks:
                    run.checks[(check.name, str(check.status))] += 1
                    if check.failure_info is not None:
                        failure = check.failure_info.failure
                        run.failures.append(
                            f"{recorder.label} {check.name}: {failure.title}: {failure.message}\n"
                            f"{check.failure_info.code_sample[:2000]}"
                        )
        elif isinstance(event, events.NonFatalError):
            run.errors.append(f"{event.label}: {event.value!r}")
        elif isinstance(event, events.FatalError):
            run.errors.append(f"fatal: {event.exception!r}")
    return run


@pytest.mark.parametrize("api_key", [None, API_KEY], ids=["without-key", "with-key"])
def test_service_keeps_its_openapi_contract(trained_repository, api_key: str | None) -> None:
    app = create_app(settings_for(trained_repository, decode_workers=1, api_key=api_key))
    try:
        # from_asgi runs the app's lifespan (the ensemble loads) before it asks for the spec.
        schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=contract_config(api_key))
        install_applicability_filter(schema, app.openapi())
        run = run_contract(schema)
    finally:
        shutdown_lifespans()
    print(f"schemathesis ({'with' if api_key else 'without'} API key): {run.summary()}")
    assert not run.errors, "\n".join(run.errors)
    assert not run.failures, f"{run.summary()}\n\n" + "\n\n".join(run.failures)
    ran = {name for name, _ in run.checks}
    assert {"not_a_server_error", "status_code_conformance", "response_schema_conformance"} <= ran
    assert {"positive_data_acceptance", "negative_data_rejection", "unsupported_method"} <= ran
    assert run.cases >= 100


@pytest.mark.parametrize("api_key", [None, API_KEY], ids=["without-key", "with-key"])
def test_spec_declares_the_key_only_when_one_is_set(tmp_path, api_key: str | None) -> None:
    spec = create_app(settings_for(tmp_path, api_key=api_key)).openapi()
    schemes = spec.get("components", {}).get("securitySchemes", {})
    for path in ("/v1/predict", "/v1/predict/batch", "/v1/models"):
        operation = next(iter(spec["paths"][path].values()))
        assert ("security" in operation) == (api_key is not None)
        assert ("401" in operation["responses"]) == (api_key is not None)
        assert not [param for param in operation.get("parameters", []) if param["in"] == "header"]
    assert bool(schemes) == (api_key is not None)


def test_spec_bounds_match_the_service(trained_repository) -> None:
    with_limits = settings_for(trained_repository, max_batch_items=7, decode_workers=1)
    app = create_app(with_limits)
    assert "maximum" not in str(app.openapi()["paths"]["/v1/predict"]["post"]["parameters"])  # not loaded yet
    with TestClient(app) as client:
        spec = client.get("/openapi.json").json()
        num_classes = client.get("/v1/models").json()["num_classes"]
    for path in ("/v1/predict", "/v1/predict/batch"):
        operation = spec["paths"][path]["post"]
        (query,) = [param["schema"] for param in operation["parameters"] if param["name"] == "top_k"]
        assert query["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": num_classes}
        form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert form["properties"]["top_k"] == {"type": "integer", "minimum": 1, "maximum": num_classes}
        for status in ("400", "413", "415", "422", "503"):
            assert operation["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith(
                "/ErrorResponse"
            )
    files = spec["paths"]["/v1/predict/batch"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert files["properties"]["files"]["minItems"] == 1 and files["properties"]["files"]["maxItems"] == 7


def test_only_negative_cases_that_are_valid_on_the_wire_are_dropped(tmp_path) -> None:
    spec = create_app(settings_for(tmp_path)).openapi()
    batch = SimpleNamespace(path="/v1/predict/batch")

    def case(**body: Any) -> SimpleNamespace:
        return SimpleNamespace(media_type="multipart/form-data", body=body, operation=batch, method="POST")

    assert _valid_as_sent(case(files=[b"%PDF", b"\x1fb"], tta=[]), spec)  # no tta part is sent at all
    assert _valid_as_sent(case(files=[b"\x89PNG"], top_k={}), spec)
    assert not _valid_as_sent(case(files=[b"\x89PNG"], tta="0"), spec)
    assert not _valid_as_sent(case(files=[], tta=True), spec)
    assert not _valid_as_sent(case(files=[b"\x89PNG"] * 65), spec)
