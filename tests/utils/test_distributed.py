import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from contextrast.utils import distributed
from contextrast.utils.distributed import (
    expand_nodelist,
    first_host,
    init_distributed,
    slurm_environment,
)

LAUNCH_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "CONTEXTRAST_DIST_TIMEOUT",
    "TORCHELASTIC_USE_AGENT_STORE",
)
SLURM_VARIABLES = (
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
    "SLURM_NTASKS_PER_NODE",
    "SLURM_STEP_TASKS_PER_NODE",
    "SLURM_STEP_NODELIST",
    "SLURM_JOB_NODELIST",
    "SLURM_NODELIST",
)
EXAMPLE = "expected e.g. 'node[01-03,07],gpu7'"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def launch_env(monkeypatch):
    """A clean launch environment: set(**variables), None removes one."""
    for name in LAUNCH_VARIABLES + SLURM_VARIABLES:
        monkeypatch.delenv(name, raising=False)

    def set_(**variables):
        for name, value in variables.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)

    return set_


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [
        ("gpu[07-09,12],cpu3", "gpu07"),
        ("node1", "node1"),
        ("rack-a[001-004]", "rack-a001"),
        ("x[3],y[1-2]", "x3"),
        ("node1,node2", "node1"),
        ("node[01-03,07]", "node01"),
        ("r[2-3]n[09-10]", "r2n09"),
    ],
)
def test_first_host_of_a_slurm_node_list(nodelist, host):
    assert first_host(nodelist) == host


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
        ("gpu[07-09,12],cpu3", ["gpu07", "gpu08", "gpu09", "gpu12", "cpu3"]),
        ("x[098-100]", ["x098", "x099", "x100"]),  # the padding is the first number's width
        ("n[8-10]", ["n8", "n9", "n10"]),
        ("r[1-2]n[01-02].ib", ["r1n01.ib", "r1n02.ib", "r2n01.ib", "r2n02.ib"]),
        ("a,b_c[5]", ["a", "b_c5"]),
    ],
)
def test_node_lists_expand_as_slurm_does(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize(
    ("nodelist", "reason"),
    [
        ("node[01-", "'[' at position 4 is not closed"),
        ("", "empty"),
        ("a,,b", "empty host name at position 2"),
        ("a,", "trailing ','"),
        (",a", "empty host name at position 0"),
        ("n[3-1]", "range '3-1' at position 1 runs backwards"),
        ("n[a-b]", "range 'a-b' at position 1: expected N or N-M"),
        ("n[1-2,]", "range '' at position 1: expected N or N-M"),
        ("n[]", "range '' at position 1: expected N or N-M"),
        ("n]", "']' at position 1 without '['"),
        ("n[1[2]]", "'[' at position 3 inside brackets"),
        ("node 1", "unexpected ' ' at position 4"),
        ("node;1", "unexpected ';' at position 4"),
    ],
)
def test_malformed_node_lists_are_refused(nodelist, reason):
    with pytest.raises(ValueError) as error:
        first_host(nodelist)
    assert str(error.value) == (
        f"SLURM_JOB_NODELIST={nodelist!r}: malformed host list ({reason}); {EXAMPLE}"
    )
    with pytest.raises(ValueError, match="SLURM_STEP_NODELIST="):
        expand_nodelist(nodelist, "SLURM_STEP_NODELIST")


SLURM = {
    "SLURM_PROCID": "5",
    "SLURM_NTASKS": "8",
    "SLURM_LOCALID": "1",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
    "SLURM_NTASKS_PER_NODE": "4(x2)",
}


def test_slurm_variables_become_torchruns():
    assert slurm_environment(SLURM) == {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "gpu07",
        "MASTER_PORT": "29500",
    }
    chosen = slurm_environment({**SLURM, "MASTER_ADDR": "head", "MASTER_PORT": "1234"})
    assert (chosen["MASTER_ADDR"], chosen["MASTER_PORT"]) == ("head", "1234")
    # srun's own step variables come first; tasks per node that differ give no local size
    step = slurm_environment(
        {**SLURM, "SLURM_STEP_NODELIST": "node[01-03,07]", "SLURM_STEP_TASKS_PER_NODE": "3(x2),2"}
    )
    assert (step["MASTER_ADDR"], step["LOCAL_WORLD_SIZE"]) == ("node01", "8")
    with pytest.raises(ValueError, match="SLURM_LOCALID is None, expected a number; start"):
        slurm_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})
    with pytest.raises(ValueError) as error:
        slurm_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0"})
    assert str(error.value) == "--launcher slurm: no SLURM_JOB_NODELIST and no MASTER_ADDR"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"SLURM_PROCID": "8"}, "SLURM_PROCID=8 must be below SLURM_NTASKS=8"),
        (
            {"SLURM_PROCID": "3", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": None},
            "SLURM_PROCID=3 must be below SLURM_NTASKS=2",
        ),
        ({"SLURM_NTASKS": "abc"}, "SLURM_NTASKS='abc': expected a positive integer"),
        ({"SLURM_NTASKS": "0"}, "SLURM_NTASKS='0': expected a positive integer"),
        ({"SLURM_PROCID": ""}, "SLURM_PROCID='': expected a non-negative integer"),
        ({"SLURM_LOCALID": "-1"}, "SLURM_LOCALID='-1': expected a non-negative integer"),
        ({"SLURM_LOCALID": "4"}, "SLURM_LOCALID=4 must be below 4 (SLURM_NTASKS_PER_NODE='4(x2)')"),
        (
            {"SLURM_NTASKS_PER_NODE": None, "SLURM_LOCALID": "8"},
            "SLURM_LOCALID=8 must be below SLURM_NTASKS=8",
        ),
        (
            {"SLURM_NTASKS_PER_NODE": "4(x"},
            "SLURM_NTASKS_PER_NODE='4(x': expected task counts per node such as '4(x2),3'",
        ),
        (
            {"SLURM_JOB_NODELIST": "node[01-"},
            f"SLURM_JOB_NODELIST='node[01-': malformed host list ('[' at position 4 is not "
            f"closed); {EXAMPLE}",
        ),
        (
            {"SLURM_STEP_NODELIST": "a,,b"},
            f"SLURM_STEP_NODELIST='a,,b': malformed host list (empty host name at position 2); "
            f"{EXAMPLE}",
        ),
        ({"MASTER_PORT": "http"}, "MASTER_PORT='http': expected a port from 1 to 65535"),
        (
            {"CONTEXTRAST_DIST_TIMEOUT": "soon"},
            "CONTEXTRAST_DIST_TIMEOUT='soon': expected a positive number of seconds (default 300)",
        ),
    ],
)
def test_bad_slurm_variables_are_named(changes, message):
    environ = {k: v for k, v in {**SLURM, **changes}.items() if v is not None}
    with pytest.raises(ValueError) as error:
        slurm_environment(environ)
    assert str(error.value) == f"--launcher slurm: {message}"


