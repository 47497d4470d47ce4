"""Run a command as a child that ends when the process that started it dies.

    python -m leaklab.child_guard CMD [ARG ...]

A vLLM server runs in its own session (so `stop()` can signal its engine workers as one
process group) and would outlive a parent killed with SIGKILL, where no atexit hook runs.
PR_SET_PDEATHSIG cannot close that gap: it fires when the *thread* that forked exits, and a
server may be started from a Ray actor's worker thread. This guard watches its own parent
process instead: when `getppid()` changes (the parent died and the guard was re-parented), it
terminates its process group (the command and everything the command started), SIGKILL after a
grace period. A SIGTERM to the guard is passed on and waited for, so a caller that waits on the
guard waits for the command's shutdown. The guard exits with the command's exit code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

POLL_S = 0.5
GRACE_S = 20.0


def _end(child: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the command (its whole process group when the guard leads one, the guard itself
    excepted), wait up to `grace_s` for it, then SIGKILL whatever is left (the group: the guard too)."""
    group = os.getpgid(0) == os.getpid()
    if group:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.killpg(0, signal.SIGTERM)
    else:
        child.terminate()
    try:
        child.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    if group:
        os.killpg(0, signal.SIGKILL)  # engine workers that outlived the server, and the guard
    elif child.poll() is None:
        child.kill()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: python -m leaklab.child_guard CMD [ARG ...]", file=sys.stderr)
        return 2
    parent = os.getppid()
    child = subprocess.Popen(argv)

    def _pass_on(signum, _frame):
        if child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, _pass_on)
    signal.signal(signal.SIGINT, _pass_on)
    while True:
        try:
            code = child.wait(timeout=POLL_S)
            return code if code >= 0 else 128 - code
        except subprocess.TimeoutExpired:
            pass
        if os.getppid() != parent:
            _end(child, float(os.environ.get("LEAKLAB_GUARD_GRACE_S", GRACE_S)))
            return 1


if __name__ == "__main__":
    raise SystemExit(main())
