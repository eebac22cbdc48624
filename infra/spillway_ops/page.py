"""The ops page: server-rendered HTML (no front-end build), read-only over AWS APIs (see `source`).

  /jobs[?status=FAILED]   recent jobs: status, service, priority, segment, pools tried, total time, cost
  /jobs/{job_id}          its execution graph with the path lit, attempts, event timeline, input and result
  /jobs/{job_id}/graph.svg (or .png)
  /fleet                  every GPU, the waiting rooms by pool and priority, FaaS spend against its budget

Lists refresh themselves every few seconds, as does the page of a job still open.
"""

from __future__ import annotations

import html
import logging
import traceback
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from pydantic import TypeAdapter, ValidationError
from werkzeug.exceptions import BadRequest, HTTPException, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from spillway.models import JobId, JobStatus, Priority
from spillway.waiting_room import RoomLine
from spillway_ops.graph import MissingGraphviz, render
from spillway_ops.source import Source
from spillway_ops.views import (
    ROOM_POOLS,
    FleetView,
    JobDetail,
    JobLine,
    fleet_view,
    job_detail,
    recent_jobs,
    state_graph,
)

log = logging.getLogger("spillway.ops")
REFRESH_S = 5
_JOB_ID = TypeAdapter(JobId)

ROUTES = Map([
    Rule("/", endpoint="home"),
    Rule("/jobs", endpoint="jobs"),
    Rule("/jobs/<job_id>", endpoint="job"),
    Rule("/jobs/<job_id>/graph.<any(svg, png):fmt>", endpoint="graph"),
    Rule("/fleet", endpoint="fleet"),
])


class OpsPage:
    """A WSGI app over one stack."""

    def __init__(self, source: Source):
        self.source = source

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        try:
            endpoint, arguments = ROUTES.bind_to_environ(environ).match()
            response = getattr(self, f"_{endpoint}")(request, **arguments)
        except HTTPException as refused:
            response = _page(f"{refused.code} {refused.name}", f"<p>{_e(refused.description)}</p>",
                             status=refused.code or 400)
        except Exception:
            log.error("ops page %s failed\n%s", request.path, traceback.format_exc())
            response = _page("error", f"<pre>{_e(traceback.format_exc(limit=3))}</pre>", status=500)
        return response(environ, start_response)

    def _home(self, request: Request) -> Response:
        return Response(status=302, headers={"Location": "/jobs"})

    def _jobs(self, request: Request) -> Response:
        wanted = request.args.get("status") or None
        if wanted is not None and wanted not in JobStatus.__members__.values():
            raise BadRequest(f"status is one of {', '.join(JobStatus)}, not {wanted!r}")
        lines = recent_jobs(self.source, JobStatus(wanted) if wanted else None)
        filters = " ".join(
            f'<a class="filter{" on" if (s or None) == wanted else ""}" href="/jobs{f"?status={s}" if s else ""}">'
            f'{s or "all"}</a>' for s in ["", *JobStatus])
        rows = "".join(_job_row(line) for line in lines) or '<tr><td colspan="9">no jobs</td></tr>'
        body = (f'<p class="filters">{filters}</p><table id="jobs"><thead><tr><th>job</th><th>status</th>'
                "<th>service</th><th>priority</th><th>segment</th><th>pools tried</th><th>total</th><th>cost</th>"
                f"<th>submitted</th></tr></thead><tbody>{rows}</tbody></table>")
        return _page("jobs", body, refresh=True)

    def _job(self, request: Request, job_id: str) -> Response:
        detail = self._detail(job_id)
        return _page(f"job {job_id}", _job_body(detail, self._svg(detail)), refresh=not detail.job.status.final)

    def _graph(self, request: Request, job_id: str, fmt: str) -> Response:
        detail = self._detail(job_id)
        drawn = render(state_graph(self.source), detail.path, fmt=fmt)
        return Response(drawn, content_type="image/svg+xml" if fmt == "svg" else "image/png")

    def _detail(self, job_id: str) -> JobDetail:
        """A job's detail, or a 404; an id of another shape is not looked up (DynamoDB refuses a key over
        2 KB with a 400 of its own, which would be this page's 500)."""
        try:
            _JOB_ID.validate_python(job_id)
        except ValidationError:
            raise NotFound(f"no job {job_id[:80]}: a job id is j- and 32 hex digits") from None
        detail = job_detail(self.source, job_id)
        if detail is None:
            raise NotFound(f"no job {job_id}")
        return detail

    def _fleet(self, request: Request) -> Response:
        return _page("fleet", _fleet_body(fleet_view(self.source)), refresh=True)

    def _svg(self, detail: JobDetail) -> str:
        try:
            svg = render(state_graph(self.source), detail.path).decode()
        except MissingGraphviz as missing:
            return f'<p class="missing">{_e(str(missing))}</p>'
        return svg[svg.index("<svg"):]  # inline: the page's CSS lights it, the current state pulses


def serve(source: Source, host: str = "127.0.0.1", port: int = 0) -> Any:
    """A server (not yet serving: call `serve_forever`); port 0 picks a free one."""
    return make_server(host, port, OpsPage(source), threaded=True)


