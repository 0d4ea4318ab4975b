"""FAKD: closed-form upper bounds of the expected KD / CWD loss under class-conditional feature noise.

For a pixel with label y, student logits z, teacher probabilities p = softmax(t/T) and
a_y[j, k] = λ/(2T²) · Q_y[j, k] (``pair_table``), the pixel bound is

    B = Σ_j p_j (log p_j + L_j),   L_j = logsumexp_k((z_k − z_j)/T + a_y[j, k]).

The exact form never builds the per-pixel C×C table: with u = exp((z − max z)/T),
m_y[j] = max_k a_y[j, k] and E_y = exp(a_y − m_y), L_j = (max z − z_j)/T + m_y[j] + log (E_y u)_j,
so all pixels of one class cost one GEMM (pixels are grouped by label). Rows whose product
underflows are recomputed with a direct logsumexp. The gradient is hand-derived:
∂B/∂z_k = (Σ_j p_j r_jk − p_k)/T with r_jk = E_y[j, k] u_k / (E_y u)_j, again one GEMM per class.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from fakd.losses.covariance import _as_weight, label_row_table, logit_variance, pair_table
from fakd.losses.kd import check_logits, check_temperature, pixel_kd, resize_labels, resize_teacher
from fakd.vocab import FAKD_FORMS as FORMS
from fakd.vocab import IGNORE_INDEX

# Pixels are evaluated in blocks of at most this many rows: the block's C-wide temporaries stay in cache.
_BLOCK_ROWS = 4096
# Underflowing rows are recomputed directly in pieces holding at most this many table entries.
_FALLBACK_ELEMENTS = 1 << 21


def _underflow_threshold(dtype: torch.dtype) -> float:
    """Smallest trusted (E_y u)_j: far enough above the denormal range that flushed terms are negligible."""
    info = torch.finfo(dtype)
    return info.tiny / info.eps**2


@dataclass
class _Block:
    """Sorted rows [start, end) evaluated together; ``pieces`` are block-local (start, end, group) runs."""

    start: int
    end: int
    pieces: list[tuple[int, int, int]]


@dataclass
class _Layout:
    """Pixels sorted by table group (plain pixels last, in group ``len(classes)``), cut into blocks."""

    order: Tensor
    groups: Tensor
    classes: list[int]
    blocks: list[_Block]


def _check_label_range(labels: Tensor, num_classes: int, ignore_index: int) -> None:
    """Raise ValueError unless every label is in [0, num_classes) or equals ignore_index."""
    bad = ((labels < 0) | (labels >= num_classes)) & (labels != ignore_index)
    if bool(bad.any()):
        raise ValueError(f"labels must lie in [0, {num_classes}) or equal ignore_index={ignore_index}")


def _cut_blocks(segments: list[tuple[int, int, int]], total: int, block_rows: int) -> list[_Block]:
    """Cut [0, total) into blocks of ``block_rows`` rows, each listing its overlap with every segment."""
    blocks = []
    for lo in range(0, total, block_rows):
        hi = min(lo + block_rows, total)
        pieces = [(max(s, lo) - lo, min(e, hi) - lo, g) for s, e, g in segments if s < hi and e > lo]
        blocks.append(_Block(lo, hi, pieces))
    return blocks


def _layout(labels: Tensor, num_classes: int, ignore_index: int, augment: bool, block_rows: int) -> _Layout:
    """Sort flat labels by class (ignore pixels, or all pixels unless ``augment``, last) and cut blocks."""
    keys = labels.to(torch.int64)
    _check_label_range(keys, num_classes, ignore_index)
    plain = keys == ignore_index if augment else torch.ones_like(keys, dtype=torch.bool)
    keys = keys.masked_fill(plain, num_classes)
    order = torch.argsort(keys)
    counts = torch.bincount(keys, minlength=num_classes + 1).tolist()
    classes = [cls for cls in range(num_classes) if counts[cls]]
    sizes = [counts[cls] for cls in classes] + [counts[num_classes]]
    bounds = [0, *itertools.accumulate(sizes)]
    segments = [(bounds[g], bounds[g + 1], g) for g in range(len(sizes)) if sizes[g]]
    groups = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)).to(order.device)
    return _Layout(order, groups, classes, _cut_blocks(segments, keys.numel(), block_rows))


def _exp_tables(tables: Tensor) -> tuple[Tensor, Tensor]:
    """Row maxima m (G×C) and E = exp(a − m) (G×C×C) of the per-class exponent tables a."""
    row_max = tables.amax(dim=2)
    return row_max, torch.exp(tables - row_max[:, :, None])


def _scaled_logits(z: Tensor, temperature: float) -> Tensor:
    """d = (z − max z)/T: non-positive, zero at the row maximum."""
    d = torch.sub(z, z.amax(dim=1, keepdim=True))
    return d if temperature == 1.0 else d.div_(temperature)


def _teacher_log_probs(teacher: Tensor, rows: Tensor, temperature: float) -> Tensor:
    """log softmax(t/T) of the selected pixels (K×C)."""
    logits = teacher.index_select(0, rows)
    return torch.log_softmax(logits if temperature == 1.0 else logits.div_(temperature), dim=1)


def _piecewise_product(rows: Tensor, expo: Tensor, pieces: list[tuple[int, int, int]], transpose: bool) -> Tensor:
    """rows @ E_gᵀ (forward) or rows @ E_g (backward) per piece of group g; plain pieces use E = 1."""
    out = torch.empty_like(rows)
    for lo, hi, group in pieces:
        if group == expo.shape[0]:
            out[lo:hi] = rows[lo:hi].sum(dim=1, keepdim=True)
        else:
            torch.mm(rows[lo:hi], expo[group].t() if transpose else expo[group], out=out[lo:hi])
    return out


def _add_row_max(values: Tensor, row_max: Tensor, pieces: list[tuple[int, int, int]]) -> Tensor:
    """Add m_g[j] to the rows of every piece of group g in place (plain pieces have m = 0)."""
    for lo, hi, group in pieces:
        if group < row_max.shape[0]:
            values[lo:hi].add_(row_max[group])
    return values


def _clamp_untrusted(sums: Tensor) -> Tensor | None:
    """Mask of the S entries too small (or not finite) to trust, clamped in place; None when all are fine."""
    threshold = _underflow_threshold(sums.dtype)
    if bool(sums.amin() > threshold):
        return None
    untrusted = ~(sums > threshold)
    sums.clamp_min_(threshold)
    return untrusted


def _direct_table(z: Tensor, cols: Tensor, table_rows: Tensor, temperature: float) -> Tensor:
    """The C-wide exponents (z_k − z_j)/T + a[j, k] of selected rows j (K×C; z holds the K pixels)."""
    return (z - z.gather(1, cols[:, None])) / temperature + table_rows


def _direct_row_lse(z: Tensor, cols: Tensor, table_rows: Tensor, temperature: float) -> Tensor:
    """Direct L_j = logsumexp_k((z_k − z_j)/T + a[j, k]) for one row j per pixel (K)."""
    return torch.logsumexp(_direct_table(z, cols, table_rows, temperature), dim=1)


def _direct_row_softmax(z: Tensor, cols: Tensor, table_rows: Tensor, temperature: float) -> Tensor:
    """Direct r_j· = softmax_k((z_k − z_j)/T + a[j, k]) for one row j per pixel (K×C)."""
    return torch.softmax(_direct_table(z, cols, table_rows, temperature), dim=1)


def _with_plain_table(tables: Tensor) -> Tensor:
    """The exponent tables with an all-zero table appended for the plain group."""
    return torch.cat([tables, tables.new_zeros(1, *tables.shape[1:])])


def _untrusted_triples(untrusted: Tensor, groups: Tensor) -> Tensor:
    """(block row, row j, group) of every untrusted entry of a block: K×3."""
    pairs = untrusted.nonzero()
    return torch.stack([pairs[:, 0], pairs[:, 1], groups[pairs[:, 0]]], dim=1)


def _patch_untrusted(
    lse: Tensor, z: Tensor, triples: Tensor, tables: Tensor, temperature: float, piece_rows: int
) -> None:
    """Recompute the untrusted entries of a block's L directly, in pieces of bounded size."""
    tables = _with_plain_table(tables)
    for piece in torch.split(triples, piece_rows):
        rows, cols, group = piece.unbind(1)
        lse[rows, cols] = _direct_row_lse(z[rows], cols, tables[group, cols], temperature)


