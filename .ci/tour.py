#!/usr/bin/env python3
"""Runs the README's tour as a newcomer would paste it, and checks the answers it shows.

The blocks fenced as ```sh tour between <!-- tour:start --> and <!-- tour:end --> are run, in
order, as one bash script in a fresh directory, with the built `switchboard` on PATH. Each
`# => …` line inside a block is an answer the README shows: it must appear in the script's
output, in that order (`…` stands for anything).

Usage: .ci/tour.py <directory holding the switchboard binary>
"""

import os
import re
import subprocess
import sys
import tempfile

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
bin_dir = os.path.abspath(sys.argv[1])
readme = open(os.path.join(root, "README.md"), encoding="utf-8").read()
tour = readme.split("<!-- tour:start -->", 1)[1].split("<!-- tour:end -->", 1)[0]
blocks = re.findall(r"```sh tour\n(.*?)```", tour, re.S)
if not blocks:
    sys.exit("no ```sh tour blocks found in README.md")

script, expected = ["set -e"], []
for block in blocks:
    for line in block.splitlines():
        if line.startswith("# => "):
            expected.append(line[len("# => "):])
        script.append(line)

with tempfile.TemporaryDirectory() as work:
    env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ["PATH"])
    env.pop("SWITCHBOARD_ADMIN_KEY", None)
    try:
        run = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=180,
        )
    except subprocess.TimeoutExpired as e:
        sys.exit(f"the tour did not finish in 180 s; output so far:\n{e.stdout}")
    out = run.stdout
    if run.returncode != 0:
        sys.exit(f"the tour failed (exit {run.returncode})\n--- stdout\n{out}\n--- stderr\n{run.stderr}")
    at = 0
    for want in expected:
        pattern = ".*?".join(re.escape(part) for part in want.split("…"))
        found = re.compile(pattern, re.S).search(out, at)
        if not found:
            sys.exit(
                f"the README shows\n    {want}\nbut the tour printed (from there on):\n"
                f"{out[at:at + 2000]}\n--- stderr\n{run.stderr[-3000:]}"
            )
        at = found.end()
    print(f"README tour: {len(blocks)} blocks run, {len(expected)} answers as shown")
