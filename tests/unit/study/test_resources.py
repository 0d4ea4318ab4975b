"""`fakd.study.cluster`'s resource checks: a trial that cannot run on this machine, or on any node of the cluster
(all its data-parallel workers at once), is one line naming the key, before any trial starts."""

import pytest

from fakd.errors import UserError
from fakd.study import cluster


@pytest.fixture
def four_cores_no_gpu(monkeypatch):
    monkeypatch.setattr(cluster.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(cluster, "local_gpu_count", lambda: 0)


@pytest.mark.parametrize(("cpu", "gpu", "workers", "key", "says"), [
    (1, 1, 1, "resources.gpu", "asks for 1 GPU but this machine has none"),
    (8, 0, 1, "resources.cpu", "asks for 8 CPUs but this machine has 4"),
    (3, 0, 2, "resources.workers", "2 workers of 3 CPUs each need 6 CPUs but this machine has 4"),
])
def test_a_trial_this_machine_cannot_hold_is_refused(four_cores_no_gpu, cpu, gpu, workers, key, says):
    with pytest.raises(UserError) as error:
        cluster.check_local_resources(cpu, gpu, "spec.yaml", workers)
    assert error.value.key == key and says in error.value.message and error.value.file == "spec.yaml"


def test_a_trial_that_fits_passes(four_cores_no_gpu):
    cluster.check_local_resources(2, 0, "spec.yaml", workers=2)
    cluster.check_local_resources(0.5, 0, "spec.yaml", workers=8)  # 8 × 0.5 CPUs fit in 4


def test_a_cluster_without_a_node_that_fits_is_refused(monkeypatch):
    nodes = [{"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}},
             {"Alive": True, "Resources": {"CPU": 4.0, "GPU": 2.0}},
             {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]  # a lost node counts for nothing
    monkeypatch.setattr(cluster.ray, "nodes", lambda: nodes)
    assert cluster.largest_node_cpus() == 8.0
    cluster.check_cluster_resources(4, 1, "spec.yaml")
    cluster.check_cluster_resources(4, 1, "spec.yaml", workers=2)  # one on each node: the CPUs of the second
    with pytest.raises(UserError, match="largest node: 8.0 CPU, 2.0 GPU") as error:
        cluster.check_cluster_resources(4, 4, "spec.yaml")
    assert error.value.key == "resources.gpu"
    with pytest.raises(UserError, match="hold at most 2 such workers") as error:  # the first has 1 GPU
        cluster.check_cluster_resources(4, 1, "spec.yaml", workers=3)
    assert error.value.key == "resources.workers"
