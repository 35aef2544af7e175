"""Chat completions from an OpenAI-compatible endpoint (vLLM's server, `transformers serve`, hosted APIs).

- Bounded concurrency: at most `concurrency` requests in flight.
- Retries with exponential backoff on connection errors, timeouts, 408, 409, 429 and 5xx: the `openai`
  client's own (`max_retries`). A request that still fails is returned as an `Answer` with an `error`,
  never raised, so one bad request costs one item and not the run.
- Every answer is cached by a hash of its request (model, messages, sampling settings) in a JSON-lines
  file (`AnswerCache`), appended and flushed as each answer arrives: a run that is killed resumes where it
  stopped, and a rerun costs nothing. Failed requests are not cached, so a rerun asks again. Identical
  requests in flight at the same time are sent once.

Before the first request is sent, a request for one token checks the endpoint (`check_reachable` does it
on its own): an endpoint that is down, refuses the key, the model or the settings, or does not answer
with chat completions, is an `EndpointError` then, not one failure per request; a run whose answers are
all cached asks nothing at all. A 401, 403 or 404 later stops the run the same way (every request would
fail alike), and the requests still waiting are not sent; the answers already cached stay.

`Chat.ask` is the asynchronous form, for pipelines that interleave many requests with other work;
`CachedChat.answers` asks a list of conversations from synchronous code.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..utils import first_line
from .append_log import AppendLog, complete_lines

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

    def request_key(self, messages: list[dict]) -> str:
        return request_key(self.model, messages, self.max_tokens, self.temperature)


def request_key(model: str, messages: list[dict], max_tokens: int, temperature: float) -> str:
    """The cache key of a request: a sha256 of everything that decides its answer."""
    request = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
    # surrogatepass: a lone surrogate (valid in JSON text) hashes instead of raising; other text is plain UTF-8.
    return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass")
                          ).hexdigest()


@dataclass(frozen=True)
class Answer:
    """The text of one completion, or why there is none."""

    text: str | None
    error: str | None = None
    cached: bool = False  # read from the cache, not asked


class AnswerCache:
    """Answers by request key, in a JSON-lines file of `{"key", "answer"}` lines (`append_log`: a line cut by a kill
    is dropped when the file is opened).

    Memory stays small at any size: the index holds each answer's place in the file, and an answer is read
    back when it is asked for.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._index = {bytes.fromhex(entry["key"]): offset << 32 | length  # key digest -> place of its line
                       for offset, length, entry in complete_lines(self.path, _is_cache_entry)}
        self._log = AppendLog(self.path)
        self._reader = None

    def __contains__(self, key: str) -> bool:
        return bytes.fromhex(key) in self._index

    def get(self, key: str) -> str | None:
        place = self._index.get(bytes.fromhex(key))
        if place is None:
            return None
        if self._reader is None:
            self._reader = self.path.open("rb")
        self._reader.seek(place >> 32)
        return json.loads(self._reader.read(place & 0xFFFFFFFF))["answer"]

    def add(self, key: str, answer: str) -> None:
        offset, length = self._log.append({"key": key, "answer": answer})
        self._index[bytes.fromhex(key)] = offset << 32 | length

    def close(self) -> None:
        self._log.close()
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def _is_cache_entry(entry: object) -> bool:
    if not (isinstance(entry, dict) and isinstance(entry.get("answer"), str) and isinstance(entry.get("key"), str)):
        return False
    try:
        return len(bytes.fromhex(entry["key"])) == 32
    except ValueError:
        return False


class CachedRequests:
    """`await ask(messages)`: the cached answer, or a fresh one from `_request` (cached when it has text).
    Identical requests in flight at the same time are asked once. Subclasses say where answers come from."""

    def __init__(self, cache: AnswerCache, model: str, max_tokens: int, temperature: float):
        self.cache, self.model, self.max_tokens, self.temperature = cache, model, max_tokens, temperature
        self._in_flight: dict[str, asyncio.Future] = {}

    async def ask(self, messages: list[dict]) -> Answer:
        key = request_key(self.model, messages, self.max_tokens, self.temperature)
        cached = self.cache.get(key)
        if cached is not None:
            return Answer(cached, cached=True)
        if key in self._in_flight:
            return await asyncio.shield(self._in_flight[key])
        shared = self._in_flight[key] = asyncio.get_running_loop().create_future()
        try:
            answer = await self._request(messages)
            if answer.error is None:
                self.cache.add(key, answer.text)
        except asyncio.CancelledError:
            shared.cancel()
            raise
        except BaseException as error:
            shared.set_exception(error)
            shared.exception()  # retrieved: the requests that share it raise it too, and nothing is logged
            raise
        else:
            shared.set_result(answer)
        finally:
            del self._in_flight[key]
        return answer

    async def _request(self, messages: list[dict]) -> Answer:
        raise NotImplementedError


