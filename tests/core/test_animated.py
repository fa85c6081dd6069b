"""Animated renditions (opt-in): frames, durations and loop kept, fitted like stills,
composited correctly, deterministic, bounded by maxFrames and the memory budget."""

from __future__ import annotations

import time
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageStat

from functions.core.imaging import render_image
from functions.core.imaging.geometry import plan_rendition
from functions.core.keys import spec_digest
from functions.core.records import PermanentError
from functions.core.settings import (
    DEFAULT_RENDITIONS,
    PipelineSettings,
    RenditionSpec,
    SettingsError,
    parse_settings,
)
from functions.core.timing import StageTimer
from tests.core.hostile_files import gif_canvas
from tests.core.images import BLUE, GREEN, RED, WHITE, dominant, encoded

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "photos"
COLOURS = (RED, GREEN, BLUE, (200, 120, 0), (0, 160, 160))
DURATIONS = [40, 80, 120, 60, 100]


def moving_square(
    count: int = 5, size=(64, 48), mode: str = "RGB", at=(4, 16)
) -> list[Image.Image]:
    """Frames that all differ: a 16x16 square of a new colour, 8 px further right each time,
    on white (RGB) or on transparency (RGBA: pixels the square leaves turn transparent)."""
    background = WHITE if mode == "RGB" else (0, 0, 0, 0)
    frames = []
    for index in range(count):
        frame = Image.new(mode, size, background)
        left, top = at[0] + 8 * index, at[1]
        ImageDraw.Draw(frame).rectangle((left, top, left + 15, top + 15), fill=COLOURS[index % 5])
        frames.append(frame)
    return frames


def animation(frames: list[Image.Image], fmt: str, durations=DURATIONS, **options) -> bytes:
    if fmt == "WEBP":
        options.setdefault("lossless", True)
    return encoded(
        frames[0],
        fmt,
        save_all=True,
        append_images=frames[1:],
        duration=durations[: len(frames)],
        **options,
    )


def render(data: bytes, *specs: str, **values) -> dict:
    result = render_image(data, parse_settings({"renditions": list(specs), **values}), StageTimer())
    return {rendition.spec.name: rendition for rendition in result.renditions}


def played(data: bytes) -> tuple[list[Image.Image], list[int], int | None]:
    """Each frame as a viewer composites it (RGBA), its duration, and the loop count."""
    image = Image.open(BytesIO(data))
    frames, durations = [], []
    for index in range(getattr(image, "n_frames", 1)):
        image.seek(index)
        image.load()
        frames.append(image.convert("RGBA"))
        durations.append(image.info.get("duration"))
    return frames, durations, image.info.get("loop")


@pytest.mark.parametrize("source", ["GIF", "WEBP"])
@pytest.mark.parametrize("output", ["webp", "source"])
def test_frames_durations_and_loop_are_kept(source, output):
    data = animation(moving_square(), source, loop=3)
    _, in_durations, in_loop = played(data)
    out = render(data, f"clip:64x64:contain:{output}:80:animated")["clip"]
    frames, durations, loop = played(out.data)
    assert out.format == (source.lower() if output == "source" else "webp")
    assert len(frames) == 5
    assert durations == in_durations == DURATIONS
    assert loop == in_loop == 3


def test_a_gif_without_a_loop_count_plays_once_in_either_format():
    data = animation(moving_square(), "GIF")
    assert "loop" not in Image.open(BytesIO(data)).info
    out = render(
        data, "gif:64x64:contain:source:80:animated", "webp:64x64:contain:webp:80:animated"
    )
    assert "loop" not in Image.open(BytesIO(out["gif"].data)).info
    assert Image.open(BytesIO(out["webp"].data)).info["loop"] == 1  # WebP's "once"


@pytest.mark.parametrize("source", ["GIF", "WEBP"])
def test_every_frame_fits_the_box_as_the_still_does(source):
    data = animation(moving_square(size=(300, 200), at=(120, 90)), source, loop=0)
    specs = ("fit:100x100:contain:webp:80", "crop:80x80:cover:source:80")
    stills = render(data, *specs)
    animated = render(data, *(f"{spec}:animated" for spec in specs))
    for spec in parse_settings({"renditions": list(specs)}).renditions:
        expected = plan_rendition((300, 200), spec, None).size
        frames, _, _ = played(animated[spec.name].data)
        assert len(frames) == 5 and {frame.size for frame in frames} == {expected}
        assert (stills[spec.name].width, stills[spec.name].height) == expected
        assert (animated[spec.name].width, animated[spec.name].height) == expected
    assert (animated["fit"].width, animated["fit"].height) == (100, 67)
    assert (animated["crop"].width, animated["crop"].height) == (80, 80)


