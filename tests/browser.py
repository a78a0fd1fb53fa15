"""Headless Chromium driven through the DevTools protocol over a pipe (`--remote-debugging-pipe`): no
driver binary, no websocket library, nothing downloaded. Chromium reads commands on its fd 3 and
writes replies and events on its fd 4, each a JSON message ended by a NUL byte.

    with Chromium() as browser:
        result = browser.load("file:///tmp/report.html")
        result.errors, result.requests, result.images, result.screenshot   # see PageLoad
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe", "--window-size=1400,1000", "--hide-scrollbars")
# Every image decodes (HTMLImageElement.decode() resolves) and has a size.
IMAGES_JS = """Promise.all([...document.images].map(img => img.decode().then(
    () => ({ok: img.naturalWidth > 0 && img.naturalHeight > 0, w: img.naturalWidth}),
    e => ({ok: false, error: String(e)}))))"""


def chromium_path() -> str | None:
    """$VIDFEAT_CHROMIUM, else the first of chromium / chromium-browser / google-chrome on PATH."""
    found = os.environ.get("VIDFEAT_CHROMIUM")
    return found or next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


@dataclass
class PageLoad:
    """What loading a page showed: console errors, exceptions and error log entries (`errors`), every
    URL requested (`requests`), per image {ok, w | error} (`images`), a PNG of the page (`screenshot`)."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    screenshot: bytes = b""


class Chromium:
    def __init__(self, binary: str | None = None, timeout_s: float = 60):
        self.binary, self.timeout_s = binary or chromium_path(), timeout_s
        self.next_id, self.buffer, self.events = 0, b"", []

    def __enter__(self) -> "Chromium":
        self.profile = tempfile.mkdtemp(prefix="vidfeat-chromium-")
        to_child, self.to_chrome = os.pipe()          # chromium reads fd 3
        self.from_chrome, to_parent = os.pipe()        # chromium writes fd 4

        def child_fds():                               # in the child, before exec: the pipes become fds 3 and 4
            a, b = os.dup(to_child), os.dup(to_parent)   # out of the way of 3 and 4 first
            os.dup2(a, 3)                              # dup2 makes them inheritable; the rest are close-on-exec
            os.dup2(b, 4)

        self.process = subprocess.Popen([self.binary, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                        preexec_fn=child_fds, close_fds=False,   # (close_fds would close 3, 4)
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(to_parent)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.send("Browser.close")
        except (OSError, TimeoutError):
            pass
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.to_chrome)
        os.close(self.from_chrome)
        shutil.rmtree(self.profile, ignore_errors=True)

    def load(self, url: str) -> PageLoad:
        """Open `url` in a new tab, wait for its load event, then check images and take a screenshot."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.events.clear()
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_event("Page.loadEventFired", session)
        result = PageLoad()
        images = self.send("Runtime.evaluate", {"expression": IMAGES_JS, "awaitPromise": True,
                                                "returnByValue": True}, session=session)
        result.images = images["result"].get("value") or []
        shot = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session)
        result.screenshot = base64.b64decode(shot["data"])
        result.errors = [_error(e) for e in self.events if _error(e)]
        result.requests = [e["params"]["request"]["url"] for e in self.events
                           if e.get("method") == "Network.requestWillBeSent"]
        return result

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """One command; returns its result (events that arrive meanwhile are kept in `events`)."""
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, session: str) -> dict:
        while True:
            for event in self.events:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event
            self.events.append(self._read())

    def _read(self) -> dict:
        deadline = time.monotonic() + self.timeout_s
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.from_chrome], [], [], left)[0]:
                raise TimeoutError(f"no message from chromium in {self.timeout_s} s")
            chunk = os.read(self.from_chrome, 1 << 16)
            if not chunk:
                raise OSError(f"chromium closed its pipe (exit code {self.process.poll()})")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)


def _error(event: dict) -> str | None:
    """The text of an event that is an error on the page (console error, exception, error log entry)."""
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        return "console: " + " ".join(str(a.get("value", a.get("description"))) for a in params.get("args", []))
    if method == "Runtime.exceptionThrown":
        return "exception: " + json.dumps(params.get("exceptionDetails", {}))[:500]
    if method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
        return "log: " + params["entry"].get("text", "")
    return None