class _ExactBound(torch.autograd.Function):
    """Per-pixel exact bound B of flat pixels (M×C), evaluated in label-sorted blocks.

    Saves O(M·C) in sorted order: u, p and the weights p/S (and L when the teacher needs a gradient).
    Entries whose S underflows are recomputed directly (their weight is zero) and kept as
    (pixel, row j, group) triples for the backward pass.
    """

    @staticmethod
    def forward(ctx, z, teacher, order, groups, tables, blocks, temperature, piece_rows):  # noqa: D102
        row_max, expo = _exp_tables(tables)
        saving = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        units, probs, weights = (torch.empty_like(z) if saving else None for _ in range(3))
        lse_all = torch.empty_like(z) if ctx.needs_input_grad[1] else None
        bounds = z.new_empty(z.shape[0])
        flagged = []
        for block in blocks:
            span = slice(block.start, block.end)
            rows = order[span]
            zb = z.index_select(0, rows)
            log_p = _teacher_log_probs(teacher, rows, temperature)
            p = torch.exp(log_p, out=_part(probs, span))
            d = _scaled_logits(zb, temperature)
            sums = _piecewise_product(torch.exp(d, out=_part(units, span)), expo, block.pieces, transpose=True)
            untrusted = _clamp_untrusted(sums)
            if weights is not None:
                torch.div(p, sums, out=weights[span])
            lse = _add_row_max(sums.log_(), row_max, block.pieces).sub_(d)
            if untrusted is not None:
                if weights is not None:
                    weights[span].masked_fill_(untrusted, 0.0)
                local = _untrusted_triples(untrusted, groups[span])
                _patch_untrusted(lse, zb, local, tables, temperature, piece_rows)
                flagged.append(torch.cat([rows[local[:, :1]], local[:, 1:]], dim=1))
            if lse_all is not None:
                lse_all[span] = lse
            bounds[rows] = lse.add_(log_p).mul_(p).sum(dim=1)
        flagged = torch.cat(flagged) if flagged else order.new_zeros((0, 3))
        ctx.save_for_backward(z, teacher, order, tables, expo, units, probs, weights, flagged, lse_all)
        ctx.blocks, ctx.temperature, ctx.piece_rows = blocks, temperature, piece_rows
        return bounds

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_bounds):  # noqa: D102
        z, teacher, order, tables, expo, units, probs, weights, flagged, lse_all = ctx.saved_tensors
        temperature = ctx.temperature
        grad_z = torch.empty_like(z) if ctx.needs_input_grad[0] else None
        grad_t = torch.empty_like(teacher) if ctx.needs_input_grad[1] else None
        for block in ctx.blocks:
            span = slice(block.start, block.end)
            rows = order[span]
            scale = grad_bounds.index_select(0, rows)[:, None]
            if grad_z is not None:
                spread = _piecewise_product(weights[span], expo, block.pieces, transpose=False)
                grad_z.index_copy_(0, rows, spread.mul_(units[span]).sub_(probs[span]).mul_(scale / temperature))
            if grad_t is not None:
                log_p = _teacher_log_probs(teacher, rows, temperature)
                grad_t.index_copy_(0, rows, _teacher_grad(log_p, probs[span], lse_all[span], scale, temperature))
        if grad_z is not None and flagged.numel():
            _add_untrusted_grad(grad_z, z, teacher, tables, flagged, grad_bounds, temperature, ctx.piece_rows)
        return grad_z, grad_t, None, None, None, None, None, None


