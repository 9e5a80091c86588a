"""Argument checks shared by the entry points: one ValueError naming the bad argument.

Cheap on purpose (the op runs once per FFN projection per generated token): shape,
dtype and device comparisons only, plus one min/max for row_docs' range. Strides
are never a reason to refuse: every path handles any layout.
"""


def check_lora(weight, lora_a, lora_b, names=("lora_a", "lora_b")):
    """weight (out, in), lora_a (D, out, r), lora_b (D, in, r), all of weight's dtype and device."""
    name_a, name_b = names
    if weight.dim() != 2:
        raise ValueError(f"weight: expected (out, in), got shape {tuple(weight.shape)}")
    out, inp = weight.shape
    if lora_a.dim() != 3 or lora_a.shape[1] != out:
        raise ValueError(f"{name_a}: expected (D, out={out}, r), got shape {tuple(lora_a.shape)}")
    if lora_b.dim() != 3 or lora_b.shape[1] != inp:
        raise ValueError(f"{name_b}: expected (D, in={inp}, r), got shape {tuple(lora_b.shape)}")
    if lora_b.shape[0] != lora_a.shape[0]:
        raise ValueError(f"{name_b}: {lora_b.shape[0]} documents but {name_a} has {lora_a.shape[0]}")
    if lora_b.shape[2] != lora_a.shape[2]:
        raise ValueError(f"{name_b}: rank {lora_b.shape[2]} but {name_a} has rank {lora_a.shape[2]}")
    for name, t in ((name_a, lora_a), (name_b, lora_b)):
        if t.dtype != weight.dtype or t.device != weight.device:
            raise ValueError(f"{name}: {t.dtype} on {t.device}, but weight is {weight.dtype} on {weight.device}")


def check_operands(x, weight, bias, lora_a, lora_b, names=("lora_a", "lora_b")):
    """x (..., in) floating; bias (out,) or None; the rest as check_lora; one dtype and device."""
    if not x.is_floating_point() or x.dim() == 0:
        raise ValueError(f"x: expected a floating tensor (..., in), got {x.dtype} of shape {tuple(x.shape)}")
    if weight.dtype != x.dtype or weight.device != x.device:
        raise ValueError(f"weight: {weight.dtype} on {weight.device}, but x is {x.dtype} on {x.device}")
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        raise ValueError(
            f"weight: expected (out, in={x.shape[-1]}) for x of shape {tuple(x.shape)}, got {tuple(weight.shape)}"
        )
    if bias is not None and (bias.shape != weight.shape[:1] or bias.dtype != x.dtype or bias.device != x.device):
        raise ValueError(
            f"bias: expected ({weight.shape[0]},) {x.dtype} on {x.device}, "
            f"got {tuple(bias.shape)} {bias.dtype} on {bias.device}"
        )
    check_lora(weight, lora_a, lora_b, names)


def check_cat(x, weight, bias, a_cat, b_cat):
    """check_operands for documents already stacked along rank: a_cat (out, R), b_cat (in, R). Each shape is read
    once: this runs on every decode call on CUDA (the op's host cost)."""
    xs, ws, a_s, bs = x.shape, weight.shape, a_cat.shape, b_cat.shape
    if not xs or len(ws) != 2 or xs[-1] != ws[1]:
        raise ValueError(
            f"weight: expected (out, in) with in = x.shape[-1], got {tuple(ws)} for x of shape {tuple(xs)}"
        )
    if len(a_s) != 2 or a_s[0] != ws[0]:
        raise ValueError(f"a_cat: expected (out={ws[0]}, R), got shape {tuple(a_s)}")
    if len(bs) != 2 or bs[0] != ws[1] or bs[1] != a_s[1]:
        raise ValueError(f"b_cat: expected (in={ws[1]}, R={a_s[1]}), got shape {tuple(bs)}")
    dtype, device = x.dtype, x.device
    if (
        not (dtype == weight.dtype == a_cat.dtype == b_cat.dtype)
        or not (device == weight.device == a_cat.device == b_cat.device)
        or not dtype.is_floating_point
    ):
        raise ValueError(
            f"x, weight, a_cat, b_cat: expected one floating dtype and one device, got "
            f"{[(t.dtype, str(t.device)) for t in (x, weight, a_cat, b_cat)]}"
        )
    if bias is not None and (bias.shape != ws[:1] or bias.dtype != dtype or bias.device != device):
        raise ValueError(
            f"bias: expected ({ws[0]},) {dtype} on {device}, got {tuple(bias.shape)} {bias.dtype} on {bias.device}"
        )


def row_groups(x, rows, name):
    """Rows of x (M = all leading dims) per row of `rows`: 1 when rows has M rows, or, for x (B, T.., in),
    T.. when rows has one row per batch element B. Anything else is a ValueError naming `rows`."""
    xs, rs = x.shape, rows.shape
    m = xs[:-1].numel()
    if len(rs) != 2 or rows.device != x.device:
        raise ValueError(f"{name}: expected a 2-D tensor on {x.device}, got shape {tuple(rs)} on {rows.device}")
    if rs[0] == m:
        return 1
    if len(xs) >= 3 and rs[0] == xs[0]:
        return m // xs[0]
    raise ValueError(
        f"{name}: {rs[0]} rows for x of shape {tuple(xs)}; "
        f"expected {m} (one per row) or, for x (B, T, in), B (one per batch element)"
    )


def check_row_docs(x, row_docs, n_docs):
    """row_docs: integer (M, J) or (B, J), entries in [-1, n_docs). Returns the rows-per-group count."""
    group = row_groups(x, row_docs, "row_docs")
    if row_docs.is_floating_point() or row_docs.is_complex() or row_docs.dtype == bool:
        raise ValueError(f"row_docs: expected an integer tensor, got {row_docs.dtype}")
    if row_docs.numel():
        lo, hi = (int(v) for v in row_docs.aminmax())
        if lo < -1 or hi >= n_docs:
            raise ValueError(
                f"row_docs: entries must lie in [-1, {n_docs - 1}] (-1 = empty slot), found {lo if lo < -1 else hi}"
            )
    return group


def check_row_mask(x, row_mask, rank):
    """row_mask: (M, R) or (B, R) in x's dtype. Returns the rows-per-group count."""
    group = row_groups(x, row_mask, "row_mask")
    if row_mask.shape[1] != rank or row_mask.dtype != x.dtype:
        raise ValueError(f"row_mask: expected (rows, R={rank}) {x.dtype}, got {tuple(row_mask.shape)} {row_mask.dtype}")
    return group
