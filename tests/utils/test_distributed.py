import pytest

from contextrast.utils.distributed import first_host, slurm_environment


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [
        ("gpu[07-09,12],cpu3", "gpu07"),
        ("node1", "node1"),
        ("rack-a[001-004]", "rack-a001"),
        ("x[3],y[1-2]", "x3"),
        ("node1,node2", "node1"),
    ],
)
def test_first_host_of_a_slurm_node_list(nodelist, host):
    assert first_host(nodelist) == host


def test_slurm_variables_become_torchruns():
    slurm = {
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
        "SLURM_NTASKS_PER_NODE": "4(x2)",
    }
    assert slurm_environment(slurm) == {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "gpu07",
        "MASTER_PORT": "29500",
    }
    chosen = slurm_environment({**slurm, "MASTER_ADDR": "head", "MASTER_PORT": "1234"})
    assert (chosen["MASTER_ADDR"], chosen["MASTER_PORT"]) == ("head", "1234")
    with pytest.raises(ValueError, match="SLURM_LOCALID is None, expected a number; start"):
        slurm_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})
    with pytest.raises(ValueError, match="no SLURM_JOB_NODELIST and no MASTER_ADDR"):
        slurm_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0"})
    with pytest.raises(ValueError, match="SLURM node list ''"):
        first_host("")
