"""Load a built book in headless Chromium and report what a reader would see go wrong.

No browser-automation package is needed: Chromium is started with ``--remote-debugging-pipe``,
reads NUL-terminated JSON commands of the Chrome DevTools Protocol from its fd 3 and writes the
replies and events to its fd 4. The book is served over HTTP on 127.0.0.1 from a thread.
"""

import base64
import fcntl
import functools
import http.server
import json
import os
import select
import shutil
import signal
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

CHROMIUM = os.environ.get("XNN_LAB_CHROMIUM", "/usr/bin/chromium")

# Headless and offline: no sandbox (CI runs as root), no GPU, nothing fetched in the background.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
)

VIEWPORT = {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}

# Resolves once every <img> has loaded or failed, and once MathJax (if the page loaded it) has
# typeset the page or given up; before that, a missing image and a formula not yet rendered look
# alike. Lazy images would wait for a scroll that never comes.
SETTLE_JS = """
document.querySelectorAll('img[loading=lazy]').forEach(img => { img.loading = 'eager'; });
Promise.all([
  ...Array.from(document.images).map(img => img.complete ? null :
      new Promise(done => { img.addEventListener('load', done); img.addEventListener('error', done); })),
  window.MathJax && window.MathJax.startup && window.MathJax.startup.promise
      ? window.MathJax.startup.promise.catch(() => null) : null,
]).then(() => true)
"""

# What the reader sees, gathered in one evaluation after the page has settled.
REPORT_JS = r"""
(() => {
  const skip = new Set(['PRE', 'CODE', 'SCRIPT', 'STYLE', 'TEXTAREA', 'MJX-CONTAINER', 'NOSCRIPT']);
  const rawMath = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const mathLike = /\$\$|\\\(|\\\)|\\\[|\\\]|\\begin\{|\$[^$\n]*[\\^_][^$\n]*\$/;
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    let inside = false;
    for (let up = node.parentElement; up; up = up.parentElement) {
      if (skip.has(up.tagName)) { inside = true; break; }
    }
    if (!inside && mathLike.test(node.textContent)) rawMath.push(node.textContent.trim().slice(0, 120));
  }
  const mathElements = Array.from(document.querySelectorAll('.math'));
  return {
    title: document.title,
    images: Array.from(document.images).map(img => ({
      src: img.currentSrc || img.src, ok: img.complete && img.naturalWidth > 0})),
    links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
    ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id)
        .concat(Array.from(document.querySelectorAll('a[name]')).map(a => a.name)),
    sidebar: Array.from(document.querySelectorAll('nav.bd-docs-nav a[href]')).map(a => a.href),
    mathElements: mathElements.length,
    unrenderedMath: mathElements.filter(e => !e.querySelector('mjx-container'))
        .map(e => e.textContent.trim().slice(0, 120)),
    mjxContainers: document.querySelectorAll('mjx-container').length,
    rawMath: rawMath,
    // Code, printed output and display math wider than their box: cut at the right edge (or
    // behind a scrollbar that headless screenshots do not show).
    clipped: Array.from(document.querySelectorAll('div.highlight pre, mjx-container[display="true"]'))
        .filter(e => e.scrollWidth > e.clientWidth + 1)
        .map(e => `${e.scrollWidth - e.clientWidth} px too wide: ${e.textContent.trim().slice(0, 80)}`),
  };
})()
"""


class DevToolsError(RuntimeError):
    """A DevTools command failed, or Chromium stopped answering."""


@dataclass
class PageReport:
    """What loading one page showed: errors, images, math, links, anchors, the sidebar, clipped code."""

    url: str
    title: str
    console_errors: list
    images: list
    links: list
    ids: set
    sidebar: list
    math_elements: int
    unrendered_math: list
    mjx_containers: int
    raw_math: list
    clipped: list
    screenshot: Path | None = None

    @property
    def broken_images(self):
        return [image["src"] for image in self.images if not image["ok"]]


