"""Continuous batching: one loop owns a fixed number of KV-cache rows (slots) and advances every
active request at each step. Requests wait in a bounded queue and are admitted into
free slots between steps; a new request's prompt is fed in chunks of at most `prefill_chunk`
tokens, oldest request first, up to `prefill_budget` prompt tokens per step beside the step's decode
call (so a burst of short prompts is taken in one step, while a long prompt delays the others by at
most the budget per step, never by its whole prefill); a finished or cancelled request frees its
slot at once. Each request keeps its own sampling settings, stop strings and random generator, so a
seed gives the same text whatever else is in the batch.

The engine drives the backend's one step call (backends/protocol.py). To batch, the backend must
keep each cache row across calls (capabilities.keeps_rows: the in-place artifacts, targets ort-cpu,
ort-cuda, onnx, tensorrt); with row views a call costs only its rows, so prompt chunks run alone on
their rows. The growing cache (targets generic, openvino) holds one sequence, so with it the engine
has one slot: requests run one at a time, each starting the cache anew (no prefix reuse), and the
same queue, streaming, cancellation and metrics apply.
Each request's sequence is a Generation, as in Model. A failed step ends every request in flight
with an error event and is logged with its traceback. Torch-free, like the rest of the runtime.

Media: a request with images or audio is prepared by Model.prepare in the caller's thread (the
encoders run there, not in the engine's loop, so one request's images never stall the others'
decoding); the loop splices its soft tokens in as it feeds the prompt. An image's tokens see each
other both ways, so an image is never split across calls: a prompt chunk ends before an image that
would not fit it, and an image that starts a chunk goes whole in that call even when longer than
the chunk (or the step's prefill budget). In the step's one-token call (row views) a row whose next
prompt token starts an image waits instead (see _call).

Log probabilities: a request with `logprobs` records each generated token's (Generation), one with
`prompt_logprobs` each prompt token's after the tokens before it (the first has none). For the
latter its prompt chunks ask the backend for the logits of every column (the decoder's
logits_index), not only the last; the calls of other requests are unchanged. A request may ask
for no new tokens (max_new_tokens 0, for its prompt logprobs): it ends, "length", once its prompt
is fed.

Prefix reuse: a slot keeps what its last request left in its cache (the tokens of its positions)
until another request takes it. A new request goes to the free slot whose kept tokens start its
prompt furthest, counting against a slot what it would discard (so an unrelated prompt takes an
empty slot, not a conversation's), and feeds only the rest (at least its last token, for the
logits): a chat client resending the same history each turn prefills only the new turn. No memory
beyond the slots is held. A slot with window-sized ring caches is reused only where its whole kept
history starts the prompt (the ring holds the last positions only); requests with images or
audio (their placeholder tokens do not say which image) or with prompt logprobs (they need every
prompt position's logits) neither reuse nor leave a prefix. An idle row in a call feeds its pad
just past what it keeps, so the kept tokens survive the calls of others.

Choices of one prompt (an API's `n`): Engine.copies makes requests that share a request's prompt,
each with its own sampler (seed) and grammar. A copy admitted into a slot waits (its row feeds a pad
at position 0, outside the step's prefill calls) until the original's prompt is fed, then takes a
copy of the original's cache row (Backend.copy_row) and feeds only the prompt's last token, for its
own first logits: the prompt is prefilled once. A copy still queued then, or whose original ended
before its prompt was fed, feeds its prompt itself. Its prompt logprobs, if asked for, are the
original's.

Speculative decoding (speculative=, runtime/speculative.py): while few slots are busy, a decoding
request with a draft verifies it in a call of its own and advances by every token it accepts; the
others take the step's one-token call (EngineSpeculation says when and why). Output as without it.

Structured outputs: a request with a JSON schema samples each token under its grammar's mask
(structured_output.py), computed for its row alone, so rows with different schemas or none share a
step. The grammars' view of the tokenizer is built on the first such request (seconds for Gemma's
262144 pieces), in the caller's thread; a grammar that fails within a step ends its request alone
with an error event.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import queue
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from gemma_runtime.errors import ContextLengthExceeded, RuntimeInputError
from gemma_runtime.generation import Generation
from gemma_runtime.interface import Splice
from gemma_runtime.logprobs import TokenLogprob, token_logprobs
from gemma_runtime.media.prompt import MediaPrompt
from gemma_runtime.model import Model, new_token_budget
from gemma_runtime.sampling import Sampler
from gemma_runtime.speculative import ENGINE_MAX_ROWS, Drafter, EngineSpeculation, drafter, ring_limit
from gemma_runtime.structured_output import GrammarError, JsonConstraint, JsonGrammars, StructuredOutputError

logger = logging.getLogger(__name__)


class QueueFull(RuntimeInputError):
    pass


@dataclasses.dataclass
class Event:
    text: str  # new text (may be empty)
    token: int | None = None
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error": the last event
    logprobs: tuple[TokenLogprob, ...] = ()  # of the tokens generated since the last event (if asked for)


@dataclasses.dataclass(eq=False)
class Request:
    prompt: list[int]
    max_new_tokens: int
    sampler: Sampler
    stop: tuple[str, ...] = ()
    on_event: Callable[[Event], None] | None = None  # called from the engine's thread
    media: MediaPrompt | None = None  # the prompt's images and audio, encoded
    logprobs: int | None = None  # generated tokens' logprobs, with this many top alternatives
    prompt_logprobs: int | None = None  # prompt tokens' logprobs, with this many top alternatives
    constraint: JsonConstraint | None = None  # the grammar its tokens follow
    stop_token_ids: frozenset[int] = frozenset()  # beside the model's stop ids
    id: int = dataclasses.field(default_factory=itertools.count().__next__)
    # filled in by the engine
    generation: Generation | None = None  # made when admitted (max_new_tokens may change until then)
    finish_reason: str | None = None
    submitted: float = dataclasses.field(default_factory=time.perf_counter)
    first_token_s: float | None = None  # time to first token
    last_token_at: float | None = None  # perf_counter() when the last token came
    prompt_token_logprobs: list[TokenLogprob | None] = dataclasses.field(default_factory=list)  # [0] None
    cached_tokens: int = 0  # prompt tokens found in its slot's cache (prefix reuse) or copied, not fed
    copies: list[Request] = dataclasses.field(default_factory=list)  # they copy its prefilled cache row
    copy_of: Request | None = None  # the request whose prefilled row this one waits for (Engine.copies)
    cancelled: bool = False
    events: queue.Queue = dataclasses.field(default_factory=queue.Queue)  # when on_event is None
    _fed: int = 0  # prompt tokens already in the cache

    @property
    def tokens(self) -> list[int]:
        return [] if self.generation is None else self.generation.tokens

    @property
    def text(self) -> str:
        return "" if self.generation is None else self.generation.text

    def cancel(self) -> None:
        """Thread-safe: the engine frees the slot at its next step."""
        self.cancelled = True

    def emit(self, event: Event) -> None:
        (self.on_event or self.events.put)(event)

    def result(self, timeout: float | None = None) -> Request:
        """Blocks until finished (only for requests without on_event)."""
        while self.finish_reason is None or not self.events.empty():
            if self.events.get(timeout=timeout).finish_reason is not None:
                break
        return self


@dataclasses.dataclass
class Metrics:
    requests: int = 0
    finished: int = 0
    rejected: int = 0
    generated_tokens: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0  # prompt tokens reused from a slot's cache instead of fed
    steps: int = 0
    ttft_sum_s: float = 0.0
    ttft_count: int = 0
    started: float = dataclasses.field(default_factory=time.perf_counter)
    # called from the engine's thread with each time to first token and each gap between two
    # tokens of a request (a server's histograms)
    observe_ttft: Callable[[float], None] = lambda seconds: None
    observe_inter_token: Callable[[float], None] = lambda seconds: None


def default_max_batch(model: Model) -> int:
    """The slots a server gives the engine unless told: 8, or 1 where the backend keeps no rows apart."""
    return 8 if model.backend.capabilities.keeps_rows else 1


class Engine:
    def __init__(self, model: Model, max_batch: int = 8, max_queue: int | None = None, prefill_chunk: int = 128,
                 prefill_budget: int | None = None, reuse_prefixes: bool = True,
                 speculative: str | Drafter | None = None, speculative_rows: int = ENGINE_MAX_ROWS):
        """prefill_budget: prompt tokens fed per step in chunk calls (default one chunk: a step costs no more
        than before, and short prompts share it); reuse_prefixes False: every prompt is fed whole;
        speculative: a drafter (Model.generate's speculative=), used while at most speculative_rows
        slots are busy (row views only)."""
        if not model.backend.capabilities.keeps_rows:
            if max_batch != 1:
                raise RuntimeInputError(
                    f"this artifact's growing KV cache (targets generic, openvino) holds one sequence: it serves one "
                    f"request at a time (max batch 1, not {max_batch}); an in-place artifact (targets ort-cpu, "
                    f"ort-cuda, onnx, tensorrt) batches")
            reuse_prefixes = False  # a new prompt restarts the cache: nothing of the last one is kept
        prefill_budget = prefill_chunk if prefill_budget is None else prefill_budget
        if max_batch < 1 or prefill_chunk < 1 or prefill_budget < 1:
            raise RuntimeInputError("max_batch, prefill_chunk and prefill_budget must be >= 1")
        if model.engine is not None:
            raise RuntimeInputError("this model already belongs to another Engine")
        found = drafter(speculative)
        if found is not None and not model.backend.capabilities.row_views:
            raise RuntimeInputError("the engine's speculative decoding needs a backend with row views (onnxruntime)")
        self.speculation = None if found is None else EngineSpeculation(found, ring_limit(model.manifest),
                                                                         speculative_rows)
        model.backend.reserve(max_batch)  # refused beyond the backend's largest batch
        self.model = model
        model.engine = self
        self.max_batch = max_batch
        self.max_queue = max_queue if max_queue is not None else 4 * max_batch
        self.prefill_chunk = prefill_chunk
        self.prefill_budget = prefill_budget
        self.max_seq_len = model.max_seq_len
        self.slots: list[Request | None] = [None] * max_batch
        self.past = np.zeros(max_batch, np.int64)
        self.reuse_prefixes = reuse_prefixes
        self.kept: list[list[int]] = [[] for _ in range(max_batch)]  # a free slot's cached tokens, by position
        self.rings = any(b.layout == "ring" for b in model.manifest.kv_cache.buffers)
        self.waiting: collections.deque[Request] = collections.deque()
        self.metrics = Metrics()
        self._lock = threading.Condition()
        self._grammars: JsonGrammars | None = None
        self._grammars_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- requests ---------------------------------------------------------------------------
    def request(self, prompt: str | Sequence[int], max_new_tokens: int | None = None, temperature: float = 0.0,
                top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                stop: Sequence[str] = (), on_event: Callable[[Event], None] | None = None,
                images: Sequence | None = None, audio: Sequence | None = None, logprobs: int | None = None,
                prompt_logprobs: int | None = None, logit_bias: dict[int, float] | None = None,
                json_schema: Mapping[str, Any] | None = None, stop_token_ids: Sequence[int] = ()) -> Request:
        """A checked request (not yet submitted): the prompt tokenized as Model.generate does (BOS
        once); max_new_tokens None fills the rest of the context, 0 only feeds the prompt.
        images / audio go with a text prompt as in Model.generate; they are decoded and encoded
        here, in the caller's thread. logprobs / prompt_logprobs: record the generated / prompt
        tokens' logprobs with that many top alternatives; logit_bias: token id -> added to its logit
        before sampling; json_schema: the output is a value of it (structured_output.ANY_OBJECT: any
        JSON object), UnsupportedSchema where it cannot be enforced; stop_token_ids: tokens that end
        it as the model's own stop ids do."""
        ids, media = self._prompt(prompt, images, audio)
        room = self.max_seq_len - len(ids)
        if room < (0 if max_new_tokens == 0 else 1):
            raise ContextLengthExceeded(f"the prompt has {len(ids)} tokens; this artifact's context is "
                                        f"{self.max_seq_len}, which leaves no room to generate")
        max_new_tokens = new_token_budget(len(ids), self.max_seq_len, max_new_tokens, default=room)
        if stop and self.model.tokenizer is None:
            raise RuntimeInputError("stop strings need the artifact's tokenizer")
        vocab = self.model.manifest.config["vocab_size"]
        for top in (logprobs, prompt_logprobs):
            if top is not None and not 0 <= top <= vocab:
                raise RuntimeInputError(f"a number of top logprobs must be in 0..{vocab}, got {top}")
        for name, given in (("logit_bias", logit_bias or {}), ("stop_token_ids", stop_token_ids)):
            outside = [i for i in given if not 0 <= i < vocab]
            if outside:
                raise RuntimeInputError(f"{name}: token id {outside[0]} is outside the vocabulary (0..{vocab - 1})")
        constraint = None if json_schema is None else self.json_grammars().constraint(json_schema)
        return Request(ids, max_new_tokens, Sampler(temperature, top_k, top_p, seed, logit_bias),
                       tuple(s for s in stop if s), on_event, media, logprobs, prompt_logprobs, constraint,
                       frozenset(stop_token_ids))

    def copies(self, request: Request, seeds: Sequence[int | None]) -> list[Request]:
        """Requests with request's prompt and settings, one per seed, that copy its cache row once its
        prompt is fed instead of prefilling it (submit them after it; it must not be submitted yet)."""
        with self._lock:
            if request.generation is not None or any(q is request for q in self.waiting):
                raise RuntimeInputError("copies are made of a request before it is submitted")
        copies = [Request(request.prompt, request.max_new_tokens, request.sampler.reseeded(seed), request.stop,
                          None, request.media, request.logprobs, request.prompt_logprobs,
                          request.constraint and request.constraint.copy(), request.stop_token_ids, copy_of=request)
                  for seed in seeds]
        request.copies += copies
        return copies

    def json_grammars(self) -> JsonGrammars:
        """The grammars of this model's tokenizer, built on first use."""
        with self._grammars_lock:
            if self._grammars is None:
                if self.model.tokenizer is None:
                    raise StructuredOutputError("structured outputs need the artifact's tokenizer")
                self._grammars = JsonGrammars(self.model.tokenizer, self.model.manifest.config["vocab_size"],
                                              self.model.stop_ids)
            return self._grammars

    def _prompt(self, prompt: str | Sequence[int], images: Sequence | None, audio: Sequence | None
                ) -> tuple[list[int], MediaPrompt | None]:
        if not images and not audio:
            return self.model.encode(prompt), None
        if not isinstance(prompt, str):
            raise RuntimeInputError("images and audio go with a text prompt, not token ids")
        return self.model.prepare(prompt, images or (), audio or ())

    def submit(self, request: Request) -> Request:
        with self._lock:
            if len(self.waiting) >= self.max_queue:
                self.metrics.rejected += 1
                raise QueueFull(f"the queue is full ({self.max_queue} requests waiting)")
            self.waiting.append(request)
            self.metrics.requests += 1
            self._lock.notify()
        return request

    # -- the loop -----------------------------------------------------------------------------
    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._loop, name="gemma-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self.waiting and not any(self.slots):
                    self._lock.wait()
                if self._stopping:
                    break
            try:
                self.step()
            except Exception as e:  # a failed call ends every request in flight, not the server
                logger.exception("engine step failed; ending the %d requests in flight", self.active)
                for r, request in enumerate(self.slots):
                    if request is not None:
                        self._finish(r, "error")
                        request.emit(Event(f"{type(e).__name__}: {e}", None, "error"))

    @property
    def active(self) -> int:
        return sum(r is not None for r in self.slots)

    def step(self) -> bool:
        """Admit, run the step's calls, sample; False when there was nothing to run.

        With row views (the CPU backend) a step is lean calls: prompt chunks of the requests still
        prefilling, oldest first, each alone on its row, within the step's prefill budget, then
        one call with a token for every busy row (a prompt still being fed advances by a token
        there too). Otherwise one padded call carries every busy row with its chunk."""
        for r, request in enumerate(self.slots):
            if request is not None and request.cancelled:
                self._finish(r, "cancelled")
        self._admit()
        busy = [r for r, q in enumerate(self.slots) if q is not None]
        if not busy:
            return False
        if not self.model.backend.capabilities.row_views:
            self._call(0, 1 + max(busy), self.prefill_chunk, whole_images=True)
            return True
        prefilling = sorted((r for r in busy if self.slots[r]._fed < len(self.slots[r].prompt)
                             and self.slots[r].copy_of is None),
                            key=lambda r: self.slots[r].id)
        budget = self.prefill_budget
        for r in prefilling:
            if budget < 1:
                break
            budget -= self._call(r, r + 1, min(self.prefill_chunk, budget), whole_images=True)
        verified = set() if self.speculation is None else self.speculation.verify_rows(self)
        busy = [r for r, q in enumerate(self.slots) if q is not None and r not in verified]
        if busy:
            self._call(busy[0], 1 + busy[-1], 1, whole_images=False, skip={r for r in verified if self.slots[r]})
        return True

    def _call(self, start: int, stop: int, chunk: int, whole_images: bool, skip: set[int] = frozenset()) -> int:
        """One call over slots [start, stop): a busy row feeds up to `chunk` tokens of its prompt, or
        its last token; an idle row a pad at position 0. Returns the prompt and generated tokens fed.

        A prompt's piece never splits an image: it ends before one that does not fit, and one that
        starts the piece goes whole when whole_images (then the call is as wide as the image). A
        row whose image does not fit (whole_images False, or the call's width clamped below the
        image's length by another row near the end of the context) waits: it feeds a pad at its
        next position, which its next call overwrites, and advances nothing. A width-clamped image
        waits until the row that clamps the width has finished, at most that row's room in the
        context later. A row in `skip` (verified this step) feeds a pad at its next position too."""
        slots = [None if start + i in skip else q for i, q in enumerate(self.slots[start:stop])]
        ends = [self._end(q, chunk, whole_images) for q in slots]
        # every row's padded columns must stay inside the cache
        rooms = [self.max_seq_len - int(self.past[start + i]) for i, q in enumerate(slots) if q is not None]
        width = min(max([1, *(end - q._fed for q, end in zip(slots, ends) if end is not None)]), *rooms)
        ends = [end if end is None or end - q._fed <= width else self._end(q, width, False)
                for q, end in zip(slots, ends)]
        rows = [self._row(q, end) for q, end in zip(slots, ends)]
        ids = np.full((len(slots), width), self.model.pad_id, np.int64)
        for i, (piece, _, _) in enumerate(rows):
            ids[i, :len(piece)] = piece
        seq = np.asarray([len(piece) for piece, _, _ in rows], np.int64)
        past = np.asarray([self.past[start + i] if q is not None or start + i in skip
                           else self._idle_position(start + i, width) for i, q in enumerate(slots)], np.int64)
        spliced = [splice for _, splice, _ in rows]
        # every column's logits only where a prompt with prompt logprobs feeds more than one token
        every_column = any(q is not None and q.prompt_logprobs is not None and advance and len(piece) > 1
                           and q._fed < len(q.prompt) for q, (piece, _, advance) in zip(slots, rows))
        keep = np.broadcast_to(np.arange(width), (len(slots), width)) if every_column else None
        columns = self.model.backend.step(ids, past, seq, keep, first_row=start,
                                          spliced=spliced if any(s is not None for s in spliced) else None)
        logits = columns[np.arange(len(slots)), seq - 1] if every_column else columns[:, 0]
        self.metrics.steps += 1
        fed = 0
        for i, (request, (_, _, advance)) in enumerate(zip(slots, rows)):
            if request is None or not advance:
                continue
            r = start + i
            self.past[r] += seq[i]
            fed += int(seq[i])
            if request._fed < len(request.prompt):
                if request.prompt_logprobs is not None:
                    self._score_prompt(request, columns[i, :seq[i]])
                request._fed += int(seq[i])
                self.metrics.prompt_tokens += int(seq[i])
                if request._fed < len(request.prompt):
                    continue  # more of the prompt later
                self._give_copies(r, request)
            self._advance(r, request, logits[i])
        return fed

    @staticmethod
    def _end(request: Request | None, chunk: int, whole_images: bool) -> int | None:
        """Where a prefilling row's piece of at most `chunk` tokens ends in its prompt (its fed count
        when it must wait; None for an idle or decoding row)."""
        if request is None or request._fed >= len(request.prompt):
            return None
        fed = request._fed
        if request.copy_of is not None:
            return fed  # it waits for the original's prompt
        end = min(fed + chunk, len(request.prompt))
        if request.media is not None:
            end = request.media.cut(fed, end)
            if end - fed > chunk and not whole_images:
                return fed
        return end

    def _row(self, request: Request | None, end: int | None) -> tuple[list[int], Splice | None, bool]:
        """A row's ids in a call, its splice, and whether it advances (False: a pad that changes nothing)."""
        if request is None:
            return [self.model.pad_id], None, False
        if end is None:
            return [request.tokens[-1]], None, True
        if end == request._fed:
            return [self.model.pad_id], None, False
        splice = None if request.media is None else request.media.splice(request._fed, end)
        return request.prompt[request._fed: end], splice, True

    @staticmethod
    def _score_prompt(request: Request, logits: np.ndarray) -> None:
        """Records the logprobs of the prompt tokens that the logits of a piece just fed predict
        (column j: the token after the piece's j-th)."""
        if not request.prompt_token_logprobs:
            request.prompt_token_logprobs.append(None)  # the first token follows nothing
        after = request.prompt[request._fed + 1: request._fed + 1 + len(logits)]
        request.prompt_token_logprobs += token_logprobs(logits[:len(after)], after, request.prompt_logprobs)

    def _admit(self) -> None:
        with self._lock:
            while self.waiting and None in self.slots:
                request = self.waiting.popleft()
                if request.cancelled:
                    request.finish_reason = "cancelled"
                    request.emit(Event("", None, "cancelled"))
                    self._release_copies(request)
                    continue
                request.generation = Generation(request.sampler, self.model.stop_ids | request.stop_token_ids,
                                                request.max_new_tokens, self.model.tokenizer, request.stop,
                                                request.logprobs, request.constraint)
                r, reused = self._slot_for(request)
                self.slots[r] = request
                self.past[r] = reused
                self.kept[r] = []
                request._fed = request.cached_tokens = reused
                self.metrics.cached_prompt_tokens += reused

    def _slot_for(self, request: Request) -> tuple[int, int]:
        """The free slot for a request and how many of its prompt tokens that slot's cache holds: the
        one where reusing gains more than it discards of what the slot keeps (reused - discarded),
        more reuse first among equals, else the slot keeping the least."""
        free = [r for r, q in enumerate(self.slots) if q is None]
        if not self._reuses(request) or request.copy_of is not None:
            return min(free, key=lambda r: len(self.kept[r])), 0
        reusable = {r: self._reusable(r, request.prompt) for r in free}
        best = max(free, key=lambda r: (2 * reusable[r] - len(self.kept[r]), reusable[r]))
        return best, reusable[best]

    def _reusable(self, r: int, prompt: list[int]) -> int:
        kept = self.kept[r]
        common = 0
        for a, b in zip(kept, prompt[:-1]):  # the last prompt token is always fed: its logits are the first sample's
            if a != b:
                break
            common += 1
        return common if not self.rings or common == len(kept) else 0

    def _reuses(self, request: Request) -> bool:
        return self.reuse_prefixes and request.media is None and request.prompt_logprobs is None

    def _give_copies(self, r: int, request: Request) -> None:
        """Row r's prompt was just fed (nothing after it yet): the copies waiting in slots take its
        cache row and skip all but the prompt's last token."""
        for copy in request.copies:
            if copy.copy_of is not request or copy not in self.slots:
                continue
            c = self.slots.index(copy)
            self.model.backend.copy_row(r, c)
            copy._fed = copy.cached_tokens = len(copy.prompt) - 1
            self.past[c] = copy._fed
            self.metrics.cached_prompt_tokens += copy._fed
            if copy.prompt_logprobs is not None:
                copy.prompt_token_logprobs = list(request.prompt_token_logprobs)
        self._release_copies(request)

    @staticmethod
    def _release_copies(request: Request) -> None:
        """Its copies no longer wait for it (those that did not get its row feed their prompt)."""
        for copy in request.copies:
            if copy.copy_of is request:
                copy.copy_of = None
        request.copies = []

    def _idle_position(self, r: int, width: int) -> int:
        """Where an idle row feeds its pad: just past the tokens its slot keeps (which it then keeps
        no further than that position)."""
        position = min(len(self.kept[r]), self.max_seq_len - width)
        del self.kept[r][position:]
        return position

    def _advance(self, r: int, request: Request, logits: np.ndarray) -> None:
        now = time.perf_counter()
        if request.first_token_s is None:
            request.first_token_s = now - request.submitted
            self.metrics.ttft_sum_s += request.first_token_s
            self.metrics.ttft_count += 1
            self.metrics.observe_ttft(request.first_token_s)
        else:
            self.metrics.observe_inter_token(now - request.last_token_at)
        request.last_token_at = now
        if request.max_new_tokens == 0:  # the prompt (its logprobs) was all it asked for
            self._finish(r, "length")
            return
        generation = request.generation
        before, scored = len(generation.tokens), len(generation.logprobs)
        try:
            piece = generation.advance(logits, room=self.past[r] < self.max_seq_len)
        except GrammarError as e:  # this request's grammar alone: the others go on
            logger.error("request %d: %s", request.id, e)
            self._finish(r, "error")
            request.emit(Event(str(e), None, "error"))
            return
        self.metrics.generated_tokens += len(generation.tokens) - before
        logprobs = tuple(generation.logprobs[scored:])
        if generation.finish_reason is not None:
            self._finish(r, generation.finish_reason, piece, logprobs)
        else:
            request.emit(Event(piece, generation.tokens[-1], None, logprobs))

    def _finish(self, r: int, reason: str, piece: str = "", logprobs: tuple[TokenLogprob, ...] = ()) -> None:
        """Frees the slot; the last event carries the text held back so far (none when cancelled or
        failed: the error event follows)."""
        request = self.slots[r]
        self.slots[r] = None
        self._release_copies(request)
        if reason != "error" and self._reuses(request):
            self.kept[r] = (request.prompt + request.tokens)[:int(self.past[r])]
        if request.generation.finish_reason is None:  # cancelled or failed by the engine
            request.generation.finish(reason)
        request.finish_reason = reason
        self.metrics.finished += 1
        if reason != "error":
            request.emit(Event(piece, None, reason, logprobs))
        with self._lock:
            self._lock.notify()
