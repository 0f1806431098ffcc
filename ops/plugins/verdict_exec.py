#!/usr/bin/env python3
"""Example verdict program for inpaint-worker's exec stage (protocol inpaint-stage.v1).

    [[chain.stages]]
    type = "exec"
    program = "python3"
    args = ["ops/plugins/verdict_exec.py", "--block-word", "forbidden"]
    hooks = ["before-inference"]

The worker starts it once and keeps it running: each request is one JSON line on stdin, each
answer one JSON line on stdout (flushed). Logs go to stderr, never prompts. It exits when stdin
closes. A request it cannot handle makes it exit with an error (the worker restarts it), which
is simpler and safer than guessing an answer. See example_policy.py for what it decides.
"""

import argparse
import json
import sys

import example_policy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    example_policy.add_arguments(parser)
    policy = example_policy.Policy(parser.parse_args())
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            return 0  # the worker closed stdin: shut down
        request = json.loads(line)
        response = policy.decide(request)
        response["id"] = request["id"]
        sys.stdout.write(json.dumps(response) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
