"""`accelerate launch` whose multi-process rendezvous cannot race: torchrun's standalone mode.

    python -m blackbox.launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
        --dynamo_backend no blackbox/train.py experiments/<name>/runs/<run id>

Why: two evaluations that start at once on one machine (launch.parallel > 1) would each pick a
"free" port and then bind it, and one of them could find it taken. In standalone mode torchrun's
agent binds its rendezvous store on a port the OS gives it and keeps it; the processes of the
group join that store (torch's agent store), so no port is chosen before it is held. Everything
else is `accelerate launch` as it is (same options, same environment for the training script).
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from accelerate.commands.launch import launch_command, launch_command_parser

    args = launch_command_parser().parse_args(argv)
    args.standalone = True  # torch.distributed.run: c10d rendezvous on localhost:0, held by the agent
    launch_command(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
