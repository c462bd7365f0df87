"""Rewinding the invoker to a checkpoint: the stored env, then the samples since that env, run again.

The env is stored at most every ENV_CHECKPOINT_SECONDS (a large env costs more to encode than a
commit), so a checkpoint may hold an env from a few samples before its cursor. Those samples are
committed already: running them again rebuilds the env, and their outputs are not stored again.
"""

from __future__ import annotations

import logging

import redis

from runtime import schema
from runtime.checkpoint import Checkpoint
from runtime.invoke import InvocationLost, Invoker
from runtime.reader import entry_sample

log = logging.getLogger(__name__)


def rewind(invoker: Invoker, checkpoint: Checkpoint, client: redis.Redis, keys: schema.Keys) -> int:
    """Bring the invoker to `checkpoint`; how many samples ran again."""
    if checkpoint.env_text is None:  # kept in memory only: what is there is the best there is
        log.warning("env_not_restored cursor=%s: the env is not durable, so it is not rolled back",
                    checkpoint.cursor and checkpoint.cursor.text())
        return 0
    invoker.restore(checkpoint.env_text, checkpoint.last_execution)
    start = checkpoint.replay_from()
    if start is None:
        return 0
    entries = client.xrange(keys.input_stream, min=f"({start.entry_id}", max=checkpoint.cursor.entry_id)
    samples = [entry_sample(entry_id, fields) for entry_id, fields in entries]
    lost: set[object] = set()
    while True:
        run = [sample for sample in samples if sample.cursor not in lost]
        done = 0
        try:
            for _ in invoker.invoke_batch([sample.request() for sample in run], with_env=False):
                done += 1
            break
        except InvocationLost:  # it was lost the first time too: its error is stored, its effects never were
            lost.add(run[done].cursor)
            invoker.restore(checkpoint.env_text, checkpoint.last_execution)
    env = invoker.env_data()  # the replay moved last_execution: put the committed one back
    if env.text is not None:
        invoker.restore(env.text, checkpoint.last_execution)
    log.info("replayed samples=%d after=%s upto=%s (committed before; outputs not stored again)", len(run),
             start.text(), checkpoint.cursor.text())
    return len(run)
