"""The package surface: a pinned public API and an import that stays light."""

from __future__ import annotations

import json
import subprocess
import sys

import prefill_router
from tests.conftest import ROOT

PUBLIC_API = json.loads((ROOT / "tests" / "public_api.json").read_text())["prefill_router"]


def test_public_api_is_pinned_and_sorted() -> None:
    assert prefill_router.__all__ == PUBLIC_API  # the pin is sorted: so is __all__
    assert all(hasattr(prefill_router, name) for name in PUBLIC_API)


def test_import_loads_no_heavy_library() -> None:
    code = (
        "import sys, prefill_router, prefill_router.cli, prefill_router.data.importers;"
        "heavy = {'torch', 'transformers', 'fastapi', 'ray', 'matplotlib', 'sklearn'} & set(sys.modules);"
        "print(sorted(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_errors_carry_distinct_exit_codes() -> None:
    from prefill_router.errors import (
        ConfigError,
        DataError,
        EncodeError,
        MissingDependencyError,
        PrefillRouterError,
    )

    classes = (PrefillRouterError, DataError, ConfigError, MissingDependencyError, EncodeError)
    assert [cls.exit_code for cls in classes] == [1, 2, 3, 4, 5]


def test_api_error_is_a_prefill_router_error_with_the_openai_envelope() -> None:
    """The proxy's refusals join the hierarchy; the error body's bytes stay the OpenAI envelope's."""
    from starlette.responses import JSONResponse

    from prefill_router.errors import ApiError, PrefillRouterError

    error = ApiError(404, "unknown model 'x'", param="model", code="model_not_found")
    assert isinstance(error, PrefillRouterError)
    assert (error.status, error.type, str(error)) == (404, "invalid_request_error", "unknown model 'x'")
    assert JSONResponse(error.body(), status_code=error.status).body == (
        b'{"error":{"message":"unknown model \'x\'","type":"invalid_request_error",'
        b'"param":"model","code":"model_not_found"}}'
    )
    assert ApiError(503, "down", type="server_error").body() == {
        "error": {"message": "down", "type": "server_error", "param": None, "code": None}
    }


def test_the_version_is_the_installed_distributions() -> None:
    """One version: pyproject.toml's, read from the package metadata (never restated in code)."""
    import tomllib
    from importlib import metadata

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert prefill_router.__version__ == metadata.version("prefill-router") == declared
    assert f'"{declared}"' not in (ROOT / "src" / "prefill_router" / "__init__.py").read_text()
