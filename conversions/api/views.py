"""The re-trigger API: check the caller, validate input, call the service, report.

No business rule lives here. DRF runs the checks in the contract's order: authentication
(401), `IsAccountAdmin` (403), the throttle (429), then the method (405); the handler
then reads the body (415, 413), validates flags, criteria and `Idempotency-Key` together
(400), replays or refuses a used key (409/422, see `idempotency`) and lets the service
refuse accounts that are not the caller's (403).
"""

from dataclasses import dataclass

from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.exceptions import (
    NotFound,
    ParseError,
    PermissionDenied,
    UnsupportedMediaType,
    ValidationError,
)
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from conversions.access import AccountForbidden, Actor, actor_for_user
from conversions.api import idempotency, schema
from conversions.api.auth import TokenOrBearerAuthentication
from conversions.api.errors import NON_FIELD
from conversions.api.negotiation import JSONContentNegotiation
from conversions.api.parsers import JSONObjectParser, is_json_media_type
from conversions.api.permissions import IsAccountAdmin
from conversions.api.renderers import PlainTextJSONRenderer, TextJSONRenderer
from conversions.api.throttles import RetriggerRateThrottle
from conversions.criteria import INT64_MAX, Criteria, parse_criteria, parse_flag
from conversions.models import RetriggerRun
from conversions.results import run_document
from conversions.services import conversions_retrigger, run_cancel, run_get_for_actor

FLAGS = ("force", "dryRun")


class _JSONAPIView(APIView):
    """Shared plumbing: token auth, JSON in, JSON/text-json/text-plain out."""

    authentication_classes = [TokenOrBearerAuthentication]
    parser_classes = [JSONObjectParser]
    renderer_classes = [JSONRenderer, TextJSONRenderer, PlainTextJSONRenderer]
    content_negotiation_class = JSONContentNegotiation
    throttle_classes: list = []


class RetriggerView(_JSONAPIView):
    # Only the handler's method: OPTIONS and HEAD are 405 like any other.
    http_method_names = ["post"]
    permission_classes = [IsAccountAdmin]
    throttle_classes = [RetriggerRateThrottle]

    @extend_schema(
        operation_id="conversions_retrigger",
        summary="Re-trigger the postbacks of the conversions matching the criteria",
        parameters=schema.RETRIGGER_PARAMETERS,
        request=schema.RETRIGGER_REQUEST,
        responses=schema.RETRIGGER_RESPONSES,
    )
    def post(self, request: Request) -> Response:
        given = _parse_input(request, _read_body(request))
        actor = actor_for_user(request.user)
        if given.idempotency_key is None:
            return _respond(*_retrigger(given, actor))
        info = given.criteria.to_info(force=given.force, dry_run=given.dry_run)
        claimed = idempotency.claim(
            user=request.user,
            key=given.idempotency_key,
            fingerprint=idempotency.fingerprint(info),
        )
        if isinstance(claimed, idempotency.Replay):
            return _respond(claimed.document, claimed.status_code, claimed.run_id)
        try:
            document, code, run_id = _retrigger(given, actor)
        except BaseException:
            idempotency.release(claimed)
            raise
        idempotency.complete(claimed, status_code=code, document=document, run_id=run_id)
        return _respond(document, code, run_id)


@dataclass(frozen=True)
class _Input:
    criteria: Criteria
    force: bool
    dry_run: bool
    idempotency_key: str | None  # None also for dry runs, which ignore it


def _retrigger(given: _Input, actor: Actor) -> tuple[dict, int, int | None]:
    """Call the service: (document, status code, run id)."""
    try:
        result = conversions_retrigger(
            criteria=given.criteria,
            actor=actor,
            force=given.force,
            dry_run=given.dry_run,
            source=RetriggerRun.Source.API,
        )
    except AccountForbidden as exc:
        raise PermissionDenied(f"accountId: {exc}") from exc
    code = status.HTTP_202_ACCEPTED if result.queued else status.HTTP_200_OK
    return result.to_document(), code, result.run.pk if result.run is not None else None


def _respond(document: dict, code: int, run_id: int | None) -> Response:
    headers = {}
    if code == status.HTTP_202_ACCEPTED and run_id is not None:
        headers["Location"] = reverse("retrigger-run", kwargs={"run_id": run_id})
    return Response(document, status=code, headers=headers)


