"""The Ray Data graph of a run: videos still to do → decode (CPU tasks) → inference (an actor pool).

The feed is a Ray Datasource whose read tasks each carry a few videos (a compact Arrow copy of their
rows, a few KB): Ray Data fuses every read task with the decode stage into one CPU task, so a task
decodes its videos one after the other, streaming one clip at a time. Videos per task grow from 1 to
`steady` over the first tasks (the first parts commit within seconds) and shrink back over the last
(no long straggler at the end); in between every task carries `steady` videos, chosen so that a
corpus of any size makes at most max(MAX_TASKS, 4 × decode slots) steady tasks (plus the ramps, at most
2 × RAMP_REPEAT × log2(steady) small ones). Ray Data stores one object per read task and
keeps its metadata in the driver, so the task count, not the corpus size, is what the driver pays for:
one block per video cost ~12 ms of driver time a video, here a 1.22 M-video corpus is ~4,100 tasks.
Read tasks hold their rows, so Ray can re-run one on another node after a node is lost.

Inference runs in a separate operator (its resources differ, so Ray Data does not fuse it with decoding,
which would serialise decoding behind the model): an actor pool, one GPU per actor when the cluster has
GPUs. Actor constructor arguments are a small config dict; the weights are loaded by the actor itself.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pipeline.config import Config
from pipeline.corpus import Corpus

log = logging.getLogger(__name__)

MAX_TASKS = 4096           # read tasks a corpus is cut into at most (plus the ramps), whatever its size
STEADY_DEFAULT = 128       # videos per task when the corpus is small enough for that to be few tasks
RAMP_REPEAT = 64           # tasks of each ramp size (1, 2, 4, …) at the start and at the end, at most


def task_sizes(n: int, slots: int, steady: int = 0) -> list[int]:
    """Videos per read task, summing to `n`: 1, 1, 2, 2, 4, 4, … (each size `min(slots, RAMP_REPEAT)`
    times) up to `steady`, then `steady` each, then the ramp backwards. `steady` 0 picks it from `n`
    and `slots`: at most max(MAX_TASKS, 4·slots) steady tasks, and at least 4 tasks a slot while that
    keeps 32 videos or fewer a task. See module doc."""
    if n <= 0:
        return []
    slots = max(1, slots)
    steady = steady or max(math.ceil(n / max(MAX_TASKS, 4 * slots)), min(STEADY_DEFAULT, math.ceil(n / (4 * slots))), 1)
    repeat = min(slots, RAMP_REPEAT)
    ramp = [2 ** k for k in range(max(0, math.ceil(math.log2(steady)))) for _ in range(repeat)]
    head = _take(ramp, n)
    tail = _take(list(reversed(ramp)), n - sum(head))
    middle = n - sum(head) - sum(tail)
    body = [steady] * (middle // steady) + ([middle % steady] if middle % steady else [])
    return head + body + tail


def _take(sizes: list[int], budget: int) -> list[int]:
    """The leading `sizes` that fit in `budget`, the last one cut to fit."""
    out = []
    for size in sizes:
        if budget <= 0:
            break
        out.append(min(size, budget))
        budget -= out[-1]
    return out


class VideoSource(Datasource):
    """A Ray Datasource whose i-th read task yields the next `sizes[i]` rows of `todo.table`."""

    def __init__(self, todo: Corpus, sizes: list[int]):
        table = todo.table.combine_chunks()                               # one chunk: `take` is O(rows taken)
        self.table = table.add_column(0, "row", pa.array(np.arange(table.num_rows, dtype=np.int64)))
        self.sizes = sizes
        self._tasks: list[ReadTask] | None = None

    def estimate_inmemory_data_size(self) -> int:
        return self.table.nbytes

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None, **_) -> list[ReadTask]:
        """The read tasks (made once: Ray Data asks several times while planning)."""
        if self._tasks is None:
            self._tasks, start = [], 0
            for size in self.sizes:
                rows = self.table.take(np.arange(start, start + size))    # a compact copy: pickles small
                meta = BlockMetadata(num_rows=size, size_bytes=rows.nbytes, input_files=None, exec_stats=None)
                self._tasks.append(ReadTask(_Rows(rows), meta, schema=rows.schema))
                start += size
        return self._tasks

    def get_name(self) -> str:
        return "Videos"


class _Rows:
    """A read task's function: returns its rows (picklable, holds only them)."""

    def __init__(self, rows):
        self.rows = rows

    def __call__(self):
        return [self.rows]


