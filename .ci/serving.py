"""A switchboard server for the CI's Python checks: started on fresh data, ready when the
context is entered, stopped when it is left."""

import contextlib
import os
import subprocess
import tempfile
import time
import urllib.request


@contextlib.contextmanager
def serving(binary, port, key, dev=False):
    """Runs `binary serve` on 127.0.0.1:`port` with admin key `key` (and `--dev`, which lets it
    deliver to loopback); yields the API's base URL once /readyz answers."""
    api = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as data:
        args = [binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data]
        server = subprocess.Popen(
            args + (["--dev"] if dev else []),
            env=dict(os.environ, SWITCHBOARD_ADMIN_KEY=key),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                try:
                    urllib.request.urlopen(f"{api}/readyz")
                    break
                except OSError:
                    time.sleep(0.1)
            yield api
        finally:
            server.terminate()
            server.wait()
