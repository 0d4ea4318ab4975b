"""Class-conditional feature covariance: the running estimate and the logit tables derived from it.

The estimate pools per-batch statistics exactly (Chan et al.), so after any split of the data into
batches it equals the population (biased) (co)variance of all features of each class seen so far.
The tables map the feature covariance Σ_y through the classifier weight W (C×D) into logit space:

* ``pair_table``:      Q[y, j, k] = (w_k − w_j)ᵀ Σ_y (w_k − w_j)    (C×C×C)
* ``label_row_table``: R[y, k] = Q[y, y, k]                          (C×C)
* ``logit_variance``:  V[y, c] = w_cᵀ Σ_y w_c                        (C×C)

All are matrix products, never a C×C×D×D tensor: a full Σ goes through A_y = W Σ_y Wᵀ
(Q_y[j, k] = A_y[j, j] + A_y[k, k] − 2 A_y[j, k]); a diagonal Σ multiplies squared weight differences
(W_kd − W_jd)², chunked over j, with the variances, a sum of non-negative terms free of cancellation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fakd.losses.kd import resize_labels
from fakd.vocab import IGNORE_INDEX

# The diagonal pair table is built from chunks of (W_k − W_j)² holding at most this many entries.
_PAIR_CHUNK_ELEMENTS = 1 << 20


def _as_weight(classifier_weight: Tensor) -> Tensor:
    """Detached classifier weight as C×D (a C×D×1×1 conv weight is flattened)."""
    weight = classifier_weight.detach()
    return weight.reshape(weight.shape[0], -1)


def _check_covariance(weight: Tensor, covariance: Tensor) -> bool:
    """Validate Σ against W (C×D); return True for a full (C×D×D) covariance."""
    dim = weight.shape[1]
    if covariance.dim() == 2 and covariance.shape[1] == dim:
        return False
    if covariance.dim() == 3 and covariance.shape[1:] == (dim, dim):
        return True
    raise ValueError(
        f"class_covariance must be Y×D (diagonal) or Y×D×D (full) with D={dim}, got {tuple(covariance.shape)}"
    )


def _weighted_weight(weight: Tensor, covariance: Tensor) -> Tensor:
    """Σ_y w_c for every class y and row c of a full covariance: Y×C×D."""
    return torch.matmul(weight, covariance.transpose(1, 2))


def _pairs_from_gram(gram: Tensor) -> Tensor:
    """Q_y[j, k] = A_y[j, j] + A_y[k, k] − 2 A_y[j, k], clamped at 0 with an exact zero diagonal."""
    diag = torch.diagonal(gram, dim1=-2, dim2=-1)
    table = (diag[..., :, None] + diag[..., None, :] - 2.0 * gram).clamp_min_(0.0)
    torch.diagonal(table, dim1=-2, dim2=-1).zero_()
    return table


def _diagonal_pairs(weight: Tensor, variances: Tensor) -> Tensor:
    """Q[y, j, k] = Σ_d (W_kd − W_jd)² σ²_yd as one GEMM per chunk of rows j."""
    classes, dim = weight.shape
    table = weight.new_empty(variances.shape[0], classes, classes)
    step = max(_PAIR_CHUNK_ELEMENTS // (classes * dim), 1)
    for lo in range(0, classes, step):
        hi = min(lo + step, classes)
        squares = (weight[lo:hi, None, :] - weight[None, :, :]).square_()
        products = squares.view(-1, dim) @ variances.t()  # ((hi − lo)·C)×Y
        table[:, lo:hi] = products.t().view(variances.shape[0], hi - lo, classes)
    return table


def _detached(classifier_weight: Tensor, class_covariance: Tensor) -> tuple[Tensor, Tensor, bool]:
    """Detached W (C×D) and Σ in W's dtype, and whether Σ is full."""
    weight = _as_weight(classifier_weight)
    covariance = class_covariance.detach().to(weight.dtype)
    return weight, covariance, _check_covariance(weight, covariance)


