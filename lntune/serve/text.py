"""TextAssembler: a sequence's generated tokens -> the text to send, piece by piece, honouring stop strings.

The whole answer is decoded again at every token (tokenizers merge bytes and spaces across tokens, so decoding a
token alone can be wrong); only text that can no longer change is released: not a trailing incomplete character
(U+FFFD) and not a tail that might still grow into a stop string. Leading whitespace is dropped, as `lntune eval`
strips its answers (templates end with "ASSISTANT:", and the model's first token carries the space).
"""

from __future__ import annotations


class TextAssembler:
    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.token_ids: list[int] = []
        self.sent = 0
        """Characters of the (left-stripped) text already released."""
        self.text = ""
        self.stopped = False

    def _held_back(self, text: str) -> int:
        """How many trailing characters might be the start of a stop string."""
        longest = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:size]):
                    longest = max(longest, size)
                    break
        return longest

    def add(self, token_id: int) -> str:
        """Take one generated token; return the newly releasable text ('' if none). Sets `stopped` at a stop string."""
        self.token_ids.append(token_id)
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True).lstrip()
        # A trailing U+FFFD is a character whose bytes have not all arrived: not final, so not searched nor sent.
        settled = len(text)
        while settled > self.sent and text[settled - 1] == "\ufffd":
            settled -= 1
        for stop in self.stop:
            at = text.find(stop, 0, settled)
            if at != -1:
                text, settled = text[:at], at
                self.stopped = True
        self.text = text
        if self.stopped:
            return self._release(len(text))
        return self._release(settled - self._held_back(text[:settled]))

    def finish(self) -> str:
        """The rest of the text (the held-back tail is final once the sequence has ended)."""
        return self._release(len(self.text))

    def _release(self, end: int) -> str:
        if end <= self.sent:
            return ""
        piece = self.text[self.sent:end]
        self.sent = end
        return piece
