"""What the HTTP handlers share: readable validation errors."""

from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError


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
