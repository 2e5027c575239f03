"""The separated layout: which token units are background, object or dropped, and how they become tokens.

Each media item (an image; a video clip later) becomes::

    [BG_START] background tokens [BG_END] [OBJ_START] object tokens [OBJ_END]

An :class:`ImageLayout` holds, for every item, its grid of *token units* (one unit = the pixels one
visual token stands for: a 2x2-merged 28-px square for Qwen2-VL, a 14-px patch for LLaVA-1.5) as
``(slices, rows, cols)`` and one :class:`Group` per unit: its membership (background or object) and
whether it is kept. Tokens appear group by group: the kept background units in ``(slice, row, col)``
order, then the kept object units in the same order; dropped units (a token budget, or a video's
static background after its first slice) get no token and are never encoded. A *plain* layout (the
stock template under a token budget) has no separators and no object group: its kept units in
``(slice, row, col)`` order are the item's tokens. A plain item may be *resampled*
(``bgobj_video_*`` options, :mod:`lf_ext.pooling`): every unit is encoded, then each slice's grid of
merged tokens is scaled (bilinear, to ``round(rows * scale)``) and pooled (``stride``); its tokens
are the cells of that grid. The plugin builds the layout once per batch and
hands it to the model as one tensor (:meth:`ImageLayout.pack`) under ``mm_inputs[LAYOUT_KEY]``; the
vision encoding, the positions, the background cache and sibling training all read that one object.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from enum import IntEnum
from typing import Iterable, Sequence

import torch

BG_START, BG_END, OBJ_START, OBJ_END = "[BG_START]", "[BG_END]", "[OBJ_START]", "[OBJ_END]"
SEPARATORS = (BG_START, BG_END, OBJ_START, OBJ_END)
LAYOUT_KEY = "bgobj_layout"
PACK_VERSION = 4
POOL_MODES = ("average", "max", "bilinear")

Grid = tuple[int, int, int]  # (slices, rows, cols) in token units

# The layout of the batch LLaMA-Factory's collator is computing position ids for: set only by the
# collator patch (``lf_ext.patches.collator``), the one place LLaMA-Factory gives no other channel.
COLLATING_LAYOUT: contextvars.ContextVar["ImageLayout | None"] = contextvars.ContextVar("bgobj_collating_layout", default=None)


class Group(IntEnum):
    """What becomes of one token unit: its membership, and whether it gets a token."""

    BACKGROUND = 0
    OBJECT = 1
    DROPPED = 2  # a background unit without a token
    DROPPED_OBJECT = 3  # an object unit without a token


TOKEN_GROUPS = (Group.BACKGROUND, Group.OBJECT)
OBJECT_MEMBERS = (int(Group.OBJECT), int(Group.DROPPED_OBJECT))


def add_separator_tokens(tokenizer) -> list[int]:
    """Add the four separators as special tokens (idempotent); return their ids in SEPARATORS order."""
    missing = [tok for tok in SEPARATORS if tok not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    return separator_ids(tokenizer)


def separator_ids(tokenizer) -> list[int]:
    ids = tokenizer.convert_tokens_to_ids(list(SEPARATORS))
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
        raise ValueError(f"the tokenizer lacks the bgobj separator tokens {SEPARATORS}")
    return ids


def has_separators(tokenizer) -> bool:
    vocab = tokenizer.get_vocab()
    return all(token in vocab for token in SEPARATORS)


def clip_groups(background: torch.Tensor, token_at: torch.Tensor) -> torch.Tensor:
    """Groups ``(slices, rows, cols)`` of a clip whose background is encoded once.

    ``background``: bool ``(rows, cols)``, the units whose token comes from the first slice and stands
    for them in every slice (BACKGROUND in the first slice); every other unit is an object unit with a
    token in the first slice. ``token_at``: bool ``(slices, rows, cols)``, where a unit gets a token of a
    later slice (it changed since its previous token): OBJECT there, else DROPPED (background) or
    DROPPED_OBJECT. The first slice of ``token_at`` is ignored. Tokens: |B| + Σ_t |O_t|."""
    background = torch.as_tensor(background, dtype=torch.bool)
    token_at = torch.as_tensor(token_at, dtype=torch.bool)
    if token_at.shape[1:] != background.shape:
        raise ValueError(f"token_at {tuple(token_at.shape)} does not match the background {tuple(background.shape)}")
    dropped = torch.where(background, int(Group.DROPPED), int(Group.DROPPED_OBJECT)).to(torch.int8)
    groups = torch.where(token_at, torch.tensor(int(Group.OBJECT), dtype=torch.int8), dropped.expand_as(token_at)).to(torch.int8)
    groups[0] = torch.where(background, int(Group.BACKGROUND), int(Group.OBJECT)).to(torch.int8)
    return groups


def separated_placeholder(n_background: int, n_object: int, image_token: str) -> str:
    """Token text for one item's visual tokens in the separated layout."""
    return f"{BG_START}{image_token * n_background}{BG_END}{OBJ_START}{image_token * n_object}{OBJ_END}"


