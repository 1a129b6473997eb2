"""What the job benchmarks (replay-job.py, erase-job.py) share: a release build of Switchboard
started on loopback over a fresh data directory — SQLite, or with a database URL a fresh
PostgreSQL database of its own on that server (made and dropped with `psql`) — and a small
client of its API with the admin key. Python's standard library only."""

import contextlib
import http.client
import json
import os
import socket
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("SWITCHBOARD_BIN", os.path.join(ROOT, "target/release/switchboard"))
ADMIN = "bench-admin-key-0123456789abcdef"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    def __init__(self, port):
        self.port = port

    def call(self, method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        headers = {"Authorization": f"Bearer {ADMIN}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        payload = r.read()
        conn.close()
        return r.status, (json.loads(payload) if payload else None)

    def wait_up(self):
        for _ in range(600):
            try:
                if self.call("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit("the server did not start")


@contextlib.contextmanager
def server(name, database_url="", extra=(), data_dir=None):
    """Yields an `Api` of a server started for the benchmark `name`, stopped (and its
    PostgreSQL database dropped) at the end. With `data_dir` (SQLite only), over that directory,
    which is kept: another run (another build) can read what this one wrote."""
    port = free_port()
    with contextlib.ExitStack() as stack:
        data = data_dir or stack.enter_context(tempfile.TemporaryDirectory())
        env = dict(os.environ, SWITCHBOARD_ADMIN_KEY=ADMIN)
        command = [BIN, "serve", *extra, "--listen", f"127.0.0.1:{port}", "--data-dir", data]
        url = None
        if database_url:
            base, _, _ = database_url.rpartition("/")
            db = f"sb_{name}_bench_{os.getpid()}"
            subprocess.run(["psql", database_url, "-qc", f"CREATE DATABASE {db}"], check=True)
            url = f"{base}/{db}"
            command += ["--database-url", url]
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            api = Api(port)
            api.wait_up()
            yield api
        finally:
            process.terminate()
            process.wait()
            if url:
                subprocess.run(["psql", database_url, "-qc",
                                f"DROP DATABASE {url.rpartition('/')[2]}"], check=True)
