"""A loopback TCP proxy that can lose an answer: it forwards a request to the
server, lets the server answer (so whatever the request did is committed),
and closes the client's connection instead of passing the answer on.

Threads and blocking sockets, so it serves blocking and Twisted clients alike.
"""
from __future__ import annotations

import socket
import threading
from typing import Optional


class DroppingProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        #: Answers still to drop (the next connections' first answers).
        self.drop = 0
        #: Answers dropped so far.
        self.dropped = 0
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                drop = self.drop > 0
                if drop:
                    self.drop -= 1
            server = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, drop), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, drop: Optional[bool]) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if drop:
                    # The server answered: the client never hears of it.
                    with self._lock:
                        self.dropped += 1
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
