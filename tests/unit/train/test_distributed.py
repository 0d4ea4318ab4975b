"""Data-parallel training: 2 CPU processes (torch.distributed, gloo) against one process, the pooled FAKD covariance,
exact kill-and-resume, the data-parallel teacher and study, and resource checks (the relay between a Tune trial and
its Train run: tests/unit/study/test_data_parallel.py).

Equality of 2 workers × batch 4 with 1 worker × batch 8 needs what equality of gradient accumulation needs (see
`accumulated_step`): BatchNorm in eval mode (on CPU each worker normalises with its own batch statistics; torch's
SyncBatchNorm, which `fit` uses on GPUs, runs on GPUs only), no dropout, CE without ignored pixels (each worker's
CE is a mean over its own labelled pixels), equal pixel and map counts per worker for KD and CWD. FAKD needs nothing
more: its covariance is pooled over the workers before the bound uses it, so the bound is exact at any strength.
Tolerances: parameters rtol 1e-5 / atol 1e-7 and loss terms rel 1e-5 (float32 sums in another order; observed
≤ 5e-7 relative), pooled float64 moments of the same float64 features rtol 1e-12, covariance of the models' float32
features rtol 1e-5 (observed 4e-12), validation mIoU of the 2-process evaluation vs one process abs 1e-3 (observed
equal); kill-and-resume is bit-exact (torch.equal).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as torch_dist
from conftest import TINY_SPEC, write_spec

from fakd.cli import main
from fakd.errors import UserError
from fakd.losses import ClassCovariance
from fakd.spec import validate_spec
from fakd.train import DistContext, ensure_teacher, fit, teacher_key
from fakd.train.checkpoint import latest_checkpoint, load_checkpoint
from fakd.train.data import build_splits, eval_loader, train_loader
from fakd.train.loop import Accelerator, accumulated_step, evaluate
from fakd.train.objective import SegmentationObjective
from fakd.train.optim import build_optimizer
from fakd.train.teacher import build_model, model_config

WORLD = 2
STEP_CASES = {  # name: (arm, covariance)
    "baseline": ("baseline", "diagonal"),
    "kd+fakd": ("kd+fakd", "diagonal"),
    "kd+fakd-full": ("kd+fakd", "full"),
    "cwd+fakd": ("cwd+fakd", "diagonal"),
}


def tiny_config(arm: str = "kd+fakd", **train: Any):
    cfg = validate_spec(copy.deepcopy(TINY_SPEC), "tiny.yaml").run_config(arm)
    return cfg.model_copy(update={"train": cfg.train.model_copy(update=train)}) if train else cfg


def step_config(case: str, batch_size: int):
    """The one-step comparison's run: a constant FAKD strength of 1 from the first step, no ignored pixels."""
    arm, covariance = STEP_CASES[case]
    cfg = tiny_config(arm, batch_size=batch_size)
    loss = cfg.loss.model_copy(update={"fakd": cfg.loss.fakd.model_copy(update={"covariance": covariance})})
    return cfg.model_copy(update={"loss": loss, "data": cfg.data.model_copy(update={"scale_range": (1.0, 1.5)})})


def random_teacher(cfg):
    return build_model(model_config(cfg.teacher), cfg.data.num_classes, seed=123).eval()


def one_update(cfg, splits, batch, dist: DistContext | None = None):
    """The student after one optimizer step on `batch` with BatchNorm in eval mode; its objective and terms."""
    model = build_model(cfg.student, splits.num_classes, cfg.train.seed).eval()
    reduce = dist.all_reduce_sum if dist is not None and dist.distributed else None
    objective = SegmentationObjective(cfg.effective_loss, splits.num_classes, model.feature_dim, cfg.train.iters,
                                      all_reduce=reduce)
    terms = accumulated_step(model, objective, build_optimizer(model, cfg.train), [batch], 0, random_teacher(cfg),
                             dist=dist)
    return model, objective, {name: float(value) for name, value in terms.items()}


