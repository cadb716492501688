"""Text helpers shared by the receivers: safe truncation and markup escaping.

Receivers count their limits in characters (Slack, Telegram, Discord) or in
bytes of UTF-8 (Google Chat, Teams). :func:`truncate` and
:func:`truncate_bytes` cut text to such a limit without splitting a
user-perceived character (a letter and its accents, an emoji sequence, a flag)
or an escaped entity, and mark the cut with an ellipsis.
"""

from __future__ import annotations

import unicodedata

__all__ = [
    "ELLIPSIS",
    "truncate",
    "truncate_bytes",
    "escape_html",
    "escape_markdown",
]

ELLIPSIS = "…"

# Longest entity the escapers here write: "&quot;".
MAX_ENTITY_CHARS = 6


def escape_html(text: str) -> str:
    """Escape ``&``, ``<`` and ``>``, and ``"`` for use inside attributes.

    This is the set Telegram's HTML parse mode requires: every other character
    is shown as it is.
    """
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
    )


# Characters that Discord's and Google Chat's markdown give a meaning to.
_MARKDOWN_SPECIAL = set("\\*_~`|>[]()#-<@")


def escape_markdown(text: str) -> str:
    """Put a backslash before each character that chat markdown would interpret.

    Discord reads ``*_~`|>`` as formatting, ``<@…>`` as a mention and ``#`` and
    ``-`` at a line start as headings and lists; a backslash shows the
    character as it is.
    """
    return "".join("\\" + c if c in _MARKDOWN_SPECIAL else c for c in text)


def truncate_bytes(text: str, limit: int, *, escaped: bool = False) -> tuple[str, bool]:
    """Cut ``text`` to at most ``limit`` bytes of UTF-8, as :func:`truncate` does.

    Returns:
        The text, cut or not, and whether it was cut.
    """
    if len(text.encode("utf-8")) <= limit:
        return text, False
    # Each character takes 1 to 4 bytes: start from the most characters that
    # could fit and shrink until the cut text fits.
    chars = min(len(text), limit)
    while chars > 0:
        cut, _ = truncate(text, chars, escaped=escaped)
        if len(cut.encode("utf-8")) <= limit:
            return cut, True
        excess = len(cut.encode("utf-8")) - limit
        chars -= max(1, excess // 4)
    return "", True


def truncate(text: str, limit: int, *, escaped: bool = False) -> tuple[str, bool]:
    """Cut ``text`` to at most ``limit`` characters, ending in an ellipsis.

    The cut never falls inside a user-perceived character: a combining mark,
    an emoji modifier or a joined emoji sequence stays with its base or goes
    with it, and so does the second half of a flag. With ``escaped``, the cut
    never falls inside an entity such as ``&amp;`` or ``&lt;`` either.

    Returns:
        The text, cut or not, and whether it was cut.
    """
    if len(text) <= limit:
        return text, False
    cut = limit - len(ELLIPSIS)
    while True:
        moved = _cluster_start(text, cut)
        if escaped:
            moved = _entity_start(text, moved)
        if moved == cut:
            break
        cut = moved
    return text[:cut] + ELLIPSIS, True


def _extends_previous(char: str) -> bool:
    """Return whether ``char`` is displayed as part of the character before it."""
    code = ord(char)
    return (
        unicodedata.category(char) in ("Mn", "Mc", "Me")
        or code == 0x200D  # zero width joiner
        or 0xFE00 <= code <= 0xFE0F  # variation selectors
        or 0x1F3FB <= code <= 0x1F3FF  # emoji skin tone modifiers
        or 0xE0020 <= code <= 0xE007F  # tags, as in subdivision flags
        or 0xE0100 <= code <= 0xE01EF  # variation selectors supplement
    )


def _is_regional_indicator(char: str) -> bool:
    return 0x1F1E6 <= ord(char) <= 0x1F1FF


def _cluster_start(text: str, index: int) -> int:
    """Move ``index`` back to the start of the user-perceived character it falls in.

    This covers combining marks, emoji sequences and flags, not every rule of
    Unicode text segmentation (UAX #29), which the standard library lacks.
    """
    while 0 < index < len(text):
        if _extends_previous(text[index]) or text[index - 1] == "\u200d":
            index -= 1
            continue
        if _is_regional_indicator(text[index]):
            # Flags are pairs of regional indicators, so an odd run before the
            # index means that text[index] is the second half of a pair.
            run = 0
            while run < index and _is_regional_indicator(text[index - run - 1]):
                run += 1
            if run % 2 == 1:
                index -= 1
                continue
        break
    return index


def _entity_start(text: str, index: int) -> int:
    """Move ``index`` back to the ``&`` of an entity that it would split."""
    # "&quot;", 6 characters, is the longest entity that the escapers write.
    ampersand = text.rfind("&", max(0, index - MAX_ENTITY_CHARS + 1), index)
    if ampersand != -1 and ";" not in text[ampersand:index]:
        return ampersand
    return index
