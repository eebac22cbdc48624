"""What the HTTP handlers share: errors as `{"message": ...}` with the right status, and readable reasons."""

import base64
import binascii
import json
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError

from spillway.errors import SpillwayError
from spillway.models import ApiError


def validation_message(exc: RequestValidationError) -> str:
    """One line a person can act on: where each problem is and what is wrong there."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()))
        if error.get("type") == "json_invalid":
            problems.append("the body is not valid JSON")
        else:
            problems.append(f"{where}: {error.get('msg') or error.get('type')}")
    return "invalid request: " + "; ".join(problems)


def error_response(status: int, message: str) -> Response:
    return Response(
        status_code=status, content_type=content_types.APPLICATION_JSON,
        body=ApiError(message=message).model_dump_json(),
    )


def unreadable_body(event: dict[str, Any]) -> dict[str, Any] | None:
    """The answer to a request whose body is not JSON a route could read, or None. Checked before the
    resolver, whose parser lets non-UTF-8 text, huge integers and deep nesting escape as a 500."""
    body = event.get("body")
    if not body:
        return None
    content_type = ({k.lower(): v for k, v in (event.get("headers") or {}).items()}.get("content-type") or "")
    media_type = content_type.split(";")[0].strip().lower()
    if media_type not in ("", "application/json"):
        # Most often curl's `-d`, which declares a form: say how to fix it, not which fields look odd.
        return _proxy_error(415, f"send the body as JSON with Content-Type: application/json, not {media_type!r}")
    try:
        text = base64.b64decode(body, validate=True).decode() if event.get("isBase64Encoded") else body
    except (binascii.Error, UnicodeDecodeError):
        return _proxy_error(415, "the body is not UTF-8: send JSON encoded as UTF-8")
    try:
        json.loads(text)
    except RecursionError:
        return _proxy_error(422, "the body is not valid JSON: it is nested too deeply")
    except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
        return _proxy_error(422, f"the body is not valid JSON: {exc}")
    return None


def _proxy_error(status: int, message: str) -> dict[str, Any]:
    """An error as a Lambda proxy answer, for checks made before the resolver runs."""
    return {"statusCode": status, "headers": {"Content-Type": content_types.APPLICATION_JSON},
            "body": ApiError(message=message).model_dump_json(), "isBase64Encoded": False}


def answer_errors_with_reasons(app: APIGatewayHttpResolver) -> None:
    """Invalid requests get 422 with what is wrong; domain errors their own status and message."""

    @app.exception_handler(RequestValidationError)
    def invalid_request(exc: RequestValidationError) -> Response:
        return error_response(422, validation_message(exc))

    @app.exception_handler(SpillwayError)
    def domain_error(exc: SpillwayError) -> Response:
        return error_response(exc.status, str(exc))
