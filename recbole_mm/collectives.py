"""Processes of a distributed run, as seen from inside one rank: rank queries, the process group and
device, DDP wrapping, and the collectives that keep the ranks in step.

RecBole 1.2.1 has a distributed path (the config keys ``nproc``, ``world_size``, ``ip``,
``port``, ``offset`` and ``local_rank``): one process per rank, the model wrapped in
``DistributedDataParallel``, the train and evaluation loaders split by rank with a
``DistributedSampler``, the checkpoint written by rank 0. This module completes it for the
plugin:

- :func:`init_device` (installed over RecBole's ``Config._init_device`` by
  :mod:`recbole_mm.compat`): NCCL and ``cuda:<local_rank>`` on GPUs, gloo and the CPU
  otherwise (RecBole always asks for NCCL and a CUDA device).
- :func:`wrap_model` (RecBole's ``AbstractTrainer``): ``device_ids`` only for a CUDA module.
- :func:`local_rank_zero_first`: the dataset, its files and the graph caches are built by
  local rank 0 first, the other ranks then read them: every rank holds identical graphs.
- :func:`same_random_state`: per-epoch resampling (FREEDOM's edge pruning, DRAGON's user
  graph, LIRDRec's pruning) draws from the same seed on every rank.
- :class:`GatheringCollector`: full-sort evaluation is split over the ranks (each with its
  own evaluation cache); the per-user rows are gathered and the metrics computed once over
  every user, so they equal a one-process evaluation of the same model. (RecBole averages
  each rank's metrics weighted by ``len(batched_data)``, which is 4 for every batch, and the
  sampler's padding counts some users twice.)
- :func:`broadcast_object` gives every rank rank 0's checkpoint path; :func:`barrier` keeps
  ranks from reading a checkpoint before rank 0 has written it (compat patch 7).
- :func:`broadcast_module`, :func:`average_gradients`, :func:`broadcast_tensor`: models that
  train outside DDP stay one model over the ranks (GUIDER's teacher and its clean/noisy split,
  BOD's weight generator).
- :func:`single_process_config`: a checkpoint's config made fit for one process again.

Starting the ranks is :mod:`recbole_mm.distributed`'s (the launcher, on the entry points'
floor); this module sits at the bottom of the package and imports none of it (nor the
config, data, models or trainers), so trainers and the compatibility patches can use it.

A single process never enters any of these paths: everything here is a no-op when
``config['single_spec']`` is true.
"""
import contextlib
import os
import random

import numpy as np
import torch
import torch.distributed as dist

from recbole_mm.errors import ConfigError

# config keys that describe one distributed run; cleared by single_process_config
RUN_KEYS = ("local_rank", "world_size", "nproc", "offset", "ip", "port")


def is_distributed(config):
    """True inside a rank of a distributed run (RecBole's ``single_spec`` is false)."""
    try:
        single = config["single_spec"]
    except (KeyError, TypeError):
        return False
    return single is False and dist.is_available() and dist.is_initialized()


def global_rank(config):
    """``local_rank + offset``: the rank over all machines (0 in one process)."""
    return int(config["local_rank"] or 0) + int(config["offset"] or 0) if is_distributed(config) else 0


def backend_for(use_cuda):
    """``nccl`` for ranks on GPUs, ``gloo`` for ranks on CPUs."""
    return "nccl" if use_cuda else "gloo"