# ---------------------------------------------------------------- rendering


def _e(text: Any) -> str:
    return html.escape(str(text))


def _status(status: str) -> str:
    return f'<span class="status {_e(status.lower())}">{_e(status)}</span>'


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 60:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min" if value < 3600 else f"{value / 3600:.1f} h"


def _ms(value: int | None) -> str:
    return "–" if value is None else _seconds(value / 1000)


def _usd(value: float) -> str:
    return f"${value:.4f}"


def _job_row(line: JobLine) -> str:
    job = line.job
    segment = " / ".join(str(v) for v in job.segment.model_dump().values() if v) or "–"
    return (f'<tr data-job="{_e(job.job_id)}"><td><a href="/jobs/{_e(job.job_id)}">{_e(job.job_id)}</a></td>'
            f"<td>{_status(job.status.value)}</td><td>{_e(job.service)}</td><td>{_e(job.priority.value)}</td>"
            f"<td>{_e(segment)}</td><td>{_e(' → '.join(line.pools_tried) or '–')}</td>"
            f"<td>{_seconds(line.total_s)}</td><td>{_usd(job.cost_usd)}</td><td>{_e(job.created_at[:19])}</td></tr>")


def _job_body(detail: JobDetail, svg: str) -> str:
    job = detail.job
    attempts = "".join(
        f'<tr class="attempt {_e(a.outcome or "open")}"><td>{a.number}</td><td>{_e(a.pool.value)}</td>'
        f"<td>{_e(a.gpu_id or '–')}</td><td>{_e(a.route or '')}</td><td>{_ms(a.wait_ms)}</td><td>{_ms(a.run_ms)}</td>"
        f"<td>{_e(a.outcome or 'open')}</td><td>{_e(a.error or '')}</td><td>{_e(a.reason or '')}</td>"
        f"<td>{_usd(a.cost_usd)}</td></tr>" for a in job.attempts) or '<tr><td colspan="10">none yet</td></tr>'
    start = detail.events[0].at if detail.events else None
    timeline = "".join(
        f"<tr><td>{_e(e.at.astimezone(UTC).strftime('%H:%M:%S.%f')[:-3])}</td>"
        f"<td>+{(e.at - start).total_seconds():.2f} s</td><td>{_e(e.kind)}</td><td>{_e(e.state)}</td>"
        f"<td>{_e(e.detail)}</td></tr>" for e in detail.events) if start else ""
    execution = detail.path.status if detail.path else "not started: waiting in its intake queue"
    result = f'<figure><img src="{_e(job.result_url)}" alt="result"><figcaption>result</figcaption></figure>' \
        if job.result_url else ""
    segment = " / ".join(str(v) for v in job.segment.model_dump().values() if v) or "–"
    return f"""
<p class="facts">{_status(job.status.value)} <b>{_e(job.service)}</b> · {_e(job.priority.value)} priority ·
 segment {_e(segment)} · {_e(job.width)}×{_e(job.height)} · submitted {_e(job.created_at[:19])} ·
 deadline {_e((job.deadline_at or '–')[:19])} · cost {_usd(job.cost_usd)} · execution {_e(execution)}
 {f'<br><span class="error">{_e(job.error)}</span>' if job.error else ''}</p>
<div class="job">
 <section class="graph"><h2>execution graph</h2>{svg}
  <p class="legend"><span class="succeeded">succeeded</span> <span class="failed">failed</span>
  <span class="running">current</span> · a red border: an earlier visit failed ·
  <a href="/jobs/{_e(job.job_id)}/graph.svg">SVG</a>
  <a href="/jobs/{_e(job.job_id)}/graph.png">PNG</a></p></section>
 <section class="images"><h2>input and result</h2>
  <figure><img src="{_e(detail.input_url)}" alt="input"><figcaption>input</figcaption></figure>{result}</section>
</div>
<h2>attempts</h2>
<table id="attempts"><thead><tr><th>#</th><th>pool</th><th>GPU</th><th>routed because</th><th>wait</th><th>run</th>
<th>outcome</th><th>error</th><th>reason</th><th>cost</th></tr></thead><tbody>{attempts}</tbody></table>
<h2>event timeline</h2>
<table id="timeline"><thead><tr><th>at (UTC)</th><th></th><th>event</th><th>state</th><th>detail</th></tr></thead>
<tbody>{timeline}</tbody></table>"""