class Chromium:
    """A headless Chromium driven over the DevTools protocol on a pipe; use as a context manager."""

    def __init__(self, binary=CHROMIUM, timeout=60.0):
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="xnn-chromium-")
        self._buffer = b""
        self._next_id = 0
        self._events = []
        command_read, self._command_write = os.pipe()
        self._event_read, event_write = os.pipe()
        # Move the child's ends above fd 4 so that placing them on 3 and 4 cannot overwrite one.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (command_read, event_write)]
        os.close(command_read)
        os.close(event_write)
        self.log_path = Path(self._profile) / "chromium.log"
        with open(self.log_path, "wb") as log:
            # posix_spawn rather than subprocess: it places fds 3 and 4 without a preexec_fn,
            # which is unsafe while the HTTP server thread runs.
            self.pid = os.posix_spawn(
                binary,
                [binary, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}", "--remote-debugging-pipe",
                 "about:blank"],
                dict(os.environ),
                # The log first: its fd may be 3 or 4, which the pipes take next.
                file_actions=[(os.POSIX_SPAWN_DUP2, log.fileno(), 1), (os.POSIX_SPAWN_DUP2, log.fileno(), 2),
                              (os.POSIX_SPAWN_DUP2, high[0], 3), (os.POSIX_SPAWN_DUP2, high[1], 4)])
        for fd in high:
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Ask Chromium to quit, kill it if it does not, and delete its profile."""
        try:
            self.call("Browser.close", timeout=10)
        except (DevToolsError, OSError):
            pass
        deadline = time.monotonic() + 10
        while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                break
            time.sleep(0.1)
        os.close(self._command_write)
        os.close(self._event_read)
        shutil.rmtree(self._profile, ignore_errors=True)

    def call(self, method, params=None, session=None, timeout=None):
        """Send one command and return its result; events that arrive meanwhile are kept."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._command_write, data):]
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._receive(deadline, f"the reply to {method}")
            if reply.get("id") == message["id"]:
                if "error" in reply:
                    raise DevToolsError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def wait_for(self, method, session, timeout=None):
        """Wait for the event ``method`` of ``session`` (one already received counts)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for event in self._events:
                if event.get("method") == method and event.get("sessionId") == session:
                    self._events.remove(event)
                    return event["params"]
            self._events.append(self._receive(deadline, f"the event {method}"))

    def events(self, session):
        """Take every event received so far for ``session``."""
        taken = [event for event in self._events if event.get("sessionId") == session]
        self._events = [event for event in self._events if event.get("sessionId") != session]
        return taken

    def _receive(self, deadline, waiting_for):
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._event_read], [], [], left)[0]:
                raise DevToolsError(f"Chromium sent nothing in time while waiting for {waiting_for}; "
                                    f"its log: {self.log_path.read_text(errors='replace')[-2000:]}")
            chunk = os.read(self._event_read, 1 << 20)
            if not chunk:
                raise DevToolsError(f"Chromium closed the pipe while waiting for {waiting_for}; "
                                    f"its log: {self.log_path.read_text(errors='replace')[-2000:]}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def inspect(self, url, screenshot=None):
        """Load ``url`` in a fresh tab, let images and MathJax settle, and report what it shows.

        Args:
            url: the page to load.
            screenshot: where to save a full-page PNG, or None for none.

        Returns:
            PageReport of the page.
        """
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            for domain in ("Page", "Runtime", "Log"):
                self.call(f"{domain}.enable", session=session)
            self.call("Emulation.setDeviceMetricsOverride", VIEWPORT, session)
            navigation = self.call("Page.navigate", {"url": url}, session)
            if navigation.get("errorText"):
                raise DevToolsError(f"loading {url} failed: {navigation['errorText']}")
            self.wait_for("Page.loadEventFired", session)
            self._evaluate(SETTLE_JS, session)
            facts = self._evaluate(REPORT_JS, session)
            if screenshot is not None:
                self._screenshot(Path(screenshot), session)
            errors = [_describe(event) for event in self.events(session) if _is_error(event)]
        finally:
            self.call("Target.closeTarget", {"targetId": target})
        return PageReport(url=url, title=facts["title"], console_errors=errors, images=facts["images"],
                          links=facts["links"], ids=set(facts["ids"]), sidebar=facts["sidebar"],
                          math_elements=facts["mathElements"], unrendered_math=facts["unrenderedMath"],
                          mjx_containers=facts["mjxContainers"], raw_math=facts["rawMath"],
                          clipped=facts["clipped"], screenshot=screenshot)

    def landing(self, url, timeout=10.0):
        """Where loading ``url`` ends up once its redirects (such as a meta refresh) have run."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            self.call("Page.enable", session=session)
            self.call("Page.navigate", {"url": url}, session)
            self.wait_for("Page.loadEventFired", session)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    here = self._evaluate("location.href", session)
                except DevToolsError:  # asked while the redirect replaces the page
                    here = url
                if here != url:
                    return here
                time.sleep(0.1)
            return url
        finally:
            self.events(session)
            self.call("Target.closeTarget", {"targetId": target})

    def _evaluate(self, expression, session):
        result = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True}, session)
        if "exceptionDetails" in result:
            raise DevToolsError(f"evaluating a check failed: {result['exceptionDetails']}")
        return result["result"]["value"]

    def _screenshot(self, path, session):
        # A viewport as tall as the page: captureBeyondViewport alone shifts the theme's
        # sticky sidebars and header out of place.
        height = self.call("Page.getLayoutMetrics", session=session)["cssContentSize"]["height"]
        self.call("Emulation.setDeviceMetricsOverride", {**VIEWPORT, "height": int(height) + 1}, session)
        try:
            shot = self.call("Page.captureScreenshot", {"format": "png"}, session)
        finally:
            self.call("Emulation.setDeviceMetricsOverride", VIEWPORT, session)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))