TWO = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc': expected a positive integer"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0': expected a positive integer"),
        ({"WORLD_SIZE": " 2"}, "WORLD_SIZE=' 2': expected a positive integer"),
        ({"RANK": "2"}, "RANK=2 must be below WORLD_SIZE=2"),
        ({"RANK": "-1"}, "RANK='-1': expected a non-negative integer"),
        (
            {"RANK": "1", "WORLD_SIZE": None},
            "RANK=1 must be below WORLD_SIZE=1 (WORLD_SIZE is not set)",
        ),
        (
            {"RANK": None},
            "RANK is not set but WORLD_SIZE=2: expected this process's rank, 0 to 1 (start the "
            "processes with torchrun, or srun and --launcher slurm)",
        ),
        ({"LOCAL_RANK": "x"}, "LOCAL_RANK='x': expected a non-negative integer"),
        ({"LOCAL_RANK": "3"}, "LOCAL_RANK=3 must be below WORLD_SIZE=2"),
        (
            {"WORLD_SIZE": "4", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"},
            "LOCAL_RANK=2 must be below LOCAL_WORLD_SIZE=2",
        ),
        ({"LOCAL_WORLD_SIZE": "4"}, "LOCAL_WORLD_SIZE=4 must not exceed WORLD_SIZE=2"),
        ({"LOCAL_WORLD_SIZE": "0"}, "LOCAL_WORLD_SIZE='0': expected a positive integer"),
        (
            {"MASTER_ADDR": None},
            "MASTER_ADDR is not set but WORLD_SIZE=2: expected the host of RANK=0",
        ),
        ({"MASTER_ADDR": ""}, "MASTER_ADDR='': expected the host name or address of RANK=0"),
        (
            {"MASTER_PORT": None},
            "MASTER_PORT is not set but WORLD_SIZE=2: expected a port from 1 to 65535",
        ),
        ({"MASTER_PORT": "70000"}, "MASTER_PORT='70000': expected a port from 1 to 65535"),
        ({"MASTER_PORT": "0"}, "MASTER_PORT='0': expected a port from 1 to 65535"),
        ({"MASTER_PORT": "29500x"}, "MASTER_PORT='29500x': expected a port from 1 to 65535"),
        (
            {"CONTEXTRAST_DIST_TIMEOUT": "0"},
            "CONTEXTRAST_DIST_TIMEOUT='0': expected a positive number of seconds (default 300)",
        ),
        (
            {"CONTEXTRAST_DIST_TIMEOUT": "inf"},
            "CONTEXTRAST_DIST_TIMEOUT='inf': expected a positive number of seconds (default 300)",
        ),
    ],
)
def test_bad_torchrun_variables_stop_before_the_rendezvous(launch_env, changes, message):
    launch_env(**{**TWO, "CONTEXTRAST_DIST_TIMEOUT": "2", **changes})
    start = time.monotonic()
    with pytest.raises(ValueError) as error:
        init_distributed("cpu")
    assert str(error.value) == message
    assert time.monotonic() - start < 1  # refused, not waited for


