"""A TCP proxy standing for a GPU's network path (the office tunnel, the cloud's network), with switches.

A link is lost in one of two ways, and a cut models either:

- **refused** (`CutMode.REFUSE`): the link is down and says so, as a tunnel agent that notices does.
  Every open connection is reset (RST) and new ones are refused at once: a push through it, even one
  already waiting for its answer, fails in milliseconds.
- **silent** (`CutMode.SILENT`): packets vanish. Connections are still accepted, but nothing crosses the
  link: a call hangs until its caller's own timeout. What was sent meanwhile is held, and flows on once
  the link is restored, as TCP's retransmissions would deliver it (an idle keep-alive connection survives
  a short outage).

Broken, it answers every request with a 502, as a proxy in front of a crashed model server does:
reachable, but failing.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from enum import StrEnum


class CutMode(StrEnum):
    REFUSE = "refuse"  # every call, new or in flight, fails at once (reset)
    SILENT = "silent"  # every call hangs until its caller's timeout


class Tunnel:
    def __init__(self, listen: tuple[str, int] = ("127.0.0.1", 0), target: tuple[str, int] | None = None):
        self.target = target  # may be set after start(): the agent behind learns its port late
        self._listener = socket.create_server(listen)
        self._listener.settimeout(0.2)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._state = threading.Condition()  # guards the switches below; notified when they change
        self._cut: CutMode | None = None
        self._broken = False
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
        with self._state:
            self._stopping.set()
            self._state.notify_all()  # connections held by a silent cut end now
        self._reset_all()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=5)
        self._listener.close()

    # ---- chaos

    def cut(self, mode: CutMode = CutMode.REFUSE) -> None:
        with self._state:
            self._cut = mode
            self._state.notify_all()  # a silent cut turned refused: what it held is reset below
        if mode is CutMode.REFUSE:
            self._reset_all()

    def break_(self) -> None:
        with self._state:
            self._broken = True
        self._reset_all()

    def restore(self) -> None:
        with self._state:
            self._cut, self._broken = None, False
            self._state.notify_all()  # what a silent cut held flows on

    @property
    def is_cut(self) -> bool:
        return self._cut is not None

    @property
    def cut_mode(self) -> CutMode | None:
        return self._cut

    @property
    def is_broken(self) -> bool:
        return self._broken

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
            with self._lock:
                self._open.add(client)  # from now on a refused cut or stop() resets it, even while held
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        # The handshake's answer "vanished" while silent: the caller waits for its timeout.
        passes = self._pass_when_open()
        with self._state:
            broken, target = self._broken, self.target
        if not passes or target is None:
            self._drop(client)
            return
        if broken:
            self._forget(client)
            _answer_502(client)
            return
        try:
            upstream = socket.create_connection(target, timeout=2)
        except OSError:
            self._drop(client)
            return
        for sock in (client, upstream):
            sock.settimeout(None)
            # A proxy forwards each chunk as it comes: with Nagle, a response's second write (its body)
            # would wait for the peer's delayed ACK of the first, ~40 ms per request on a reused connection.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            alive = client in self._open  # not reset by a cut meanwhile
            if alive:
                self._open.add(upstream)
        if not alive:
            _reset(upstream)
            return
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                if self._latency:
                    time.sleep(self._latency)
                if not self._pass_when_open():  # refused meanwhile: what the silent link held is lost
                    raise ConnectionResetError("the link was cut")
                sink.sendall(chunk)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            _reset(sink)
        finally:
            self._forget(source)
            with contextlib.suppress(OSError):
                source.close()

    def _pass_when_open(self) -> bool:
        """Hold what crosses the link while it is silent; then whether it may pass: not if the cut turned
        refused or the tunnel is stopping (checked as the hold ends, so a held chunk never slips through
        between a refused cut's switch and its resets)."""
        with self._state:
            self._state.wait_for(lambda: self._cut is not CutMode.SILENT or self._stopping.is_set())
            return self._cut is None and not self._stopping.is_set()

    def _forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)

    def _drop(self, sock: socket.socket) -> None:
        self._forget(sock)
        _reset(sock)

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
    """Close with RST rather than FIN: the peer sees 'connection reset', like a dropped link, at once.

    close() alone does neither while another thread is blocked in recv() on the socket (the kernel keeps
    it open under that call, and the peer hears nothing until its own timeout): shutting the read side
    first wakes that thread, and the socket's last close, with SO_LINGER 0, sends the reset.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()
