#!/usr/bin/env bash
# Set up a development environment in .venv: Python packages (CPU torch pinned) and, for the GUI
# tests, Xvfb and the X libraries Qt needs. Safe to run twice: it skips what is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi

stamp=.venv/.napari-edof-setup
want=$(cat pyproject.toml requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python packages (torch CPU, napari, PyQt6, test tools)"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
  echo "$want" > "$stamp"
fi

# System packages for headless GUI tests (Debian): Xvfb and Qt's xcb platform libraries.
debs="xvfb xauth libxcb-cursor0 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 \
libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xfixes0 libegl1 libgl1 \
libfontconfig1 libdbus-1-3"
missing=""
for d in $debs; do
  dpkg -s "$d" >/dev/null 2>&1 || missing="$missing $d"
done
if [ -n "$missing" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing system packages:$missing"
    sudo_=""
    [ "$(id -u)" = 0 ] || sudo_="sudo"
    $sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "setup: warning: missing$missing and no apt-get; GUI tests need an X server (Xvfb)" >&2
  fi
fi
echo "setup: ready (.venv/bin/python, $(.venv/bin/python -c 'import torch, napari; print("torch", torch.__version__, "napari", napari.__version__)'))"
