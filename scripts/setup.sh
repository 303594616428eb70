#!/usr/bin/env bash
# Set up a fresh machine for dr2studio: system packages (apt) and a virtual environment in .venv,
# installed from the lock file so that next month's install is this month's. Ends with an import
# check of the whole stack that names the fix in one line when something does not load.
# Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

PIP_VERSION="26.3"                 # pip itself is pinned too: its resolver decides what gets installed
LOCK="requirements/constraints.txt"  # every package of the default install, exact versions (Python 3.11, Linux)

# espeak-ng: English lyrics (the released front end's phonemes). fluidsynth + a General MIDI soundfont:
# the tests render real MIDI files into real 48 kHz recordings. chromium + chromium-driver: the web take
# browser's tests drive a real headless browser (Debian's, so nothing is downloaded at test time).
APT_PACKAGES=(espeak-ng fluidsynth fluid-soundfont-gm chromium chromium-driver)
missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v fluidsynth >/dev/null 2>&1 || missing+=(fluidsynth)
[ -f /usr/share/sounds/sf2/FluidR3_GM.sf2 ] || missing+=(fluid-soundfont-gm)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: apt-get unavailable; install ${missing[*]} (of ${APT_PACKAGES[*]}) by hand: espeak-ng is needed for English lyrics" >&2
  fi
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "pip==${PIP_VERSION}"
.venv/bin/python -m pip install -q --disable-pip-version-check -c "$LOCK" -e ".[dev]"
# audio to MIDI runs basic-pitch's shipped ONNX model; its wheel would pull TensorFlow on Linux, so it is
# installed without dependencies (what its note creation needs is the "midi" extra above)
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "basic-pitch==0.4.0"
.venv/bin/python -m dr2studio.stack_check
# librosa's beat tracker (tempo conform) is numba code compiled on first use: ~17 s holding the GIL, in the
# middle of a producer's first take. Compile it now; numba caches it inside the virtualenv.
.venv/bin/python -c "from dr2studio.audio.conform import warm_up; print(f'conform kernels compiled in {warm_up():.1f} s')"