@pytest.mark.parametrize("source", ["GIF", "WEBP"])
def test_same_input_same_bytes(source):
    data = animation(moving_square(mode="RGBA", size=(120, 90)), source, loop=0)
    specs = ("a:60x60:contain:webp:75:animated", "b:50x50:cover:source:75:animated")
    first, second = render(data, *specs), render(data, *specs)
    assert {name: r.data for name, r in first.items()} == {
        name: r.data for name, r in second.items()
    }


@pytest.mark.parametrize("source", ["GIF", "WEBP"])
@pytest.mark.parametrize("output", ["webp", "source"])
def test_frames_composite_as_the_input_does(source, output):
    """Pixels the square leaves turn transparent again: each output frame, composited by a
    reader, has the input frame's alpha exactly and its colours."""
    data = animation(moving_square(mode="RGBA"), source, loop=0)
    inputs, _, _ = played(data)
    out = render(data, f"same:64x48:contain:{output}:90:animated")["same"]
    frames, _, _ = played(out.data)
    assert len(frames) == len(inputs) == 5
    for index, (want, got) in enumerate(zip(inputs, frames, strict=True)):
        assert ImageChops.difference(want.getchannel("A"), got.getchannel("A")).getbbox() is None
        left = 4 + 8 * index
        box = (left + 2, 18, left + 14, 30)
        for want_mean, got_mean in zip(mean(want, box), mean(got, box), strict=True):
            assert abs(want_mean - got_mean) <= 4


def mean(image: Image.Image, box) -> list[float]:
    return ImageStat.Stat(image.convert("RGB").crop(box)).mean


def test_a_still_input_with_an_animated_spec_gives_the_still_rendition():
    data = encoded(moving_square(1, size=(200, 100))[0], "PNG")
    out = render(data, "still:100x100:contain:webp:80", "moving:100x100:contain:webp:80:animated")
    assert out["moving"].data == out["still"].data
    assert getattr(Image.open(BytesIO(out["moving"].data)), "n_frames", 1) == 1


def test_an_animated_input_with_a_still_spec_gives_frame_one():
    data = animation(moving_square(), "WEBP", loop=0)
    out = render(data, "still:64x64:contain:webp:90", "moving:64x64:contain:webp:90:animated")
    still = Image.open(BytesIO(out["still"].data))
    assert getattr(still, "n_frames", 1) == 1 and dominant(still, (6, 18, 18, 30)) == RED
    assert Image.open(BytesIO(out["moving"].data)).n_frames == 5


def test_more_frames_than_max_frames_are_refused():
    data = animation(moving_square(), "GIF")
    with pytest.raises(PermanentError) as caught:
        render(data, "clip:64x64:contain:webp:80:animated", maxFrames=4)
    assert caught.value.code == "too_many_frames"


def test_frames_that_would_not_fit_the_budget_are_refused_before_decoding():
    """1000 frames of a 4000x4000 screen: 64 GB once resized. The still of frame 1 fits, so
    the refusal is the animation's, and it comes in milliseconds, before any frame."""
    data = gif_canvas(4000, 4000, frames=1000)
    assert render(data, "big:4000x4000:contain:webp:80")["big"].width == 4000
    started = time.perf_counter()
    with pytest.raises(PermanentError) as caught:
        render(data, "big:4000x4000:contain:webp:80:animated")
    assert time.perf_counter() - started < 1.0
    assert caught.value.code == "over_memory_budget"
    assert "1000 frames of this 4000x4000 GIF" in str(caught.value)
    assert "the budget is 717 MB (set by memoryMb)" in str(caught.value)


def _gif_growing_to(width: int, height: int) -> bytes:
    """A 10x10 GIF whose second frame reaches width x height: Pillow grows its canvas to
    hold that frame when it seeks there (browsers clip it to the screen)."""

    def gif(size: tuple[int, int], colour: int) -> bytes:
        image = Image.new("P", size, colour)
        image.putpalette([0, 0, 0, 255, 255, 255])
        return encoded(image, "GIF", optimize=False)

    first = gif((10, 10), 0)
    second = gif((width, height), 1)
    screen_end = 13 + 3 * 2 ** ((second[10] & 7) + 1)
    return first[:-1] + second[second.index(b",", screen_end) : -1] + b";"


def test_a_frame_that_grows_the_canvas_is_priced_before_it_is_decoded():
    with pytest.raises(PermanentError) as caught:
        render(_gif_growing_to(6000, 6000), "clip:10x10:contain:webp:80:animated")
    assert caught.value.code == "over_memory_budget"
    assert "6000x6000" in str(caught.value)


def test_frames_beyond_the_screen_are_cropped_to_it():
    data = _gif_growing_to(40, 30)
    out = render(data, "clip:10x10:contain:source:80:animated")["clip"]
    frames, _, _ = played(out.data)
    assert len(frames) == 2 and {frame.size for frame in frames} == {(10, 10)}
    assert [frame.getpixel((5, 5))[:3] for frame in frames] == [(0, 0, 0), WHITE]


