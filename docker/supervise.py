"""Run a container's command so that a stop reaches all of it, and end only after all of it ended.

    python docker/supervise.py mlflow run . -e mnist_cnn --env-manager local

`docker stop` sends SIGTERM to PID 1 (tini, with compose's `init: true`), which passes it to
this process. `mlflow run` dies at once on SIGTERM and leaves its training child running;
were it the container's main process, the container would end right then and SIGKILL the
child mid-epoch, its run left RUNNING. So this process starts the command in a process
group of its own, sends the whole group SIGTERM on SIGTERM or SIGINT, adopts the command's
orphaned descendants (a Linux child subreaper), and exits only once none is left, with the
command's exit code. Standard library only: it starts before anything else is imported.
"""

import ctypes
import os
import signal
import subprocess
import sys

PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def main(command):
    if not command:
        print("usage: supervise.py COMMAND [ARGUMENT ...]", file=sys.stderr)
        return 2
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        child = subprocess.Popen(command, process_group=0)
    except OSError as error:
        print(f"error: {command[0]}: {error.strerror or error}", file=sys.stderr)
        return 127

    def stop_all(signum, frame):
        try:
            os.killpg(child.pid, signal.SIGTERM)  # SIGTERM, not SIGINT: mlflow run then ends without a word
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop_all)
    code = 0
    while True:  # every descendant, adopted or not, until none is left
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid == child.pid:
            code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as a shell reports it


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
