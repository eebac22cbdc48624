"""What every log line about a job carries, so one filter shows its whole story across functions."""


def job_keys(job_id: str) -> dict[str, str]:
    """The job id, also as Powertools' correlation id: `{ $.job_id = "..." }` and `{ $.correlation_id = "..." }`
    find the same lines, in every function's log group and the agents' output."""
    return {"job_id": job_id, "correlation_id": job_id}
