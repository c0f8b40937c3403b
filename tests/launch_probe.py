"""A stand-in component for the launcher tests: does what its config file says."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    report = Path(config["report"])
    print("probe out", flush=True)
    print("probe err", file=sys.stderr, flush=True)
    facts = {
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "sid": os.getsid(0),
        "env": os.environ.get(config.get("env_name", ""), None),
        "argv": sys.argv,
    }
    report.write_text(json.dumps(facts))
    if config.get("late_write"):  # a non-daemon thread outliving main, as the interpreter allows

        def late() -> None:
            time.sleep(0.2)
            Path(config["late_write"]).write_text("written after main returned")

        threading.Thread(target=late).start()
    if config.get("sleep"):
        time.sleep(float(config["sleep"]))
    if config.get("exit"):
        raise SystemExit(int(config["exit"]))


if __name__ == "__main__":
    main()