def _corpus(name: str) -> bytes:
    path = CORPUS / name
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return path.read_bytes()


@pytest.mark.parametrize("name", ["gif_iss634_anim42.gif", "webp_iss634_anim_rgba.webp"])
@pytest.mark.parametrize("output", ["webp", "source"])
def test_corpus_animations_keep_every_frame(name, output):
    data = _corpus(name)
    _, in_durations, in_loop = played(data)
    out = render(data, f"clip:160x160:contain:{output}:80:animated")["clip"]
    frames, durations, loop = played(out.data)
    assert len(frames) == 42 and durations == in_durations and loop == in_loop == 0
    assert {frame.size for frame in frames} == {(160, 160)}


@pytest.mark.parametrize("output", ["webp", "source"])
def test_identical_frames_are_written_once_with_their_durations_summed(output):
    """gif_chi_anim31 repeats its last composited frame nine times: both encoders write it
    once for the ten frames' time, so the animation plays exactly as the input does."""
    data = _corpus("gif_chi_anim31.gif")
    inputs, in_durations, _ = played(data)
    expected: list[int] = []
    for index, frame in enumerate(inputs):
        same = index and ImageChops.difference(inputs[index - 1], frame).getbbox(alpha_only=False)
        if index and same is None:
            expected[-1] += in_durations[index]
        else:
            expected.append(in_durations[index])
    out = render(data, f"clip:160x160:contain:{output}:80:animated")["clip"]
    _, durations, loop = played(out.data)
    assert durations == expected and len(durations) == 22 and loop == 0


# The compact form: a sixth field, `animated`.


def test_the_compact_form_round_trips():
    settings = parse_settings(
        {"renditions": ["clip:320x320:contain:webp:75:animated", "gif:100x100:cover:source:80"]}
    )
    clip, still = settings.renditions
    assert clip == RenditionSpec("clip", 320, 320, "contain", "webp", 75, animated=True)
    assert clip.to_compact() == "clip:320x320:contain:webp:75:animated"
    assert not still.animated and still.to_compact() == "gif:100x100:cover:source:80"
    assert parse_settings({"renditions": [clip.to_compact()]}).renditions == (clip,)
    assert PipelineSettings.from_json(settings.to_json()) == settings


def test_still_specs_keep_their_compact_form_and_keys():
    """The digests the README's demo table shows for the default renditions."""
    large, thumb = DEFAULT_RENDITIONS
    assert large.to_compact() == "large:1024x768:contain:jpeg:82"
    assert (spec_digest(large, "jpeg"), spec_digest(thumb, "jpeg")) == ("283e018f94", "8372eb1334")
    animated = RenditionSpec("large", 1024, 768, "contain", "webp", 82, animated=True)
    assert spec_digest(animated, "webp") != spec_digest(
        RenditionSpec("large", 1024, 768, "contain", "webp", 82), "webp"
    )


@pytest.mark.parametrize(
    ("rendition", "message"),
    [
        (
            "a:10x10:contain:jpeg:82:animated",
            "imagepipe:renditions[0].animated is set with format jpeg; an animated "
            "rendition's format is webp or source.",
        ),
        (
            "a:10x10:contain:webp:82:moving",
            "imagepipe:renditions[0] has 'moving' as its sixth field; the only value allowed "
            "there is animated.",
        ),
        (
            "a:10x10:contain:webp:82:animated:x",
            "imagepipe:renditions[0] is 'a:10x10:contain:webp:82:animated:x'; use "
            "'name:WIDTHxHEIGHT[:fit[:format[:quality[:animated]]]]', "
            "for example 'thumb:200x200:cover:jpeg:82'.",
        ),
        (
            {"name": "a", "width": 10, "height": 10, "format": "webp", "animated": "yes"},
            "imagepipe:renditions[0].animated is 'yes'; use true or false.",
        ),
        (
            {"name": "a", "width": 10, "height": 10, "format": "png", "animated": True},
            "imagepipe:renditions[0].animated is set with format png; an animated "
            "rendition's format is webp or source.",
        ),
    ],
)
def test_animated_errors_name_the_key_and_what_is_allowed(rendition, message):
    with pytest.raises(SettingsError) as caught:
        parse_settings({"renditions": [rendition]})
    assert str(caught.value) == message


def test_the_json_form_takes_animated():
    spec = parse_settings(
        {
            "renditions": [
                {"name": "a", "width": 10, "height": 10, "format": "source", "animated": True}
            ]
        }
    ).renditions[0]
    assert spec.animated and spec.to_compact() == "a:10x10:contain:source:82:animated"
