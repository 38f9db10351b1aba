"""A loaded artifact: logits, generate and stream, each driving its backend's one step call
(backends/protocol.py) over cache rows it reserves; each generating row is a Generation. An
embedding model's artifact loads as a Model that embeds (embedder.py) and does nothing else."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence, Union

import numpy as np

from gemma_runtime.backends.protocol import Backend
from gemma_runtime.chat import chat_format, chat_prompt
from gemma_runtime.chat_template import ChatTemplate
from gemma_runtime.embedder import Embedder
from gemma_runtime.errors import ContextLengthExceeded, RuntimeInputError
from gemma_runtime.generation import Generation
from gemma_runtime.interface import AUDIO_ENCODER, IMAGE_ENCODER
from gemma_runtime.manifest import ChatFormat, Manifest, read_manifest
from gemma_runtime.media.encoders import Encoders
from gemma_runtime.media.prompt import MediaPrompt, find_spans
from gemma_runtime.sampling import Sampler
from gemma_runtime.speculative import Drafter, Stats, decode, drafter, ring_limit
from gemma_runtime.tokenizer import Tokenizer

Prompt = Union[str, Sequence[int]]
_ONE_PROMPT = (str, list, tuple, np.ndarray)  # what a batch's items are
DEFAULT_MAX_NEW_TOKENS = 64

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class GenerationResult:
    token_ids: list[int]  # new tokens only; the stop token is excluded
    text: str
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int


BACKENDS = ("ort", "trt", "openvino")


def load(path: Path | str, backend: str | None = None, threads: int | None = None,
         device: str | None = None) -> "Model":
    """backend and device default to the artifact's (its target's first: `ort`, `openvino` for the
    openvino target; `cuda` for ort-cuda, else `cpu`); device="cpu" runs any onnxruntime artifact on
    the CPU provider."""
    folder = Path(path)
    manifest = read_manifest(folder)
    execution = manifest.execution
    backend = backend or execution.backends[0]
    device = device or execution.devices[0]
    if backend not in BACKENDS:
        raise RuntimeInputError(f"unknown backend {backend!r} (available: {', '.join(BACKENDS)})")
    if backend not in execution.backends:
        raise RuntimeInputError(f"{folder}: target {manifest.target} runs on the {' or '.join(execution.backends)} "
                                f"backend, not {backend}")
    if device not in execution.devices:
        raise RuntimeInputError(f"{folder}: target {manifest.target} runs on {' or '.join(execution.devices)}, "
                                f"not {device}")
    tokenizer = Tokenizer.in_folder(folder, manifest.tokens.bos)
    if manifest.embedding is not None:
        embedder = Embedder(folder, manifest, tokenizer, threads, device)
        model = Model(folder, manifest, None, tokenizer, embedder=embedder)
        logger.info("loaded embedding model %s (target %s, format %d)", folder, manifest.target,
                    manifest.format_version)
        return model
    template = None if manifest.chat_template is None else ChatTemplate.from_artifact(folder, manifest.chat_template)
    model = Model(folder, manifest, _backend(folder, manifest, backend, threads, device), tokenizer,
                  Encoders(folder, manifest, threads, device), chat_template=template)
    logger.info("loaded %s (target %s, format %d) on the %s backend: %s", folder, manifest.target,
                manifest.format_version, backend, model.backend.capabilities)
    return model


def _backend(folder: Path, manifest: Manifest, name: str, threads: int | None, device: str) -> Backend:
    if name == "trt":
        from gemma_runtime.backends.trt import TrtBackend
        return TrtBackend(folder, manifest, threads)
    if name == "openvino":
        from gemma_runtime.backends.openvino import OpenVinoBackend
        return OpenVinoBackend(folder, manifest, threads)
    if manifest.kv_cache.update == "concat":
        from gemma_runtime.backends.ort_concat import OrtConcatBackend
        return OrtConcatBackend(folder, manifest, threads, device)
    from gemma_runtime.backends.ort_inplace import OrtInplaceBackend
    return OrtInplaceBackend(folder, manifest, threads, device)


class Model:
    """A loaded artifact. Its backend owns one KV cache, so calls run one at a time: a per-model
    lock serializes logits(), generate() and the whole iteration of a stream(). Several threads may
    share a Model; each call waits for the one before it and returns what it would return alone.
    A stream holds the lock from its first item until it is exhausted, close()d or dropped (a
    stream made but never iterated holds nothing); meanwhile calls from other threads wait, and a
    call from the thread that holds the open stream raises RuntimeInputError (waiting would
    deadlock). Token ids are Python or numpy integers within the vocabulary; max_new_tokens given
    explicitly must fit in the context with the prompt (ContextLengthExceeded, as the OpenAI API
    refuses such a request), None means DEFAULT_MAX_NEW_TOKENS or, after a long prompt, what fits.
    A Model handed to an Engine belongs to it (the engine drives the same cache rows): its own
    calls then raise RuntimeInputError."""

    def __init__(self, folder: Path, manifest: Manifest, backend: Backend | None, tokenizer: Tokenizer | None,
                 encoders: Encoders | None = None, chat_template: ChatTemplate | None = None,
                 embedder: Embedder | None = None):
        """backend None: an embedding model (embedder), which neither generates nor gives logits."""
        self.folder = folder
        self.embedder = embedder
        self.chat_template = chat_template  # the checkpoint's own (manifest.chat_template), if it shipped one
        self.encoders = encoders
        self.manifest = manifest
        self.backend = backend
        self.tokenizer = tokenizer
        self.max_seq_len = backend.max_seq_len if backend is not None else manifest.kv_cache.max_seq_len
        tokens = manifest.tokens
        self.pad_id = tokens.pad
        self.stop_ids = set(tokens.stop)
        placeholders = (manifest.multimodal or {}).get("placeholder_ids", {})
        self.placeholder_ids = {i: name for name, i in placeholders.items()}
        self._lock = threading.Lock()  # not reentrant, and released by whichever thread closes a stream
        self._holder: int | None = None  # the thread that holds the lock
        self.engine = None  # the Engine that owns the backend, if any
        self.speculation_stats = Stats()  # of the last speculative generate or stream

    def chat_format(self) -> ChatFormat:
        """How a conversation is written for this model (chat.render); RuntimeInputError if unknown."""
        return chat_format(self.manifest, self.tokenizer)

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None,
                    chat_template_kwargs: Mapping[str, Any] | None = None, add_generation_prompt: bool = True) -> str:
        """A conversation as prompt text for generate/stream: the checkpoint's chat template where the
        artifact has one, else the hand-written layout (chat.chat_prompt). chat_template_kwargs are
        the template's other variables (enable_thinking, ...)."""
        chat = None if self.chat_template is not None else self.chat_format()
        return chat_prompt(messages, chat, self.chat_template, tools, chat_template_kwargs, add_generation_prompt)

    # -- embeddings -----------------------------------------------------------------------
    def embed(self, texts: Prompt | Sequence[Prompt], prompt_name: str | None = None,
              dimensions: int | None = None) -> np.ndarray:
        """Unit-length embeddings, float32: [dimensions] for one text or token-id list, [n, dimensions]
        for a list of them (ragged texts are batched). prompt_name: one of the model's prompts
        (manifest.embedding.prompts: "query", "document", ...) put before each text, else its default
        prompt if it names one; dimensions: the first n of each vector, normalized again (Matryoshka)."""
        embedder = self.require_embedder()
        one = isinstance(texts, str) or (isinstance(texts, (list, tuple, np.ndarray)) and len(texts) > 0
                                         and not any(isinstance(t, _ONE_PROMPT) for t in texts))
        vectors = embedder.embed([texts] if one else list(texts), prompt_name, dimensions).vectors
        return vectors[0] if one else vectors

    def require_embedder(self) -> Embedder:
        if self.embedder is None:
            raise RuntimeInputError(f"{self.folder}: this artifact is a decoder (target {self.manifest.target}); "
                                    "embeddings need an embedding model's artifact (a sentence-transformers export)")
        return self.embedder

    # -- logits ---------------------------------------------------------------------------
    def logits(self, ids: Sequence[int], **arrays: np.ndarray) -> np.ndarray:
        """[len(ids), vocab] float32 logits at every position, ids used as given. With media, ids are
        the expanded prompt and arrays the processor's named arrays as transformers' processor
        returns them (pixel_values, image_position_ids, input_features, input_features_mask;
        token_type_ids or mm_token_type_ids, if given, must mark exactly the image tokens).

        An export whose lm_head runs in two stages (manifest report `two_stage_lm_head`, shown by
        `inspect`: ort-cpu with --quant) returns full logits too, but only its top `candidates` are
        the int8 head's values with fp32 activations; the tail is an int4 scan's values, each capped
        at the lowest candidate's. Greedy decoding and top-k sampling with top_k <= candidates see
        the exact head; other sampling settings (top-p, temperature alone, min-p) and
        log-probabilities of tail tokens see the int4 tail."""
        self.require_decoder()
        media = self.media_prompt(ids, arrays) if arrays else None
        ids = self._check_ids(ids, media=media is not None)
        n = len(ids)
        spliced = None if media is None else [media.splice(0, n)]
        with self._exclusive():
            self.backend.reserve(1)
            return self.backend.step(np.asarray([ids]), np.zeros(1), np.asarray([n]), np.arange(n)[None],
                                     spliced=spliced)[0]

    def media_prompt(self, ids: Sequence[int], arrays: dict[str, np.ndarray]) -> MediaPrompt:
        """The soft tokens of a prompt's media (its processor arrays run by the encoders) at their
        placeholder runs in ids."""
        section = self.manifest.multimodal or {}
        arrays = dict(arrays)
        types = [arrays.pop(k) for k in ("token_type_ids", "mm_token_type_ids") if k in arrays]
        image_columns: list[np.ndarray] = []
        for count in ("num_crops", "num_soft_tokens_per_image"):  # the processor's counts: the ids say the same
            arrays.pop(count, None)
        spans = []
        for role, modality in ((IMAGE_ENCODER, "image"), (AUDIO_ENCODER, "audio")):
            if not self.encoders.has(role):
                continue
            inputs = self.manifest.graphs[role].inputs
            given = {k: np.asarray(arrays.pop(k)) for k in list(arrays) if k in inputs}
            if not given:
                continue
            entry = section[modality]
            found = find_spans(ids, entry["token_id"], self.encoders.encode(role, given),
                               entry.get("bidirectional", False), modality)
            spans += found
            if modality == "image":
                image_columns = [np.arange(s.start, s.end) for s in found]
        if arrays:
            raise RuntimeInputError(f"this artifact's encoders take no {', '.join(sorted(arrays))}")
        if types:
            marked = np.flatnonzero(np.asarray(types[0]).reshape(-1) == 1)
            if not np.array_equal(marked, np.concatenate(image_columns) if image_columns else marked[:0]):
                raise RuntimeInputError("the token type ids do not mark exactly the image tokens of the prompt")
        return MediaPrompt(spans)

    # -- generation -----------------------------------------------------------------------
    def generate(self, prompt: Prompt | Sequence[Prompt], max_new_tokens: int | None = None,
                 temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None, stop: Sequence[str] | None = None, images: Sequence | None = None,
                 audio: Sequence | None = None, speculative: str | Drafter | None = None
                 ) -> GenerationResult | list[GenerationResult]:
        """images / audio: paths, bytes, PIL images or arrays (audio: WAV files or bytes, (samples, rate)
        pairs, or float arrays at the extractor's rate), one placeholder per item in a text prompt
        (media/processors.py says where they go when it has none). speculative: a drafter
        (speculative.drafter: "prompt-lookup", "prompt-lookup:k=6,n=3", or a Drafter) whose drafts are
        verified several tokens per call; the output is what plain decoding gives (greedy: token for
        token; sampled: the same distribution). speculation_stats then says what it did."""
        self.require_decoder()
        sampler = Sampler(temperature, top_k, top_p, seed)
        prompts, batched, media = self._media_prompts(prompt, images, audio)
        rows = self._generations(prompts, max_new_tokens, sampler, stop or ())
        drafter = self._drafter(speculative, len(prompts))
        with self._exclusive():
            for _ in self._run(prompts, rows, media, drafter):
                pass
        results = [GenerationResult(g.tokens, g.text, g.finish_reason, len(p)) for g, p in zip(rows, prompts)]
        return results if batched else results[0]

    def stream(self, prompt: Prompt, max_new_tokens: int | None = None, temperature: float = 0.0,
               top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
               stop: Sequence[str] | None = None, images: Sequence | None = None,
               audio: Sequence | None = None, speculative: str | Drafter | None = None) -> Iterator[str]:
        """Text pieces as they are generated; incomplete UTF-8 is held back until whole. The
        arguments are checked here; the model is held from the first piece until the stream ends."""
        self.require_decoder()
        sampler = Sampler(temperature, top_k, top_p, seed)
        prompts, batched, media = self._media_prompts(prompt, images, audio)
        if batched:
            raise RuntimeInputError("stream takes one prompt")
        self._require_tokenizer()
        drafter = self._drafter(speculative, 1)
        return self._stream(prompts, self._generations(prompts, max_new_tokens, sampler, stop or ()), media, drafter)

    def _stream(self, prompts: list[list[int]], rows: list[Generation], media: MediaPrompt | None,
                drafter: Drafter | None) -> Iterator[str]:
        with self._exclusive():
            for _, piece in self._run(prompts, rows, media, drafter):
                if piece:
                    yield piece

    def _media_prompts(self, prompt, images, audio) -> tuple[list[list[int]], bool, MediaPrompt | None]:
        """The prompt(s) as token ids and, with images or audio, the one prompt's media."""
        if not images and not audio:
            return (*self._prompts(prompt), None)
        if not isinstance(prompt, str):
            raise RuntimeInputError("images and audio go with one text prompt (for token ids and processor arrays, "
                                    "use logits(ids, **arrays))")
        ids, media = self.prepare(prompt, images or (), audio or ())
        return [ids], False, media

    def prepare(self, prompt: str, images: Sequence = (), audio: Sequence = ()) -> tuple[list[int], MediaPrompt]:
        """A text prompt with its media: the expanded token ids and the media's soft tokens."""
        from gemma_runtime.media.processors import prepare

        self._require_tokenizer()
        if not self.manifest.multimodal:
            raise RuntimeInputError("this artifact's model takes text only")
        self._refuse_by_length(prompt)
        prepared = prepare(self.manifest.multimodal, self.tokenizer, prompt, images, audio)
        media = self.media_prompt(prepared.ids, {k: v for arrays in prepared.arrays.values() for k, v in arrays.items()})
        return self._check_ids(prepared.ids, media=True), media

    def _generations(self, prompts: list[list[int]], max_new_tokens: int | None, sampler: Sampler,
                     stops: Sequence[str]) -> list[Generation]:
        """One Generation per prompt, all drawing from one sampler (row order, step by step)."""
        longest = max(len(p) for p in prompts)
        budget = new_token_budget(longest, self.max_seq_len, max_new_tokens, DEFAULT_MAX_NEW_TOKENS,
                                  "longest prompt" if len(prompts) > 1 else "prompt")
        return [Generation(sampler, self.stop_ids, budget, self.tokenizer, stops) for _ in prompts]

    def _drafter(self, speculative: str | Drafter | None, prompts: int) -> Drafter | None:
        found = drafter(speculative)
        if found is None:
            return None
        capabilities = self.backend.capabilities
        if prompts > 1 and not (capabilities.keeps_rows and capabilities.row_views):
            raise RuntimeInputError("speculative decoding of several prompts needs a backend with row views (an "
                                    "in-place artifact on onnxruntime: targets ort-cpu, ort-cuda, onnx); "
                                    "give one prompt")
        return found

    def _run(self, prompts: list[list[int]], rows: list[Generation], media: MediaPrompt | None = None,
             drafter: Drafter | None = None) -> Iterator[tuple[int, str]]:
        """Steps every row until all have finished; yields (row, text piece) as each advances. A
        finished row is fed pad tokens until the others finish. With a drafter, the rows decode
        speculatively after the prompt (speculative.decode)."""
        if rows[0].max_new_tokens == 0:
            for g in rows:
                g.finish("length")
            return
        n = len(prompts)
        past = np.asarray([len(p) for p in prompts], np.int64)
        ids = np.full((n, past.max()), self.pad_id, np.int64)
        for r, p in enumerate(prompts):
            ids[r, :len(p)] = p
        self.backend.reserve(n)
        spliced = None if media is None else [media.splice(0, len(prompts[0]))]
        logits = self.backend.step(ids, np.zeros(n, np.int64), past, spliced=spliced)[:, 0]
        if drafter is not None:
            self.speculation_stats = Stats()
            for r, g in enumerate(rows):
                yield r, g.advance(logits[r])
            yield from decode(self.backend, prompts, rows, past, drafter, self.pad_id, ring_limit(self.manifest),
                              self.speculation_stats)
            return
        while True:
            next_ids = np.full((n, 1), self.pad_id, np.int64)
            for r, g in enumerate(rows):
                if g.finish_reason is None:
                    piece = g.advance(logits[r])
                    if g.finish_reason is None:
                        next_ids[r] = g.tokens[-1]
                    yield r, piece
            if all(g.finish_reason is not None for g in rows):
                return
            logits = self.backend.step(next_ids, past, np.ones(n, np.int64))[:, 0]
            past += 1

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The backend (and its KV cache) for this thread alone; waits for other threads' calls."""
        if self.engine is not None:
            raise RuntimeInputError("this model is driven by a continuous-batching Engine: submit requests to "
                                    "the engine, or load the artifact again for direct calls")
        if self._holder == threading.get_ident():  # only this thread sets its own id
            raise RuntimeInputError("model is busy with an unfinished stream in this thread: exhaust or close() "
                                    "the stream before calling the model again")
        with self._lock:
            self._holder = threading.get_ident()
            try:
                yield
            finally:
                self._holder = None

    def require_decoder(self) -> None:
        if self.backend is None:
            raise RuntimeInputError(f"{self.folder}: this artifact is an embedding model: it embeds texts (embed()), "
                                    "it does not generate or give logits")

    # -- input handling -------------------------------------------------------------------
    def _prompts(self, prompt) -> tuple[list[list[int]], bool]:
        """The prompt(s) as checked token ids, and whether a batch (a list of prompts) was given."""
        if isinstance(prompt, np.ndarray) and prompt.ndim == 2:
            prompt = list(prompt)  # one prompt per row
        if isinstance(prompt, (list, tuple)) and any(isinstance(p, _ONE_PROMPT) for p in prompt):
            odd = next((p for p in prompt if not isinstance(p, _ONE_PROMPT)), None)
            if odd is not None:
                raise RuntimeInputError(f"a list mixes prompts (text or lists of token ids) with {odd!r} "
                                        f"({type(odd).__name__}); token ids must all be integers")
            return [self.encode(p) for p in prompt], True
        return [self.encode(prompt)], False

    def encode(self, prompt: Prompt) -> list[int]:
        """One prompt as checked token ids: text tokenized (BOS once), or ids checked."""
        if isinstance(prompt, str):
            if not prompt:
                raise RuntimeInputError("empty prompt text")
            self._require_tokenizer()
            self._refuse_by_length(prompt)
            return self._check_ids(self.tokenizer.encode(prompt))
        if not isinstance(prompt, (list, tuple, np.ndarray)):
            raise RuntimeInputError(f"a prompt is text or a list of token ids, not {type(prompt).__name__}")
        return self._check_ids(prompt)

    def _check_ids(self, ids: Sequence[int], media: bool = False) -> list[int]:
        if not isinstance(ids, (list, tuple, np.ndarray)):
            raise RuntimeInputError(f"token ids must be a list or a 1-D array of integers, not {type(ids).__name__}")
        if isinstance(ids, np.ndarray) and ids.ndim != 1:
            raise RuntimeInputError(f"token ids must be one-dimensional, got an array of shape {ids.shape}")
        if len(ids) == 0:
            raise RuntimeInputError("empty prompt: no token ids")
        odd = next(((k, i) for k, i in enumerate(ids)
                    if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer))), None)
        if odd is not None:
            raise RuntimeInputError(f"token ids must be integers; position {odd[0]} holds {odd[1]!r} "
                                    f"({type(odd[1]).__name__})")
        ids = [int(i) for i in ids]
        vocab = self.manifest.config["vocab_size"]
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise RuntimeInputError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")
        typed = [] if media else [i for i in ids if i in self.placeholder_ids]
        if typed:
            raise RuntimeInputError(f"token id {typed[0]} is the {self.placeholder_ids[typed[0]]} placeholder of this "
                                    "multimodal model: pass the media it stands for (images=, audio=, or the "
                                    "processor's arrays to logits), not the id alone")
        if len(ids) > self.max_seq_len:
            raise ContextLengthExceeded(
                f"prompt has {len(ids)} tokens; this artifact's maximum sequence length is {self.max_seq_len}")
        return ids

    def _refuse_by_length(self, text: str) -> None:
        """ContextLengthExceeded for a text whose length alone proves it longer than the context
        (a token stands for at most Tokenizer.longest_piece_chars characters, and BOS comes
        first), before any of it is tokenized: a huge prompt costs no tokenization."""
        longest = self.tokenizer.longest_piece_chars
        at_least = 1 + -(-len(text) // longest)
        if at_least > self.max_seq_len:
            raise ContextLengthExceeded(
                f"the prompt has {len(text)} characters, so at least {at_least} tokens (a token of this vocabulary "
                f"is at most {longest} characters); this artifact's maximum sequence length is {self.max_seq_len}")

    def _require_tokenizer(self) -> None:
        if self.tokenizer is None:
            raise RuntimeInputError(f"{self.folder}: the artifact has no tokenizer.model; pass token ids")


def new_token_budget(longest: int, max_seq_len: int, max_new_tokens: int | None, default: int,
                     which: str = "prompt") -> int:
    """How many tokens to generate after a prompt of `longest` tokens: max_new_tokens, which must be
    an integer that fits in the context with the prompt; None means `default`, or what fits."""
    room = max_seq_len - longest
    if max_new_tokens is None:
        return min(default, room)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)):
        raise RuntimeInputError(f"max_new_tokens must be an integer, got {max_new_tokens!r}")
    if max_new_tokens < 0:
        raise RuntimeInputError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if max_new_tokens > room:
        raise ContextLengthExceeded(f"the {which} ({longest} tokens) and max_new_tokens ({max_new_tokens}) "
                                    f"exceed this artifact's context of {max_seq_len} tokens")
    return int(max_new_tokens)