def init_device(config):
    """RecBole's ``Config._init_device`` with the backend and device chosen by hardware.

    Without ``local_rank`` in the config: one process, on ``cuda`` when ``use_gpu`` and a GPU
    are there, else the CPU (RecBole's behaviour). With ``local_rank``: this process is global
    rank ``local_rank + offset`` of ``world_size``; it joins the process group at
    ``tcp://ip:port`` (unless one is already initialised) with NCCL on ``cuda:<local_rank>`` or
    gloo on the CPU; ranks other than 0 log errors only and show no progress bars.
    """
    final = config.final_config_dict
    gpu_id = final.get("gpu_id")
    gpu_id = ",".join(map(str, gpu_id)) if isinstance(gpu_id, tuple) else ("" if gpu_id is None else str(gpu_id))
    final["gpu_id"] = gpu_id
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id
    use_cuda = len(gpu_id) > 0 and torch.cuda.is_available() and final.get("use_gpu", True) is not False
    if "local_rank" not in final:
        final["single_spec"] = True
        final["local_rank"] = 0
        final["device"] = torch.device("cuda") if use_cuda else torch.device("cpu")
        return
    local_rank = int(final["local_rank"])
    final.setdefault("offset", 0)
    final.setdefault("nproc", 1)
    if final.get("world_size") in (None, -1):
        final["world_size"] = final["nproc"]
    if use_cuda:
        if torch.cuda.device_count() < final["nproc"]:
            raise ConfigError(f"nproc={final['nproc']} processes on GPUs, but only {torch.cuda.device_count()} "
                             f"GPUs are visible (gpu_id='{gpu_id}'); list one GPU per process in gpu_id")
        torch.cuda.set_device(local_rank)
        final["device"] = torch.device("cuda", local_rank)
    else:
        final["device"] = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend_for(use_cuda),
            init_method=f"tcp://{final.get('ip') or 'localhost'}:{final.get('port') or 5678}",
            rank=local_rank + int(final["offset"]),
            world_size=int(final["world_size"]),
        )
    final["single_spec"] = False
    if local_rank != 0:
        final["state"] = "error"
        final["show_progress"] = False
        final["verbose"] = False


def wrap_model(model, config):
    """``(model, DistributedDataParallel(model))`` for a trainer on a distributed run: batch norm
    synchronised and ``device_ids=[local_rank]`` on GPUs, the module as it is on CPUs (torch
    refuses ``device_ids`` for a CPU module).

    Sparse buffers (DRAGON's user–user graph) are left out of DDP's buffer broadcast, which
    cannot send sparse tensors: every rank draws them alike (:func:`same_random_state`)."""
    from torch.nn.parallel import DistributedDataParallel

    sparse = [name for name, buffer in model.named_buffers() if buffer.layout != torch.strided]
    if sparse:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, sparse)
    device = torch.device(config["device"])
    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model, DistributedDataParallel(model, device_ids=[device.index or 0])
    return model, DistributedDataParallel(model)


def barrier(config):
    """Wait for every rank (a no-op in one process)."""
    if is_distributed(config):
        dist.barrier()


def broadcast_object(obj, config):
    """Rank 0's ``obj`` on every rank (``obj`` itself in one process); picklable objects only."""
    if not is_distributed(config):
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


@contextlib.contextmanager
def local_rank_zero_first(config):
    """Local rank 0 runs the block first (it writes dataset files and graph caches); the other
    ranks of its machine run it once it is done, and find the files complete."""
    if not is_distributed(config):
        yield
        return
    first = int(config["local_rank"]) == 0
    if not first:
        dist.barrier()
    try:
        yield
    finally:
        if first:
            dist.barrier()


@contextlib.contextmanager
def same_random_state(config, epoch):
    """Within the block, torch's, numpy's and Python's generators are seeded from
    ``(seed, epoch)`` alike on every rank, so a per-epoch resampling draws the same graph
    everywhere; outside it each rank keeps its own streams (its negatives, its dropout).
    In one process nothing changes."""
    if not is_distributed(config):
        yield
        return
    seed = (int(config["seed"]) * 1_000_003 + int(epoch) + 1) % (2 ** 31)
    device = torch.device(config["device"])
    devices = [device.index or 0] if device.type == "cuda" else []
    numpy_state, python_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)


