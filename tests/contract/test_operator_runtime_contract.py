"""The operator emits only variables and flags the runtime declares (the §5 contract).

slm_operator never imports slm_runtime (import-linter independence contract); this test, outside
both packages, holds them together.
"""

from __future__ import annotations

from pathlib import Path

import slm_runtime.settings as runtime_settings
from slm_operator.api.v1alpha1 import FETCHER_OWNED_HEADERS, ModelSpec
from slm_operator.builders import FETCH_FLAGS, RUNTIME_ENV_NAMES
from slm_operator.builders.fetch_job import headers_from_arg, source_credentials
from slm_runtime.fetch import credentials as runtime_credentials


def test_every_serve_variable_is_declared_by_the_runtime() -> None:
    declared = set(runtime_settings.ServeSettings.env_names())
    assert set(RUNTIME_ENV_NAMES) - declared == set()


def test_every_fetch_flag_is_a_fetch_setting() -> None:
    fields = set(runtime_settings.FetchSettings.model_fields)
    assert {flag.removeprefix("--").replace("-", "_") for flag in FETCH_FLAGS} - fields == set()


def test_the_fetcher_reads_the_headers_the_operator_passes() -> None:
    model = ModelSpec.model_validate(
        {
            "source": "hf://org/repo/m.gguf",
            "hfTokenSecretRef": {"name": "hf", "key": "token"},
            "headersFrom": [
                {"header": "X-Api-Key", "prefix": "k ", "secretKeyRef": {"name": "g", "key": "a"}}
            ],
        }
    )
    credentials = source_credentials(model, model.source)
    parsed = runtime_settings.FetchSettings(
        source=model.source, dest=Path("/models/m"), headers_from=headers_from_arg(credentials)
    ).headers_from
    assert [(h.header, h.prefix, str(h.file), h.secret, h.key) for h in parsed] == [
        (c.header, c.prefix, c.path, c.secret, c.key) for c in credentials
    ]
    assert [h.header for h in parsed] == ["Authorization", "X-Api-Key"]


def test_admission_and_the_fetcher_refuse_the_same_headers() -> None:
    assert set(FETCHER_OWNED_HEADERS) == runtime_credentials.FETCHER_OWNED_HEADERS
