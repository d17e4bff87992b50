"""Validation loss: mean cross-entropy per response token over the held-out split.

Token-weighted (not a mean of batch means), exact under DDP: each process sums
over its own shard and the sums are all-reduced. Training calls
`validation_loss` at its end; recompute a stored run's number from its folder with

    python -m eval.loss experiments/demo/runs/<run id>
    python -m eval.loss experiments/demo/baseline/<key> --base     # the base model's, no adapter
"""
from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F

from core.data import IGNORE_INDEX


@torch.no_grad()
def validation_loss(model, dataset, collator, batch_size: int) -> dict:
    """{"val_loss", "val_tokens"}; every process must call it (it all-reduces when distributed)."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # [sum of token losses, token count]
    indices = list(range(rank, len(dataset), world))
    for start in range(0, len(indices), batch_size):
        batch = collator([dataset[i] for i in indices[start:start + batch_size]])
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}  # flash kwargs: ints too
        labels = batch.pop("labels")
        logits = model(**batch).logits.float()
        shifted = labels[:, 1:]  # position t predicts token t+1
        losses = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), shifted.reshape(-1),
                                 ignore_index=IGNORE_INDEX, reduction="sum")
        total += torch.stack([losses.double(), (shifted != IGNORE_INDEX).sum().double()])
    if distributed:
        torch.distributed.all_reduce(total)
    if was_training:
        model.train()
    loss_sum, tokens = total.tolist()
    return {"val_loss": loss_sum / tokens if tokens else math.nan, "val_tokens": int(tokens)}


def main(argv=None) -> int:
    """Recompute a run's validation loss from its folder (base model + adapter + the experiment's data);
    --base: the base model's alone (a baseline folder, blackbox/baseline.py); --out: also as JSON."""
    import argparse
    import json
    from pathlib import Path

    from core.model import load_for_eval
    from core.procs import exit_with_blackbox

    parser = argparse.ArgumentParser(prog="python -m eval.loss", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run folder (or a baseline folder with --base): spec.json names the rest")
    parser.add_argument("--base", action="store_true", help="the base model without the adapter")
    parser.add_argument("--out", help="write {val_loss, val_tokens} here too")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    exit_with_blackbox()  # a baseline's evaluation ends with the blackbox that asked for it
    model, val_set, collator, spec = load_for_eval(Path(args.run), with_adapter=not args.base)
    result = validation_loss(model, val_set, collator, spec["train"]["per_device_batch_size"])
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"{result['val_loss']:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
