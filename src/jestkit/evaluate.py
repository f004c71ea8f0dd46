"""Evaluation at full resolution: image<->text retrieval and zero-shot classification.

    jestkit eval --model MODEL_DIR --data DATASET_DIR [--out metrics.json] [--batch-size 512]

The metric functions are pure tensor code; :class:`Evaluator` loads a dataset's ``eval`` split
(retrieval) and ``zeroshot`` split (classification) once and evaluates any model on them.

Protocol (CLIP/SigLIP style):

- Retrieval: image ``i``'s caption is text ``i``. The rank of a query's best true match counts
  the *wrong* candidates that score at least as high (ties broken pessimistically, so a
  collapsed model that maps everything to one point scores 0, never 1). Candidates that are exact
  duplicates of a true match (same caption tokens, or same image pixels; the Evaluator finds them)
  are true matches too, since no model can tell them apart. R@k = fraction of queries of rank < k.
  ``retrieval_r1`` = mean of image->text and text->image R@1, the headline metric.
- Zero-shot: each class embedding is the re-normalised mean of the normalised text embeddings of
  every template filled with the class name (CLIP's prompt ensembling); an image is correct if its
  class scores strictly above every other class.
"""

from __future__ import annotations

import argparse
import json
import os
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from jestkit.devices import model_device, resolve_device
from jestkit.errors import JestkitError, check
from jestkit.faults import fault_point
from jestkit.fsutil import atomic_write
from jestkit.models.embed import embed_images, embed_texts, inference_mode

# Elements of one similarity block: 2^24 floats = 64 MiB, so N = 50k uses ~335 rows at a time.
BLOCK_ELEMENTS = 1 << 24


# ----------------------------------------------------------------------------- pure metrics


def _check_emb(name: str, x: torch.Tensor) -> None:
    check(
        isinstance(x, torch.Tensor) and x.dim() == 2,
        f"{name} must be a 2-D tensor [N, d], got {getattr(x, 'shape', type(x).__name__)}",
    )
    check(x.shape[0] > 0, f"{name} is empty (shape {tuple(x.shape)}): nothing to evaluate")
    check(x.is_floating_point(), f"{name} must be floating point, got {x.dtype}")
    check(bool(torch.isfinite(x).all()), f"{name} contains non-finite values (NaN or inf)")


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    check(
        len(ks) > 0 and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks),
        f"ks must be positive ints, got {ks!r}",
    )
    return ks


def _groups(
    name: str, g: torch.Tensor | Sequence[int] | None, n: int, device: torch.device
) -> torch.Tensor | None:
    if g is None:
        return None
    g = torch.as_tensor(g, device=device)
    check(
        g.shape == (n,) and not g.is_floating_point(),
        f"{name} must be an integer tensor of shape ({n},), got {g.dtype} {tuple(g.shape)}",
    )
    return g