def test_one_process_needs_no_rendezvous_variables(launch_env):
    launch_env(MASTER_PORT="junk", LOCAL_RANK="0")  # unused with one process
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.local_rank, info.is_main) == (0, 1, 0, True)


def test_a_rendezvous_nobody_joins_times_out_naming_what_it_waited_for(launch_env):
    port = free_port()
    launch_env(**{**TWO, "MASTER_PORT": str(port), "CONTEXTRAST_DIST_TIMEOUT": "0.5"})
    start = time.monotonic()
    with pytest.raises(distributed.RendezvousError) as error:  # RANK 0 alone
        init_distributed("cpu")
    assert str(error.value) == (
        f"rendezvous timed out after 0.5 s: 1 of WORLD_SIZE=2 processes reached "
        f"MASTER_ADDR:MASTER_PORT=127.0.0.1:{port} (this is RANK=0); start the others or raise "
        "CONTEXTRAST_DIST_TIMEOUT (seconds, default 300) to wait longer"
    )
    launch_env(RANK="1")  # and RANK 1 where nothing listens
    with pytest.raises(distributed.RendezvousError) as error:
        init_distributed("cpu")
    assert str(error.value) == (
        f"rendezvous timed out after 0.5 s: RANK=1 could not reach "
        f"MASTER_ADDR:MASTER_PORT=127.0.0.1:{port} (connection refused); is RANK=0 of "
        "WORLD_SIZE=2 running there? Raise CONTEXTRAST_DIST_TIMEOUT (seconds, default 300) to "
        "wait longer"
    )
    assert time.monotonic() - start < 4
    assert isinstance(error.value, ValueError)  # the command line's one-line errors


def test_an_unknown_master_or_a_taken_port_is_said_at_once(launch_env):
    launch_env(**{**TWO, "RANK": "1", "MASTER_ADDR": "no-such-host.invalid"})
    with pytest.raises(distributed.RendezvousError) as error:
        init_distributed("cpu")
    assert str(error.value).startswith("MASTER_ADDR='no-such-host.invalid': unknown host (")
    # RANK 0 too: its store would otherwise retry the unknown host for minutes.
    launch_env(**{**TWO, "RANK": "0", "MASTER_ADDR": "no-such-host.invalid"})
    start = time.monotonic()
    with pytest.raises(distributed.RendezvousError) as error:
        init_distributed("cpu")
    assert str(error.value).startswith("MASTER_ADDR='no-such-host.invalid': unknown host (")
    assert time.monotonic() - start < 10
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        launch_env(**{**TWO, "MASTER_PORT": str(port)})
        start = time.monotonic()
        with pytest.raises(distributed.RendezvousError) as error:
            init_distributed("cpu")
    assert str(error.value) == (
        f"MASTER_PORT={port}: RANK=0 cannot serve the rendezvous on it (address already in "
        "use); choose a free port"
    )
    assert time.monotonic() - start < 1


# A process as `contextrast train` runs it before its run starts: SIGTERM and SIGINT raise
# KeyboardInterrupt. It loads distributed.py on its own (the package imports every model:
# seconds), so the test stays short; that file imports only torch.
PROCESS = """
import importlib.util, signal, sys, time
spec = importlib.util.spec_from_file_location("distributed", sys.argv[1])
distributed = sys.modules["distributed"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(distributed)

def stop(signum, _frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)

signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
print("waiting", flush=True)
try:
    info = distributed.init_distributed("cpu")
    import torch
    total = distributed.all_reduce_sum(torch.tensor([info.rank + 1.0]))
    print("sum", int(total.item()), flush=True)
    distributed.cleanup()
except KeyboardInterrupt as error:
    print("interrupted", error, time.monotonic(), flush=True)  # one clock for all processes
    sys.exit(130)
except ValueError as error:
    print("error", error, flush=True)
    sys.exit(2)
"""