def _read_body(request: Request) -> ParseError | object:
    """The decoded body (`{}` when empty), or the ParseError of malformed JSON so it is
    reported beside bad flags. A declared non-JSON type is a 415 even with an empty body
    (DRF alone would read that as `{}`)."""
    content_type = request.content_type or ""
    if content_type == "text/plain" and not request.META.get("CONTENT_LENGTH", "0").strip("0"):
        # wsgiref (runserver) reports a missing Content-Type as exactly "text/plain": an
        # empty body without a type is `{}` there too, as the contract says.
        content_type = ""
    if content_type.strip() and not is_json_media_type(content_type):
        raise UnsupportedMediaType(content_type.split(";", 1)[0].strip()[:100])
    try:
        return request.data
    except ParseError as exc:
        return exc


def _parse_input(request: Request, body: ParseError | object) -> _Input:
    """Flags and criteria validated together, so one 400 names every bad key."""
    errors: dict[str, list] = {}
    if isinstance(body, ParseError):
        errors[NON_FIELD] = [str(body.detail)]
    for name in request.query_params:
        if name not in FLAGS:
            errors[name] = ["Unknown query parameter; criteria go in the JSON body."]
    flags = {}
    for name in FLAGS:
        values = request.query_params.getlist(name)
        if len(values) > 1:
            errors[name] = ["Give this flag at most once."]
            continue
        try:
            flags[name] = parse_flag(name, values[0] if values else None)
        except ValidationError as exc:
            _merge(errors, exc.detail)
    criteria = None
    if not isinstance(body, ParseError):
        try:
            criteria = parse_criteria(body)
        except ValidationError as exc:
            _merge(errors, exc.detail)
    key = request.headers.get(idempotency.HEADER)
    # A malformed key is bad input even on a dry run (the schema's pattern says so); a
    # well-formed one is then ignored there.
    if key_errors := idempotency.key_errors(key):
        errors[idempotency.HEADER] = key_errors
    if flags.get("dryRun"):
        key = None
    if errors:
        raise ValidationError(errors)
    assert criteria is not None
    return _Input(criteria, flags["force"], flags["dryRun"], key)


def _merge(errors: dict[str, list], detail) -> None:
    for key, messages in detail.items():
        errors.setdefault(key, []).extend(messages)


class _RunView(_JSONAPIView):
    permission_classes = [IsAuthenticated]

    def _run(self, request: Request, run_id: int) -> RetriggerRun:
        # Beyond bigint no row can exist; the database must not see the number.
        if run_id > INT64_MAX:
            raise NotFound()
        try:
            return run_get_for_actor(run_id=run_id, actor=actor_for_user(request.user))
        except RetriggerRun.DoesNotExist as exc:
            raise NotFound() from exc


def _run_detail(run: RetriggerRun) -> dict:
    return {"info": run.criteria, "run": run_document(run=run, with_progress=True)}


class RetriggerRunView(_RunView):
    http_method_names = ["get"]

    @extend_schema(
        operation_id="conversions_retrigger_run",
        summary="A re-trigger run: its criteria, progress and counts",
        responses=schema.RUN_RESPONSES,
    )
    def get(self, request: Request, run_id: int) -> Response:
        return Response(_run_detail(self._run(request, run_id)))


class RetriggerRunCancelView(_RunView):
    http_method_names = ["post"]

    @extend_schema(
        operation_id="conversions_retrigger_run_cancel",
        summary="Cancel a run; pairs not yet fired stay unfired",
        request=None,
        responses=schema.RUN_RESPONSES,
    )
    def post(self, request: Request, run_id: int) -> Response:
        run = self._run(request, run_id)
        run = run_cancel(run=run, actor=actor_for_user(request.user))
        return Response(_run_detail(run))


class UnknownPathView(_JSONAPIView):
    """Every other path under `api/conversions/` (a run id that is not a number, a typo):
    DRF's JSON 404 after the 401, never Django's HTML page."""

    permission_classes = [IsAuthenticated]

    def initial(self, request: Request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        raise NotFound()
