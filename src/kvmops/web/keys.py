"""Text to key presses for the console's 'send text': Linux input key codes.

libvirt's ``virDomainSendKey`` with ``VIR_KEYCODE_SET_LINUX`` takes up to 16
key codes pressed together and released; one character is one call: the key,
with Left Shift held for upper-case letters and shifted symbols (US layout).
"""

from __future__ import annotations

from kvmops.errors import ValidationError

KEY_LEFTSHIFT = 42
KEY_LEFTCTRL = 29
KEY_LEFTALT = 56
KEY_DELETE = 111
MAX_TEXT = 1000

_ROWS = {
    "1234567890": 2,  # KEY_1 .. KEY_0
    "qwertyuiop": 16,
    "asdfghjkl": 30,
    "zxcvbnm": 44,
}
_PLAIN: dict[str, int] = {
    "\x1b": 1, "-": 12, "=": 13, "\b": 14, "\t": 15, "[": 26, "]": 27, "\n": 28, ";": 39,
    "'": 40, "`": 41, "\\": 43, ",": 51, ".": 52, "/": 53, " ": 57,
}
for _row, _first in _ROWS.items():
    for _offset, _char in enumerate(_row):
        _PLAIN[_char] = _first + _offset
_SHIFTED_OF = {
    "!": "1", "@": "2", "#": "3", "$": "4", "%": "5", "^": "6", "&": "7", "*": "8",
    "(": "9", ")": "0", "_": "-", "+": "=", "{": "[", "}": "]", ":": ";", '"': "'",
    "~": "`", "|": "\\", "<": ",", ">": ".", "?": "/",
}


def key_for(char: str) -> list[int]:
    """The key codes pressed together to type ``char``; ValidationError when untypable."""
    if char == "\r":
        char = "\n"
    if char in _PLAIN:
        return [_PLAIN[char]]
    if len(char) == 1 and "A" <= char <= "Z":
        return [KEY_LEFTSHIFT, _PLAIN[char.lower()]]
    if char in _SHIFTED_OF:
        return [KEY_LEFTSHIFT, _PLAIN[_SHIFTED_OF[char]]]
    shown = repr(char)
    raise ValidationError(f"text: cannot type {shown} on the console's US keyboard",
                          hint="use ASCII letters, digits, punctuation, space, tab, newline")


def text_to_keys(text: str) -> list[list[int]]:
    """One key combination per character of ``text``."""
    if len(text) > MAX_TEXT:
        raise ValidationError(f"text: at most {MAX_TEXT} characters at once")
    keys = []
    previous = ""
    for char in text:
        if char == "\n" and previous == "\r":  # CR LF is one Enter
            previous = char
            continue
        keys.append(key_for(char))
        previous = char
    return keys


CTRL_ALT_DEL = [KEY_LEFTCTRL, KEY_LEFTALT, KEY_DELETE]
