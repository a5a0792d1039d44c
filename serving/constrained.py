"""``response_format: {"type": "json_object"}``: decoding that keeps the output a JSON object.

``JsonPrefix`` reads JSON a character at a time and says whether the text so far can still become
valid JSON; ``JsonConstraint`` uses it at each step to allow only the tokens that keep the output a
valid prefix of a JSON object, ends the answer when the object closes, and, when the tokens left run
short, spends them on closing what is open (strings, arrays, objects), so an answer cut by
``max_tokens`` still parses. Candidates are tried most likely first, so a greedy answer is the
model's own best valid one; sampling draws among the few most likely valid tokens.

Whitespace outside strings is allowed one character at a time (a model cannot spend its tokens on
blank space), and the object comes first (no leading whitespace).
"""

from __future__ import annotations

from typing import Any

_WHITESPACE = " \n"
_NUMBER = {  # state -> {character class -> next state}; complete states end a number
    "start": {"-": "sign", "0": "zero", "1": "int"},
    "sign": {"0": "zero", "1": "int"},
    "zero": {".": "dot", "e": "e"},
    "int": {"0": "int", "1": "int", ".": "dot", "e": "e"},
    "dot": {"0": "frac", "1": "frac"},
    "frac": {"0": "frac", "1": "frac", "e": "e"},
    "e": {"+": "esign", "-": "esign", "0": "exp", "1": "exp"},
    "esign": {"0": "exp", "1": "exp"},
    "exp": {"0": "exp", "1": "exp"},
}
_NUMBER_DONE = {"zero", "int", "frac", "exp"}
_NUMBER_FINISH = {"sign": "0", "dot": "0", "e": "0", "esign": "0"}
_LITERALS = {"t": "true", "f": "false", "n": "null"}


def _number_class(ch: str) -> str:
    if ch == "0":
        return "0"
    if ch.isdigit() and ch.isascii():
        return "1"
    return "e" if ch in "eE" else ch


class JsonPrefix:
    """A pushdown reader of JSON text whose top level is an object.

    >>> JsonPrefix().feed('{"a": [1, 2.5e3, "x\\\\n"], "b": null}'), JsonPrefix().feed('{"a": tru')
    (True, True)
    >>> state = JsonPrefix(); state.feed('{"a": [1, {"b": "c'), state.closing(), state.done
    (True, '"}]}', False)
    >>> JsonPrefix().feed('{"a" 1}'), JsonPrefix().feed('[1]'), JsonPrefix().feed('{"a": 01}')
    (False, False, False)
    """

    def __init__(self) -> None:
        self.stack: list[str] = []  # open containers, "{" or "["
        self.mode = "start"  # start, value, key_or_end, key, colon, after, value_or_end, string, number, literal, done
        self.is_key = False  # the string being read is an object's key
        self.escape = 0  # 0: none; 1: after a backslash; 2..5: hex digits of \\u still to come, plus one
        self.number = "start"
        self.literal = ""  # what a literal (true, false, null) still needs
        self.spaced = False  # the last character outside a string was whitespace

    def copy(self) -> JsonPrefix:
        """An independent copy (to try a token's text without changing this one)."""
        other = JsonPrefix.__new__(JsonPrefix)
        other.__dict__ = self.__dict__ | {"stack": list(self.stack)}
        return other

    @property
    def done(self) -> bool:
        """The top-level object is complete."""
        return self.mode == "done"

    def feed(self, text: str) -> bool:
        """Read ``text``; False (and a broken state) as soon as it cannot continue valid JSON."""
        return all(self._char(ch) for ch in text)

    def _value_start(self, ch: str) -> bool:
        if ch == "{":
            self.stack.append("{")
            self.mode = "key_or_end"
        elif ch == "[":
            self.stack.append("[")
            self.mode = "value_or_end"
        elif ch == '"':
            self.mode, self.is_key, self.escape = "string", False, 0
        elif ch in _LITERALS:
            self.mode, self.literal = "literal", _LITERALS[ch][1:]
        elif ch in "-0123456789":
            self.mode, self.number = "number", _NUMBER["start"][_number_class(ch)]
        else:
            return False
        return True

    def _close(self, ch: str) -> bool:
        if not self.stack or {"}": "{", "]": "["}[ch] != self.stack[-1]:
            return False
        self.stack.pop()
        self.mode = "after" if self.stack else "done"
        return True

    def _char(self, ch: str) -> bool:
        mode = self.mode
        if mode == "string":
            return self._string_char(ch)
        if mode == "literal":
            if not self.literal.startswith(ch):
                return False
            self.literal = self.literal[1:]
            if not self.literal:
                self.mode = "after"
            return True
        if mode == "number":
            following = _NUMBER[self.number].get(_number_class(ch))
            if following is not None:
                self.number = following
                return True
            if self.number not in _NUMBER_DONE:
                return False
            self.mode = mode = "after"
        if ch in _WHITESPACE:
            if self.spaced or mode in ("start", "done"):
                return False
            self.spaced = True
            return True
        self.spaced = False
        if mode == "start":
            return ch == "{" and self._value_start(ch)
        if mode == "value":
            return self._value_start(ch)
        if mode == "value_or_end":
            return self._close(ch) if ch == "]" else self._value_start(ch)
        if mode in ("key_or_end", "key"):
            if ch == "}" and mode == "key_or_end":
                return self._close(ch)
            if ch != '"':
                return False
            self.mode, self.is_key, self.escape = "string", True, 0
            return True
        if mode == "colon":
            if ch != ":":
                return False
            self.mode = "value"
            return True
        if mode == "after":
            if ch == ",":
                self.mode = "key" if self.stack[-1] == "{" else "value"
                return True
            return ch in "}]" and self._close(ch)
        return False  # done: nothing may follow

    def _string_char(self, ch: str) -> bool:
        if self.escape == 1:
            if ch == "u":
                self.escape = 5
            elif ch in '"\\/bfnrt':
                self.escape = 0
            else:
                return False
            return True
        if self.escape > 1:
            if ch not in "0123456789abcdefABCDEF":
                return False
            self.escape = 0 if self.escape == 2 else self.escape - 1
            return True
        if ch == "\\":
            self.escape = 1
        elif ch == '"':
            self.mode = "colon" if self.is_key else "after"
        elif ord(ch) < 0x20:
            return False
        return True

    def closing(self) -> str:
        """The shortest text that completes the JSON from here (empty when it is complete)."""
        mode, out = self.mode, ""
        if mode == "start":
            return "{}"
        if mode == "string":
            out += ("n" if self.escape == 1 else "0" * max(0, self.escape - 1)) + '"'
            mode = "colon" if self.is_key else "after"
        elif mode == "literal":
            out, mode = self.literal, "after"
        elif mode == "number":
            out, mode = _NUMBER_FINISH.get(self.number, ""), "after"
        out += {"value": "null", "key": '"":null', "colon": ":null"}.get(mode, "")
        return out + "".join("}" if c == "{" else "]" for c in reversed(self.stack))


