#!/usr/bin/env bash
# The README's test command: set up if needed, lint (ruff, configured in pyproject.toml: a finding
# fails the run), then run the whole suite (GUI tests under Xvfb).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m ruff check .
exec .venv/bin/python -m pytest "$@"