def _fleet_body(view: FleetView) -> str:
    rows = []
    for line in view.gpus:
        gpu = line.gpu
        health = f'<td class="health {_e(line.health.state.value)}" title="{_e(line.health.reason)}">' \
                 f'{_e(line.health.state.value)}</td><td>{_e(line.health.reason)}</td>'
        tasks = " ".join(f'<a href="/jobs/{_e(t.job_id)}">{_e(t.job_id[:10])}…</a> ({_e(t.state.value)})'
                         for t in line.tasks) or "–"
        used = gpu.vram_total_mb - gpu.vram_free_mb
        rows.append(
            f'<tr data-gpu="{_e(gpu.gpu_id)}"><td>{_e(gpu.gpu_id)}</td><td>{_e(gpu.pool.value)}</td>{health}'
            f"<td>{used} / {gpu.vram_total_mb} MB</td><td>{gpu.compute_total - gpu.compute_free} / "
            f"{gpu.compute_total}%</td><td>{gpu.running} / {gpu.slots}</td>"
            f"<td>{tasks}</td><td>{_seconds(line.heartbeat_age_s)} ago</td></tr>")
    rooms = "".join(
        f"<tr><td>{_e(pool.value)}</td>" + "".join(
            f"<td>{line.count}" + (f" · oldest {_seconds(line.oldest_s)}" if line.count else "") + "</td>"
            for line in (view.rooms[pool].get(p, RoomLine()) for p in Priority)) + "</tr>"
        for pool in ROOM_POOLS)
    queues = "".join(
        f'<tr class="{"alert" if "dead" in q.name and q.visible + q.in_flight else ""}"><td>{_e(q.name)}</td>'
        f"<td>{q.visible}</td><td>{q.in_flight}</td></tr>" for q in view.queues)
    budget = view.faas_budget_usd
    share = min(100.0, 100 * (view.faas_spent_usd + view.faas_reserved_usd) / budget) if budget else 0.0
    return f"""
<h2>GPUs</h2>
<table id="gpus"><thead><tr><th>GPU</th><th>pool</th><th>health</th><th>why</th>
<th>VRAM in use</th><th>compute in use</th><th>slots in use</th><th>running tasks</th><th>last heartbeat</th>
</tr></thead>
<tbody>{''.join(rows) or '<tr><td colspan="10">no GPU has registered</td></tr>'}</tbody></table>
<h2>waiting rooms</h2>
<table id="rooms"><thead><tr><th>pool</th>{''.join(f'<th>{_e(p.value)}</th>' for p in Priority)}</tr></thead>
<tbody>{rooms}</tbody></table>
<h2>queues</h2>
<table id="queues"><thead><tr><th>queue</th><th>waiting</th><th>in flight</th></tr></thead><tbody>{queues}</tbody>
</table>
<h2>FaaS spend today</h2>
<p id="faas">{_usd(view.faas_spent_usd)} settled + {_usd(view.faas_reserved_usd)} reserved of a
${budget:g} daily budget
<span class="bar"><span style="width:{share:.1f}%"></span></span></p>"""


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 1.5rem 2rem;color:#212121}
nav{display:flex;gap:1.2rem;align-items:baseline;border-bottom:1px solid #e0e0e0;padding:.7rem 0;margin-bottom:1rem}
nav b{font-size:16px} nav a{color:#1565c0;text-decoration:none} h1{font-size:18px} h2{font-size:15px;margin-top:1.4rem}
table{border-collapse:collapse;width:100%} th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #eee;
vertical-align:top} th{background:#fafafa;font-weight:600}
.status{padding:.05rem .45rem;border-radius:.6rem;font-size:12px;background:#eee}
.status.succeeded{background:#c8e6c9}.status.failed{background:#ffcdd2}.status.cancelled{background:#d7ccc8}.status.running{background:#fff59d}
.filters a{margin-right:.6rem}.filters a.on{font-weight:700;text-decoration:none;color:#212121}
.attempt.failed td{background:#fff5f5}.attempt.succeeded td{background:#f4fbf4}.attempt.spilled td{background:#fffbe6}
.job{display:flex;gap:2rem}.graph{flex:1 1 auto;min-width:0}.graph svg{width:100%;height:auto;max-height:760px}
.images{flex:0 0 320px}
.images img{max-width:320px;display:block;border:1px solid #ddd}figure{margin:0 0 1rem}
.legend span{padding:0 .4rem;border-radius:.3rem}.legend .succeeded{background:#c8e6c9}
.legend .failed{background:#ffcdd2}.legend .running{background:#fff59d}
.graph .node.running polygon,.graph .node.running path{animation:pulse 1s ease-in-out infinite alternate}
@keyframes pulse{from{stroke-width:2;opacity:1}to{stroke-width:6;opacity:.55}}
.bar{display:inline-block;width:200px;height:10px;background:#eee;vertical-align:middle;margin-left:.5rem}
.bar span{display:block;height:100%;background:#ef6c00}.error{color:#c62828}.missing{color:#c62828}
tr.alert td{background:#ffcdd2}.health.healthy{color:#2e7d32}.health.quarantined,.health.down{color:#c62828}
"""


def _page(title: str, body: str, *, refresh: bool = False, status: int = 200) -> Response:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if refresh else ""
    now = datetime.now(UTC).strftime("%H:%M:%S UTC")
    text = (f'<!doctype html><html><head><meta charset="utf-8">{meta}<title>{_e(title)} · Spillway ops</title>'
            f"<style>{STYLE}</style></head><body><nav><b>Spillway ops</b><a href=\"/jobs\">jobs</a>"
            f'<a href="/fleet">fleet</a><span style="margin-left:auto;color:#757575">{now}</span></nav>'
            f"<h1>{_e(title)}</h1>{body}</body></html>")
    return Response(text, status=status, content_type="text/html; charset=utf-8")
