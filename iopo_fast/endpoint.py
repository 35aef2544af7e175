"""Chat completions from an OpenAI-compatible endpoint (vLLM's server, `transformers serve`, hosted APIs).

- Bounded concurrency: at most `concurrency` requests in flight.
- Retries with exponential backoff on connection errors, timeouts, 408, 409, 429 and 5xx: the `openai`
  client's own (`max_retries`). A request that still fails is returned as an `Answer` with an `error`,
  never raised, so one bad request costs one item and not the run.
- Every answer is cached by a hash of its request (model, messages, sampling settings) in a JSON-lines
  file, appended and flushed as each answer arrives: a run that is killed resumes where it stopped, and a
  rerun costs nothing. Failed requests are not cached, so a rerun asks again.

Before the first request is sent, `check_reachable` asks for one token: an endpoint that is down, or
refuses the key, the model or the settings, is an `EndpointError` then, not one failure per request. A
401, 403 or 404 later stops the run the same way (every request would fail alike); the answers
already cached stay.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .checkpoint import write_atomically

FSYNC_SECONDS = 2.0  # how often the cache reaches the disk while answers stream in (and always at the end)
PING_SECONDS = 60.0  # the reachability check asks for one token: no long generation


class EndpointError(RuntimeError):
    """An endpoint that cannot serve any request; the message is one line naming the endpoint and the reason."""


@dataclass(frozen=True)
class EndpointSettings:
    """Where to send requests and how; the API key is read from the environment variable `api_key_env`."""

    url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 16
    timeout: float = 120.0
    retries: int = 5
    max_tokens: int = 512
    temperature: float = 0.0

    def __post_init__(self):
        if not self.url or not self.model:
            raise ValueError("an endpoint needs a URL and a model name")
        if self.concurrency <= 0 or self.timeout <= 0 or self.retries < 0 or self.max_tokens <= 0:
            raise ValueError(f"endpoint settings out of range: {self}")


@dataclass(frozen=True)
class Answer:
    """The text of one completion, or why there is none."""

    text: str | None
    error: str | None = None


class CachedChat:
    """`answers(conversations)`: one `Answer` per conversation (a list of chat messages), in order."""

    def __init__(self, settings: EndpointSettings, cache_path: str | Path):
        self.settings = settings
        self.cache_path = Path(cache_path)
        self._cache = _read_cache(self.cache_path)

    def request_key(self, messages: list[dict]) -> str:
        request = {"model": self.settings.model, "messages": messages, "max_tokens": self.settings.max_tokens,
                   "temperature": self.settings.temperature}
        return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def answers(self, conversations: list[list[dict]], description: str = "requests") -> list[Answer]:
        """Cached answers where there are; the others requested (each distinct request once), after
        `check_reachable`. Runs its own event loop: call it from synchronous code."""
        keys = [self.request_key(messages) for messages in conversations]
        pending = {key: messages for key, messages in zip(keys, conversations) if key not in self._cache}
        fresh = {}
        if pending:
            check_reachable(self.settings)
            answers = asyncio.run(self._request_all(list(pending.values()), list(pending), description))
            fresh = dict(zip(pending, answers))
        return [Answer(self._cache[key]) if key in self._cache else fresh[key] for key in keys]

    async def _request_all(self, conversations: list[list[dict]], keys: list[str], description: str) -> list[Answer]:
        settings = self.settings
        client = _client(settings)
        slots = asyncio.Semaphore(settings.concurrency)
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        with self.cache_path.open("a", encoding="utf-8") as cache, tqdm(total=len(keys), desc=description) as bar:
            synced = time.monotonic()

            refused = asyncio.Event()  # set by an EndpointError: the requests still waiting are not sent

            async def request(messages: list[dict], key: str) -> Answer:
                nonlocal synced
                async with slots:
                    if refused.is_set():
                        return Answer(None, "not sent: the endpoint refused an earlier request")
                    try:
                        answer = await _complete(client, settings, messages)
                    except EndpointError:
                        refused.set()
                        raise
                if answer.error is None:
                    self._cache[key] = answer.text
                    cache.write(json.dumps({"key": key, "answer": answer.text}, ensure_ascii=False) + "\n")
                    cache.flush()
                    if time.monotonic() - synced > FSYNC_SECONDS:
                        os.fsync(cache.fileno())
                        synced = time.monotonic()
                bar.update()
                return answer

            try:
                return await asyncio.gather(*(request(messages, key) for messages, key in zip(conversations, keys)))
            finally:
                cache.flush()
                os.fsync(cache.fileno())
                await client.close()


def check_reachable(settings: EndpointSettings) -> None:
    """`EndpointError` now, rather than after hours of work, if the endpoint is down or refuses the key, the
    model or the request's settings: one chat completion of one token to the model."""

    async def one_token():
        async with _client(settings) as client:
            await client.with_options(timeout=PING_SECONDS).chat.completions.create(
                model=settings.model, messages=[{"role": "user", "content": "Reply with OK."}], max_tokens=1,
                temperature=settings.temperature)

    import openai

    try:
        asyncio.run(one_token())
    except openai.APIConnectionError as error:  # after every retry
        raise EndpointError(f"{settings.url}: the endpoint cannot be reached ({_first_line(error)})") from None
    except openai.APIStatusError as error:
        _raise_if_fatal(settings, error)
        raise EndpointError(f"{settings.url}: a one-token request to {settings.model!r} was refused "
                            f"(HTTP {error.status_code}: {_first_line(error)})") from None


