"""Start the real app (``streamlit run app.py``) on a free local port: for the browser test and benchmarks."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
#: Flags for Debian's Chromium on a machine without network or display (see the env notes).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(log_path: Path, env: dict[str, str] | None = None, timeout: float = 120.0) -> Iterator[str]:
    """Run the app headless on 127.0.0.1 and yield its URL; the server stops on exit.

    Args:
        log_path: where the server's stdout and stderr go.
        env: extra environment variables (``SAAS_APP_AUTOPREPARE``, ``SAAS_CACHE_DIR``, ...).
        timeout: seconds to wait for the health endpoint.
    """
    port = free_port()
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **(env or {}))
    streamlit = Path(sys.executable).with_name("streamlit")
    exe = str(streamlit) if streamlit.exists() else (shutil.which("streamlit") or "streamlit")
    log = log_path.open("w")
    proc = subprocess.Popen(
        [exe, "run", "app.py", "--server.headless", "true", "--server.port", str(port), "--server.address",
         "127.0.0.1", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()