def _part(buffer: Tensor | None, span: slice) -> Tensor | None:
    """The rows ``span`` of a saved buffer, or None (a fresh temporary) when nothing is saved."""
    return None if buffer is None else buffer[span]


def _teacher_grad(log_p: Tensor, p: Tensor, lse: Tensor, scale: Tensor, temperature: float) -> Tensor:
    """∂B/∂t through p = softmax(t/T): ∂B/∂p_j = log p_j + L_j + 1, then the softmax Jacobian."""
    dp = (log_p + lse + 1.0).mul_(p).mul_(scale)
    return (dp - p * dp.sum(dim=1, keepdim=True)) / temperature


def _add_untrusted_grad(
    grad_z: Tensor,
    z: Tensor,
    teacher: Tensor,
    tables: Tensor,
    flagged: Tensor,
    grad_bounds: Tensor,
    temperature: float,
    piece_rows: int,
) -> None:
    """Add p_j · softmax_k((z_k − z_j)/T + a[j, k]) / T of the directly evaluated rows (scaled)."""
    tables = _with_plain_table(tables)
    for piece in torch.split(flagged, piece_rows):
        rows, cols, group = piece.unbind(1)
        log_p = _teacher_log_probs(teacher, rows, temperature).gather(1, cols[:, None])
        coef = torch.exp(log_p) * grad_bounds[rows, None] / temperature
        soft = _direct_row_softmax(z[rows], cols, tables[group, cols], temperature)
        grad_z.index_add_(0, rows, soft.mul_(coef))