def pair_table(classifier_weight: Tensor, class_covariance: Tensor) -> Tensor:
    """Q[y, j, k] = (w_k − w_j)ᵀ Σ_y (w_k − w_j) for every class y of Σ and all j, k (Y×C×C).

    ``class_covariance`` is Y×D (diagonal variances) or Y×D×D (full). W and Σ are detached.
    """
    weight, covariance, full = _detached(classifier_weight, class_covariance)
    if full:
        return _pairs_from_gram(_weighted_weight(weight, covariance) @ weight.t())
    return _diagonal_pairs(weight, covariance)


def logit_variance(classifier_weight: Tensor, class_covariance: Tensor) -> Tensor:
    """V[y, c] = w_cᵀ Σ_y w_c, the logit noise variance per unit strength (Y×C)."""
    weight, covariance, full = _detached(classifier_weight, class_covariance)
    if full:
        return (_weighted_weight(weight, covariance) * weight[None]).sum(-1)
    return covariance @ weight.square().t()


def label_row_table(classifier_weight: Tensor, class_covariance: Tensor) -> Tensor:
    """R[y, k] = Q[y, y, k] = (w_k − w_y)ᵀ Σ_y (w_k − w_y), the label rows of the pair table (C×C)."""
    weight, covariance, full = _detached(classifier_weight, class_covariance)
    variance = logit_variance(weight, covariance)  # A_y[k, k]
    own = torch.einsum("yde,ye->yd", covariance, weight) if full else covariance * weight  # Σ_y w_y
    cross = own @ weight.t()  # A_y[y, k]
    table = (variance.diagonal()[:, None] + variance - 2.0 * cross).clamp_min_(0.0)
    return table.fill_diagonal_(0.0)


@dataclass
class ClassStatistics:
    """Per-class statistics of one batch: pixel count, feature sum and centred second moment."""

    count: Tensor  # C, int64
    total: Tensor  # C×D, float64
    m2: Tensor  # C×D (diagonal) or C×D×D (full), float64, centred on the batch class means


