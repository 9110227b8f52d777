"""`python -m pipelines ...`: see pipelines.cli."""

import gc
import sys

from pipelines import stopping
from pipelines.cli import main

if __name__ == "__main__":
    stopping.arm_watchdog()  # this process is the command's own: a stop stuck in TensorFlow may end it
    code = main()
    # The interpreter's last garbage collection walks TensorFlow's object graph for seconds
    # after a training's last line: nothing is left to free that the exit won't free anyway.
    gc.freeze()
    sys.exit(code)