@dataclass(frozen=True, eq=False)
class ImageLayout:
    """Grids and unit groups of a sequence of media items (see the module docstring).

    Args:
        grids: per item ``(slices, rows, cols)`` of token units.
        groups: int8 ``[Σ slices*rows*cols]``, a :class:`Group` per unit, item after item, each item
            in ``(slice, row, col)`` row-major order (kept on the CPU).
        separated: the ``[BG_START] … [OBJ_END]`` layout; False: plain (stock template, every unit a
            background member, only the kept ones get tokens).
        slice_seconds: per item, the whole seconds one temporal slice of a video spans (transformers
            truncates ``second_per_grid_ts`` to an integer too), -1 for an image; None: every item an
            image. The family turns it into the temporal position step (Qwen2.5-VL:
            ``tokens_per_second * seconds``; Qwen2-VL: 1).
        pools: per item, the stride of 2-D pooling after the merger (1: none; only plain items with
            every unit kept); None: 1 for every item.
        scales: per item, the scale its merged grid is resampled to before pooling (1.0: none; in
            thousandths when packed); None: 1.0 for every item.
        pool_mode: ``average``, ``max`` or ``bilinear`` (LLaVA-NeXT's ``get_2dPool`` modes).
    """

    grids: tuple[Grid, ...]
    groups: torch.Tensor
    separated: bool = True
    slice_seconds: tuple[int, ...] | None = None
    pools: tuple[int, ...] | None = None
    pool_mode: str = "average"
    scales: tuple[float, ...] | None = None

    def __post_init__(self):
        grids = tuple(tuple(int(v) for v in grid) for grid in self.grids)
        if any(len(grid) != 3 or min(grid) < 1 for grid in grids):
            raise ValueError(f"layout grids must be (slices, rows, cols) with sizes >= 1, got {grids}")
        groups = torch.as_tensor(self.groups).detach().reshape(-1).to("cpu")
        if groups.is_floating_point():
            raise ValueError("layout groups must be integers: 0 background, 1 object, 2/3 dropped background/object")
        total = sum(t * r * c for t, r, c in grids)
        if groups.numel() != total:
            raise ValueError(f"layout has {groups.numel()} unit groups for grids {list(grids)} ({total} units)")
        if groups.numel() and (int(groups.min()) < 0 or int(groups.max()) > int(Group.DROPPED_OBJECT)):
            raise ValueError("layout groups must be 0 (background), 1 (object), 2 (dropped background) or 3 (dropped object)")
        if not self.separated and bool(torch.isin(groups, torch.tensor(OBJECT_MEMBERS, dtype=groups.dtype)).any()):
            raise ValueError("a plain layout has no object group")
        seconds = tuple(int(v) for v in self.slice_seconds) if self.slice_seconds is not None else (-1,) * len(grids)
        if len(seconds) != len(grids) or any(v < -1 for v in seconds):
            raise ValueError(f"layout slice_seconds must be one integer >= -1 per item, got {self.slice_seconds} for {len(grids)} items")
        pools = tuple(int(v) for v in self.pools) if self.pools is not None else (1,) * len(grids)
        if len(pools) != len(grids) or any(v < 1 for v in pools):
            raise ValueError(f"layout pools must be one integer >= 1 per item, got {self.pools} for {len(grids)} items")
        scales = tuple(float(v) for v in self.scales) if self.scales is not None else (1.0,) * len(grids)
        if len(scales) != len(grids) or not all(0.0 < v <= 1.0 for v in scales):
            raise ValueError(f"layout scales must be one number in (0, 1] per item, got {self.scales} for {len(grids)} items")
        if self.pool_mode not in POOL_MODES:
            raise ValueError(f"layout pool_mode must be one of {POOL_MODES}, got {self.pool_mode!r}")
        object.__setattr__(self, "grids", grids)
        object.__setattr__(self, "groups", groups.to(torch.int8).contiguous())
        object.__setattr__(self, "slice_seconds", seconds)
        object.__setattr__(self, "pools", pools)
        object.__setattr__(self, "scales", scales)
        for item in range(len(grids)):
            if self.resampled(item) and (self.separated or bool((self.item_groups(item) != int(Group.BACKGROUND)).any())):
                raise ValueError(f"item {item}: pooling (stride {pools[item]}, scale {scales[item]}) needs a plain item "
                                 f"with every unit kept")  # fmt: skip

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_labels(cls, grids: Iterable[Sequence[int]], object_labels: torch.Tensor, separated: bool = True,
                    slice_seconds: Sequence[int] | None = None) -> "ImageLayout":  # fmt: skip
        """From one object label per unit (bool, or integers 0/1), no unit dropped."""
        labels = torch.as_tensor(object_labels).detach().reshape(-1).cpu()
        if labels.dtype != torch.bool:
            if labels.is_floating_point() or not bool(((labels == 0) | (labels == 1)).all()):
                raise ValueError("object labels must be bool or integers in {0, 1} (0 = background, 1 = object)")
        return cls(tuple(tuple(g) for g in grids), labels.to(torch.int8), separated, slice_seconds)

    @classmethod
    def concat(cls, layouts: Iterable["ImageLayout"], separated: bool = True) -> "ImageLayout":
        layouts = list(layouts)
        if any(layout.separated != separated for layout in layouts):
            raise ValueError("cannot mix separated and plain layouts")
        if len({layout.pool_mode for layout in layouts if layout.pooled}) > 1:
            raise ValueError("cannot mix pooling modes in one layout")
        grids = tuple(grid for layout in layouts for grid in layout.grids)
        groups = torch.cat([layout.groups for layout in layouts]) if layouts else torch.zeros(0, dtype=torch.int8)
        mode = next((layout.pool_mode for layout in layouts if layout.pooled), "average")
        return cls(grids, groups, separated, tuple(v for layout in layouts for v in layout.slice_seconds),
                   tuple(v for layout in layouts for v in layout.pools), mode,
                   tuple(v for layout in layouts for v in layout.scales))  # fmt: skip

    @classmethod
    def coerce(cls, value) -> "ImageLayout | None":
        """A layout from what travels in ``mm_inputs`` (a packed tensor), or None."""
        if value is None or isinstance(value, ImageLayout):
            return value
        return cls.unpack(value)

    # ------------------------------------------------------------------ items
    def __len__(self) -> int:
        return len(self.grids)

    def is_video(self, item: int) -> bool:
        return self.slice_seconds[item] >= 0

    @property
    def sizes(self) -> list[int]:
        """Units per item."""
        return [t * r * c for t, r, c in self.grids]

    def offset(self, item: int) -> int:
        """Index of the item's first unit in :attr:`groups`."""
        return sum(self.sizes[:item])

    def item(self, item: int) -> "ImageLayout":
        return ImageLayout((self.grids[item],), self.item_groups(item).reshape(-1), self.separated, (self.slice_seconds[item],),
                           (self.pools[item],), self.pool_mode, (self.scales[item],))  # fmt: skip

    def resampled(self, item: int) -> bool:
        """True when the item's tokens are cells of a scaled and/or pooled grid, not its units."""
        return self.pools[item] > 1 or self.scales[item] < 1.0

    @property
    def pooled(self) -> bool:
        """Any item resampled."""
        return any(self.resampled(item) for item in range(len(self)))

    def scaled_grid(self, item: int) -> tuple[int, int]:
        """``(rows, cols)`` of the item's grid after scaling (before pooling)."""
        _, rows, cols = self.grids[item]
        scale = self.scales[item]
        return (rows, cols) if scale == 1.0 else (max(1, round(rows * scale)), max(1, round(cols * scale)))

    def token_grid(self, item: int) -> Grid:
        """``(slices, rows, cols)`` of the item's token grid: its unit grid, or the scaled and pooled one."""
        rows, cols = self.scaled_grid(item)
        pool = self.pools[item]
        return self.grids[item][0], -(-rows // pool), -(-cols // pool)

    def items(self) -> list["ImageLayout"]:
        return [self.item(i) for i in range(len(self))]

    def item_groups(self, item: int) -> torch.Tensor:
        """The item's groups as ``(slices, rows, cols)`` int8."""
        start = self.offset(item)
        return self.groups[start : start + self.sizes[item]].view(self.grids[item])

    def count(self, group: Group, item: int | None = None) -> int:
        groups = self.groups if item is None else self.item_groups(item)
        return int((groups == int(group)).sum())

    def n_background(self, item: int) -> int:
        return self.count(Group.BACKGROUND, item)

    def n_object(self, item: int) -> int:
        return self.count(Group.OBJECT, item)

    def n_tokens(self, item: int | None = None) -> int:
        """Visual tokens of one item (or of all): its background and object units (a pooled item: its cells)."""
        if item is None:
            return sum(self.n_tokens(i) for i in range(len(self)))
        if self.resampled(item):
            slices, rows, cols = self.token_grid(item)
            return slices * rows * cols
        return self.count(Group.BACKGROUND, item) + self.count(Group.OBJECT, item)

    def object_labels(self, item: int) -> torch.Tensor:
        """(slices, rows, cols) bool: True where the unit is an object member (kept or dropped)."""
        return torch.isin(self.item_groups(item), torch.tensor(OBJECT_MEMBERS, dtype=torch.int8))

    def kept(self, item: int) -> torch.Tensor:
        """(slices, rows, cols) bool: True where the unit gets a token."""
        return self.item_groups(item) <= int(Group.OBJECT)

    def token_units(self, item: int, groups: Sequence[Group] = TOKEN_GROUPS) -> torch.Tensor:
        """Unit indices (within the item, flat) in token order, for the given groups in that order."""
        flat = self.item_groups(item).reshape(-1)
        return torch.cat([torch.nonzero(flat == int(group), as_tuple=True)[0] for group in groups])

    def placeholder(self, item: int, image_token: str) -> str:
        if not self.separated:
            return image_token * self.n_tokens(item)
        return separated_placeholder(self.n_background(item), self.n_object(item), image_token)

    def with_item(self, item: int, groups: torch.Tensor) -> "ImageLayout":
        """The same layout with one item's groups replaced (e.g. by a cache entry's split)."""
        start = self.offset(item)
        new = self.groups.clone()
        new[start : start + self.sizes[item]] = torch.as_tensor(groups).reshape(-1).to(torch.int8)
        return ImageLayout(self.grids, new, self.separated, self.slice_seconds, self.pools, self.pool_mode, self.scales)

    def with_kept(self, item: int, kept: torch.Tensor) -> "ImageLayout":
        """The same layout with one item's units kept where ``kept`` (its grid's shape) is True, dropped
        elsewhere; memberships unchanged."""
        members = self.object_labels(item).reshape(-1).to(torch.int8)  # 0 background, 1 object
        keep = torch.as_tensor(kept, dtype=torch.bool).reshape(-1)
        return self.with_item(item, torch.where(keep, members, members + int(Group.DROPPED)))

    # ------------------------------------------------------------------ transport
    def pack(self) -> torch.Tensor:
        """One int64 tensor: ``[version, separated, pool mode, items, (slices, rows, cols, slice seconds, pool,
        scale in thousandths) per item..., groups...]``."""
        header = [PACK_VERSION, int(self.separated), POOL_MODES.index(self.pool_mode), len(self.grids)]
        header += [v for grid, step, pool, scale in zip(self.grids, self.slice_seconds, self.pools, self.scales)
                   for v in (*grid, step, pool, round(scale * 1000))]  # fmt: skip
        return torch.cat([torch.tensor(header, dtype=torch.long), self.groups.long()])

    @classmethod
    def unpack(cls, packed: torch.Tensor) -> "ImageLayout":
        values = torch.as_tensor(packed).detach().reshape(-1).cpu().long()
        if values.numel() < 4 or int(values[0]) != PACK_VERSION:
            raise ValueError(f"{LAYOUT_KEY} is not a packed ImageLayout (version {PACK_VERSION})")
        separated, mode, items = bool(values[1]), POOL_MODES[int(values[2])], int(values[3])
        header = values[4 : 4 + 6 * items].view(items, 6).tolist() if items else []
        return cls(tuple(tuple(g[:3]) for g in header), values[4 + 6 * items :], separated, tuple(g[3] for g in header),
                   tuple(g[4] for g in header), mode, tuple(g[5] / 1000 for g in header))  # fmt: skip


@dataclass(frozen=True)
class SeparatorIds:
    """Token ids of the separators and of the visual token."""

    bg_start: int
    bg_end: int
    obj_start: int
    obj_end: int
    image: int

    @classmethod
    def of(cls, separator_ids: Sequence[int], image_token_id: int) -> "SeparatorIds":
        return cls(*[int(i) for i in separator_ids], int(image_token_id))


@dataclass(frozen=True)
class Span:
    """Where one item's separated tokens sit in a token sequence."""

    bg_start: int  # index of [BG_START]
    n_background: int
    n_object: int

    @property
    def bg_end(self) -> int:
        return self.bg_start + self.n_background + 1

    @property
    def prefix_end(self) -> int:
        """One past [BG_END]: everything before it depends on the background only."""
        return self.bg_end + 1

    @property
    def obj_end(self) -> int:
        """Index of [OBJ_END]."""
        return self.bg_end + self.n_object + 2


def find_spans(ids: Sequence[int], tokens: SeparatorIds) -> list[Span]:
    """Parse the separated items of one token sequence; raises ValueError on a malformed layout."""
    ids = list(ids)
    spans, i = [], 0
    while i < len(ids):
        if ids[i] == tokens.image:
            raise ValueError(f"visual token at {i} outside the [BG_START]/[OBJ_START] layout")
        if ids[i] != tokens.bg_start:
            i += 1
            continue
        start, j = i, i + 1
        while j < len(ids) and ids[j] == tokens.image:
            j += 1
        n_background = j - start - 1
        if ids[j : j + 2] != [tokens.bg_end, tokens.obj_start]:
            raise ValueError(f"malformed separated layout after [BG_START] at {start}: expected [BG_END][OBJ_START]")
        k = j + 2
        while k < len(ids) and ids[k] == tokens.image:
            k += 1
        if k >= len(ids) or ids[k] != tokens.obj_end:
            raise ValueError(f"malformed separated layout after [BG_START] at {start}: expected [OBJ_END]")
        spans.append(Span(start, n_background, k - j - 2))
        i = k + 1
    return spans


def check_spans(spans: Sequence[Span], layout: ImageLayout) -> None:
    """Raise unless the token sequence's items have the layout's token counts."""
    if len(spans) != len(layout):
        raise ValueError(f"{len(spans)} separated items in the tokens, {len(layout)} in the layout")
    for item, span in enumerate(spans):
        expected = (layout.n_background(item), layout.n_object(item))
        if (span.n_background, span.n_object) != expected:
            raise ValueError(f"item {item}: {span.n_background} + {span.n_object} visual tokens in the sequence, "
                             f"the layout gives {expected[0]} + {expected[1]}")  # fmt: skip


def respan(ids: torch.Tensor, span: Span, n_background: int, n_object: int, tokens: SeparatorIds) -> torch.Tensor:
    """A (1, n) sequence with one item's token counts changed (a cache hit serves the entry's split)."""
    if (span.n_background, span.n_object) == (n_background, n_object):
        return ids
    row = ids[0]
    new = torch.tensor([tokens.bg_start] + [tokens.image] * n_background + [tokens.bg_end, tokens.obj_start]
                       + [tokens.image] * n_object + [tokens.obj_end], dtype=row.dtype, device=row.device)  # fmt: skip
    return torch.cat([row[: span.bg_start], new, row[span.obj_end + 1 :]]).unsqueeze(0)
