"""Chat answers from a local Hugging Face model, batched: the `endpoints.client.Chat` interface without a server.

Requests are gathered as they arrive and generated `batch_size` at a time, in a worker thread, so the
asynchronous pipeline that asks them keeps running meanwhile. Generation goes through the generators that
the evaluation uses (`generators.generator_class`: transformers on rows that take the next chat as one
ends, or vLLM's offline engine when it is installed and a GPU is present), each chat rendered by the
model's chat template. Answers are cached like an endpoint's, keyed by the model name as given.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ..endpoints.client import Answer, AnswerCache, CachedRequests
from ..utils import first_line


@dataclass(frozen=True)
class LocalModel:
    """A local Hugging Face model (a directory, a hub id in the local cache, or the embedded default) in place
    of an endpoint, and how it generates."""

    model: str
    max_tokens: int = 512
    temperature: float = 0.0
    batch_size: int = 8
    backend: str = "auto"

    def __post_init__(self):
        if self.max_tokens <= 0 or self.batch_size <= 0 or self.temperature < 0:
            raise ValueError(f"local model settings out of range: {self}")


class LocalChat(CachedRequests):
    """Inside `async with LocalChat(local_model, cache) as chat:`, `await chat.ask(messages)`."""

    def __init__(self, settings: LocalModel, cache: AnswerCache):
        super().__init__(cache, settings.model, settings.max_tokens, settings.temperature)
        self.settings = settings

    async def __aenter__(self) -> LocalChat:
        from .generators import generator_class
        from .settings import GenerationSettings

        generation = GenerationSettings(max_new_tokens=self.settings.max_tokens, temperature=self.settings.temperature,
                                        batch_size=self.settings.batch_size)
        self._generate = await asyncio.to_thread(generator_class(self.settings.backend), self.model, generation)
        self._waiting: list[tuple[list[dict], asyncio.Future]] = []
        self._arrived = asyncio.Event()
        self._worker = asyncio.create_task(self._generate_batches())
        return self

    async def __aexit__(self, *exception) -> None:
        self._worker.cancel()
        try:
            await self._worker
        except asyncio.CancelledError:
            pass
        for _, future in self._waiting:
            future.cancel()

    async def _request(self, messages: list[dict]) -> Answer:
        answer = asyncio.get_running_loop().create_future()
        self._waiting.append((messages, answer))
        self._arrived.set()
        return await answer

    async def _generate_batches(self) -> None:
        while True:
            await self._arrived.wait()
            await asyncio.sleep(0)  # the requests made in the same turn of the event loop join this batch
            batch, self._waiting = self._waiting[:self.settings.batch_size], self._waiting[self.settings.batch_size:]
            if not self._waiting:
                self._arrived.clear()
            try:
                texts = await asyncio.to_thread(self._generate, [messages for messages, _ in batch])
                if len(texts) != len(batch):
                    raise RuntimeError(f"{len(texts)} responses to {len(batch)} prompts")
                answers = [Answer(text) for text in texts]
            except Exception as error:  # a batch that cannot be generated fails its requests, not the run
                answers = [Answer(None, f"{type(error).__name__}: {first_line(error)}")] * len(batch)
            for (_, future), answer in zip(batch, answers):
                if not future.done():  # its requester may have been cancelled meanwhile
                    future.set_result(answer)
