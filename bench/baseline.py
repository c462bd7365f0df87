"""The polling baseline: how the course's reference runtime behaves, for side-by-side measurements.

Every INTERVAL seconds it GETs the input key, runs the handler on whatever is there (the same
sample again if nothing new arrived) and SETs the output. `python -m bench.baseline` runs it with
the same environment variables as the reference.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import time
from types import SimpleNamespace

import redis


def main() -> int:
    client = redis.Redis(host=os.environ.get("REDIS_HOST", "localhost"), port=int(os.environ.get("REDIS_PORT", 6379)),
                         decode_responses=True)
    input_key, output_key = os.environ["REDIS_INPUT_KEY"], os.environ.get("REDIS_OUTPUT_KEY")
    interval = float(os.environ.get("INTERVAL", 5))
    spec = importlib.util.spec_from_file_location("usermodule", os.environ["FUNCTION_PATH"])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    context = SimpleNamespace(env={}, last_execution=None, host="", port=0, input_key=input_key,
                              output_key=output_key, function_getmtime="")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        data = client.get(input_key)
        if data:
            output = module.handler(json.loads(data), context)
            if output and output_key:
                client.set(output_key, json.dumps(output))
        time.sleep(interval)


if __name__ == "__main__":
    sys.exit(main())
