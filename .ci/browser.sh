#!/usr/bin/env bash
# The console's and the portal's tests in a real browser (tests/browser/): Debian's chromium,
# installed when missing, driven by playwright-core (npm, pinned in tests/browser/package-lock.json).
# Usage: .ci/browser.sh <directory holding the switchboard binary>
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(cd "$1" && pwd)/switchboard"
if ! command -v chromium >/dev/null; then
    echo "installing Debian's chromium"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
fi
cd tests/browser
npm ci --no-audit --no-fund --silent
SWITCHBOARD_BIN="$bin" node --test --test-concurrency=1 --test-reporter=spec console.test.mjs portal.test.mjs