class JsonConstraint:
    """Per request: which tokens keep the output a JSON object, and the state after each token."""

    def __init__(self, tokenizer: Any, special_ids: set[int]):
        self.tokenizer = tokenizer
        self.special = special_ids
        self.state = JsonPrefix()
        self.text = ""  # the output's text so far

    @property
    def done(self) -> bool:
        """The object is closed: the answer is complete."""
        return self.state.done

    def _piece(self, output: list[int], token: int) -> str | None:
        """The text ``token`` adds after ``output`` (None when it is special or ends mid-character)."""
        if token in self.special:
            return None
        text = self.tokenizer.decode([*output, token], skip_special_tokens=False)
        if not text.startswith(self.text) or text.endswith("\ufffd"):
            return None
        return text[len(self.text):] or None

    def allowed(self, logits: Any, output: list[int], left: int, want: int) -> list[int]:
        """Up to ``want`` tokens, most likely first, that keep the output valid JSON; when ``left``
        tokens are just enough to close what is open, only the token that starts closing it."""
        closing = self.state.closing()
        forced = self.tokenizer.encode(closing, add_special_tokens=False) if closing else []
        if forced and left <= len(forced):
            for token in (forced[0], *self.tokenizer.encode(closing[0], add_special_tokens=False)[:1]):
                piece = self._piece(output, token)
                if piece and closing.startswith(piece) and self.state.copy().feed(piece):
                    return [token]
        import torch  # delayed: torch is heavy (start-up time)

        found: list[int] = []
        order = torch.argsort(logits, descending=True)
        for rank, token in enumerate(order.tolist()):
            if logits[token] == float("-inf") or (found and (len(found) >= want or rank >= 512)):
                break
            piece = self._piece(output, token)
            if piece is not None and self.state.copy().feed(piece):
                found.append(token)
        return found

    def advance(self, output: list[int]) -> None:
        """Read the text the newest token of ``output`` added."""
        text = self.tokenizer.decode(output, skip_special_tokens=False)
        self.state.feed(text[len(self.text):])
        self.text = text
