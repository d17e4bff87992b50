#!/usr/bin/env python3
"""The torch wheel scripts/setup.sh installs on this machine (stdlib only: runs before .venv exists).

    python3 scripts/torch_wheel.py               # the pip command it would run, e.g.
                                                 #   pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu124
    python3 scripts/torch_wheel.py --index-url   # only the index URL; an empty line: pip's default index (the CPU path)
    TORCH_CUDA=cu126 python3 scripts/torch_wheel.py
    .venv/bin/python scripts/torch_wheel.py --check   # exit 1 with one line if nvidia-smi lists GPUs torch cannot see

The choice (the list of CUDA tags, nvidia-smi's reading) is core/nvidia.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.nvidia import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
