"""The ops page over the template's resources in moto (no browser): every value that comes from a job is
escaped, and bad input is a 4xx with its reason, never a 5xx."""

from __future__ import annotations

import html
import json

import pytest
from werkzeug.test import Client

from spillway import aws
from spillway_ops.page import OpsPage
from spillway_ops.source import Source

from conftest import REGION, Cloud
from test_state_machine import submitted_job

HOSTILE = '<script>alert("x")</script>'


@pytest.fixture
def page(cloud: Cloud) -> Client:
    return Client(OpsPage(Source(dict(cloud.physical), REGION)))


def test_every_value_from_a_job_is_escaped(cloud: Cloud, page: Client) -> None:
    job = submitted_job(cloud)
    attempt = {"pool": "local", "route": HOSTILE, "started_at": "2026-01-01T00:00:00.000+00:00",
               "ended_at": "2026-01-01T00:00:01.000+00:00", "outcome": "failed", "error": HOSTILE,
               "failure": '{"Error": "x", "Cause": "' + HOSTILE.replace('"', '\\"') + '"}', "gpu_id": HOSTILE}
    aws.table(cloud.settings.jobs_table).update_item(
        Key={"job_id": job.job_id}, UpdateExpression="SET attempts = :a, #e = :e, #s = :s",
        ExpressionAttributeNames={"#e": "error", "#s": "status"},
        ExpressionAttributeValues={":a": [attempt], ":e": HOSTILE, ":s": "FAILED"})
    for url in (f"/jobs/{job.job_id}", "/jobs", "/jobs?status=FAILED"):
        answer = page.get(url)
        assert answer.status_code == 200, (url, answer.text)
        assert "<script" not in answer.text, url
    assert answer.text.count(html.escape(HOSTILE)) == 0  # the list shows no free text of a job
    assert page.get(f"/jobs/{job.job_id}").text.count(html.escape(HOSTILE)) >= 5


@pytest.mark.parametrize("url", ["/jobs/" + "j" * 3000, "/jobs/" + "j" * 3000 + "/graph.svg", "/jobs/%00"])
def test_what_is_no_job_id_at_all_is_a_404_without_a_look_at_the_stack(url: str) -> None:
    """On AWS, DynamoDB refuses a key over 2 KB (a 400 of its own, moto does not): never asked, nothing to refuse."""
    answer = Client(OpsPage(Source({}, REGION))).get(url)  # a stack with no resources: any read is a 500
    assert answer.status_code == 404, answer.text
    assert "a job id is j- and 32 hex digits" in answer.text


def test_a_job_that_is_not_there_is_a_404(page: Client) -> None:
    for url in ("/jobs/j-" + "0" * 32, "/jobs/j-" + "0" * 32 + "/graph.png"):
        answer = page.get(url)
        assert answer.status_code == 404 and "no job" in answer.text, answer.text


def test_a_bad_filter_is_a_400_that_names_the_statuses(page: Client) -> None:
    answer = page.get("/jobs?status=DONE")
    assert answer.status_code == 400 and "SUCCEEDED" in answer.text and "&#x27;DONE&#x27;" in answer.text


def test_the_fleet_page_shows_the_faas_budget_the_stack_routes_by_now(cloud: Cloud, page: Client) -> None:
    """The SSM parameter's overrides over the rules file, as the functions read them; not the file's alone."""
    cloud.client("ssm").put_parameter(Name=cloud.physical["RoutingRulesParameter"], Overwrite=True,
                                      Value=json.dumps({"faas": {"daily_budget_usd": 7}}))
    answer = page.get("/fleet")
    assert answer.status_code == 200 and "of a\n$7 daily budget" in answer.text, answer.text
