"""What every bgobj plugin does, whatever the family: labels -> layout -> placeholders and model inputs.

A family's plugin is ``class XBgObjPlugin(BgObjPluginMixin, <LLaMA-Factory's plugin for X>)`` plus
the few lines that differ (how an item's tokens are wrapped, extra model inputs). The mixin:

1. opens each image as LLaMA-Factory accepts it (and reads a request id, if the image carries one);
2. runs the stock processor, then labels every token unit with the settings' mask provider at the
   processor's geometry (checked against the processor's own grid);
3. with ``bgobj_sibling_prob``, serves chosen training images a verified sibling's background;
4. with ``bgobj_patch_selection``, drops units by entropy inside each group (:mod:`lf_ext.selection`);
5. returns the stock inputs plus the packed :class:`~lf_ext.layout.ImageLayout` (``bgobj_layout``)
   and the request ids (``bgobj_request``), and expands each ``<image>`` into the layout.

Videos (families with video input): LLaMA-Factory samples and resizes the frames and runs the video
processor as always; each clip then becomes a separated item whose background is encoded once
(:mod:`lf_ext.plugins.clip_labels`), handed to the model through the image inputs (the towers treat
both alike; the layout carries the clip's slice duration for the positions). A sample mixing images
and videos is refused with a clear error. With the ``bgobj_video_*`` options on a stock template, each
clip instead becomes its plain streams (:mod:`lf_ext.plugins.clip_streams`), resampled after the merger.

The plugin of a registered template holds default settings; ``get_template_and_fix_tokenizer``
hands every command a copy bound to its own settings (:meth:`BgObjPluginMixin.bind`). A *plain*
plugin (``plain=True``) serves a family's stock template under a token budget: no mask, no
separators, every unit a background member, only the selection applies.
"""

from __future__ import annotations

import contextvars
import dataclasses
import io
import time
from copy import deepcopy
from dataclasses import dataclass, field
from functools import partial

import torch
from llamafactory.extras.constants import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER

from lf_ext.config import BgObjConfigError, Settings, video_options_on
from lf_ext.eval.datasets import RecordLocator
from lf_ext.families import BgObjFamily, family_for_type
from lf_ext.inference.metrics import observe_component
from lf_ext.layout import LAYOUT_KEY, ImageLayout
from lf_ext.masks.base import MaskError
from lf_ext.plugins.clip_labels import ClipLabeler, OpenedClip, VideoError
from lf_ext.plugins.clip_streams import stream_inputs, streams_per_clip
from lf_ext.plugins.image_labels import REQUEST_KEY, OpenedImage, UnitLabeler, open_original
from lf_ext.plugins.siblings import Sibling, SiblingSampler
from lf_ext.selection import PatchSelection

_REGULARIZED: contextvars.ContextVar[list | None] = contextvars.ContextVar("bgobj_regularized_clips", default=None)


