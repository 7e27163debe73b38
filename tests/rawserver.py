"""A raw HTTP server for the compiled sender's tests: one thread per connection, each request's
answer written by the test byte for byte (framings, resets, answers before the body)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Peer:
    """One connection of the raw server: what it has read past the last head, and the socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, b""

    def head(self) -> bytes | None:
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        return head

    def body(self, n: int) -> int:
        """Reads the n bytes of a body (fewer if the client closes); how many."""
        got = min(n, len(self.buf))
        self.buf = self.buf[got:]
        while got < n:
            chunk = self.sock.recv(min(65536, n - got))
            if not chunk:
                break
            got += len(chunk)
        return got


@contextmanager
def raw_server(answer: Callable[[Peer, int, bytes], bool]) -> Iterator[str]:
    """A thread serving each connection: `answer(peer, n, request_head)` for its n-th request
    (0-based) writes what it likes to peer.sock; False closes the connection."""
    lsock = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve_conn(sock: socket.socket) -> None:
        peer, n = Peer(sock), 0
        with sock:
            while not stop.is_set():
                head = peer.head()
                if head is None or not answer(peer, n, head):
                    return
                n += 1

    def accept() -> None:
        lsock.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve_conn, args=(conn,), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{lsock.getsockname()[1]}"
    finally:
        stop.set()
        t.join(5)
        lsock.close()
