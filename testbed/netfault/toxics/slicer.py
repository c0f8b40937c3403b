"""slicer: each chunk is cut into pieces of about `average_size` bytes (+/- `size_variation`),
with `delay` microseconds between pieces: the same bytes, in many small reads."""

from __future__ import annotations

from typing import Any

from testbed.netfault.toxics.base import AttributeError_, Chunk, Pipe, Toxic


class Slicer(Toxic):
    type_name = "slicer"
    attribute_names = ("average_size", "size_variation", "delay")

    @classmethod
    def check_values(cls, values: dict[str, int]) -> None:
        if values["average_size"] < 1:
            raise AttributeError_("attribute average_size must be at least 1")
        if values["size_variation"] >= values["average_size"]:
            raise AttributeError_("attribute size_variation must be smaller than average_size")

    async def on_chunk(self, chunk: Chunk, pipe: Pipe, state: Any) -> list[Chunk]:
        data, out = chunk.data, []
        toxic: Toxic | None = self
        while data:
            if toxic is None:  # removed mid-chunk: the rest goes on whole
                out.append(Chunk(data, chunk.received))
                break
            variation = toxic.size_variation
            size = toxic.average_size + (
                pipe.random.randint(-variation, variation) if variation else 0
            )
            piece, data = data[:size], data[size:]
            out.append(Chunk(piece, chunk.received))
            if data and toxic.delay:
                pipe.flush(out)
                out = []
                if not await pipe.sleep(toxic.delay / 1_000_000):
                    toxic = pipe.current(self.name)
        return out
