"""Prompt ids as `accbench run` feeds them to every method: the suite's format (raw or the
chat template) and, on a prompt-length sweep, cut or packed to an exact token count."""

from __future__ import annotations

from accbench.errors import AccbenchError

#: samples whose raw prompts make the filler that packs short prompts (--prompt-lengths)
FILLER_SAMPLES = 64


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


def fit_to_length(ids: list[int], length: int, filler: list[int], bos_id: int | None) -> list[int]:
    """Cut or pack a prompt to exactly ``length`` tokens.

    Longer prompts lose their middle (LongBench's truncation: the head, with the task
    instruction of most templates, and the tail, with the question, survive). Shorter prompts
    are packed: ``filler`` tokens (other samples' prompts) are put in front, after the BOS token,
    so the prompt's own instruction and question stay at its end."""
    if len(ids) >= length:
        head = length // 2
        return ids[:head] + ids[len(ids) - (length - head):]
    has_bos = bos_id is not None and ids and ids[0] == bos_id
    body = ids[1:] if has_bos else ids
    need = length - len(ids)
    if not filler:
        raise AccbenchError("cannot pack a prompt: no other samples to take filler text from")
    reps = -(-need // len(filler))
    pad = (filler * reps)[-need:]
    return ([bos_id] if has_bos else []) + pad + body


class PromptBuilder:
    """The ids of a suite's samples for one tokenizer, format and prompt length."""

    def __init__(self, tokenizer, suite, samples: list, prompt_format: str, length: int | None):
        self.tokenizer, self.length = tokenizer, length
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
        return ids
