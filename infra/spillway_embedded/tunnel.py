"""A TCP proxy standing for a GPU's network path (the office tunnel, the cloud's network), with switches.

Cut, it resets every open connection and refuses new ones at once: a push through it fails in
milliseconds, as a dropped link with a tunnel agent that notices does. Broken, it answers every
request with a 502, as a proxy in front of a crashed model server does: reachable, but failing.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time


class Tunnel:
    def __init__(self, listen: tuple[str, int] = ("127.0.0.1", 0), target: tuple[str, int] | None = None):
        self.target = target  # may be set after start(): the agent behind learns its port late
        self._listener = socket.create_server(listen)
        self._listener.settimeout(0.2)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._cut = threading.Event()
        self._broken = threading.Event()
        self._stopping = threading.Event()
        self._latency = 0.0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, name=f"tunnel-{self.address[1]}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.address[0]}:{self.address[1]}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._reset_all()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=5)
        self._listener.close()

    # ---- chaos

    def cut(self) -> None:
        self._cut.set()
        self._reset_all()

    def break_(self) -> None:
        self._broken.set()
        self._reset_all()

    def restore(self) -> None:
        self._cut.clear()
        self._broken.clear()

    @property
    def is_cut(self) -> bool:
        return self._cut.is_set()

    @property
    def is_broken(self) -> bool:
        return self._broken.is_set()

    def set_latency(self, seconds: float) -> None:
        self._latency = seconds

    # ---- plumbing

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._cut.is_set() or self.target is None:
                _reset(client)
                continue
            if self._broken.is_set():
                threading.Thread(target=_answer_502, args=(client,), daemon=True).start()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                _reset(client)
                continue
            for sock in (client, upstream):
                sock.settimeout(None)
                # A proxy forwards each chunk as it comes: with Nagle, a response's second write (its body)
                # would wait for the peer's delayed ACK of the first, ~40 ms per request on a reused connection.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._open |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                if self._latency:
                    time.sleep(self._latency)
                sink.sendall(chunk)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            _reset(sink)
        finally:
            with self._lock:
                self._open.discard(source)
            with contextlib.suppress(OSError):
                source.close()

    def _reset_all(self) -> None:
        with self._lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            _reset(sock)


def _answer_502(client: socket.socket) -> None:
    """Read one whole request (head and Content-Length body: a client still sending would see a reset) and
    answer 502, then close."""
    with contextlib.suppress(OSError):
        client.settimeout(2)
        received = b""
        while b"\r\n\r\n" not in received and (chunk := client.recv(65536)):
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length and (chunk := client.recv(65536)):
            body += chunk
        answer = b'{"message": "bad gateway: the model server behind is down"}'
        client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: application/json\r\nConnection: close\r\n"
                       b"Content-Length: " + str(len(answer)).encode() + b"\r\n\r\n" + answer)
        client.shutdown(socket.SHUT_WR)
    with contextlib.suppress(OSError):
        client.close()


def _reset(sock: socket.socket) -> None:
    """Close with RST rather than FIN: the peer sees 'connection reset', like a dropped link."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()
