"""GET /v1/limits says which model serves and, while it is the embedded demonstration model, how to switch (#24)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from shared.intake.model_limits import BERT_WORDPIECE, DEMONSTRATION_MODEL_HINT, ModelLimits
from tests.unit.api.conftest import ApiHarness
from tests.unit.api.test_prompt_limit import publish


def _limits(name: str) -> ModelLimits:
    return ModelLimits(model=name, max_prompt_tokens=30, prompt_tokenizer=BERT_WORDPIECE)


def test_the_embedded_model_is_named_a_demonstration_with_the_way_to_a_real_one(
    client: TestClient, api_harness: ApiHarness
) -> None:
    publish(api_harness, _limits("embedded"))
    body = client.get("/v1/limits").json()
    assert (body["model"], body["demonstration_model"]) == ("embedded", True)
    assert body["model_hint"] == DEMONSTRATION_MODEL_HINT
    assert "CAPTIONIZER_MODEL=microsoft/git-base-textcaps" in body["model_hint"]
    assert "MODEL_ID=microsoft/git-base-textcaps docker compose up" in body["model_hint"]


def test_a_real_checkpoint_has_no_hint(client: TestClient, api_harness: ApiHarness) -> None:
    publish(api_harness, _limits("git-base-textcaps"))
    body = client.get("/v1/limits").json()
    assert (body["model"], body["demonstration_model"], body["model_hint"]) == ("git-base-textcaps", False, None)


def test_without_a_worker_the_model_is_unknown(client: TestClient) -> None:
    body = client.get("/v1/limits").json()
    assert (body["model"], body["demonstration_model"], body["model_hint"]) == (None, False, None)
    assert body["image_formats"]  # the rest is answered as before
