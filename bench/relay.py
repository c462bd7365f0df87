"""The platform's floor for freshness: the least a Python consumer can do per sample.

It blocks on the input stream and, for each entry, adds the sample's timestamp to the output stream:
no handler, no checkpoint, no worker, no exactly-once. What the runtime takes beyond this is its own
cost; what this takes is the wake-ups of three processes and Redis on this machine.
`python -m bench.relay` with REDIS_PORT, REDIS_INPUT_KEY and REDIS_OUTPUT_KEY set.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import redis

from runtime import schema


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    client = redis.Redis(port=int(os.environ["REDIS_PORT"]), decode_responses=True)
    source, target = f"{os.environ['REDIS_INPUT_KEY']}:stream", f"{os.environ['REDIS_OUTPUT_KEY']}:stream"
    newest = client.xrevrange(source, count=1)
    cursor = newest[0][0] if newest else "0-0"
    while True:
        for _, entries in client.xread({source: cursor}, block=5000) or ():
            for entry_id, fields in entries:
                cursor = entry_id
                timestamp = json.loads(fields[schema.SAMPLE_FIELD])[schema.TIMESTAMP]
                client.xadd(target, {schema.TIMESTAMP: timestamp, schema.OUTPUT_FIELD: "{}"})


if __name__ == "__main__":
    sys.exit(main())
