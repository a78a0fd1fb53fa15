"""A TCP proxy on 127.0.0.1 that can pass, refuse, delay, black-hole or slow down requests (storage-fault tests).

`FaultProxy(target_port)` listens on a free loopback port and forwards each connection to
127.0.0.1:target_port according to `mode`, settable at any time:
  "pass"       forward both ways;
  "refuse"     close each new connection at once (a refused / reset endpoint);
  "blackhole"  accept, read and never answer (connections hang until the client gives up);
  "delay"      forward, each chunk held `delay_s` seconds first;
  "slowdown"   answer each request with S3's `503 Slow Down` (its XML error body), then close.
Established connections follow the mode too: switching to "blackhole" stalls them mid-request, to
"refuse" resets them at their next chunk, to "slowdown" answers their next request.

`outage(mode, seconds, on=PATTERN)` arms a timed outage that starts when a request line holding
PATTERN arrives (that request meets it too) and ends `seconds` later (mode "pass" again): a test can
place an outage exactly, say at a run's first ledger record. `faulted_at` is when the latest outage
began (time.monotonic), however it was started. Every thread is a daemon and `close()` stops the
listener; nothing leaves the loopback interface.
"""
from __future__ import annotations

import socket
import threading
import time

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code><Message>Please reduce '
             b'your request rate.</Message><RequestId>faultproxy</RequestId></Error>')


class FaultProxy:
    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self._mode, self.delay_s = "pass", 0.0
        self.faulted_at: float | None = None
        self.armed: tuple[str, float, bytes] | None = None
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in ("pass", "delay") and self._mode != mode:
            self.faulted_at = time.monotonic()
        self._mode = mode

    def outage(self, mode: str, seconds: float, on: bytes) -> None:
        """Switch to `mode` for `seconds` when a request line holding `on` next arrives."""
        self.armed = (mode, seconds, on)

    def close(self) -> None:
        self.closed = True
        self.server.close()

    def _trigger(self, data: bytes) -> None:
        armed = self.armed
        if armed and armed[2] in data.split(b"\r\n", 1)[0]:
            self.armed = None
            self.mode = armed[0]
            timer = threading.Timer(armed[1], lambda: setattr(self, "mode", "pass"))
            timer.daemon = True
            timer.start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.mode == "refuse":
                _reset(client)
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
        self._pipe(upstream, client, False)

    def _pipe(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        """Forward `src` to `dst`; `requests`: `src` is the client (its chunks start requests)."""
        try:
            while not self.closed:
                data = src.recv(65536)
                if not data:
                    break
                if requests:
                    self._trigger(data)
                    if self.mode == "refuse":
                        _reset(src)
                        break
                    if self.mode == "slowdown":
                        _slow_down(src, data)
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


def _reset(sock: socket.socket) -> None:
    """Close `sock` with a TCP reset (SO_LINGER 0), as a refusing endpoint does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def _slow_down(client: socket.socket, data: bytes) -> None:
    """Read the rest of the request that `data` starts (headers, then a Content-Length body unless it
    expects 100-continue), answer `503 Slow Down` with S3's XML error body, and close."""
    client.settimeout(5)
    while b"\r\n\r\n" not in data:
        more = client.recv(65536)
        if not more:
            return
        data += more
    head, body = data.split(b"\r\n\r\n", 1)
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])}
    if headers.get(b"expect", b"").lower() != b"100-continue":
        length = int(headers.get(b"content-length", b"0"))
        while len(body) < length:
            more = client.recv(65536)
            if not more:
                break
            body += more
    payload = b"" if head.startswith(b"HEAD ") else SLOW_DOWN
    client.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nx-amz-request-id: faultproxy\r\n"
                   b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(SLOW_DOWN), payload))