class ClassCovariance(nn.Module):
    """Running per-class mean and (diagonal or full) population covariance of student features.

    State lives in float64 buffers (``n_seen``, ``running_mean``, ``running_m2``) so it checkpoints with
    ``state_dict``. ``update`` first computes the batch statistics, then merges them exactly.

    ``all_reduce`` (a function returning the element-wise sum of a tensor over every data-parallel process, e.g.
    ``fakd.train.distributed.DistContext.all_reduce_sum``) pools the batch statistics of all processes before the
    merge, so every process holds the exact moments of the global batch: the per-class counts and sums are
    all-reduced first, then each process centres its features on the pooled class means and the centred second
    moments are all-reduced (two reductions, no cancellation-prone raw second moments). Every process must call
    ``update`` the same number of times. Without it the statistics are this process's own.
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        full: bool = False,
        ignore_index: int = IGNORE_INDEX,
        all_reduce: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dim = dim
        self.full = full
        self.ignore_index = ignore_index
        self.all_reduce = all_reduce
        moment_shape = (num_classes, dim, dim) if full else (num_classes, dim)
        self.register_buffer("n_seen", torch.zeros(num_classes, dtype=torch.int64))
        self.register_buffer("running_mean", torch.zeros(num_classes, dim, dtype=torch.float64))
        self.register_buffer("running_m2", torch.zeros(moment_shape, dtype=torch.float64))

    def extra_repr(self) -> str:
        kind = "full" if self.full else "diagonal"
        return f"num_classes={self.num_classes}, dim={self.dim}, {kind}"

    @property
    def count(self) -> Tensor:
        """Number of pixels seen per class (C, int64)."""
        return self.n_seen.clone()

    @property
    def mean(self) -> Tensor:
        """Per-class feature mean (C×D, float32); zero for classes never seen."""
        return self.running_mean.float()

    @property
    def covariance(self) -> Tensor:
        """Population (co)variance per class, C×D or C×D×D float32; zero for classes never seen."""
        count = self.n_seen.to(torch.float64).clamp_min(1.0)
        count = count.view(-1, *([1] * (self.running_m2.dim() - 1)))
        return (self.running_m2 / count).float()

    @torch.no_grad()
    def reset(self) -> None:
        """Forget everything seen so far."""
        self.n_seen.zero_()
        self.running_mean.zero_()
        self.running_m2.zero_()

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor) -> None:
        """Pool the features N×D×h×w of the labelled pixels (labels N×h×w) into the running estimate."""
        self.merge(self.batch_statistics(features, labels))

    @torch.no_grad()
    def batch_statistics(self, features: Tensor, labels: Tensor) -> ClassStatistics:
        """Count, sum and centred second moment per class of one batch (ignore pixels skipped); with `all_reduce`,
        of the global batch of every process."""
        values, classes = self._labelled_pixels(features, labels)
        count = torch.bincount(classes, minlength=self.num_classes)
        total = values.new_zeros(self.num_classes, self.dim).index_add_(0, classes, values)
        local_count = count
        if self.all_reduce is not None:  # counts travel as float64: exact below 2**53 pixels
            pooled = self.all_reduce(torch.cat([count.to(total.dtype)[:, None], total], dim=1))
            count, total = pooled[:, 0].round().to(torch.int64), pooled[:, 1:]
        batch_mean = total / count.clamp_min(1)[:, None].to(total.dtype)
        centred = values - batch_mean[classes]
        m2 = self._centred_moment(centred, classes, local_count)
        if self.all_reduce is not None:
            m2 = self.all_reduce(m2)
        return ClassStatistics(count=count, total=total, m2=m2)

    @torch.no_grad()
    def merge(self, stats: ClassStatistics) -> None:
        """Merge batch statistics into the running estimate by exact pooling (Chan et al.)."""
        seen = stats.count > 0
        if not bool(seen.any()):
            return
        n_old = self.n_seen[seen].to(torch.float64)
        n_new = stats.count[seen].to(torch.float64)
        n_all = n_old + n_new
        mean_new = stats.total[seen] / n_new[:, None]
        delta = mean_new - self.running_mean[seen]
        weight = n_old * n_new / n_all
        if self.full:
            spread = delta[:, :, None] * delta[:, None, :] * weight[:, None, None]
        else:
            spread = delta * delta * weight[:, None]
        self.running_m2[seen] += stats.m2[seen] + spread
        self.running_mean[seen] += delta * (n_new / n_all)[:, None]
        self.n_seen += stats.count

    def _labelled_pixels(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Flatten to (M×D float64 features, M class ids) for the non-ignore pixels."""
        if features.dim() != 4 or features.shape[1] != self.dim:
            raise ValueError(f"features must be N×{self.dim}×h×w, got {tuple(features.shape)}")
        labels = resize_labels(labels, features.shape[-2:]).reshape(-1)
        values = features.detach().to(self.running_mean.device, torch.float64)
        values = values.movedim(1, -1).reshape(-1, self.dim)
        keep = labels != self.ignore_index
        classes = labels[keep].to(device=values.device, dtype=torch.int64)
        if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}) or equal ignore_index")
        return values[keep.to(values.device)], classes

    def _centred_moment(self, centred: Tensor, classes: Tensor, count: Tensor) -> Tensor:
        """Per-class Σ (x − μ)² (diagonal) or Σ (x − μ)(x − μ)ᵀ (full) from centred features."""
        if not self.full:
            return centred.new_zeros(self.num_classes, self.dim).index_add_(0, classes, centred * centred)
        m2 = centred.new_zeros(self.num_classes, self.dim, self.dim)
        grouped = centred[torch.argsort(classes)]
        start = 0
        for cls, size in enumerate(count.tolist()):
            if size:
                block = grouped[start : start + size]
                m2[cls] = block.t() @ block
                start += size
        return m2
