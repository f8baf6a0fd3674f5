"""The live page in a real headless Chromium, through a real nginx in front of two replicas, when the replica that
serves its stream goes away mid-stream: SIGKILL (the connection just drops) and SIGTERM (the replica closes it with
1001 "going away"). Either way the page's stream must carry on at the other replica by itself, with no click.

The cluster is ``deploy/local/cluster.py``'s (as in ``test_balancer.py``), the browser and its fake camera are
``test_browser.py``'s. Which replica serves the page's socket is read from nginx's ``X-Upstream`` header on the
WebSocket handshake, seen through the DevTools protocol; what the page shows is read from the page: each result
redraws the "Current:" line (``#current-labels``), and ``#live-status`` says what the client is doing.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

import pytest
from test_balancer import LocalCluster, cluster  # noqa: F401  (cluster: the module's fixture)
from test_browser import browser, camera_clip, open_page, playwright, sync_api  # noqa: F401  (fixtures)

# Records, in the page's clock, every redraw of the "Current:" line (one per result) and every status message.
WATCH_PAGE = """() => {
    window.failover = {results: [], statuses: []};
    new MutationObserver(() => window.failover.results.push(performance.now()))
        .observe(document.getElementById('current-labels'), {childList: true});
    const status = document.getElementById('live-status');
    new MutationObserver(() => window.failover.statuses.push([performance.now(), status.textContent]))
        .observe(status, {childList: true, characterData: true, subtree: true});
}"""
RESULTS_SINCE = "(t) => window.failover.results.filter((r) => r > t).length"


@dataclass
class Socket:
    """One WebSocket of the page as the browser saw it (DevTools timestamps, in seconds)."""

    opened: float
    upstream: str | None = None
    messages: int = 0
    closed: float | None = None


@dataclass
class SocketLog:
    """The page's WebSockets, from the DevTools protocol's Network events, in the order they were opened."""

    sockets: dict[str, Socket] = field(default_factory=dict)

    def attach(self, page) -> None:
        cdp = page.context.new_cdp_session(page)
        cdp.on("Network.webSocketWillSendHandshakeRequest", self.opening)
        cdp.on("Network.webSocketHandshakeResponseReceived", self.answered)
        cdp.on("Network.webSocketFrameReceived", self.received)
        cdp.on("Network.webSocketClosed", self.closed)
        cdp.send("Network.enable")

    def opening(self, event: dict) -> None:
        self.sockets[event["requestId"]] = Socket(opened=event["timestamp"])

    def answered(self, event: dict) -> None:
        headers = {name.lower(): value for name, value in event["response"]["headers"].items()}
        self.sockets[event["requestId"]].upstream = headers.get("x-upstream")

    def received(self, event: dict) -> None:
        self.sockets[event["requestId"]].messages += 1

    def closed(self, event: dict) -> None:
        self.sockets[event["requestId"]].closed = event["timestamp"]

    def all(self) -> list[Socket]:
        return list(self.sockets.values())


@pytest.mark.parametrize(
    ("sig", "notice", "max_reconnect_s"),
    [
        # The connection drops without a word: the page waits its first back-off step (1 s) and reconnects.
        pytest.param(signal.SIGKILL, "Disconnected from the server. Retrying in 1 s", 5.0, id="sigkill"),
        # 1001 going away: the page reconnects at once (under 250 ms of jitter), not after the 1 s back-off.
        pytest.param(signal.SIGTERM, "The server is restarting; reconnecting", 0.9, id="sigterm"),
    ],
)
def test_page_stream_moves_to_the_other_replica(
    cluster: LocalCluster,  # noqa: F811
    browser,  # noqa: F811
    sig: signal.Signals,
    notice: str,
    max_reconnect_s: float,
) -> None:
    with open_page(browser, cluster.url) as page:
        sockets = SocketLog()
        sockets.attach(page)
        page.evaluate(WATCH_PAGE)
        page.click("#camera-toggle")
        page.wait_for_function(f"({RESULTS_SINCE})(0) >= 5", timeout=20_000)

        [serving] = sockets.all()
        victim = cluster.replica_at(serving.upstream)
        other = next(r for r in cluster.replicas if r is not victim)
        try:
            log_before = len(victim.log())
            signalled_at = page.evaluate("performance.now()")
            exit_code = victim.stop(sig)
            replica_log = victim.log()[log_before:]
            # New results on the page, and enough of them to be a stream again, with no click.
            try:
                page.wait_for_function(f"({RESULTS_SINCE})({signalled_at}) >= 5", timeout=10_000)
            except sync_api.TimeoutError:
                pytest.fail(f"the page's stream did not resume; it said: {page.evaluate('window.failover.statuses')}")
            resumed_at = page.evaluate(f"window.failover.results.find((r) => r > {signalled_at})")
            statuses = [text for t, text in page.evaluate("window.failover.statuses") if t > signalled_at]
            assert page.inner_text("#camera-toggle") == "Stop camera"
            assert page.get_attribute("#current-labels", "data-labels") != ""
            page.click("#camera-toggle")
        finally:
            victim.start()
            victim.wait_ready()
            cluster.wait_balanced(victim)  # back in nginx's rotation for the next test

    if sig == signal.SIGKILL:
        assert exit_code == -signal.SIGKILL, exit_code
    else:  # uvicorn's own shutdown ran to the end (it re-raises the signal once done)
        assert exit_code in (0, -signal.SIGTERM) and "Finished server process" in replica_log, (exit_code, replica_log)
    assert any(notice in text for text in statuses), statuses
    # The socket the replica served was closed under the page; the page opened the next one itself, through
    # nginx, and that one is served by the other replica and carried results.
    old, *newer = sockets.all()
    assert old is serving and old.closed is not None
    served = [s for s in newer if s.messages]
    assert served and {s.upstream for s in served} == {other.address}, [(s.upstream, s.messages) for s in newer]
    reconnect_s = newer[0].opened - old.closed
    assert 0 <= reconnect_s < max_reconnect_s, reconnect_s
    print(
        f"{sig.name}: reconnected {reconnect_s * 1000:.0f} ms after the close, first new result "
        f"{resumed_at - signalled_at:.0f} ms after the signal, {len(newer)} new socket(s)"
    )
