"""respcache's public names: __all__ never drifts from what the package provides."""

import types

import respcache


def test_all_names_resolve_and_nothing_else_is_public() -> None:
    for name in respcache.__all__:
        assert getattr(respcache, name) is not None
    public = {
        n for n in dir(respcache) if not n.startswith("_") and not isinstance(getattr(respcache, n), types.ModuleType)
    }
    assert public <= set(respcache.__all__) | {"TYPE_CHECKING", "Any", "annotations"}
    assert respcache.cached_message_create.__name__ == "cached_message_create"
    assert issubclass(respcache.UpstreamUnavailable, respcache.UpstreamError)
    assert issubclass(respcache.UpstreamError, respcache.RespcacheError)
