"""The same bytes under another key take the renditions already made, without a decode.

Decodes are counted through the `Pipeline`'s renderer: a reuse calls it zero times.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from functions.core.imaging import render_image
from functions.core.records import Status, StorageUnavailable
from functions.core.settings import RenditionSpec
from tests.core.images import FakeStack, encoded, quadrants

RENDER_STAGES = {"detect", "validate", "inspect", "render", "encode", "store"}


@dataclass
class CountingRenderer:
    """The real renderer, counting its calls (each one is a decode)."""

    calls: list[int] = field(default_factory=list)

    def __call__(self, data, settings, timer):
        self.calls.append(len(data))
        return render_image(data, settings, timer)


@pytest.fixture
def stack() -> FakeStack:
    return FakeStack()


@pytest.fixture
def renderer() -> CountingRenderer:
    return CountingRenderer()


def _renditions(stack: FakeStack) -> dict:
    return {
        key: blob for (bucket, key), blob in stack.blobs.objects.items() if bucket == "renditions"
    }


def photo() -> bytes:
    return encoded(quadrants((640, 480)), "JPEG", quality=90)


def test_the_same_bytes_under_a_new_key_take_the_renditions_without_a_decode(stack, renderer):
    first = stack.process(stack.upload("a/one.jpg", photo()), renderer=renderer).record
    written = {key: blob.version for key, blob in _renditions(stack).items()}

    second = stack.process(stack.upload("b/two.jpg", photo()), renderer=renderer)

    assert renderer.calls == [len(photo())]  # the first upload's decode only
    record = second.record
    assert (second.action, record.status) == ("completed", Status.COMPLETED)
    assert record.id != first.id and record.source.key == "b/two.jpg"
    assert record.source.sha256 == first.source.sha256
    assert record.renditions == first.renditions  # the same keys, sizes and formats
    assert record.image == first.image
    assert set(record.stage_ms) == {"claim", "read", "reuse"}
    assert not RENDER_STAGES & set(record.stage_ms)
    assert "lookup" in first.stage_ms and "reuse" not in first.stage_ms
    # Nothing was written again, and the event went out as for any finished image.
    assert {key: blob.version for key, blob in _renditions(stack).items()} == written
    assert [event["data"]["id"] for event in stack.events.events] == [first.id, record.id]
    assert stack.events.events[-1]["type"] == "imagepipe.image.completed"


def test_a_missing_rendition_is_rendered_again(stack, renderer):
    first = stack.process(stack.upload("a/one.jpg", photo()), renderer=renderer).record
    del stack.blobs.objects[("renditions", first.renditions[1].key)]

    second = stack.process(stack.upload("b/two.jpg", photo()), renderer=renderer).record

    assert len(renderer.calls) == 2
    assert second.renditions == first.renditions
    assert ("renditions", first.renditions[1].key) in stack.blobs.objects
    assert "reuse" not in second.stage_ms


def test_changed_specs_render_again_and_the_newest_record_is_reused(stack, renderer):
    stack.process(stack.upload("a/one.jpg", photo()), renderer=renderer)
    stack.settings = replace(
        stack.settings, renditions=(RenditionSpec("thumb", 120, 120, "cover", "webp", 80),)
    )
    stack.now = stack.now.replace(minute=1)
    changed = stack.process(stack.upload("b/two.jpg", photo()), renderer=renderer).record
    assert len(renderer.calls) == 2
    assert [r.format for r in changed.renditions] == ["webp"]

    stack.now = stack.now.replace(minute=5)
    again = stack.process(stack.upload("c/three.jpg", photo()), renderer=renderer).record
    assert len(renderer.calls) == 2  # the record made with these specs is found
    assert again.renditions == changed.renditions


def test_a_quality_change_alone_renders_again(stack, renderer):
    stack.process(stack.upload("a/one.jpg", photo()), renderer=renderer)
    large, thumb = stack.settings.renditions
    stack.settings = replace(stack.settings, renditions=(large, replace(thumb, quality=60)))

    second = stack.process(stack.upload("b/two.jpg", photo()), renderer=renderer).record

    assert len(renderer.calls) == 2 and second.status is Status.COMPLETED


def test_a_format_since_disallowed_is_not_reused(stack, renderer):
    stack.process(stack.upload("a/one.jpg", photo()), renderer=renderer)
    stack.settings = replace(stack.settings, allowed_formats=("PNG",))

    second = stack.process(stack.upload("b/two.jpg", photo()), renderer=renderer).record

    assert (second.status, second.error.code) == (Status.FAILED, "unsupported_format")


def test_a_failed_record_of_the_same_bytes_is_never_reused(stack, renderer):
    broken = photo()[:200]  # a truncated JPEG: FAILED corrupt_image
    first = stack.process(stack.upload("a/one.jpg", broken), renderer=renderer).record
    second = stack.process(stack.upload("b/two.jpg", broken), renderer=renderer).record

    assert first.status is second.status is Status.FAILED
    assert len(renderer.calls) == 2


def test_an_outage_while_checking_the_renditions_leaves_the_record_for_a_retry(stack, renderer):
    stack.process(stack.upload("a/one.jpg", photo()), renderer=renderer)
    ref = stack.upload("b/two.jpg", photo())

    class RenditionsDown:
        def __getattr__(self, name):
            return getattr(stack.blobs, name)

        def exists(self, bucket, key):
            raise StorageUnavailable("storage is unavailable (a HEAD)")

    with pytest.raises(StorageUnavailable):
        stack.process(ref, renderer=renderer, blobs=RenditionsDown())
    pending = stack.records.get(ref.record_id)
    assert (pending.status, pending.error.code) == (Status.PENDING, "storage_unavailable")

    retried = stack.process(ref, renderer=renderer).record
    assert retried.status is Status.COMPLETED and "reuse" in retried.stage_ms
    assert len(renderer.calls) == 1