def start_processes(ranks, port, world=2, timeout="60"):
    base = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    return [
        subprocess.Popen(
            [sys.executable, "-c", PROCESS, distributed.__file__],
            env={
                **base,
                "OMP_NUM_THREADS": "1",
                "RANK": str(rank),
                "WORLD_SIZE": str(world),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "CONTEXTRAST_DIST_TIMEOUT": timeout,
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in ranks
    ]


def test_sigterm_and_sigint_end_a_process_waiting_for_its_peers():
    # RANK 0 waits for RANK 1 (never started); RANK 1 of another group waits for a RANK 0
    # that never listens. Both would wait CONTEXTRAST_DIST_TIMEOUT (60 s) without the signal.
    master, worker = start_processes([0], free_port()) + start_processes([1], free_port())
    try:
        for process in (master, worker):
            assert process.stdout.readline() == "waiting\n", process.stderr.read()[-2000:]
        time.sleep(0.5)  # well inside the rendezvous (it starts microseconds after "waiting")
        assert master.poll() is None and worker.poll() is None
        master.send_signal(signal.SIGTERM)
        worker.send_signal(signal.SIGINT)
        sent = time.monotonic()
        outputs = [p.communicate(timeout=10)[0].split() for p in (master, worker)]
    finally:
        for process in (master, worker):
            if process.poll() is None:
                process.kill()
                process.wait()
    assert (master.returncode, outputs[0][:2]) == (130, ["interrupted", "SIGTERM"])
    assert (worker.returncode, outputs[1][:2]) == (130, ["interrupted", "SIGINT"])
    assert all(float(out[2]) - sent < 1 for out in outputs)  # handled at once, not after 60 s


def test_two_processes_meet_and_reduce():
    processes = start_processes([0, 1], free_port(), timeout="30")
    try:
        outputs = [p.communicate(timeout=60) for p in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, (out, err) in zip(processes, outputs):
        assert (process.returncode, out) == (0, "waiting\nsum 3\n"), err[-2000:]


def test_a_second_process_with_the_same_rank_is_refused():
    port = free_port()

    def launch(rank):
        return distributed.Launch(rank, 2, 0, None, "127.0.0.1", port, 5.0)

    with ThreadPoolExecutor(2) as pool:  # RANK 0 and RANK 1 meet (in threads: no process group)
        stores = list(pool.map(distributed._rendezvous, [launch(0), launch(1)]))
    start = time.monotonic()
    with pytest.raises(distributed.RendezvousError) as error:
        distributed._rendezvous(launch(1))
    assert str(error.value) == (
        f"RANK=1: another process at MASTER_ADDR:MASTER_PORT=127.0.0.1:{port} has the same "
        "RANK; give each of the WORLD_SIZE=2 processes its own, 0 to 1"
    )
    assert time.monotonic() - start < 1 and len(stores) == 2


def test_the_command_line_reports_a_bad_launch_in_one_line(
    launch_env, capsys, tmp_path, monkeypatch
):
    from contextrast import cli

    monkeypatch.chdir(tmp_path)
    launch_env(SLURM_PROCID="0", SLURM_NTASKS="2", SLURM_LOCALID="0", SLURM_JOB_NODELIST="node[01-")
    assert cli.main(["train", "digits/contextrast.yaml", "--launcher", "slurm"]) == 2
    assert capsys.readouterr().err == (
        "contextrast train: error: --launcher slurm: SLURM_JOB_NODELIST='node[01-': malformed "
        f"host list ('[' at position 4 is not closed); {EXAMPLE}\n"
    )
    launch_env(SLURM_JOB_NODELIST="node[01-02]", SLURM_PROCID="3")
    assert cli.main(["train", "digits/contextrast.yaml", "--launcher", "slurm"]) == 2
    assert capsys.readouterr().err == (
        "contextrast train: error: --launcher slurm: SLURM_PROCID=3 must be below SLURM_NTASKS=2\n"
    )
    for name in SLURM_VARIABLES:
        launch_env(**{name: None})
    launch_env(RANK="2", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500")
    argv = ["train", "digits/contextrast.yaml", "--set", f"run.output_dir={tmp_path}"]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == (
        "contextrast train: error: RANK=2 must be below WORLD_SIZE=2\n"
    )
    assert not any(tmp_path.iterdir())  # nothing written


def test_several_srun_tasks_without_the_slurm_launcher_are_refused():
    from contextrast.utils.distributed import check_one_launch

    step = {"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}
    with pytest.raises(ValueError, match=r"SLURM_STEP_NUM_TASKS=2: this is task 1 of an srun step"):
        check_one_launch(step)
    check_one_launch({**step, "SLURM_STEP_NUM_TASKS": "1"})  # one task: one run
    check_one_launch({**step, "RANK": "1"})  # torchrun under srun: its variables decide
    check_one_launch({"SLURM_NTASKS": "2", "SLURM_PROCID": "0"})  # the batch script itself
