"""Prompt ids as `accbench run` feeds them to every method: the suite's format (raw or the
chat template) and, on a prompt-length sweep, cut or packed to an exact token count."""

from __future__ import annotations

from pathlib import Path

from accbench.errors import AccbenchError

#: samples whose raw prompts make the filler that packs short prompts (--prompt-lengths)
FILLER_SAMPLES = 64
#: ``--truncate``: what to do with a prompt too long for the model's context minus the budget
TRUNCATE = ("none", "middle")


def suite_format(cfg_format: str, suite) -> str:
    """``auto`` resolves to the suite's preference: raw for MBPP (lm-eval's few-shot format),
    chat for instruction-style suites (an instruction-tuned model given a bare instruction
    often answers with an end-of-turn token straight away)."""
    if cfg_format != "auto":
        return cfg_format
    return getattr(suite, "prompt_format", "chat")


def encode_prompt(tokenizer, text: str, prompt_format: str) -> list[int]:
    if prompt_format == "chat" and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                            add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    return [int(i) for i in tokenizer(text).input_ids]


def encode_conversation(tokenizer, turns: list[str], answers: list[str], prompt_format: str) -> list[int]:
    """A multi-turn prompt: user ``turns[0]``, assistant ``answers[0]``, ..., user ``turns[-1]``
    (``len(answers) == len(turns) - 1``), through the chat template with the generation prompt
    (Spec-Bench's FastChat conversation, for the model's own template). Answers are stripped, as
    Spec-Bench strips the answers it carries into the next turn. In raw format (or for a
    tokenizer without a chat template) the turns are plain paragraphs joined by a blank line,
    "User: <turn>" and "Assistant: <answer>", ending with "Assistant:"; a single turn is the
    bare text, as in every single-turn suite."""
    if len(answers) != len(turns) - 1:
        raise AccbenchError(f"a {len(turns)}-turn prompt needs {len(turns) - 1} earlier answer(s), got {len(answers)}")
    answers = [a.strip() for a in answers]
    if len(turns) == 1:
        return encode_prompt(tokenizer, turns[0], prompt_format)
    if prompt_format == "chat" and getattr(tokenizer, "chat_template", None):
        messages = []
        for k, text in enumerate(turns):
            messages.append({"role": "user", "content": text})
            if k < len(answers):
                messages.append({"role": "assistant", "content": answers[k]})
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    parts = []
    for k, text in enumerate(turns):
        parts.append(f"User: {text}")
        parts.append(f"Assistant: {answers[k]}" if k < len(answers) else "Assistant:")
    return [int(i) for i in tokenizer("\n\n".join(parts)).input_ids]


def cut_middle(ids: list[int], length: int) -> list[int]:
    """The first and last halves of ``ids`` that make ``length`` tokens (LongBench's truncation)."""
    head = length // 2
    return ids[:head] + ids[len(ids) - (length - head):]