def _group_pairs(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs (i, j) with g[i] == g[j] inside groups of size > 1, vectorised."""
    _, inverse, counts = torch.unique(g, return_inverse=True, return_counts=True)
    members = torch.nonzero(counts[inverse] > 1).squeeze(1)
    members = members[torch.argsort(inverse[members], stable=True)]  # each group contiguous
    group, pos = inverse[members], torch.arange(members.numel(), device=g.device)
    size = counts[group]
    is_first = torch.ones_like(group, dtype=torch.bool)
    is_first[1:] = group[1:] != group[:-1]
    group_start = torch.cummax(torch.where(is_first, pos, torch.zeros_like(pos)), 0).values
    rows = torch.repeat_interleave(members, size)
    within = torch.arange(rows.numel(), device=g.device) - torch.repeat_interleave(
        torch.cumsum(size, 0) - size, size
    )
    return rows, members[torch.repeat_interleave(group_start, size) + within]


def _match_table(
    n: int, groups: Sequence[torch.Tensor], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's true matches as a padded table (index [N, M], valid [N, M]): row ``i`` matches
    ``i`` and every ``j`` in the same group as ``i`` in any of ``groups``."""
    pairs = [_group_pairs(g) for g in groups]
    rows = torch.cat([torch.arange(n, device=device), *(r for r, _ in pairs)])
    cols = torch.cat([torch.arange(n, device=device), *(c for _, c in pairs)])
    key = torch.unique(rows * n + cols)  # sorted by row, then column; duplicates merged
    r, c = key // n, key % n
    per_row = torch.bincount(r, minlength=n)
    pos = torch.arange(r.numel(), device=device) - torch.repeat_interleave(
        torch.cumsum(per_row, 0) - per_row, per_row
    )
    index = torch.arange(n, device=device)[:, None].repeat(1, int(per_row.max()))
    valid = torch.zeros(index.shape, dtype=torch.bool, device=device)
    index[r, pos] = c
    valid[r, pos] = True
    return index, valid


@torch.no_grad()
def retrieval_ranks(
    queries: torch.Tensor,
    keys: torch.Tensor,
    query_groups: torch.Tensor | None = None,
    key_groups: torch.Tensor | None = None,
    block_size: int | None = None,
) -> torch.Tensor:
    """0-based rank of each query's best true match among all keys: LongTensor[N].

    Query ``i``'s true matches are key ``i`` and every key ``j`` with ``query_groups[j] ==
    query_groups[i]`` or ``key_groups[j] == key_groups[i]`` (duplicates). The rank counts the
    non-matching keys whose similarity is >= the best match's (pessimistic ties). Similarities
    are dot products; rows are processed ``block_size`` at a time (default: ~2^24 elements per
    block), so memory is O(block_size * N), never N x N.
    """
    check(
        block_size is None or (isinstance(block_size, int) and block_size >= 1),
        f"block_size must be None or an int >= 1, got {block_size!r}",
    )
    n = queries.shape[0]
    rows = block_size or max(1, BLOCK_ELEMENTS // n)
    groups = [g for g in (query_groups, key_groups) if g is not None]
    # Few duplicates (the usual case): gather each row's matches from a small table. Many (a
    # degenerate set, e.g. one caption repeated everywhere): build the match mask per block.
    largest = 1 + sum(int(torch.unique(g, return_counts=True)[1].max()) for g in groups)
    table = _match_table(n, groups, queries.device) if n * largest <= BLOCK_ELEMENTS else None
    ranks = torch.empty(n, dtype=torch.long, device=queries.device)
    buf = torch.empty(min(rows, n), n, dtype=queries.dtype, device=queries.device)
    count_dtype = torch.float64 if n >= 1 << 24 else None  # float32 counts are exact below 2^24
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        sims = torch.matmul(queries[start:stop], keys.T, out=buf[: stop - start])  # [B, N], reused
        if table is not None:
            index, valid = table[0][start:stop], table[1][start:stop]
            at_match = sims.gather(1, index).masked_fill(~valid, float("-inf"))
            best = at_match.amax(dim=1, keepdim=True)
            # Keys at least as similar as the best match, minus the matches among them. In-place
            # ge_ + a float sum is ~3x faster on CPU than a bool mask and an integer sum.
            at_least = sims.ge_(best).sum(dim=1, dtype=count_dtype).long()
            ranks[start:stop] = at_least - (at_match >= best).sum(dim=1)
        else:
            idx = torch.arange(n, device=queries.device)
            match = idx[start:stop, None] == idx[None, :]
            for g in groups:
                match |= g[start:stop, None] == g[None, :]
            best = sims.masked_fill(~match, float("-inf")).amax(dim=1, keepdim=True)
            ranks[start:stop] = ((sims >= best) & ~match).sum(dim=1)
    return ranks


def retrieval_metrics(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    ks: Sequence[int] = (1, 5),
    caption_groups: torch.Tensor | None = None,
    image_groups: torch.Tensor | None = None,
    block_size: int | None = None,
) -> dict[str, float]:
    """Image->text and text->image recall@k; image ``i``'s true caption is text ``i``.

    Returns ``i2t_r{k}``, ``t2i_r{k}`` for each k, and ``retrieval_r1`` (mean of the two R@1, the
    headline metric; always included). ``caption_groups`` / ``image_groups`` (int[N], optional)
    mark exact duplicates: equal ids = identical captions / images, which count as true matches
    (see :func:`retrieval_ranks`). Ties with wrong candidates count against the query.
    """
    _check_emb("image_emb", image_emb)
    _check_emb("text_emb", text_emb)
    check(
        image_emb.shape == text_emb.shape,
        f"image_emb {tuple(image_emb.shape)} and text_emb {tuple(text_emb.shape)} must have the same shape",
    )
    ks = _check_ks(ks)
    n, device = image_emb.shape[0], image_emb.device
    cg = _groups("caption_groups", caption_groups, n, device)
    ig = _groups("image_groups", image_groups, n, device)
    x, y = image_emb.float(), text_emb.float()
    # An image query also matches its caption's duplicates and the captions of its own duplicates.
    i2t = retrieval_ranks(x, y, cg, ig, block_size)
    t2i = retrieval_ranks(y, x, ig, cg, block_size)
    out: dict[str, float] = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            out[f"{name}_r{k}"] = (ranks < k).double().mean().item()
    out["retrieval_r1"] = 0.5 * (
        (i2t < 1).double().mean().item() + (t2i < 1).double().mean().item()
    )
    return out


def twin_metrics(
    image_emb: torch.Tensor, text_emb: torch.Tensor, twin_groups: torch.Tensor
) -> dict[str, float]:
    """Fine-grained retrieval among near-twins (scenes that differ in one item, attribute or
    position, and whose captions differ only there).

    ``twin_groups`` (int[N], -1 = in no group) marks the groups. Over the examples whose group has
    at least one other member: ``twin_i2t`` is the fraction of images whose own caption scores
    strictly above every group-mate's caption, ``twin_t2i`` the same for captions and images, and
    ``twin_acc`` their mean. Chance is 1 / group size; ties count as wrong. Empty if no group has
    two members.
    """
    _check_emb("image_emb", image_emb)
    _check_emb("text_emb", text_emb)
    check(
        image_emb.shape == text_emb.shape,
        f"image_emb {tuple(image_emb.shape)} and text_emb {tuple(text_emb.shape)} must have the same shape",
    )
    n, device = image_emb.shape[0], image_emb.device
    g = _groups("twin_groups", twin_groups, n, device)
    members = torch.nonzero(g >= 0).squeeze(1)
    if members.numel() < 2:
        return {}
    gm = g[members]
    mates = gm[:, None] == gm[None, :]
    mates.fill_diagonal_(False)
    keep = mates.any(dim=1)
    if not bool(keep.any()):
        return {}
    sims = image_emb[members].float() @ text_emb[members].float().T  # [m, m], within the members
    own = sims.diagonal()
    among_mates = sims.masked_fill(~mates, float("-inf"))
    best_text = among_mates.amax(dim=1)  # image i against its mates' captions
    best_image = among_mates.amax(dim=0)  # caption j against its mates' images
    i2t = (own > best_text)[keep].double().mean().item()
    t2i = (own > best_image)[keep].double().mean().item()
    return {"twin_i2t": i2t, "twin_t2i": t2i, "twin_acc": 0.5 * (i2t + t2i)}


def zeroshot_metrics(
    image_emb: torch.Tensor,
    class_emb: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    ks: Sequence[int] = (1,),
) -> dict[str, float]:
    """Zero-shot top-k accuracy: ``zeroshot_top{k}`` for each k (``zeroshot_top1`` by default).

    Image ``i`` is correct at k if fewer than k wrong classes score >= its true class (pessimistic
    ties, as in retrieval).
    """
    _check_emb("image_emb", image_emb)
    _check_emb("class_emb", class_emb)
    check(
        image_emb.shape[1] == class_emb.shape[1],
        f"image_emb dim {image_emb.shape[1]} != class_emb dim {class_emb.shape[1]}",
    )
    ks = _check_ks(ks)
    labels = torch.as_tensor(labels, device=image_emb.device)
    n, c = image_emb.shape[0], class_emb.shape[0]
    check(
        labels.shape == (n,) and not labels.is_floating_point(),
        f"labels must be an integer tensor of shape ({n},), got {labels.dtype} {tuple(labels.shape)}",
    )
    bad = (labels < 0) | (labels >= c)
    check(
        not bool(bad.any()),
        f"labels must be in [0, {c}) for {c} classes, got {labels[bad][:5].tolist()}",
    )
    logits = image_emb.float() @ class_emb.float().T  # [N, C]: small, C is the number of classes
    true = logits.gather(1, labels.long()[:, None])
    ranks = (logits >= true).sum(dim=1) - 1
    return {f"zeroshot_top{k}": (ranks < k).double().mean().item() for k in ks}


# ----------------------------------------------------------------------------- model helpers


def fill_template(template: str, classname: str) -> str:
    """``template`` with every ``{}`` / ``{name}`` placeholder replaced by ``classname``."""
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    check(
        len(fields) > 0,
        f"zero-shot template {template!r} has no '{{}}' placeholder for the class name",
    )

    class _Any(dict):
        def __missing__(self, key: str) -> str:
            return classname

    try:
        return string.Formatter().vformat(template, (classname,) * len(fields), _Any())
    except (IndexError, ValueError, AttributeError) as e:
        raise JestkitError(f"zero-shot template {template!r}: {e}") from e


def _class_embeddings_from_tokens(
    model: torch.nn.Module, tokens: torch.Tensor, n_classes: int, batch_size: int
) -> torch.Tensor:
    emb = embed_texts(model, tokens, chunk=batch_size, validate=False)
    emb = F.normalize(emb, dim=-1).view(n_classes, -1, emb.shape[-1]).mean(dim=1)
    return F.normalize(emb, dim=-1)


def class_embeddings(
    model: torch.nn.Module,
    tokenizer: Any,
    classnames: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 512,
) -> torch.Tensor:
    """[C, D] class embeddings: per class, the mean of the normalised text embeddings of every
    template filled with its name, re-normalised (CLIP's prompt ensembling)."""
    check(len(classnames) > 0, "classnames is empty")
    check(
        len(templates) > 0, "templates is empty: need at least one prompt template such as 'a {}'"
    )
    prompts = [fill_template(t, c) for c in classnames for t in templates]
    with inference_mode(model):
        return _class_embeddings_from_tokens(model, tokenizer(prompts), len(classnames), batch_size)


def duplicate_groups(x: torch.Tensor) -> torch.Tensor:
    """int[N] ids, equal exactly where rows of ``x`` (tokens, images) are identical."""
    return torch.unique(x.reshape(x.shape[0], -1), dim=0, return_inverse=True)[1]


# ----------------------------------------------------------------------------- Evaluator


def _split_dir(dataset_dir: Path, manifest: dict, name: str) -> Path | None:
    split = manifest.get("splits", {}).get(name)
    if split is None or int(split.get("count", 1)) == 0:
        return None
    path = Path(split.get("dir") or split.get("path", name))  # load_manifest resolves "dir"
    return path if path.is_absolute() else dataset_dir / path


def _check_options(batch_size: int, max_examples: int | None) -> None:
    check(
        isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1,
        f"batch_size must be an int >= 1, got {batch_size!r}",
    )
    check(
        max_examples is None or (isinstance(max_examples, int) and max_examples >= 1),
        f"max_examples must be None or an int >= 1, got {max_examples!r}",
    )


class Evaluator:
    """Loads a dataset's ``eval`` (retrieval) and ``zeroshot`` (classification) splits once,
    tokenises them once, and evaluates models at full resolution.

    A missing or empty split is skipped (its metrics are absent); at least one must exist.
    ``max_examples`` keeps the first n examples of each split (faster evals during training).
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike,
        tokenizer: Any,
        device: torch.device | str,
        batch_size: int = 512,
        max_examples: int | None = None,
    ) -> None:
        from jestkit.data import load_manifest, load_split

        _check_options(batch_size, max_examples)  # before the (slow) loading
        dataset_dir = Path(dataset_dir)
        manifest = load_manifest(dataset_dir)
        eval_dir = _split_dir(dataset_dir, manifest, "eval")
        zs_dir = _split_dir(dataset_dir, manifest, "zeroshot")
        check(
            eval_dir is not None or zs_dir is not None,
            f"dataset {dataset_dir} has neither an 'eval' nor a 'zeroshot' split to evaluate on",
        )
        ev = load_split(eval_dir) if eval_dir is not None else None
        zs = load_split(zs_dir) if zs_dir is not None else None
        twins = None
        if ev is not None and "hard_negative_group" in ev.meta:
            twins = np.asarray(ev.meta["hard_negative_group"], dtype=np.int64)
        labels = None
        if zs is not None:
            check("label" in zs.meta, f"split {zs_dir} has no 'label' column in its metadata")
            labels = np.asarray(zs.meta["label"])
        self._setup(
            tokenizer,
            device,
            batch_size,
            max_examples,
            images=None if ev is None else ev.images,
            captions=None if ev is None else list(ev.captions),
            twin_groups=twins,
            zeroshot_images=None if zs is None else zs.images,
            zeroshot_labels=labels,
            classes=list(manifest.get("classes") or []),
            templates=list(manifest.get("templates") or []),
            source=str(dataset_dir),
        )

    @classmethod
    def from_data(
        cls,
        tokenizer: Any,
        device: torch.device | str,
        *,
        images: torch.Tensor | None = None,
        captions: Sequence[str] | None = None,
        twin_groups: Any = None,
        zeroshot_images: torch.Tensor | None = None,
        zeroshot_labels: Any = None,
        classes: Sequence[str] = (),
        templates: Sequence[str] = (),
        batch_size: int = 512,
        max_examples: int | None = None,
    ) -> Evaluator:
        """An evaluator over in-memory data (images uint8 [N,C,H,W] or float, captions, labels;
        ``twin_groups``: int[N] near-twin group ids, -1 for none, for :func:`twin_metrics`)."""
        self = cls.__new__(cls)
        self._setup(
            tokenizer,
            device,
            batch_size,
            max_examples,
            images=images,
            captions=captions,
            twin_groups=twin_groups,
            zeroshot_images=zeroshot_images,
            zeroshot_labels=zeroshot_labels,
            classes=list(classes),
            templates=list(templates),
            source="<memory>",
        )
        return self

    def _setup(
        self,
        tokenizer: Any,
        device: torch.device | str,
        batch_size: int,
        max_examples: int | None,
        *,
        images: Any,
        captions: Any,
        twin_groups: Any,
        zeroshot_images: Any,
        zeroshot_labels: Any,
        classes: list[str],
        templates: list[str],
        source: str,
    ) -> None:
        _check_options(batch_size, max_examples)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.source = source
        cut = slice(None, max_examples)
        self.images = self.tokens = self.caption_groups = self.image_groups = None
        self.twin_groups = None
        if images is not None and len(images) == 0:
            images = None  # an empty split (or one whose every record was skipped) is absent
        if images is not None:
            check(
                captions is not None and len(captions) == len(images),
                f"{source}: eval split has {len(images)} images but "
                f"{None if captions is None else len(captions)} captions",
            )
            twins = None
            if twin_groups is not None:
                twins = torch.as_tensor(np.asarray(twin_groups))
                check(
                    twins.shape == (len(images),) and not twins.is_floating_point(),
                    f"{source}: twin_groups must be integers, one per eval example ({len(images)}), "
                    f"got {twins.dtype} {tuple(twins.shape)}",
                )
            images, captions = images[cut], list(captions)[cut]
            self.tokens = tokenizer(captions).to(self.device)
            self.images = torch.as_tensor(images).to(self.device)
            self.caption_groups = duplicate_groups(self.tokens)
            self.image_groups = duplicate_groups(self.images)
            if twins is not None:
                self.twin_groups = twins[cut].to(self.device)
        self.zeroshot_images = self.zeroshot_labels = self.prompt_tokens = None
        self.classes, self.templates = classes, templates
        if zeroshot_images is not None:
            check(
                zeroshot_labels is not None and len(zeroshot_labels) == len(zeroshot_images),
                f"{source}: zeroshot split has {len(zeroshot_images)} images but "
                f"{None if zeroshot_labels is None else len(zeroshot_labels)} labels",
            )
            labels = torch.as_tensor(np.asarray(zeroshot_labels), dtype=torch.long)
            keep = labels >= 0  # -1 = no label
            labels, zimages = labels[keep][cut], torch.as_tensor(zeroshot_images)[keep][cut]
            if len(labels) > 0:
                check(
                    len(classes) > 0, f"{source}: a zeroshot split needs the manifest's 'classes'"
                )
                check(
                    len(templates) > 0,
                    f"{source}: a zeroshot split needs the manifest's 'templates'",
                )
                bad = labels >= len(classes)
                check(
                    not bool(bad.any()),
                    f"{source}: zeroshot labels {labels[bad][:5].tolist()} out of range for {len(classes)} classes",
                )
                prompts = [fill_template(t, c) for c in classes for t in templates]
                self.prompt_tokens = tokenizer(prompts).to(self.device)
                self.zeroshot_images = zimages.to(self.device)
                self.zeroshot_labels = labels.to(self.device)
        check(
            self.images is not None or self.zeroshot_images is not None,
            f"{source}: nothing to evaluate (no eval examples and no labelled zeroshot examples)",
        )

    @property
    def n_eval(self) -> int:
        return 0 if self.images is None else int(self.images.shape[0])

    @property
    def n_zeroshot(self) -> int:
        return 0 if self.zeroshot_images is None else int(self.zeroshot_images.shape[0])

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        """Retrieval and zero-shot metrics of ``model`` at full resolution (``patch_size=None``)."""
        out: dict[str, float] = {}
        device, bs = model_device(model), self.batch_size

        fault_point("eval.start")  # crash tests (jestkit.faults); otherwise a no-op
        with inference_mode(model):
            if self.images is not None:
                # Validated here, once per evaluation: the eval set is user data at a boundary.
                img = embed_images(model, self.images, device=device, chunk=bs)
                txt = embed_texts(model, self.tokens, device=device, chunk=bs)
                out.update(
                    retrieval_metrics(
                        img,
                        txt,
                        caption_groups=self.caption_groups.to(device),
                        image_groups=self.image_groups.to(device),
                    )
                )
                if self.twin_groups is not None:
                    out.update(twin_metrics(img, txt, self.twin_groups.to(device)))
                fault_point("eval.retrieval")
            if self.zeroshot_images is not None:
                cls_emb = _class_embeddings_from_tokens(
                    model, self.prompt_tokens, len(self.classes), bs
                )
                img = embed_images(model, self.zeroshot_images, device=device, chunk=bs)
                out.update(zeroshot_metrics(img, cls_emb, self.zeroshot_labels.to(device)))
        return out


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        metavar="MODEL_DIR",
        help="an exported model or checkpoint folder, or a training output folder "
        "(its latest checkpoint is used)",
    )
    parser.add_argument(
        "--data", required=True, metavar="DATASET_DIR", help="a prepared dataset folder"
    )
    parser.add_argument(
        "--out", default=None, metavar="JSON", help="also write the result to this file"
    )
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument(
        "--max-examples", type=int, default=None, help="evaluate on the first n of each split"
    )
    parser.add_argument(
        "--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ..."
    )


def _model_dir(path: Path) -> Path:
    if (path / "config.json").is_file():
        return path
    from jestkit.checkpoint import latest_checkpoint

    found = latest_checkpoint(path) if path.is_dir() else None
    check(
        found is not None,
        f"--model {path}: not a model folder (no config.json) and no checkpoint in it",
    )
    return found


def run(args: argparse.Namespace) -> int:
    from jestkit.models import load_pretrained

    device = resolve_device(args.device)
    model_dir = _model_dir(Path(args.model))
    data = Path(args.data)
    check(data.is_dir(), f"--data {args.data}: no such dataset folder")
    model, tokenizer = load_pretrained(model_dir, device=device)
    evaluator = Evaluator(
        data, tokenizer, device, batch_size=args.batch_size, max_examples=args.max_examples
    )
    result = {
        "model": str(model_dir),
        "data": str(data),
        "n_eval": evaluator.n_eval,
        "n_zeroshot": evaluator.n_zeroshot,
        "metrics": evaluator(model),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        out = Path(args.out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(out, text + "\n")
        except OSError as e:
            raise JestkitError(f"--out {args.out}: cannot write: {e}") from e
    return 0
