#!/usr/bin/env bash
# `make dist`: a wheel set to copy to a Raspberry Pi and install with no network:
#   dist/loaxa-<version>-<platform>/  loaxa's wheel and every runtime dependency's wheel
#                                     (no compiler needed on the Pi), install.sh, SHA256SUMS
#   dist/loaxa-<version>-<platform>.tar.gz
# On the Pi:  tar xzf loaxa-*.tar.gz && sudo ./loaxa-*/install.sh
# PLATFORM: aarch64 (Raspberry Pi OS 64-bit, default), armv7l (32-bit) or native (this
# machine: the offline install can be tried here). The GPIO libraries (RPi.GPIO, lgpio) are
# compiled for Raspberry Pi OS by Debian: install.sh takes them from apt
# (python3-rpi-lgpio / python3-lgpio) into the venv through --system-site-packages.
set -euo pipefail
cd "$(dirname "$0")/.."
platform=${PLATFORM:-aarch64}
export PATH="$HOME/.local/bin:$PATH"
version=$(grep -m1 '^version' pyproject.toml | cut -d'"' -f2)
out=dist/loaxa-$version-$platform
rm -rf "$out" "$out.tar.gz"
mkdir -p "$out/wheels"
# runtime dependencies only, pinned (the lock without the dev and pi extras)
uv pip compile --universal --quiet pyproject.toml --override requirements/overrides.txt \
  --python-version 3.11 -o "$out/requirements.txt"
uv build --wheel --quiet --out-dir "$out/wheels" .
case "$platform" in
  native) plat=() ;;
  aarch64) plat=(--platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64
                 --platform manylinux_2_28_aarch64 --platform linux_aarch64) ;;
  armv7l) plat=(--platform manylinux_2_17_armv7l --platform manylinux2014_armv7l
                --platform manylinux_2_31_armv7l --platform linux_armv7l) ;;
  *) echo "dist: PLATFORM is aarch64, armv7l or native" >&2; exit 2 ;;
esac
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
  --implementation cp "${plat[@]}" -r "$out/requirements.txt" -d "$out/wheels"
cat > "$out/install.sh" <<'SH'
#!/usr/bin/env bash
# Installs loaxa into /opt/loaxa/.venv from the wheels beside this script, with no network.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
(cd "$here" && sha256sum --quiet -c SHA256SUMS)
prefix=${LOAXA_PREFIX:-/opt/loaxa}
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] && [ -z "${LOAXA_NO_APT:-}" ]; then
  apt-get install -y -qq ffmpeg espeak-ng alsa-utils chrony python3-venv \
    python3-lgpio python3-rpi-lgpio >/dev/null || true  # from the Pi OS image or its cache
fi
python3 -m venv --system-site-packages "$prefix/.venv"
"$prefix/.venv/bin/pip" install --quiet --no-index --no-deps "$here"/wheels/*.whl
echo "loaxa installed in $prefix/.venv: $("$prefix/.venv/bin/loaxa" --version 2>/dev/null || echo ok)"
echo "next: sudo $prefix/.venv/bin/loaxa agent enrol <enrolment>.tar.gz"
SH
chmod +x "$out/install.sh"
(cd "$out" && find wheels -type f -print0 | sort -z | xargs -0 sha256sum > SHA256SUMS)
tar -C dist -czf "$out.tar.gz" "$(basename "$out")"
echo "dist: $out.tar.gz ($(ls "$out/wheels" | wc -l) wheels, $(du -sh "$out.tar.gz" | cut -f1))"