def _is_error(event):
    """Chromium's severe entries: console.error/assert, uncaught exceptions, failed loads."""
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.consoleAPICalled":
        return params.get("type") in ("error", "assert")
    if method == "Runtime.exceptionThrown":
        return True
    if method == "Log.entryAdded":
        entry = params["entry"]
        # The browser asks for /favicon.ico by itself; the page never links to it.
        favicon = entry.get("source") == "network" and urlsplit(entry.get("url", "")).path == "/favicon.ico"
        return entry.get("level") == "error" and not favicon
    return False


def _describe(event):
    params = event["params"]
    if event["method"] == "Runtime.consoleAPICalled":
        return "console." + params["type"] + ": " + " ".join(
            str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", []))
    if event["method"] == "Runtime.exceptionThrown":
        details = params["exceptionDetails"]
        return "uncaught: " + details.get("exception", {}).get("description", details.get("text", ""))
    entry = params["entry"]
    return f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@contextmanager
def serve(directory):
    """Serve ``directory`` over HTTP on 127.0.0.1 (a free port) from a thread; yield its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def crawl(browser, base_url, root, start_pages, screenshot_dir=None, screenshot_pages=()):
    """Load ``start_pages`` and every local HTML page their links reach; one report per page.

    Args:
        browser: a running Chromium.
        base_url: the served site's root URL, ending with ``/``.
        root: the folder that is served; links to files missing there are left to broken_links.
        start_pages: paths relative to the site root, such as ``"book/intro.html"``.
        screenshot_dir: folder for full-page screenshots, or None for none.
        screenshot_pages: the relative paths to take a screenshot of.

    Returns:
        dict from relative path to PageReport, in the order the pages were loaded.
    """
    reports, queue = {}, list(start_pages)
    while queue:
        page = queue.pop(0)
        if page in reports:
            continue
        shot = None
        if screenshot_dir is not None and page in screenshot_pages:
            shot = Path(screenshot_dir) / (page.replace("/", "__").removesuffix(".html") + ".png")
        reports[page] = browser.inspect(base_url + page, screenshot=shot)
        for link in reports[page].links:
            target = local_path(link, base_url)
            if target and target.endswith(".html") and target not in reports and (Path(root) / target).is_file():
                queue.append(target)
    return reports


def local_path(url, base_url):
    """The path of ``url`` relative to the site root, or None for a link that leaves the site."""
    address, _ = urldefrag(url)
    if not address.startswith(base_url):
        return None
    path = urlsplit(address).path.removeprefix(urlsplit(base_url).path)
    return path + "index.html" if path == "" or path.endswith("/") else path


def broken_links(reports, base_url, root):
    """Every internal link whose file is missing, or whose ``#anchor`` is no id on the target.

    Args:
        reports: the crawl's PageReports by relative path.
        base_url: the served site's root URL.
        root: the folder that is served.

    Returns:
        list of ``(page, link, reason)``.
    """
    broken = []
    for page, report in reports.items():
        for link in report.links:
            target = local_path(link, base_url)
            if target is None:
                continue
            anchor = unquote(urldefrag(link).fragment)
            if not (Path(root) / target).is_file():
                broken.append((page, link, "no such file"))
            elif anchor and target in reports and anchor not in reports[target].ids:
                broken.append((page, link, f"no id {anchor!r} on {target}"))
    return broken
