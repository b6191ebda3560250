"""System checks respcache.E001… and the settings object."""

from __future__ import annotations

from typing import Any

import pytest

from respcache import checks
from respcache.conf import app_settings


def ids(errors: list[Any]) -> list[str]:
    return [e.id for e in errors]


def test_cache_alias_must_exist_and_be_django_redis(settings: Any) -> None:
    assert checks.check_cache_alias() == []
    settings.RESPCACHE = {**settings.RESPCACHE, "CACHE_ALIAS": "missing"}
    assert ids(checks.check_cache_alias()) == ["respcache.E001"]
    settings.RESPCACHE = {**settings.RESPCACHE, "CACHE_ALIAS": "default"}
    assert ids(checks.check_cache_alias()) == ["respcache.E002"]
    settings.RESPCACHE = {**settings.RESPCACHE, "CACHE_ALIAS": "respcache"}
    settings.CACHES = {
        **settings.CACHES,
        "respcache": {**settings.CACHES["respcache"], "KEY_FUNCTION": "myproject.keys.make_key"},
    }
    assert ids(checks.check_cache_alias()) == ["respcache.E005"]


@pytest.mark.parametrize("prefix", ["{rc}", "rc{", "r}c"])
def test_a_brace_in_the_key_prefix_is_refused(settings: Any, prefix: str) -> None:
    """It would become every key's hash tag on a Redis Cluster, in place of each entry's own."""
    settings.CACHES = {**settings.CACHES, "respcache": {**settings.CACHES["respcache"], "KEY_PREFIX": prefix}}
    assert ids(checks.check_cache_alias()) == ["respcache.E011"]


def test_upstream_checks(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.RESPCACHE = {**settings.RESPCACHE, "UPSTREAM": "openai"}
    assert ids(checks.check_upstream()) == ["respcache.E003"]
    settings.RESPCACHE = {**settings.RESPCACHE, "UPSTREAM": "anthropic"}
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert ids(checks.check_upstream()) == ["respcache.E004"]
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk")
    assert checks.check_upstream() == []


def test_compressor_check(settings: Any) -> None:
    assert checks.check_compressor() == []
    settings.RESPCACHE = {**settings.RESPCACHE, "COMPRESSOR": "zlib"}
    assert checks.check_compressor() == []
    settings.RESPCACHE = {**settings.RESPCACHE, "COMPRESSOR": "brotli"}
    assert ids(checks.check_compressor()) == ["respcache.E006"]


def test_unknown_setting_raises_and_override_settings_reloads(settings: Any) -> None:
    with pytest.raises(AttributeError):
        app_settings.NO_SUCH_SETTING  # noqa: B018
    settings.RESPCACHE = {**settings.RESPCACHE, "COMPRESS_MIN_BYTES": 7}
    assert app_settings.COMPRESS_MIN_BYTES == 7


def test_a_deployment_answers_from_the_simulated_upstream_only_when_named(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.RESPCACHE = {**settings.RESPCACHE, "UPSTREAM": ""}
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    (error,) = checks.check_upstream_chosen()
    assert error.id == "respcache.E007" and "RESPCACHE_UPSTREAM=simulated" in error.hint
    settings.RESPCACHE = {**settings.RESPCACHE, "UPSTREAM": "simulated"}
    assert checks.check_upstream_chosen() == []
    settings.RESPCACHE = {**settings.RESPCACHE, "UPSTREAM": ""}
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk")
    assert checks.check_upstream_chosen() == []


def test_the_deployment_check_runs_with_check_deploy_only() -> None:
    from django.core.checks import registry

    assert checks.check_upstream_chosen in registry.registry.get_checks(include_deployment_checks=True)
    assert checks.check_upstream_chosen not in registry.registry.get_checks(include_deployment_checks=False)


@pytest.mark.parametrize(
    ("values", "depth", "ok"),
    [
        (1_000_000, 254, True),
        (1, 1, True),
        (0, 254, False),
        (True, 254, False),
        ("1000", 254, False),
        (1_000_000, 255, False),
        (1_000_000, 0, False),
        (1_000_000, 10.5, False),
    ],
)
def test_body_limits_check(settings: Any, values: Any, depth: Any, ok: bool) -> None:
    settings.RESPCACHE = {**settings.RESPCACHE, "MAX_JSON_VALUES": values, "MAX_JSON_DEPTH": depth}
    assert ids(checks.check_body_limits()) == ([] if ok else ["respcache.E008"])