@dataclass
class BgObjPluginMixin:
    """Mixed in before a LLaMA-Factory plugin class; subclasses set ``family_type`` (an HF model_type)."""

    family_type = ""  # a class attribute, not a field
    settings: Settings = field(default_factory=Settings, repr=False, compare=False)
    _labeler: UnitLabeler | None = field(default=None, repr=False, compare=False)
    _siblings: SiblingSampler | None = field(default=None, repr=False, compare=False)
    _records: RecordLocator | None = field(default=None, repr=False, compare=False)
    plain: bool = field(default=False, repr=False)

    # ------------------------------------------------------------------ settings
    def bind(self, settings: Settings):
        """A copy of this plugin using ``settings`` (its own labeler and sibling sampler)."""
        if not self.plain and video_options_on(settings.keys):
            raise BgObjConfigError(f"the bgobj_video_* options work with the stock template ({self.family.stock_template}) "
                                   f"so far, not with the separated layout ({self.family.template})")  # fmt: skip
        return dataclasses.replace(self, settings=settings, _labeler=UnitLabeler(settings), _siblings=SiblingSampler(settings),
                                   _records=None)  # fmt: skip

    @property
    def family(self) -> BgObjFamily:
        return family_for_type(self.family_type)

    @property
    def plain_clips(self) -> bool:
        """Plain mode with video options: clips go through the layout (pooled) instead of the stock video path."""
        return self.plain and video_options_on(self.settings.keys)

    @property
    def labeler(self) -> UnitLabeler:
        if self._labeler is None:
            self._labeler = UnitLabeler(self.settings)
        return self._labeler

    @property
    def records(self) -> RecordLocator:
        if self._records is None:
            self._records = RecordLocator(self.settings.lf_args)
        return self._records

    @property
    def siblings(self) -> SiblingSampler:
        if self._siblings is None:
            self._siblings = SiblingSampler(self.settings)
        return self._siblings

    # ------------------------------------------------------------------ what differs per family
    def wrap_item(self, layout_text: str) -> str:
        """The text that replaces one ``<image>``, given its separated layout text."""
        return layout_text

    # ------------------------------------------------------------------ model inputs
    def _stock_inputs(self, images: list, videos, audios, processor) -> dict:
        return super()._get_mm_inputs(images, videos, audios, processor)

    def _get_mm_inputs(self, images, videos, audios, processor):
        if videos and (not self.plain or self.plain_clips):
            if images:
                layout = f"{self.family.stock_template} with bgobj_video_* options" if self.plain else self.family.template
                raise VideoError(f"{self._where(0, len(images), None, 'image')}: a sample with both images and videos "
                                 f"cannot use the clip layout ({layout}); put them in separate samples")  # fmt: skip
            return self._clip_inputs(videos, audios, processor)
        opened = [self._open(images, index) for index in range(len(images))]
        mm_inputs = self._stock_inputs([o.image for o in opened], videos, audios, processor)
        if not opened:
            return mm_inputs
        family = self.family
        grids = family.unit_grids(mm_inputs, processor)
        labels = []
        for index, (item, grid) in enumerate(zip(opened, grids)):
            if self.plain:
                labels.append(torch.zeros(grid[1] * grid[2], dtype=torch.bool))
                continue
            geometry = family.token_grid(item.image.width, item.image.height, processor)
            try:
                if (1, *geometry.shape) != tuple(grid):
                    raise MaskError(f"{item.source}: token grid {geometry.shape} disagrees with the processor's {grid[1:]}")
                labels.append(torch.from_numpy(self.labeler.labels(item.image, item.source, geometry).reshape(-1)))
            except MaskError as err:
                raise MaskError(f"{self._where(index, len(images), item.source)}: {err}") from None
        layout = ImageLayout.from_labels(grids, torch.cat(labels), separated=not self.plain)
        if self.siblings.enabled() and not self.plain:
            mm_inputs, layout = self._serve_siblings(opened, mm_inputs, layout, processor)
        selection = PatchSelection.from_settings(self.settings.keys)
        if selection.enabled:
            pixels = family.pixel_units(processor.image_processor)
            for item in range(len(layout)):
                layout = selection.apply(layout, item, pixels.units(mm_inputs["pixel_values"], layout, item))
        mm_inputs[LAYOUT_KEY] = layout.pack()
        if any(o.request is not None for o in opened):
            mm_inputs[REQUEST_KEY] = torch.tensor([-1 if o.request is None else int(o.request) for o in opened])
        return mm_inputs

    def _open(self, images: list, index: int) -> OpenedImage:
        try:
            return open_original(images[index], index)
        except MaskError as err:
            source = images[index] if isinstance(images[index], str) else None
            raise MaskError(f"{self._where(index, len(images), source)}: {err}") from None

    def _where(self, index: int, count: int, source: str | None, kind: str = "image") -> str:
        """Names the sample: the dataset record (training data) or the request, and which of its images/videos."""
        record = self.records.describe(source) if source else None
        return f"{record or 'request'}, {kind} {index + 1} of {count}"

    # ------------------------------------------------------------------ videos
    def _regularize_videos(self, videos, **kwargs):
        """LLaMA-Factory's sampling and resize, unchanged; the frames are kept for the clip's split."""
        out = super()._regularize_videos(videos, **kwargs)
        sink = _REGULARIZED.get()
        if sink is not None:
            sink.append(out)
        return out

    def _clip_inputs(self, videos: list, audios, processor) -> dict:
        """Each clip as a separated item (see the module docstring), through the image inputs."""
        family = self.family
        clips = [self._open_clip(videos, index, processor) for index in range(len(videos))]
        sink: list = []
        token = _REGULARIZED.set(sink)
        try:
            stock = self._stock_inputs([], [c.source for c in clips], audios, processor)
        except (OSError, ValueError, IndexError, RuntimeError) as err:
            raise VideoError(f"{self._where(0, len(videos), None, 'video')}: LLaMA-Factory could not read the clip "
                             f"({type(err).__name__}: {err})") from None  # fmt: skip
        finally:
            _REGULARIZED.reset(token)
        (regularized,) = sink
        pixels = family.video_pixel_units(processor)
        inputs, grids = family.clip_image_inputs(stock, processor)
        seconds = [int(pixels.temporal / fps) for fps in regularized["fps_per_video"]]
        scaffold = ImageLayout(grids, torch.zeros(sum(t * r * c for t, r, c in grids), dtype=torch.int8), slice_seconds=seconds)
        if self.plain:  # the clip's streams: every unit kept, resampled after the merger
            merge = round((inputs["image_grid_thw"][0, 1] // grids[0][1]).item())
            pixel_values, grid_thw, layout = stream_inputs(inputs["pixel_values"], grids, seconds, merge, self.settings.keys)
            return dict(inputs, pixel_values=pixel_values, image_grid_thw=grid_thw, **{LAYOUT_KEY: layout.pack()})
        labeler = ClipLabeler(self.labeler, lambda frames: self._regularize_images(
            frames, image_max_pixels=getattr(processor, "video_max_pixels", 256 * 256),
            image_min_pixels=getattr(processor, "video_min_pixels", 16 * 16))["images"])  # fmt: skip
        groups = []
        for index, (clip, frames) in enumerate(zip(clips, regularized["videos"])):
            where = self._where(index, len(videos), clip.path, "video")
            if not frames:
                raise VideoError(f"{where}: no decodable frames")
            opened = OpenedClip(list(frames), clip.source, clip.sample_indices, clip.original_size, clip.request)
            geometry = family.video_token_grid(frames[0].width, frames[0].height, processor)
            if (len(frames) // pixels.temporal, *geometry.shape) != tuple(grids[index]):
                raise VideoError(f"{where}: token grid {geometry.shape} x {len(frames)} frames disagrees with the "
                                 f"processor's {grids[index]}")  # fmt: skip
            started = time.perf_counter()
            units = pixels.frame_units(inputs["pixel_values"], scaffold, index)
            groups.append(labeler.groups(opened, geometry, units, pixels.temporal, where).reshape(-1))
            observe_component("mask", time.perf_counter() - started)  # the clip's split: masks and pixel changes
        layout = ImageLayout(grids, torch.cat(groups), slice_seconds=seconds)
        inputs[LAYOUT_KEY] = layout.pack()
        if any(c.request is not None for c in clips):
            inputs[REQUEST_KEY] = torch.tensor([-1 if c.request is None else int(c.request) for c in clips])
        return inputs

    def _open_clip(self, videos: list, index: int, processor) -> "_ClipSource":
        """Check a video before LLaMA-Factory decodes it: readable, with frames; its size and sampled indices."""
        video, request = videos[index], None
        if isinstance(video, dict):
            request = video.get(REQUEST_KEY)
            video = video.get("path", video.get("video"))
        path = video if isinstance(video, str) else None
        where = self._where(index, len(videos), path, "video")
        if isinstance(video, (list, tuple)):
            if not video:
                raise VideoError(f"{where}: an empty frame list")
            first = self._open([video[0]], 0).image
            return _ClipSource(list(video), None, first.size, request, str(video[0]) if isinstance(video[0], str) else None)
        if hasattr(video, "read") and not (hasattr(video, "seekable") and video.seekable()):
            video = io.BytesIO(video.read())  # an HTTP body (the API's video_url): read once, then seekable
        if not isinstance(video, str) and not hasattr(video, "read"):
            raise VideoError(f"{where}: a video is a file path, a file object or a list of frames, got {type(video).__name__}")
        import av

        try:
            with av.open(video, "r") as container:
                stream = next((s for s in container.streams if s.type == "video"), None)
                if stream is None:
                    raise VideoError(f"{where}: {video} has no video stream")
                if next(iter(container.decode(stream)), None) is None:
                    raise VideoError(f"{where}: {video} has no decodable frames")
                indices = [int(i) for i in self._get_video_sample_indices(
                    stream, video_fps=getattr(processor, "video_fps", 2.0), video_maxlen=getattr(processor, "video_maxlen", 128))]  # fmt: skip
                size = (stream.width, stream.height)
        except (OSError, av.FFmpegError) as err:
            raise VideoError(f"{where}: cannot read the video {path or '(uploaded)'} ({type(err).__name__}: {err})") from None
        if hasattr(video, "seek"):
            video.seek(0)  # LLaMA-Factory decodes it again from the start
        return _ClipSource(video, indices, size, request, path)

    def _serve_siblings(self, opened: list[OpenedImage], mm_inputs: dict, layout: ImageLayout, processor):
        """``bgobj_sibling_prob``: give chosen images a sibling's background as a cache hit would (see
        :mod:`lf_ext.plugins.siblings`); the choice depends only on the image, so both calls per sample agree."""
        pixels = self.family.pixel_units(processor.image_processor)
        pixel_values = mm_inputs["pixel_values"]
        for item, image in enumerate(opened):
            own_object = layout.object_labels(item)[0].numpy()
            units = pixels.units(pixel_values, layout, item)[0]
            load = partial(self._sibling_at, grid=layout.grids[item], processor=processor, pixels=pixels)
            sibling = self.siblings.choose(image.source, units, layout.grids[item], own_object, load)
            if sibling is not None:
                where = torch.from_numpy(sibling.background)
                pixel_values = pixels.replace(pixel_values, layout, item, sibling.pixel_values, where)
                layout = layout.with_item(item, (~where).to(torch.int8))
        return dict(mm_inputs, pixel_values=pixel_values), layout

    def _sibling_at(self, path: str, grid, processor, pixels) -> Sibling | None:
        """A sibling candidate encoded by the processor, if readable, masked and of the same grid."""
        family = self.family
        try:
            candidate = open_original(path, 0)
            single = self._stock_inputs([candidate.image], [], [], processor)
            (own_grid,) = family.unit_grids(single, processor)
            geometry = family.token_grid(candidate.image.width, candidate.image.height, processor)
            own = self.labeler.labels(candidate.image, path, geometry)
        except MaskError:
            return None  # an unreadable candidate or one without a mask is no sibling
        if tuple(own_grid) != tuple(grid):
            return None
        item_layout = ImageLayout.from_labels([own_grid], torch.from_numpy(own.reshape(-1)))
        return Sibling(path, single["pixel_values"], pixels.units(single["pixel_values"], item_layout, 0)[0], ~own)

    # ------------------------------------------------------------------ text
    def process_messages(self, messages, images, videos, audios, processor):
        """Replace each image (and, separated, each video) placeholder by its layout."""
        self._validate_input(processor, images, videos, audios)
        self._validate_messages(messages, images, videos, audios)
        messages = deepcopy(messages)
        clips = bool(videos) and (not self.plain or self.plain_clips)
        if clips and images:
            self._get_mm_inputs(images, videos, audios, processor)  # raises the mixing error
        expansions = iter(self._clip_expansions(videos, processor) if clips else self._image_expansions(images, processor))
        placeholder = VIDEO_PLACEHOLDER if clips else IMAGE_PLACEHOLDER
        for message in messages:  # split first: the expansion may contain the placeholder itself (LLaVA's <image>)
            parts = message["content"].split(placeholder)
            message["content"] = parts[0] + "".join(next(expansions) + part for part in parts[1:])
        if (videos and not clips) or audios:
            return super().process_messages(messages, [], [] if clips else videos, audios, processor)
        return messages

    def _clip_expansions(self, videos, processor) -> list[str]:
        """One text per clip: its item's (plain mode: its streams') wrapped placeholders."""
        per_clip = streams_per_clip(self.settings.keys) if self.plain else 1
        if not self.expand_mm_tokens:
            return [self.wrap_item(self.image_token) * per_clip] * len(videos)
        layout = ImageLayout.unpack(self._get_mm_inputs([], videos, [], processor)[LAYOUT_KEY])
        texts = [self.wrap_item(layout.placeholder(item, self.image_token)) for item in range(len(layout))]
        return ["".join(texts[at : at + per_clip]) for at in range(0, len(texts), per_clip)]

    def _image_expansions(self, images, processor) -> list[str]:
        if not images:
            return []
        if not self.expand_mm_tokens:
            return [self.wrap_item(self.image_token)] * len(images)
        layout = ImageLayout.unpack(self._get_mm_inputs(images, [], [], processor)[LAYOUT_KEY])
        return [self.wrap_item(layout.placeholder(item, self.image_token)) for item in range(len(layout))]


@dataclasses.dataclass
class _ClipSource:
    """A video request, checked: what LLaMA-Factory decodes, and what the masks need."""

    source: str | list  # the file, or the frame list
    sample_indices: list[int] | None
    original_size: tuple[int, int]
    request: int | None
    path: str | None  # how the dataset knows it (the file, or the first frame's file)
