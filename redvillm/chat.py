"""The backbone's own chat template, turned into token ids with one video placeholder.

The video tokens must stand exactly where the image LLM puts an image, in exactly its prompt,
so that its image-text alignment is reused. So we never write a prompt ourselves: the family
gives its processor's ``apply_chat_template`` and a user message holding one image, and this
module renders it, tokenises it as the processor would, and splits the answer off so that the
loss covers answer tokens only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from redvillm.errors import UserError

QUESTION_SLOT = "{question}"


@dataclass(frozen=True)
class EncodedChat:
    prompt_ids: list[int]  # the user turn and the generation prompt; one placeholder id
    answer_ids: list[int]  # the assistant's answer and its end-of-turn token (empty at inference)
    placeholder_at: int  # index of the placeholder in prompt_ids


class ChatFormat:
    def __init__(self, tokenizer, apply_chat_template, user_messages: list[dict], placeholder_id: int):
        self.tokenizer = tokenizer
        self._apply = apply_chat_template
        self._user_messages = user_messages  # with QUESTION_SLOT where the question goes
        self.placeholder_id = placeholder_id
        self.eos_id = tokenizer.eos_token_id

    def encode(self, question: str, answer: str | None = None) -> EncodedChat:
        messages = self._messages(question)
        prompt_text = self._apply(messages, tokenize=False, add_generation_prompt=True)
        prompt_ids = self._tokenize(prompt_text, special=True)
        hits = [i for i, token in enumerate(prompt_ids) if token == self.placeholder_id]
        if len(hits) != 1:
            raise UserError(f"the chat template rendered {len(hits)} image placeholders, expected 1: {prompt_text!r}")
        answer_ids = self._answer_ids(messages, prompt_text, answer) if answer is not None else []
        return EncodedChat(prompt_ids, answer_ids, hits[0])

    def _messages(self, question: str) -> list[dict]:
        messages = copy.deepcopy(self._user_messages)
        for message in messages:
            for part in message["content"]:
                if part.get("type") == "text":
                    part["text"] = part["text"].replace(QUESTION_SLOT, question)
        return messages

    def _answer_ids(self, messages: list[dict], prompt_text: str, answer: str) -> list[int]:
        reply = {"role": "assistant", "content": [{"type": "text", "text": answer}]}
        full_text = self._apply(messages + [reply], tokenize=False, add_generation_prompt=False)
        if not full_text.startswith(prompt_text):
            raise UserError("the backbone's chat template does not continue its generation prompt with the "
                            "answer, so answer tokens cannot be told apart from the prompt")
        answer_text = full_text[len(prompt_text):].rstrip()
        ids = self._tokenize(answer_text, special=False)
        # The model must learn to stop: end with eos even where the template leaves it out.
        return ids if ids and ids[-1] == self.eos_id else ids + [self.eos_id]

    def _tokenize(self, text: str, special: bool) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=special)["input_ids"]
        bos = self.tokenizer.bos_token_id
        if special and bos is not None and len(ids) > 1 and ids[0] == ids[1] == bos:
            ids = ids[1:]  # the template wrote bos itself and the tokenizer added another
        return ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()
