"""A real Prometheus server (Debian's ``/usr/bin/prometheus``) for the tests, on loopback.

``running_prometheus(targets)`` starts one that scrapes ``targets`` (``host:port`` of metrics
endpoints) every second, waits until it is ready, yields its base URL and stops it (and removes
its data) afterwards, also when the test fails. Without the binary the test is skipped, except
under CI (``CI`` set), where that is a failure: scripts/install_test_tools.sh installs it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

PROMETHEUS = Path("/usr/bin/prometheus")


def require_prometheus() -> None:
    """Skip (fail under CI) when Debian's prometheus is not installed."""
    if not PROMETHEUS.exists():
        reason = f"{PROMETHEUS} is missing (run scripts/install_test_tools.sh)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; under CI that is an error, not a skip")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running_prometheus(targets: list[str], *, ready_s: float = 60) -> Iterator[str]:
    """Run Prometheus scraping ``targets`` each second; yield its base URL."""
    require_prometheus()
    with tempfile.TemporaryDirectory(prefix="nbserve-prom-") as tmp:
        config = Path(tmp) / "prometheus.yml"
        quoted = ", ".join(f"'{t}'" for t in targets)
        config.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: ray\n    honor_labels: true\n"
            f"    static_configs: [{{targets: [{quoted}]}}]\n"
        )
        port = _free_port()
        log = (Path(tmp) / "prometheus.log").open("wb")
        proc = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp}/data",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + ready_s
            while True:
                assert proc.poll() is None, (Path(tmp) / "prometheus.log").read_text()[-2000:]
                try:
                    if requests.get(f"{url}/-/ready", timeout=2).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                assert time.monotonic() < deadline, "prometheus did not become ready"
                time.sleep(0.2)
            yield url
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()


def wait_for_series(url: str, name: str, timeout: float = 60) -> None:
    """Wait until Prometheus has scraped at least one sample of the metric ``name``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = requests.get(f"{url}/api/v1/query", params={"query": name}, timeout=5).json()
        if body["data"]["result"]:
            return
        time.sleep(0.5)
    raise AssertionError(f"prometheus at {url} has no {name} after {timeout} s")