def _pair_tables_for(weight: Tensor, covariance: Tensor, classes: list[int], scale: float) -> Tensor:
    """scale · Q_y for the listed classes only: len(classes)×C×C."""
    index = torch.tensor(classes, dtype=torch.int64, device=covariance.device)
    return pair_table(weight, covariance.index_select(0, index) * scale)


def _flatten_pixels(logits: Tensor) -> Tensor:
    """N×C×h×w → (N·h·w)×C."""
    return logits.movedim(1, -1).reshape(-1, logits.shape[1])


def _working_dtype(logits: Tensor) -> torch.dtype:
    """float64 stays float64; everything else (including half precision) is evaluated in float32."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _check_strength(strength: float) -> None:
    if not strength >= 0:
        raise ValueError(f"strength must be non-negative, got {strength}")


def _prepare(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, classifier_weight: Tensor,
             class_covariance: Tensor, strength: float, temperature: float
             ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Validate, resize teacher and labels, cast to the working dtype; return (s, t, labels, W, Σ)."""
    check_logits(student_logits, teacher_logits)
    check_temperature(temperature)
    _check_strength(strength)
    size = student_logits.shape[-2:]
    dtype = _working_dtype(student_logits)
    teacher = resize_teacher(teacher_logits, size).to(dtype)
    labels = resize_labels(labels, size)
    if labels.shape != (student_logits.shape[0], *size):
        raise ValueError(f"labels {tuple(labels.shape)} do not match the logits {tuple(student_logits.shape)}")
    weight = _as_weight(classifier_weight).to(student_logits.device, dtype)
    if weight.shape[0] != student_logits.shape[1]:
        raise ValueError(f"classifier_weight has {weight.shape[0]} rows for {student_logits.shape[1]} classes")
    covariance = class_covariance.detach().to(student_logits.device, dtype)
    return student_logits.to(dtype), teacher, labels, weight, covariance