def covariance_data(full: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 features 4×3×5×5 of 4 classes (one unseen), labels with ignore pixels."""
    gen = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 3, (4, 5, 5), generator=gen)
    labels[torch.rand(4, 5, 5, generator=gen) < 0.2] = 255
    features = torch.randn(4, 3, 5, 5, generator=gen, dtype=torch.float64) * 3 + 7
    return features, labels


class Stop(Exception):
    pass


# ------------------------------------------------------------------------------- what each of the 2 processes runs


def _process(rank: int, rendezvous: str, out: str) -> None:
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)
    try:
        dist = DistContext.current()
        out_dir = Path(out)
        _one_steps(dist, out_dir)
        _pooled_covariance(dist, out_dir)
        _kill_and_resume(dist, out_dir)
        artifact = ensure_teacher(tiny_config(), out_dir / "teachers", progress=False)
        torch.save({"key": artifact.key, "path": str(artifact.path)}, out_dir / f"teacher-{rank}.pt")
    finally:
        torch_dist.destroy_process_group()


def _one_steps(dist: DistContext, out: Path) -> None:
    for case in STEP_CASES:
        cfg = step_config(case, batch_size=4)
        splits = build_splits(cfg)
        (batch,) = itertools.islice(train_loader(cfg, splits.train, 1, 0, dist), 1)
        model, objective, terms = one_update(cfg, splits, batch, dist)
        covariance = objective.covariance
        torch.save({"model": model.state_dict(), "terms": terms, "labels": batch[1],
                    "count": None if covariance is None else covariance.count,
                    "covariance": None if covariance is None else covariance.covariance},
                   out / f"step-{case}-{dist.rank}.pt")


def _pooled_covariance(dist: DistContext, out: Path) -> None:
    found = {}
    for full in (False, True):
        features, labels = covariance_data(full)
        estimator = ClassCovariance(4, 3, full=full, all_reduce=dist.all_reduce_sum)
        for half in (slice(0, 2), slice(2, 4)):  # two global batches of 2 images: 1 per process
            mine = range(half.start + dist.rank, half.stop, WORLD)
            estimator.update(features[list(mine)], labels[list(mine)])
        found[full] = (estimator.count, estimator.mean, estimator.running_m2.clone(), estimator.covariance)
    torch.save(found, out / f"covariance-{dist.rank}.pt")


def _kill_and_resume(dist: DistContext, out: Path) -> None:
    cfg = tiny_config("kd+fakd", iters=6, eval_every=2)
    splits = build_splits(cfg)
    teacher = random_teacher(cfg)
    reports: list[dict[str, Any]] = []
    straight = build_model(cfg.student, splits.num_classes, cfg.train.seed)
    fit(cfg, straight, splits, out / "straight", teacher=teacher, report=lambda m, d: reports.append(m),
        progress=False, dist=dist)

    def crash_after_the_second_checkpoint(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        if metrics["iteration"] == 4:
            raise Stop

    interrupted = build_model(cfg.student, splits.num_classes, cfg.train.seed)
    with contextlib.suppress(Stop):
        fit(cfg, interrupted, splits, out / "run", teacher=teacher, report=crash_after_the_second_checkpoint,
            progress=False, dist=dist)
    torch.manual_seed(999 + dist.rank)  # a resumed process starts from other RNG states and weights
    resumed = build_model(cfg.student, splits.num_classes, seed=7)
    replayed: list[dict[str, Any]] = []
    fit(cfg, resumed, splits, out / "run", teacher=teacher, resume_from="latest", replay=True,
        report=lambda m, d: replayed.append(m), progress=False, dist=dist)
    torch.save({"straight": straight.state_dict(), "resumed": resumed.state_dict(), "reports": reports,
                "replayed": replayed}, out / f"fit-{dist.rank}.pt")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    """Everything the 2 gloo processes compute, run once: one-step updates, pooled covariances, a straight and a
    killed-then-resumed run, a teacher. Forked: they start with the torch and timm this process imported (a
    spawned process would spend seconds of CPU importing them again)."""
    out = tmp_path_factory.mktemp("data_parallel")
    rendezvous = out / f"rendezvous-{uuid.uuid4().hex}"
    torch.multiprocessing.start_processes(_process, args=(str(rendezvous), str(out)), nprocs=WORLD, join=True,
                                          start_method="fork")
    return out


def ranks(out: Path, name: str) -> list[Any]:
    return [torch.load(out / f"{name}-{rank}.pt", weights_only=False) for rank in range(WORLD)]


# ---------------------------------------------------------------------------------------------------------- tests


def test_each_process_takes_its_slice_of_every_global_batch():
    cfg = tiny_config(batch_size=2, accumulate=2)
    splits = build_splits(cfg)
    one = [keys for keys in train_loader(cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"batch_size": 4})}), splits.train, 6, 2).batch_sampler]
    parts = [list(train_loader(cfg, splits.train, 6, 2, DistContext(rank, WORLD)).batch_sampler) for rank in range(2)]
    assert [a + b for a, b in zip(*parts, strict=True)] == one  # resumed at micro-batch 2: the same stream
    evaluation = [list(eval_loader(cfg, splits.evaluation, DistContext(rank, WORLD)).dataset.dataset.indices)
                  for rank in range(WORLD)]
    assert sorted(evaluation[0] + evaluation[1]) == list(range(len(splits.evaluation)))


@pytest.mark.parametrize("case", list(STEP_CASES))
def test_two_workers_make_the_update_of_one_worker_with_twice_the_batch(two_processes, case):
    found = ranks(two_processes, f"step-{case}")
    cfg = step_config(case, batch_size=8)
    splits = build_splits(cfg)
    ((images, labels),) = itertools.islice(train_loader(cfg, splits.train, 1, 0), 1)
    assert torch.equal(torch.cat([f["labels"] for f in found]), labels) and (labels != 255).all()
    model, objective, terms = one_update(cfg, splits, (images, labels))
    initial = build_model(cfg.student, splits.num_classes, cfg.train.seed).state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(found[0]["model"][name], found[1]["model"][name]), name  # one model in every process
        torch.testing.assert_close(found[0]["model"][name], value, rtol=1e-5, atol=1e-7, msg=name)
    assert not torch.equal(model.state_dict()["head.classifier.weight"], initial["head.classifier.weight"])
    assert set(found[0]["terms"]) == set(terms)
    for name, value in terms.items():  # each process's loss is the mean over its half: their mean is the whole's
        mean = sum(f["terms"][name] for f in found) / WORLD
        assert mean == pytest.approx(value, rel=1e-5, abs=1e-7), name
    if objective.covariance is not None:  # FAKD's strength is 1 here: the pooled covariance made the bound exact
        assert terms["fakd_strength"] == 1.0
        assert torch.equal(found[0]["count"], objective.covariance.count)
        assert torch.equal(found[0]["covariance"], found[1]["covariance"])
        torch.testing.assert_close(found[0]["covariance"], objective.covariance.covariance, rtol=1e-5, atol=1e-7)


def test_pooled_covariance_equals_the_single_process_one(two_processes):
    found = ranks(two_processes, "covariance")
    for full in (False, True):
        features, labels = covariance_data(full)
        single = ClassCovariance(4, 3, full=full)
        single.update(features[:2], labels[:2])
        single.update(features[2:], labels[2:])
        for stats in found:
            count, mean, m2, covariance = stats[full]
            assert torch.equal(count, single.count) and count[3] == 0
            torch.testing.assert_close(mean, single.mean, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(m2, single.running_m2, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(covariance, single.covariance, rtol=1e-6, atol=0.0)  # float32 view
        assert torch.equal(found[0][full][2], found[1][full][2])


def test_data_parallel_kill_and_resume_reaches_the_same_weights(two_processes):
    found = ranks(two_processes, "fit")
    for rank in range(WORLD):
        for (name, a), b in zip(found[rank]["straight"].items(), found[rank]["resumed"].values(), strict=True):
            assert torch.equal(a, b), (rank, name)
    for name, value in found[0]["resumed"].items():
        assert torch.equal(value, found[1]["resumed"][name]), name
    reports = found[0]["reports"]
    assert [m["iteration"] for m in reports] == [2, 4, 6]
    assert [m["iteration"] for m in found[0]["replayed"]] == [4, 6]  # the resumed checkpoint's metrics first
    assert found[0]["replayed"][-1]["val_miou"] == reports[-1]["val_miou"] == found[1]["reports"][-1]["val_miou"]
    assert reports[-1]["loss"] == found[1]["reports"][-1]["loss"]  # averaged over the processes

    # rank 0 wrote the checkpoints: the last one alone, whole, with both processes' RNG streams
    checkpoints = two_processes / "straight" / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["iter_0000006"]
    state = load_checkpoint(latest_checkpoint(checkpoints))
    assert state["world_size"] == WORLD and len(state["rng_by_rank"]) == WORLD
    # its metrics cover the whole validation split: the final model scored by one process gives the same mIoU
    cfg = tiny_config("kd+fakd", iters=6, eval_every=2)
    splits = build_splits(cfg)
    model = build_model(cfg.student, splits.num_classes, cfg.train.seed)
    model.load_state_dict(state["model"])
    single = evaluate(model, eval_loader(cfg, splits.evaluation), splits.num_classes, Accelerator.for_run(cfg))
    # (batches of 2 images per process instead of 4: a float32 near-tie could flip a pixel, at most ~1e-4 of mIoU)
    assert single["val_miou"] == pytest.approx(reports[-1]["val_miou"], abs=1e-3)

    # a checkpoint of 2 workers does not resume with 1: the data stream would change
    with pytest.raises(ValueError, match="2 worker"):
        fit(cfg, build_model(cfg.student, splits.num_classes, 0), splits, two_processes / "straight",
            teacher=random_teacher(cfg), resume_from="latest", progress=False)


def test_a_data_parallel_teacher_has_a_key_of_its_own(two_processes):
    first, second = ranks(two_processes, "teacher")
    assert first == second and first["key"] == teacher_key(tiny_config(), WORLD) != teacher_key(tiny_config())
    assert Path(first["path"]).is_file() and not (Path(first["path"]).parent / "work").exists()


@pytest.mark.ray
def test_a_damaged_label_file_fails_a_data_parallel_teacher_with_the_file_named(tmp_path, ray_local):
    """Through a real Ray Train run of 2 workers: the data error reaches the driver as one `UserError`."""
    from test_study import camvid_study_spec

    from fakd.results import StudyDir
    from fakd.spec import load_spec
    from fakd.study.data_parallel import Scaling, ensure_teacher_data_parallel

    data, spec = camvid_study_spec(tmp_path, num_samples=1)
    for path in (data / "trainannot").glob("*.png"):
        path.write_bytes(path.read_bytes()[:40])
    cfg = load_spec(spec).run_config("baseline")
    study = StudyDir(tmp_path / "study")
    study.root.mkdir()
    with pytest.raises(UserError, match="cannot read label file") as error:
        ensure_teacher_data_parallel(cfg, study, Scaling(WORLD, 1.0, 0.0))
    assert str(data / "trainannot") in error.value.format()
    assert not list(study.teachers.rglob("*.pt")), "a teacher was written"


@pytest.mark.ray
@pytest.mark.slow  # about 2 minutes on 2 cores: two Ray Train runs start 5 processes each
def test_a_study_trains_its_teacher_and_trials_data_parallel(tmp_path, ray_local):
    from fakd.results import open_study_dir, read_trials
    from fakd.study import sweep

    raw = copy.deepcopy(TINY_SPEC)
    raw.update(arms=["kd+fakd"], search={"num_samples": 1, "max_concurrent": 1, "scheduler": "none"},
               resources={"workers": 2, "cpu": 1})
    sweep(str(write_spec(tmp_path, raw)), storage=tmp_path / "studies")
    study = open_study_dir(tmp_path / "studies" / "tiny")
    teacher = study.metadata()["teacher"]
    assert teacher["key"] == teacher_key(tiny_config(), WORLD) and study.path(teacher["path"]).is_file()
    (record,) = read_trials(study)
    assert record.state == "COMPLETE" and [row["iteration"] for row in record.results] == [2, 4]
    assert 0.0 <= record.results[-1]["val_miou"] <= 1.0 and record.results[-1]["params"] > 0


# ---------------------------------------------------------------------------------------------------- bad input


def test_bad_worker_counts_stop_before_any_work(tmp_path, capsys):
    spec = write_spec(tmp_path)
    storage = tmp_path / "studies"
    too_many = (os.cpu_count() or 1) + 1
    for override in ("resources.workers=0", f"resources.workers={too_many}"):
        assert main(["sweep", str(spec), "--storage", str(storage), "--set", override]) == 2, override
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{spec}: resources.workers:" in err, err
    assert not storage.exists()


def test_workers_beyond_the_cluster_are_refused(monkeypatch):
    from fakd.study import cluster

    nodes = [{"Alive": True, "Resources": {"CPU": 16.0, "GPU": 4.0}} for _ in range(2)]
    monkeypatch.setattr(cluster.ray, "nodes", lambda: nodes)
    cluster.check_cluster_resources(4, 1, "spec.yaml", workers=8)  # 2 nodes × 4 GPUs
    with pytest.raises(UserError, match="hold at most 8 such workers") as error:
        cluster.check_cluster_resources(4, 1, "spec.yaml", workers=9)
    assert error.value.key == "resources.workers"
    with pytest.raises(UserError, match="hold at most 6 such workers"):  # 16 CPUs hold 3 workers of 5
        cluster.check_cluster_resources(5, 1, "spec.yaml", workers=7)
    monkeypatch.setattr(cluster, "local_gpu_count", lambda: 2)
    with pytest.raises(UserError, match="need 3 GPUs but this machine has 2"):
        cluster.check_local_resources(1, 1, "spec.yaml", workers=3)


def test_sync_batchnorm_keeps_the_state_dict():
    from fakd.train.distributed import sync_batchnorm

    cfg = tiny_config()
    model = build_model(cfg.student, cfg.data.num_classes, 0).eval()
    images = torch.randn(2, 3, 32, 32)
    before, keys = model(images).logits, list(model.state_dict())
    synced = sync_batchnorm(model)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    assert not any(type(m) is torch.nn.BatchNorm2d for m in synced.modules())
    assert list(synced.state_dict()) == keys and torch.equal(synced(images).logits, before)  # eval: no sync


def test_collectives_are_identities_in_one_process():
    alone = DistContext.current()
    assert (alone.rank, alone.world_size, alone.distributed, alone.is_main) == (0, 1, False, True)
    tensor = torch.arange(3.0)
    assert alone.all_reduce_sum(tensor) is tensor and alone.broadcast_object("x") == "x"
    assert alone.all_gather_object(3) == [3]

