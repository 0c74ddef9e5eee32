import pytest
from django.core.cache import cache


@pytest.fixture(autouse=True)
def _clear_cache():
    # Throttle counters live in the cache; each test starts with a clean slate.
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def allow_loopback(settings):
    """Open 127.0.0.1 only, as the demo does; 127.0.0.2 and the rest stay blocked."""
    settings.POSTBACK_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    return settings


@pytest.fixture(scope="session")
def httpserver_listen_address():
    # Receivers listen on 127.0.0.1 exactly, the one address tests open in the guard.
    return ("127.0.0.1", 0)