def _client(settings: EndpointSettings):
    import openai

    return openai.AsyncOpenAI(base_url=settings.url, api_key=os.environ.get(settings.api_key_env) or "none",
                              max_retries=settings.retries, timeout=settings.timeout)


async def _complete(client, settings: EndpointSettings, messages: list[dict]) -> Answer:
    import openai

    try:
        completion = await client.chat.completions.create(model=settings.model, messages=messages,
                                                          max_tokens=settings.max_tokens,
                                                          temperature=settings.temperature)
    except openai.APIStatusError as error:
        _raise_if_fatal(settings, error)
        return Answer(None, f"HTTP {error.status_code}: {_first_line(error)}")
    except openai.APIConnectionError as error:  # a timeout too (a subclass), after every retry
        return Answer(None, f"{type(error).__name__}: {_first_line(error)}")
    choices = getattr(completion, "choices", None)
    text = choices[0].message.content if choices else None
    if not isinstance(text, str):
        return Answer(None, "the endpoint answered with no message text")
    return Answer(text)


def _raise_if_fatal(settings: EndpointSettings, error) -> None:
    """Statuses that every request would get alike: the key or the model is refused."""
    if error.status_code in (401, 403):
        raise EndpointError(f"{settings.url}: the API key was refused (HTTP {error.status_code}); "
                            f"set it in ${settings.api_key_env}") from None
    if error.status_code == 404:
        raise EndpointError(f"{settings.url}: no model {settings.model!r} there, or not an OpenAI-compatible "
                            f"endpoint (HTTP 404; the URL usually ends in /v1)") from None


def _read_cache(path: Path) -> dict[str, str]:
    """The cached answers by request key. Lines that do not parse (the last line of a run killed while
    writing it, cut inside a character or not) are dropped, and the file rewritten without them so that
    appends start on a fresh line."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    lines = [line for line in data.split(b"\n") if line]
    cache = {}
    for line in lines:
        try:
            entry = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(entry, dict) and isinstance(entry.get("key"), str) and isinstance(entry.get("answer"), str):
            cache[entry["key"]] = entry["answer"]
    if len(cache) != len(lines) or (lines and not data.endswith(b"\n")):
        write_atomically(path, "".join(json.dumps({"key": key, "answer": answer}, ensure_ascii=False) + "\n"
                                       for key, answer in cache.items()))
    return cache


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]

