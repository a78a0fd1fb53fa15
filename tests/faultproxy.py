"""A TCP proxy on 127.0.0.1 that can pass, refuse, delay or black-hole connections (storage-fault tests).

`FaultProxy(target_port)` listens on a free loopback port and forwards each connection to
127.0.0.1:target_port according to `mode`, settable at any time:
  "pass"       forward both ways;
  "refuse"     close each new connection at once (a refused / reset endpoint);
  "blackhole"  accept, read and never answer (connections hang until the client gives up);
  "delay"      forward, each chunk held `delay_s` seconds first.
Established connections follow the mode too: switching to "blackhole" stalls them mid-request. Every
thread is a daemon and `close()` stops the listener; nothing leaves the loopback interface.
"""
from __future__ import annotations

import socket
import threading
import time


class FaultProxy:
    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.mode, self.delay_s = "pass", 0.0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.closed = True
        self.server.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.mode == "refuse":
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
        self._pipe(upstream, client)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self.closed:
                data = src.recv(65536)
                if not data:
                    break
                while self.mode == "blackhole" and not self.closed:
                    time.sleep(0.05)
                if self.mode == "delay":
                    time.sleep(self.delay_s)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.close()
                except OSError:
                    pass
