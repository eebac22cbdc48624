"""The request handler of the embedded stack's HTTP servers (moto's, the runtime's, the chaos switchboard's,
the FaaS provider's): werkzeug's, with keep-alive connections and TCP_NODELAY.

werkzeug's development server answers every request with `Connection: close` (http.server cannot tell where
an unread request body ends), so every AWS call of a handler or of the Step Functions interpreter opened a TCP
connection, and the server a thread, of its own. Here the body is read whole, by its Content-Length, before
the application runs, and the answer is sent with its length: the connection is then ready for the next
request. A chunked request is left to werkzeug's own handling (which closes the connection).
"""

from __future__ import annotations

import gc
import io
import traceback
from typing import Any

from werkzeug.exceptions import InternalServerError
from werkzeug.serving import WSGIRequestHandler

_HOP_BY_HOP = ("connection", "keep-alive", "transfer-encoding")
# The cyclic collector's thresholds for the embedded stack's long-running processes (Python's: 700, 10, 10).
GC_THRESHOLDS = (50_000, 20, 100)


def collect_less_often() -> None:
    """Tune the cyclic garbage collector of a process that serves many small requests over a large heap (moto's
    tables, botocore's models): with Python's thresholds a full collection walked that heap every few seconds
    under load and a young one ran every 700 allocations (a third of a backend UpdateItem's CPU, measured). What
    the process holds so far is frozen out of the collector (modules, models: never garbage), and the young
    generations are collected less often; the garbage of a request is still freed by reference counting."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class KeepAliveRequestHandler(WSGIRequestHandler):
    # Without TCP_NODELAY, an answer written in more than one piece waits for the client's delayed ACK
    # (~40 ms) on a reused connection (Nagle's algorithm).
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"

    def run_wsgi(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return super().run_wsgi()  # werkzeug dechunks the body, answers, closes the connection
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.send_error(400, "Bad Content-Length")
            return None
        if self.headers.get("Expect", "").lower().strip(" \t") == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = self.rfile.read(length) if length > 0 else b""
        self.environ = environ = self.make_environ()
        environ["wsgi.input"] = io.BytesIO(body)

        status, headers, data = self._call_app(environ)
        code, _, reason = status.partition(" ")
        self.send_response(int(code), reason)
        named = set()
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP:  # this server's to set
                self.send_header(name, value)
                named.add(name.lower())
        if "content-length" not in named and self.command != "HEAD" and int(code) >= 200 \
                and int(code) not in (204, 304):
            self.send_header("Content-Length", str(len(data)))
        if self.close_connection:  # the client asked (HTTP/1.0, or `Connection: close`)
            self.send_header("Connection", "close")
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()
        return None

    def _call_app(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        """The application's whole answer: status, headers, body (the embedded apps answer from memory)."""
        started: list[Any] = []
        chunks: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            started[:] = [status, headers]  # nothing is sent yet: a later call (with exc_info) replaces it
            chunks.clear()
            return chunks.append

        try:
            answer = self.server.app(environ, start_response)
            try:
                chunks.extend(answer)
            finally:
                if hasattr(answer, "close"):
                    answer.close()
            return started[0], started[1], b"".join(chunks)
        except Exception:
            if self.server.passthrough_errors:
                raise
            self.server.log("error", f"Error on request:\n{traceback.format_exc()}")
            self.close_connection = True
            response = InternalServerError().get_response(environ)
            return response.status, list(response.headers.items()), response.get_data()
