#!/usr/bin/env bash
# Installs what `make demo` and `make test` need on a fresh Debian machine:
# the Debian packages (when root), uv, and the project's virtual environment.
# Without root, it names exactly what to install and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

# usage: setup.sh [demo|test]. The demo can fall back to an embedded broker without
# mosquitto; the tests always use a real mosquitto.
purpose=${1:-test}
want_debs=(mosquitto ffmpeg espeak-ng alsa-utils)
need_cmds=(mosquitto ffmpeg ffprobe espeak-ng)
if [ "$purpose" = test ]; then
  # the console's browser walk-through drives Debian's chromium (Playwright's own browser
  # download cannot be reached)
  want_debs+=(chromium)
  need_cmds+=(chromium)
fi
missing=()
for c in "${need_cmds[@]}"; do
  if ! command -v "$c" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$c" ]; then missing+=("$c"); fi
done
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" != 0 ] && [ "$purpose" = demo ] \
   && [ "${missing[*]}" = mosquitto ]; then
  echo "setup: mosquitto is not installed; the demo will use its embedded broker." >&2
  echo "setup: for the real broker, as root: apt-get install -y mosquitto" >&2
  missing=()
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian packages: ${want_debs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${want_debs[@]}" >/dev/null
  else
    echo "setup: missing commands: ${missing[*]}" >&2
    echo "setup: as root run: apt-get install -y ${want_debs[*]}" >&2
    exit 1
  fi
fi

if ! command -v uv >/dev/null 2>&1; then
  echo "setup: installing uv with pip"
  python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv
  export PATH="$HOME/.local/bin:$PATH"
fi

py=$(command -v python3)
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: python3 is $("$py" --version); loaxa needs Python 3.11 or newer" >&2
  exit 1
fi

stamp=.venv/.loaxa-installed
if [ ! -x .venv/bin/python ]; then
  UV_PYTHON_DOWNLOADS=never uv venv --quiet --python "$py" .venv
fi
if [ ! -f "$stamp" ] || [ requirements/lock.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  # compiled once here (in parallel), not by every process that imports them
  uv pip install --quiet --compile-bytecode --python .venv/bin/python -r requirements/lock.txt
  uv pip install --quiet --python .venv/bin/python --no-deps -e .
  touch "$stamp"
fi