class Chat(CachedRequests):
    """Requests to an OpenAI-compatible endpoint, inside `async with Chat(settings, cache) as chat:`, at most
    `settings.concurrency` in flight."""

    def __init__(self, settings: EndpointSettings, cache: AnswerCache):
        super().__init__(cache, settings.model, settings.max_tokens, settings.temperature)
        self.settings = settings

    async def __aenter__(self) -> Chat:
        self._client = _client(self.settings)
        self._slots = asyncio.Semaphore(self.settings.concurrency)
        self._refused: EndpointError | None = None  # once set, the requests still waiting are not sent
        self._checked = asyncio.Lock()  # the reachability check, before the first request
        self._reachable = False
        return self

    async def __aexit__(self, *exception) -> None:
        await self._client.close()

    async def _request(self, messages: list[dict]) -> Answer:
        try:
            async with self._checked:
                if self._refused is None and not self._reachable:
                    await _ping(self._client, self.settings)
                    self._reachable = True
            async with self._slots:
                if self._refused is not None:
                    raise self._refused
                return await _complete(self._client, self.settings, messages)
        except EndpointError as error:
            self._refused = self._refused or error
            raise


class CachedChat:
    """`answers(conversations)`: one `Answer` per conversation (a list of chat messages), in order."""

    def __init__(self, settings: EndpointSettings, cache_path: str | Path):
        self.settings = settings
        self.cache_path = Path(cache_path)

    def answers(self, conversations: list[list[dict]], description: str = "requests") -> list[Answer]:
        """Cached answers where there are; the others requested (each distinct request once). Runs its own
        event loop: call it from synchronous code."""
        cache = AnswerCache(self.cache_path)
        try:
            uncached = [self.settings.request_key(messages) not in cache for messages in conversations]
            return asyncio.run(self._ask_all(cache, conversations, uncached, description))
        finally:
            cache.close()

    async def _ask_all(self, cache: AnswerCache, conversations: list[list[dict]], uncached: list[bool],
                       description: str) -> list[Answer]:
        async with Chat(self.settings, cache) as chat:
            with tqdm(total=sum(uncached), desc=description, disable=not any(uncached)) as bar:
                async def ask(messages: list[dict], counted: bool) -> Answer:
                    answer = await chat.ask(messages)
                    bar.update(counted)
                    return answer

                return await asyncio.gather(*map(ask, conversations, uncached))


def check_reachable(settings: EndpointSettings) -> None:
    """`EndpointError` now, rather than after hours of work, if the endpoint is down or refuses the key, the
    model or the request's settings: one chat completion of one token to the model."""

    async def one_token():
        async with _client(settings) as client:
            await _ping(client, settings)

    asyncio.run(one_token())


async def _ping(client, settings: EndpointSettings) -> None:
    """A one-token chat completion; `EndpointError` if it fails, or if the answer is not a chat completion."""
    import openai

    try:
        completion = await client.with_options(timeout=PING_SECONDS).chat.completions.create(
            model=settings.model, messages=[{"role": "user", "content": "Reply with OK."}], max_tokens=1,
            temperature=settings.temperature)
    except openai.APIConnectionError as error:  # after every retry
        raise EndpointError(f"{settings.url}: the endpoint cannot be reached ({first_line(error)})") from None
    except openai.APIStatusError as error:
        _raise_if_fatal(settings, error)
        raise EndpointError(f"{settings.url}: a one-token request to {settings.model!r} was refused "
                            f"(HTTP {error.status_code}: {first_line(error)})") from None
    if not _has_message(completion):
        raise EndpointError(f"{settings.url}: the answer to a one-token request is not a chat completion "
                            f"(no choices[0].message): not an OpenAI-compatible chat endpoint")


def _client(settings: EndpointSettings):
    try:
        import openai
    except ModuleNotFoundError:
        raise EndpointError("requests to an endpoint need the openai package: pip install 'iopo-fast[eval]'") from None

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
        return Answer(None, f"HTTP {error.status_code}: {first_line(error)}")
    except openai.APIConnectionError as error:  # a timeout too (a subclass), after every retry
        return Answer(None, f"{type(error).__name__}: {first_line(error)}")
    text = _message_text(completion)
    if text is None:
        return Answer(None, "the endpoint answered with no message text")
    return Answer(text)


def _has_message(completion) -> bool:
    try:
        return completion.choices[0].message is not None
    except (AttributeError, IndexError, KeyError, TypeError):
        return False


def _message_text(completion) -> str | None:
    """`choices[0].message.content` if the answer has it as a string, else None (a malformed answer too)."""
    try:
        text = completion.choices[0].message.content
    except (AttributeError, IndexError, KeyError, TypeError):
        return None
    return text if isinstance(text, str) else None


def _raise_if_fatal(settings: EndpointSettings, error) -> None:
    """Statuses that every request would get alike: the key or the model is refused."""
    if error.status_code in (401, 403):
        raise EndpointError(f"{settings.url}: the API key was refused (HTTP {error.status_code}); "
                            f"set it in ${settings.api_key_env}") from None
    if error.status_code == 404:
        raise EndpointError(f"{settings.url}: no model {settings.model!r} there, or not an OpenAI-compatible "
                            f"endpoint (HTTP 404; the URL usually ends in /v1)") from None

