"""Training on several processes: several GPUs of one machine, several machines, or CPU cores.

The launcher: :func:`run_distributed` starts ``nproc`` processes on this machine (RecBole's
``run``), each running :func:`~recbole_mm.pipeline.run_recbole_mm` as one rank;
:func:`torchrun_config` reads the ranks ``torchrun`` gives. What happens inside a rank (process
group, device, DDP, the collectives) is :mod:`recbole_mm.collectives`, a module at the bottom of
the package; its names are re-exported here, so ``recbole_mm.distributed.<name>`` keeps working.
This module sits on the top floor, beside :mod:`recbole_mm.hyper`: it imports the run
pipeline, and nothing below imports it.
"""
import os

import torch.distributed as dist

from recbole_mm.collectives import (  # noqa: F401  (re-exported: recbole_mm.distributed.<name>)
    RUN_KEYS,
    GatheringCollector,
    average_gradients,
    backend_for,
    barrier,
    broadcast_module,
    broadcast_object,
    broadcast_tensor,
    distributed_collector,
    gather_rows,
    global_rank,
    init_device,
    is_distributed,
    local_rank_zero_first,
    same_random_state,
    single_process_config,
    wrap_model,
)


# ---------------------------------------------------------------------- launching
def torchrun_config(environ=None):
    """The config keys of this rank when launched by ``torchrun`` (``{}`` otherwise): its
    ``local_rank``, the ``world_size``, the processes on this machine (``nproc``), the global
    rank of this machine's first process (``offset``) and the rendezvous ``ip``/``port``."""
    env = os.environ if environ is None else environ
    if "LOCAL_RANK" not in env or "WORLD_SIZE" not in env:
        return {}
    local_rank, rank = int(env["LOCAL_RANK"]), int(env.get("RANK", env["LOCAL_RANK"]))
    return {
        "local_rank": local_rank,
        "world_size": int(env["WORLD_SIZE"]),
        "nproc": int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])),
        "offset": rank - local_rank,
        "ip": env.get("MASTER_ADDR", "localhost"),
        "port": env.get("MASTER_PORT", "5678"),
    }


def result_summary(result):
    """The picklable part of a ``run_recbole_mm`` result (no trainer), for rank 0 to hand back."""
    return {key: value for key, value in result.items() if key != "trainer"}


def _worker(local_rank, model, dataset, config_file_list, config_dict, saved, queue):
    import recbole_mm  # noqa: F401  (the RecBole patches, in the new process)
    from recbole_mm.pipeline import run_recbole_mm

    config_dict = dict(config_dict, local_rank=local_rank)
    try:
        result = run_recbole_mm(model, dataset, config_file_list, config_dict, saved=saved)
        if local_rank == 0 and queue is not None:
            queue.put(result_summary(result))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_distributed(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True, nproc=1,
                    world_size=-1, ip="localhost", port=5678, group_offset=0):
    """``run_recbole_mm`` on ``nproc`` processes of this machine (RecBole's ``run``).

    Args:
        nproc: processes to start here (one per GPU; on CPUs, one per group of cores).
        world_size: processes over all machines (``-1``: ``nproc``, a single machine).
        ip, port: address of the machine whose processes hold ranks 0..nproc-1.
        group_offset: global rank of this machine's first process (0 on the first machine,
            the sum of the previous machines' ``nproc`` on the others).

    Returns:
        rank 0's result (``run_recbole_mm``'s dict without ``trainer``), or ``None`` on a
        machine that holds no rank 0.
    """
    import torch.multiprocessing as mp

    world_size = nproc if world_size in (None, -1) else world_size
    config_dict = dict(config_dict or {}, world_size=world_size, ip=ip, port=port, nproc=nproc,
                       offset=group_offset)
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.spawn(_worker, args=(model, dataset, config_file_list, config_dict, saved, queue), nprocs=nproc,
             join=True)
    return None if queue.empty() else queue.get()
