import pytest
from django.core.cache import cache


@pytest.fixture(autouse=True)
def _clear_cache(settings):
    # Throttle counters live in the cache; each test starts with a clean slate. A
    # process-local cache keeps tests that touch no database away from it (the app's
    # default, the database cache, is exercised by the demo in CI).
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
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


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # Factories set real passwords; the default hasher costs about a second per user.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
