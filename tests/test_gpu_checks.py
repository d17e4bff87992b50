"""The GPU smoke script's checks (benchmarks/gpu_checks.py) run with --device cpu on the tiny fixture (~25 s).

    OMP_NUM_THREADS=1 python -m pytest tests/test_gpu_checks.py

The commands' own argument parsing runs (gpu_checks.main with the command line scripts/gpu-smoke.sh
gives), in this process; the timed MMLU is a child process, as on a GPU.
"""
import re
import sys

from conftest import REPO



def run_check(capsys, *args: str) -> str:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # benchmarks/ is not an installed package
    from benchmarks.gpu_checks import main

    rc = main(list(args))
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    return out


def test_packed_and_padded_batches_give_the_same_loss_on_cpu(assets, capsys):
    out = run_check(capsys, "packing", "--device", "cpu")
    line = next(line for line in out.splitlines() if line.startswith("packing, tiny fixture"))
    assert "sdpa, cpu float32" in line and ": ok;" in line, line
    # the control (examples attending to each other) is far outside the tolerance: the check can tell
    assert "cannot tell" not in line, line
    control = float(re.search(r"control .*per-token ([0-9.e+-]+)", line).group(1))
    assert control > 0.1, line


def test_mmlu_timing_with_a_rank_128_adapter_on_cpu(assets, capsys):
    out = run_check(capsys, "mmlu-time", "--device", "cpu", "--limit", "4")
    line = next(line for line in out.splitlines() if line.startswith("mmlu-time, tiny model + rank-128 adapter"))
    seconds = float(re.search(r"cpu: ([0-9.]+) s wall", line).group(1))
    assert seconds > 0 and "--limit 4 (20 questions" in line, line
