"""The operator emits only variables and flags the runtime declares (the §5 contract).

slm_operator never imports slm_runtime (import-linter independence contract); this test, outside
both packages, holds them together.
"""

from __future__ import annotations

import slm_runtime.settings as runtime_settings
from slm_operator.builders import FETCH_ENV_NAMES, FETCH_FLAGS, RUNTIME_ENV_NAMES


def test_every_serve_variable_is_declared_by_the_runtime() -> None:
    declared = set(runtime_settings.ServeSettings.env_names())
    assert set(RUNTIME_ENV_NAMES) - declared == set()


def test_every_fetch_flag_is_a_fetch_setting() -> None:
    fields = set(runtime_settings.FetchSettings.model_fields)
    assert {flag.removeprefix("--").replace("-", "_") for flag in FETCH_FLAGS} - fields == set()


def test_every_fetch_variable_is_declared_by_the_runtime() -> None:
    assert set(FETCH_ENV_NAMES) - set(runtime_settings.FetchSettings.env_names()) == set()