def exact_pixel_bounds(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, classifier_weight: Tensor,
                       class_covariance: Tensor, strength: float, temperature: float = 1.0,
                       ignore_index: int = IGNORE_INDEX, *, chunk_size: int | None = None) -> Tensor:
    """Per-pixel exact bound B (N×h×w, without the T² factor); see ``feature_augmented_kd``."""
    student, teacher, labels, weight, covariance = _prepare(
        student_logits, teacher_logits, labels, classifier_weight, class_covariance, strength, temperature
    )
    batch, num_classes, height, width = student.shape
    block_rows = _BLOCK_ROWS if chunk_size is None else max(min(int(chunk_size), _BLOCK_ROWS), 1)
    piece_rows = max(min(_FALLBACK_ELEMENTS // num_classes, block_rows), 1)
    flat_labels = labels.reshape(-1).to(student.device)
    layout = _layout(flat_labels, num_classes, ignore_index, strength > 0, block_rows)
    tables = _pair_tables_for(weight, covariance, layout.classes, strength / (2.0 * temperature**2))
    bounds = _ExactBound.apply(_flatten_pixels(student), _flatten_pixels(teacher), layout.order, layout.groups, tables,
                               layout.blocks, temperature, piece_rows)
    return bounds.view(batch, height, width)


def _label_row_kd(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, classifier_weight: Tensor,
                  class_covariance: Tensor, strength: float, temperature: float, ignore_index: int) -> Tensor:
    """ISDA-style form: plain KD on logits shifted by λ/(2T) · Q_y[y, k] at non-ignore pixels."""
    student, teacher, labels, weight, covariance = _prepare(
        student_logits, teacher_logits, labels, classifier_weight, class_covariance, strength, temperature
    )
    rows = label_row_table(weight, covariance) * (strength / (2.0 * temperature))
    return pixel_kd(student + _rows_at_pixels(rows, labels, ignore_index), teacher, temperature)


def _rows_at_pixels(table: Tensor, labels: Tensor, ignore_index: int) -> Tensor:
    """N×C×h×w tensor holding row ``table[y]`` at every pixel labelled y and zeros at ignore pixels."""
    _check_label_range(labels, table.shape[0], ignore_index)
    padded = torch.cat([table, table.new_zeros(1, table.shape[1])])
    index = labels.to(device=table.device, dtype=torch.int64)
    return padded[index.masked_fill(index == ignore_index, table.shape[0])].movedim(-1, 1)


def feature_augmented_kd(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, classifier_weight: Tensor,
                         class_covariance: Tensor, strength: float, temperature: float = 1.0,
                         ignore_index: int = IGNORE_INDEX, *, chunk_size: int | None = None,
                         form: str = "exact") -> Tensor:
    """FAKD pixel KD: T² · mean over the N·h·w pixels of the bound B (a scalar).

    ``labels`` N×h×w (nearest-resized when larger), ``classifier_weight`` C×D, ``class_covariance`` C×D
    (diagonal) or C×D×D (full), ``strength`` = λ. Ignore pixels get plain KD. W and Σ are detached.
    ``form="label_row"`` selects the cheaper ISDA-style shift of the labelled row. ``chunk_size`` bounds
    the number of pixels evaluated at once (same result).
    """
    inputs = (student_logits, teacher_logits, labels, classifier_weight, class_covariance, strength, temperature,
              ignore_index)
    if form == "label_row":
        return _label_row_kd(*inputs)
    if form != "exact":
        raise ValueError(f"unknown FAKD form {form!r}; accepted: {', '.join(FORMS)}")
    return temperature**2 * exact_pixel_bounds(*inputs, chunk_size=chunk_size).mean()


def feature_augmented_cwd(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, classifier_weight: Tensor,
                          class_covariance: Tensor, strength: float, temperature: float = 1.0,
                          ignore_index: int = IGNORE_INDEX, *, chunk_size: int | None = None,
                          form: str = "exact") -> Tensor:
    """FAKD channel-wise distillation: T² · mean over the N·C channel maps of B_cwd (a scalar).

    B_cwd = Σ_x q log q − Σ_x q s_c/T + logsumexp_x(s_c/T + λ/(2T²) · v_{y(x)}[c]) with q = softmax_x(t_c/T)
    and v_y[c] = w_cᵀ Σ_y w_c (0 at ignore pixels). ``chunk_size`` bounds the pixels evaluated at once
    (whole images, at least one). ``form`` is accepted for a uniform interface and has no effect.
    """
    if form not in FORMS:
        raise ValueError(f"unknown FAKD form {form!r}; accepted: {', '.join(FORMS)}")
    student, teacher, labels, weight, covariance = _prepare(
        student_logits, teacher_logits, labels, classifier_weight, class_covariance, strength, temperature
    )
    variance = logit_variance(weight, covariance) * (strength / (2.0 * temperature**2))
    step = student.shape[0] if chunk_size is None else max(int(chunk_size) // student[0, 0].numel(), 1)
    total = student.new_zeros(())
    for lo in range(0, student.shape[0], step):
        bias = _rows_at_pixels(variance, labels[lo : lo + step], ignore_index)
        total = total + _cwd_bound_sum(student[lo : lo + step], teacher[lo : lo + step], bias, temperature)
    maps = student.shape[0] * student.shape[1]
    return temperature**2 * total / maps


def _cwd_bound_sum(student: Tensor, teacher: Tensor, bias: Tensor, temperature: float) -> Tensor:
    """Σ over channel maps of Σ_x q (log q − log_softmax_x(s/T + b) + b)."""
    log_q = F.log_softmax(teacher.flatten(2) / temperature, dim=2)
    bias = bias.flatten(2)
    log_student = F.log_softmax(student.flatten(2) / temperature + bias, dim=2) - bias
    return (torch.exp(log_q) * (log_q - log_student)).sum()
