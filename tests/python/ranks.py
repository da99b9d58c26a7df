"""Runs a test file's rank program once per rank on this machine, over loopback, bounded in time:
every process ends (killed past the timeout) before the test goes on."""
import json
import os
import socket
import subprocess
import sys
import tempfile


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


def rank_results(test, script, world, timeout):
    """Runs `python script RANK WORLD PORT FOLDER` for each rank, the test failing with their
    stderr unless every rank exits 0; returns what each wrote with write_rank_result, rank 0 first."""
    with tempfile.TemporaryDirectory() as folder:
        codes, errs = run_ranks(script, world, [folder], timeout)
        test.assertEqual(codes, [0] * world, errs)
        results = []
        for r in range(world):
            with open(os.path.join(folder, f"rank{r}.json")) as fh:
                results.append(json.load(fh))
    return results


def write_rank_result(folder, rank, result):
    """A rank's result (JSON-serialisable), for rank_results."""
    with open(os.path.join(folder, f"rank{rank}.json"), "w") as fh:
        json.dump(result, fh)
