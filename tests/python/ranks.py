"""Runs a test file's rank program once per rank on this machine, over loopback, bounded in time:
every process ends (killed past the timeout) before the test goes on."""
import socket
import subprocess
import sys


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(script, world, args, timeout):
    """Runs `python script RANK WORLD PORT *args` for each rank; returns (exit codes, stderrs)."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, script, str(r), str(world), str(port), *map(str, args)],
                              stderr=subprocess.PIPE, text=True) for r in range(world)]
    try:
        errs = [p.communicate(timeout=timeout)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs], errs