def fit_to_length(ids: list[int], length: int, filler: list[int], bos_id: int | None) -> list[int]:
    """Cut or pack a prompt to exactly ``length`` tokens.

    Longer prompts lose their middle (LongBench's truncation: the head, with the task
    instruction of most templates, and the tail, with the question, survive). Shorter prompts
    are packed: ``filler`` tokens (other samples' prompts) are put in front, after the BOS token,
    so the prompt's own instruction and question stay at its end."""
    if len(ids) >= length:
        return cut_middle(ids, length)
    has_bos = bos_id is not None and ids and ids[0] == bos_id
    body = ids[1:] if has_bos else ids
    need = length - len(ids)
    if not filler:
        raise AccbenchError("cannot pack a prompt: no other samples to take filler text from")
    reps = -(-need // len(filler))
    pad = (filler * reps)[-need:]
    return ([bos_id] if has_bos else []) + pad + body


class PromptBuilder:
    """The ids of a suite's samples for one tokenizer, format and prompt length.

    ``max_tokens``: the most prompt tokens that fit (the model's context minus the generation
    budget, ``why`` says so in words); a longer prompt raises AccbenchError naming the suite and
    sample, or with ``truncate="middle"`` keeps its first and last halves (``truncated`` maps
    the sample id to its original length)."""

    def __init__(self, tokenizer, suite, samples: list, prompt_format: str, length: int | None,
                 max_tokens: int | None = None, truncate: str = "none", why: str = ""):
        self.tokenizer, self.length = tokenizer, length
        self.suite_name = getattr(suite, "name", "") or type(suite).__name__
        self.max_tokens, self.truncate, self.why = max_tokens, truncate, why
        self.truncated: dict[str, int] = {}
        self.format = suite_format(prompt_format, suite)
        self.filler: list[int] = []
        if length is not None:
            for other in samples[:FILLER_SAMPLES]:
                self.filler += encode_prompt(tokenizer, other.prompt, "raw")

    def ids(self, sample, answers: list[str] | None = None) -> list[int]:
        """The sample's ids; a later turn of a conversation (``meta["turns"]``) with the
        ``answers`` given to the earlier turns."""
        turns = (sample.meta or {}).get("turns")
        if turns and len(turns) > 1:
            ids = encode_conversation(self.tokenizer, turns, list(answers or []), self.format)
        else:
            ids = encode_prompt(self.tokenizer, sample.prompt, self.format)
        if self.length is not None:
            ids = fit_to_length(ids, self.length, self.filler, self.tokenizer.bos_token_id)
        return self.fit(sample.id, ids)

    def fit(self, sample_id: str, ids: list[int]) -> list[int]:
        if self.max_tokens is None or len(ids) <= self.max_tokens:
            return ids
        if self.truncate != "middle":
            raise AccbenchError(
                f"suite {self.suite_name}, sample {sample_id}: the prompt has {len(ids)} tokens, more than the "
                f"{self.max_tokens} that fit ({self.why}); pass --truncate middle to keep its first and last "
                "halves, or lower --max-new-tokens")
        self.truncated[sample_id] = len(ids)
        return cut_middle(ids, self.max_tokens)

    def _too_long_fast(self, sample) -> None:
        """A prompt far over the limit (a 10 MB file) is refused from a prefix of its text,
        without tokenizing all of it (that alone can take minutes and gigabytes)."""
        if self.max_tokens is None or self.truncate == "middle" or not isinstance(sample.prompt, str):
            return
        head = sample.prompt[: 16 * (self.max_tokens + 64)]
        if len(head) == len(sample.prompt):
            return
        n = len(encode_prompt(self.tokenizer, head, "raw"))
        if n > self.max_tokens + 64:  # a prefix's count can differ from the whole's by a token at the cut
            raise AccbenchError(
                f"suite {self.suite_name}, sample {sample.id}: the prompt has at least {n} tokens "
                f"({len(sample.prompt):,} characters), more than the {self.max_tokens} that fit ({self.why}); "
                "pass --truncate middle to keep its first and last halves, or lower --max-new-tokens")

    def check_all(self, samples: list) -> None:
        """Build every sample's prompt (a later turn with empty earlier answers: the shortest
        it can be), raising on the first that does not fit."""
        for s in samples:
            turns = (s.meta or {}).get("turns") or []
            self._too_long_fast(s)
            self.ids(s, [""] * (len(turns) - 1) if len(turns) > 1 else None)
        self.truncated.clear()


def context_length(config) -> int | None:
    """A transformers config's context length (positions), or None when it names none."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for k in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(config, k, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def tokenizer_and_context(model: str):
    """``(tokenizer, context length)`` of a model without loading its weights; ``(None, None)``
    when that cannot be had cheaply (a hub model not downloaded yet, a GGUF not converted yet):
    the group checks its prompts once the model is loaded instead."""
    from accbench.models.cache import cache_dir_for, hub_cached, is_complete_cache
    from accbench.models.gguf import gguf_source
    from accbench.models.quiet import quiet_transformers
    from accbench.models.random_models import byte_tokenizer
    from accbench.models.registry import resolve_spec

    spec = resolve_spec(model)
    if spec.source == "random":
        return byte_tokenizer(), (spec.random_config or {}).get("max_position_embeddings")
    folder = None
    try:
        if spec.gguf_file or spec.source == "gguf-package":
            src = gguf_source(spec)
            cache = cache_dir_for(spec.name if spec.source != "local" else Path(src.origin).stem, src.sha256)
            folder = str(cache) if is_complete_cache(cache) else None
        elif spec.source == "local":
            folder = spec.path
        elif spec.source == "hub" and hub_cached(spec.hub_id or spec.name):
            folder = spec.hub_id or spec.name
        if folder is None:
            return None, None
        from transformers import AutoConfig, AutoTokenizer

        with quiet_transformers():
            return AutoTokenizer.from_pretrained(folder), context_length(AutoConfig.from_pretrained(folder))
    except (OSError, ValueError, AccbenchError):
        return None, None  # the group's own load reports the problem


def prompt_room(model: str, context: int | None, budget: int) -> tuple[int | None, str]:
    """``(the most prompt tokens that fit, why in words)``: the context minus the generation
    budget (None: no known context, no limit)."""
    if context is None:
        return None, ""
    if budget >= context:
        raise AccbenchError(f"the generation budget of {budget} tokens leaves no room for a prompt in {model}'s "
                            f"context of {context} tokens; lower --max-new-tokens")
    return context - budget, f"{model}'s context of {context} tokens minus the generation budget of {budget}"
