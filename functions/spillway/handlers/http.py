"""What the HTTP handlers share: errors as `{"message": ...}` with the right status, and readable reasons."""

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


def answer_errors_with_reasons(app: APIGatewayHttpResolver) -> None:
    """Invalid requests get 422 with what is wrong; domain errors their own status and message."""

    @app.exception_handler(RequestValidationError)
    def invalid_request(exc: RequestValidationError) -> Response:
        event = app.current_event
        content_type = (event.headers.get("content-type") or "").split(";")[0].strip().lower()
        if event.body and content_type not in ("", "application/json"):
            # Most often curl's `-d`, which declares a form: say how to fix it, not which fields look odd.
            return error_response(415, f"send the body as JSON with Content-Type: application/json, "
                                       f"not {content_type!r}")
        return error_response(422, validation_message(exc))

    @app.exception_handler(SpillwayError)
    def domain_error(exc: SpillwayError) -> Response:
        return error_response(exc.status, str(exc))