# ---------------------------------------------------------------------- evaluation
def gather_rows(tensors, users):
    """Every rank's per-user evaluation rows, each user once.

    Args:
        tensors: dict name -> (n_local x ...) CPU tensor, the rows of this rank's users.
        users: (n_local,) user ids of those rows (the sampler pads ranks to equal length by
            repeating users, so a user can appear on two ranks).

    Returns:
        (dict name -> (n_users x ...) tensor, (n_users,) user ids), in ascending user id.
    """
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, ({name: t.cpu() for name, t in tensors.items()}, users.cpu()))
    all_users = torch.cat([part[1] for part in gathered])
    _, first = np.unique(all_users.numpy(), return_index=True)
    first = torch.from_numpy(first)
    rows = {name: torch.cat([part[0][name] for part in gathered])[first] for name in tensors}
    return rows, all_users[first]


class GatheringCollector:
    """Mixin for an evaluation ``Collector``: under a distributed full-sort evaluation it records
    the user id of every collected row and, in ``get_data_struct``, replaces the per-user
    resources (``rec.topk``, ``rec.meanrank``, ``rec.items``, ``rec.score``, ``data.label``) by
    those of every rank (:func:`gather_rows`). ``gathered`` tells the trainer that the
    metrics need no further reduction. Set ``gather_users = True`` before a full-sort
    evaluation (the trainer does)."""

    PER_USER = ("rec.topk", "rec.meanrank", "rec.items", "rec.score", "data.label")
    gather_users = False
    gathered = False

    def eval_batch_collect(self, scores_tensor, interaction, positive_u, positive_i):
        super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        if self.gather_users:
            uid = interaction[self.config["USER_ID_FIELD"]].detach().cpu()
            self._users = uid if getattr(self, "_users", None) is None else torch.cat([self._users, uid])

    def get_data_struct(self):
        users, self._users = getattr(self, "_users", None), None
        struct = super().get_data_struct()
        self.gathered = False
        if not (self.gather_users and is_distributed(self.config)):
            return struct
        if users is None:
            users = torch.zeros(0, dtype=torch.long)
        keys = [key for key in self.PER_USER if key in struct]
        for key in keys:
            if struct[key].shape[0] != len(users):
                raise RuntimeError(f"distributed evaluation: '{key}' has {struct[key].shape[0]} rows for "
                                   f"{len(users)} users; cannot gather it per user")
        rows, _ = gather_rows({key: struct[key] for key in keys}, users)
        for key, value in rows.items():
            struct.set(key, value)
        self.gathered = True
        return struct


def distributed_collector(collector_class):
    """``collector_class`` with :class:`GatheringCollector` mixed in (kept per class)."""
    cache = distributed_collector.__dict__.setdefault("_classes", {})
    if collector_class not in cache:
        cache[collector_class] = type("Gathering" + collector_class.__name__,
                                      (GatheringCollector, collector_class), {})
    return cache[collector_class]


# ---------------------------------------------------------------------- GUIDER's teacher
def broadcast_module(module, config):
    """Rank 0's parameters and buffers in ``module`` on every rank (a model outside DDP)."""
    if not is_distributed(config):
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def average_gradients(module, config):
    """All-reduce the gradients of ``module`` to their mean over the ranks (what DDP does for the
    wrapped model); parameters without gradient take part with zeros, so every rank reduces
    the same tensors."""
    if not is_distributed(config):
        return
    world = dist.get_world_size()
    for param in module.parameters():
        if not param.requires_grad:
            continue
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
        param.grad.div_(world)


def broadcast_tensor(tensor, config):
    """Rank 0's tensor (any length) on every rank; ``tensor`` itself in one process."""
    if not is_distributed(config):
        return tensor
    value = broadcast_object(tensor.cpu(), config)
    return value.to(tensor.device)


# ---------------------------------------------------------------------- one process again
def single_process_config(config):
    """A config saved by a distributed run, made fit for one process (``load_data_and_model``):
    the run keys dropped, ``single_spec`` set, the device this machine has."""
    final = config.final_config_dict
    for key in RUN_KEYS:
        final.pop(key, None)
    final["local_rank"] = 0
    final["single_spec"] = True
    device = torch.device(final.get("device", "cpu"))
    if device.type == "cuda":
        final["device"] = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    return config
