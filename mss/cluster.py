"""The DDP world of a job started by Hydra's submitit launcher (`hydra/launcher=slurm|slurm_local`).

Every task of a submitit job runs the whole `train.py` task, one process per device. On SLURM,
Lightning's `SLURMEnvironment` reads the ranks and the rendezvous address from `SLURM_*` and the
tasks form one DDP world by themselves. submitit's local executor (`slurm_local`, the same path
on one machine) starts the same tasks with `SUBMITIT_LOCAL_*` variables that Lightning does not
read: without them each task would start its own DDP processes. `export_local_ranks` gives them
the torch.distributed variables instead, so Lightning treats them as processes started outside
(`LOCAL_RANK` set) that share one rendezvous port.

Preemption and time limits are submitit's: SLURM sends `USR2` `signal_delay_s` before the end,
rank 0's submitit handler requeues the same call (same job folder), and `ckpt_path=auto` makes
the requeued run resume from that folder's `last.ckpt`. Lightning's own requeue handler listens
for `USR1`, which a submitit job never receives, so the two never both act.
"""

from __future__ import annotations

import os


def export_local_ranks() -> bool:
    """In a task of a multi-task job of submitit's local executor, export `MASTER_ADDR`,
    `MASTER_PORT`, `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE` (the port is derived
    from the job id, the same in every task). Returns whether it did; elsewhere a no-op."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "local":
        return False
    import submitit

    environment = submitit.JobEnvironment()
    if environment.num_tasks < 2 or "LOCAL_RANK" in os.environ:
        return False
    # CUDA_VISIBLE_DEVICES stays as submitit set it: Lightning picks each rank's device itself
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return True