def build_dataset(todo: Corpus, config: Config):
    """videos → decode (CPU tasks, one clip per yielded batch) → inference (actor pool) → results."""
    import ray

    from pipeline.run.decode_stage import decode_videos
    from pipeline.run.infer import ClipEmbedder

    ray.data.DataContext.get_current().enable_progress_bars = False   # our progress line replaces them
    plan = Plan(ray.cluster_resources(), config)
    sizes = task_sizes(len(todo), plan.slots, config.run.videos_per_task)
    ds = ray.data.read_datasource(VideoSource(todo, sizes), override_num_blocks=len(sizes), **plan.decode_args)
    ds = ds.map_batches(decode_videos, batch_size=None, fn_kwargs={"config": config.to_dict()}, **plan.decode_args)
    return ds.map_batches(
        ClipEmbedder, fn_constructor_kwargs={"config": config.to_dict()},
        batch_size=config.run.batch_size or (4 if plan.gpus else 1),
        compute=ray.data.ActorPoolStrategy(size=plan.actors), **plan.infer_args)   # Ray restarts dead actors


class Plan:
    """What the stages ask of the cluster (`resources`: `ray.cluster_resources()`).

    Inference: `actors` actors with `infer_args` each (see inference_resources). Decoding: tasks with
    `decode_args` — one CPU plus reserved memory (a clip of decoded frames plus the decoder), which bounds
    how many decoders share a node; read and decode get the same arguments, so Ray Data fuses them —
    and `slots` of them at once, the cluster's CPUs the actors leave free."""

    def __init__(self, resources: dict, config: Config):
        import ray

        run = config.run
        self.gpus, cpus = int(resources.get("GPU", 0)), resources.get("CPU", 1.0)
        self.actors = run.num_actors or max(self.gpus, 1)
        self.infer_args = inference_resources(self.gpus, cpus, self.actors)
        self.slots = run.num_decoders or max(1, int(cpus - self.infer_args["num_cpus"] * self.actors))
        self.decode_args = {"num_cpus": 1, "memory": run.decode_memory_mb * 2**20}
        if run.decode_resources:
            self.decode_args["resources"] = _declared(dict(run.decode_resources), resources)
        if run.num_decoders:
            self.decode_args["compute"] = ray.data.TaskPoolStrategy(size=run.num_decoders)


def _declared(wanted: dict, available: dict) -> dict:
    """`wanted` custom resources; warns when no node declares one yet (an autoscaling cluster will
    start such a node if one of its node types declares it; otherwise decoding would wait forever)."""
    missing = sorted(name for name in wanted if name not in available)
    if missing:
        log.warning("run.decode_resources asks for %s, which no running node declares (the cluster has %s): "
                    "decoding waits until a node declaring it joins (see cluster.yaml)", missing, sorted(available))
    return wanted


def inference_resources(gpus: int, cpus: float, actors: int) -> dict:
    """Ray resources of one inference actor. GPU actors take one GPU and at most one CPU; CPU actors
    take half the CPUs between them. Either way at least one CPU is left for decoding, or the pool
    would hold every CPU and the decode stage would never be scheduled."""
    if gpus:
        return {"num_gpus": 1, "num_cpus": round(min(1.0, max(0.1, (cpus - 1) / actors)), 2)}
    return {"num_cpus": max(0.5, min(cpus / 2, cpus - 1) / actors)}
