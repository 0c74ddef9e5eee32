"""Django settings for the conversion re-trigger project.

Every setting the contract names can be overridden by an environment variable of the
same name; lists are comma-separated.
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, not {value!r}.") from None


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, not {value!r}.") from None


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


SECRET_KEY = env_str("DJANGO_SECRET_KEY", "dev-only-insecure-key-change-me-in-production")
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])

INSTALLED_APPS = [
    # Our app first so its `db_worker` (with stale-run recovery) wins over the plain one.
    "conversions",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "django_tasks_db",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "project.wsgi.application"
ASGI_APPLICATION = "project.asgi.application"

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several threads and a worker process share the file: wait for locks instead of
    # failing at once, and let readers run beside the writer.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # Worker tests start real processes that must open the test database: a file, not
    # memory; one per test process so that two test runs never share it.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / f"test_db.{os.getpid()}.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "static"

# --- Cache (throttle counters, idempotency races) ----------------------------------------------
# Shared by every server process: the database by default, Redis with CACHE_URL=redis://...
CACHE_URL = env_str("CACHE_URL", "")
if CACHE_URL.startswith(("redis://", "rediss://")):
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}
    }
elif CACHE_URL.startswith("locmem://"):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.db.DatabaseCache",
            "LOCATION": "django_cache",
        }
    }

# --- Background work -------------------------------------------------------------------
# `TASKS_BACKEND=rq` moves the same tasks onto RQ/Redis (scale-out across machines);
# the default is the database backend, whose worker is `manage.py db_worker`.
TASKS_BACKEND = env_str("TASKS_BACKEND", "database")
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
if TASKS_BACKEND == "rq":
    INSTALLED_APPS += ["django_rq", "django_tasks_rq"]
    TASKS = {"default": {"BACKEND": "django_tasks_rq.RQBackend", "QUEUES": ["default"]}}
    RQ_QUEUES = {"default": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 24 * 3600}}
    # django-tasks-rq's job class, so a plain `manage.py rqworker default` runs our tasks.
    RQ = {"JOB_CLASS": "django_tasks_rq.Job"}
elif TASKS_BACKEND == "immediate":
    TASKS = {"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}}
else:
    TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}

# --- REST framework ----------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "conversions.api.auth.TokenOrBearerAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "conversions.api.renderers.TextJSONRenderer",
        "conversions.api.renderers.PlainTextJSONRenderer",
    ],
    "DEFAULT_PARSER_CLASSES": ["conversions.api.parsers.JSONObjectParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "conversions.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
    # The API refuses unknown query parameters; `?format=` must not switch renderers.
    "URL_FORMAT_OVERRIDE": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Conversion postback re-trigger API",
    "DESCRIPTION": "Re-fire the postbacks of conversions matching search criteria.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
}

# --- The product's own settings (contract section 1) -----------------------------------------
RETRIGGER_SYNC_MAX = env_int("RETRIGGER_SYNC_MAX", 100)
RETRIGGER_MAX_LIMIT = env_int("RETRIGGER_MAX_LIMIT", 100000)
RETRIGGER_THROTTLE_RATE = env_str("RETRIGGER_THROTTLE_RATE", "30/min")
RETRIGGER_CHUNK_SIZE = env_int("RETRIGGER_CHUNK_SIZE", 500)
RETRIGGER_WORKERS_PER_RUN = env_int("RETRIGGER_WORKERS_PER_RUN", 4)
RETRIGGER_HEARTBEAT_STALE = env_float("RETRIGGER_HEARTBEAT_STALE", 30.0)
RETRIGGER_IDEMPOTENCY_TTL = env_int("RETRIGGER_IDEMPOTENCY_TTL", 24 * 3600)
# How long a repeated keyed request waits for the first one's answer before a 409.
RETRIGGER_IDEMPOTENCY_WAIT = env_float("RETRIGGER_IDEMPOTENCY_WAIT", 30.0)
RETRIGGER_ADMIN_PREVIEW_MAX = env_int("RETRIGGER_ADMIN_PREVIEW_MAX", 1000)
# Processes a foreground `retrigger_conversions` run uses (0: one per usable CPU core);
# they share the per-host cap. `--processes` overrides it.
RETRIGGER_COMMAND_PROCESSES = env_int("RETRIGGER_COMMAND_PROCESSES", 0)

POSTBACK_HOST_CONCURRENCY = env_int("POSTBACK_HOST_CONCURRENCY", 8)
# Attempts in flight at once per process (tasks on the event loop; threads for a
# synchronous `send`). 16 hosts x the cap of 8 is 128: 64 left the loop waiting.
POSTBACK_MAX_WORKERS = env_int("POSTBACK_MAX_WORKERS", 256)
POSTBACK_MAX_ATTEMPTS = env_int("POSTBACK_MAX_ATTEMPTS", 3)
POSTBACK_CONNECT_TIMEOUT = env_float("POSTBACK_CONNECT_TIMEOUT", 3.0)
POSTBACK_READ_TIMEOUT = env_float("POSTBACK_READ_TIMEOUT", 10.0)
POSTBACK_ATTEMPT_DEADLINE = env_float("POSTBACK_ATTEMPT_DEADLINE", 20.0)
POSTBACK_RETRY_BASE = env_float("POSTBACK_RETRY_BASE", 1.0)
POSTBACK_RETRY_CAP = env_float("POSTBACK_RETRY_CAP", 30.0)
POSTBACK_RESPONSE_EXCERPT = env_int("POSTBACK_RESPONSE_EXCERPT", 1024)
POSTBACK_MAX_REDIRECTS = env_int("POSTBACK_MAX_REDIRECTS", 3)
POSTBACK_ALLOWED_NETWORKS = env_list("POSTBACK_ALLOWED_NETWORKS", [])
POSTBACK_USER_AGENT = env_str("POSTBACK_USER_AGENT", "conversion-retrigger/1.0")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "WARNING")},
}
