"""Go's regexp syntax (RE2, Perl flags), checked before a filter goes to a Serf agent.

Serf compiles member filters with Go's ``regexp.Compile``: ``members-filtered`` wraps each
one as ``^<pattern>$`` (textually: ``a|b`` becomes ``^a|b$``), query tag filters are used
unanchored on every node (reference/serf-rpc.md §3, §5). A pattern Go refuses makes the
agent close the connection (members) or every node skip the query, so the CLI refuses it
first, with exit 2. Python's ``re`` is no judge: it takes ``a*+``, ``(?>a)``, ``\\Z`` and
``x{1001}``, and refuses ``\\pN``.

This module walks a pattern the way Go 1.19's ``regexp/syntax`` parser does (the Go that
Debian's serf is built with) and reports the first error in Go's words. It accepts what
that parser accepts, with one deliberate difference: a pattern longer than
``MAX_PATTERN`` characters is refused. Below that length Go's size and nesting-depth
limits (millions of instructions, a parse tree 1000 deep) cannot be reached, so they need
no model here.

Pure: no I/O. Must not: compile or run the pattern (it is never matched here).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from serfbridge.errors import GoRegexError, UsageError

MAX_PATTERN = 1000
_MAX_REPEAT = 1000  # Go: {n,m} bounds, and the product of nested counted repeats
_SURROGATES = range(0xD800, 0xE000)  # Go cannot hold them in a string: invalid UTF-8
_CHECKED_REPEAT = 2  # Go checks nested counts only when min or max reaches 2
_MAX_COUNT_DIGITS = 8  # Go stops at 8 digits to avoid overflow: a longer count is out of range
_MAX_RUNE = 0x10FFFF  # Go's unicode.MaxRune: the highest \x{...} escape
_HEX_BYTE = 2  # \xHH: exactly two hex digits
_OCTAL = "01234567"
_HEX = "0123456789abcdefABCDEF"
_PERL_CLASSES = frozenset({"\\d", "\\D", "\\s", "\\S", "\\w", "\\W"})
_POSIX_NAMES = "alnum alpha ascii blank cntrl digit graph lower print punct space upper word xdigit"
_POSIX_CLASSES = frozenset(f"[:{neg}{name}:]" for name in _POSIX_NAMES.split() for neg in ("", "^"))
_C_ESCAPES = {"a": 7, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11}
#: Go 1.19's unicode.Categories and unicode.Scripts (Unicode 13), plus "Any".
_UNICODE_TEXT = (
    "Any C Cc Cf Co Cs L Ll Lm Lo Lt Lu M Mc Me Mn N Nd Nl No P Pc Pd Pe Pf Pi Po Ps S "
    "Sc Sk Sm So Z Zl Zp Zs Adlam Ahom Anatolian_Hieroglyphs Arabic Armenian Avestan "
    "Balinese Bamum Bassa_Vah Batak Bengali Bhaiksuki Bopomofo Brahmi Braille Buginese "
    "Buhid Canadian_Aboriginal Carian Caucasian_Albanian Chakma Cham Cherokee Chorasmian "
    "Common Coptic Cuneiform Cypriot Cyrillic Deseret Devanagari Dives_Akuru Dogra "
    "Duployan Egyptian_Hieroglyphs Elbasan Elymaic Ethiopic Georgian Glagolitic Gothic "
    "Grantha Greek Gujarati Gunjala_Gondi Gurmukhi Han Hangul Hanifi_Rohingya Hanunoo "
    "Hatran Hebrew Hiragana Imperial_Aramaic Inherited Inscriptional_Pahlavi "
    "Inscriptional_Parthian Javanese Kaithi Kannada Katakana Kayah_Li Kharoshthi "
    "Khitan_Small_Script Khmer Khojki Khudawadi Lao Latin Lepcha Limbu Linear_A Linear_B "
    "Lisu Lycian Lydian Mahajani Makasar Malayalam Mandaic Manichaean Marchen "
    "Masaram_Gondi Medefaidrin Meetei_Mayek Mende_Kikakui Meroitic_Cursive "
    "Meroitic_Hieroglyphs Miao Modi Mongolian Mro Multani Myanmar Nabataean Nandinagari "
    "New_Tai_Lue Newa Nko Nushu Nyiakeng_Puachue_Hmong Ogham Ol_Chiki Old_Hungarian "
    "Old_Italic Old_North_Arabian Old_Permic Old_Persian Old_Sogdian Old_South_Arabian "
    "Old_Turkic Oriya Osage Osmanya Pahawh_Hmong Palmyrene Pau_Cin_Hau Phags_Pa "
    "Phoenician Psalter_Pahlavi Rejang Runic Samaritan Saurashtra Sharada Shavian "
    "Siddham SignWriting Sinhala Sogdian Sora_Sompeng Soyombo Sundanese Syloti_Nagri "
    "Syriac Tagalog Tagbanwa Tai_Le Tai_Tham Tai_Viet Takri Tamil Tangut Telugu Thaana "
    "Thai Tibetan Tifinagh Tirhuta Ugaritic Vai Wancho Warang_Citi Yezidi Yi "
    "Zanabazar_Square "
)
_UNICODE_NAMES = frozenset(_UNICODE_TEXT.split())


@dataclass
class _Node:
    """A parse-tree node: enough of Go's tree to check nested repeat counts."""

    subs: list[_Node] = field(default_factory=list)
    counted: tuple[int, int] | None = None  # (min, max) of {n,m}; max -1 means {n,}
    marker: str = ""  # "(" or "|" on the parse stack; "" for a real node


def go_regex_error(pattern: str) -> str | None:
    """Go's complaint about ``pattern`` (as ``regexp.Compile`` words it), or None."""
    try:
        _Parser(pattern).parse()
    except GoRegexError as exc:
        return str(exc)
    return None


def check_go_regex(pattern: str, what: str, *, anchored: bool) -> str:
    """``pattern`` unchanged, or UsageError naming ``what`` (a flag, e.g. ``--tag role``).

    ``anchored`` checks it the way ``members-filtered`` compiles it, as ``^pattern$``.
    """
    if len(pattern) > MAX_PATTERN:
        raise UsageError(f"{what}: the regex is longer than {MAX_PATTERN} characters")
    problem = go_regex_error(f"^{pattern}$" if anchored else pattern)
    if problem is not None:
        shown = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in problem)
        raise UsageError(f"{what}: {pattern!r} is not a valid Go (RE2) regex: {shown}")
    return pattern


def _fail(code: str, expr: str) -> GoRegexError:
    return GoRegexError(f"{code}: `{expr}`")


def _repeat_is_valid(top: _Node) -> bool:
    """Go's repeatIsValid: nested {n,m} counts multiply to at most 1000."""
    todo = [(top, _MAX_REPEAT)]
    while todo:
        node, budget = todo.pop()
        if node.counted is not None:
            low, high = node.counted
            if high == 0:
                continue
            count = low if high < 0 else high
            if count > budget:
                return False
            budget //= max(count, 1)
        todo.extend((sub, budget) for sub in node.subs)
    return True


class _Parser:
    def __init__(self, pattern: str) -> None:
        self.s = pattern
        self.n = len(pattern)
        self.stack: list[_Node] = []
        self._by_char: dict[str, Callable[[int], int]] = {
            "(": self._left_paren,
            "|": lambda i: self._mark("|", i),
            ")": self._right_paren,
            "[": self._char_class,
            "\\": self._escape_atom,
        }

    def parse(self) -> None:
        if any(ord(c) in _SURROGATES for c in self.s):
            raise _fail("invalid UTF-8", self.s)
        i, last_repeat = 0, -1  # where the previous token began, if it was a repeat
        while i < self.n:
            start, c = i, self.s[i]
            i = self._token(i, last_repeat=last_repeat)
            last_repeat = start if c in "*+?" or (c == "{" and self.s[start:i] != "{") else -1
        self._collapse(self.n, at_end=True)

    def _token(self, i: int, *, last_repeat: int) -> int:
        """Parse the token at ``i``; returns where the next one begins."""
        c = self.s[i]
        step = self._by_char.get(c)
        if step is not None:
            return step(i)
        if c in "*+?":
            return self._repeat(None, i, end=i + 1, last_repeat=last_repeat)
        if c == "{" and (counted := self._parse_counts(i)) is not None:
            low, high, end = counted
            if low < 0 or low > _MAX_REPEAT or high > _MAX_REPEAT or 0 <= high < low:
                raise _fail("invalid repeat count", self.s[i:end])
            return self._repeat((low, high), i, end=end, last_repeat=last_repeat)
        return self._atom(i + 1)  # a literal, '{' that is no count, or one of ^ $ .

    # --- the stack --------------------------------------------------------------------

    def _atom(self, end: int) -> int:
        self.stack.append(_Node())
        return end

    def _mark(self, marker: str, i: int) -> int:
        self.stack.append(_Node(marker=marker))
        return i + 1

    def _collapse(self, i: int, *, at_end: bool = False) -> _Node | None:
        """Pop back to the nearest '(' into one node; None when there is no '('."""
        subs: list[_Node] = []
        while self.stack and self.stack[-1].marker != "(":
            node = self.stack.pop()
            if not node.marker:
                subs.append(node)
        if not self.stack:
            if not at_end:
                raise _fail("unexpected )", self.s)
            return None
        if at_end:
            raise _fail("missing closing )", self.s)
        self.stack.pop()
        return _Node(subs=subs)

    def _left_paren(self, i: int) -> int:
        return self._perl_group(i) if self.s.startswith("(?", i) else self._mark("(", i)

    def _right_paren(self, i: int) -> int:
        group = self._collapse(i)
        assert group is not None
        self.stack.append(group)
        return i + 1

    def _repeat(
        self, counted: tuple[int, int] | None, start: int, *, end: int, last_repeat: int
    ) -> int:
        if end < self.n and self.s[end] == "?":
            end += 1  # non-greedy
        if last_repeat >= 0:
            raise _fail("invalid nested repetition operator", self.s[last_repeat:end])
        if not self.stack or self.stack[-1].marker:
            raise _fail("missing argument to repetition operator", self.s[start:end])
        node = _Node(subs=[self.stack.pop()], counted=counted)
        self.stack.append(node)
        if counted is not None and max(counted) >= _CHECKED_REPEAT and not _repeat_is_valid(node):
            raise _fail("invalid repeat count", self.s[start:end])
        return end

    # --- groups and counts ------------------------------------------------------------

    def _perl_group(self, i: int) -> int:
        s = self.s
        if s.startswith("P<", i + 2) and self.n > i + len("(?P<"):
            end = s.find(">", i)
            if end < 0:
                raise _fail("invalid named capture", s[i:])
            name = s[i + 4 : end]
            if not name or not all(c == "_" or _is_alnum(c) for c in name):
                raise _fail("invalid named capture", s[i : end + 1])
            self.stack.append(_Node(marker="("))
            return end + 1
        t, negated, saw_flag = i + 2, False, False
        while t < self.n:
            c = s[t]
            t += 1
            if c in "imsU":
                saw_flag = True
            elif c == "-" and not negated:
                negated, saw_flag = True, False
            elif c in ":)" and (saw_flag or not negated):
                if c == ":":
                    self.stack.append(_Node(marker="("))
                return t
            else:
                break
        raise _fail("invalid or unsupported Perl syntax", s[i:t])

    def _parse_counts(self, i: int) -> tuple[int, int, int] | None:
        """``{n}``, ``{n,}``, ``{n,m}`` at i -> (min, max, end); None: '{' is a literal.

        A number too big to count (over 8 digits) gives min -1, as in Go: refused.
        """
        low, t = self._parse_int(i + 1)
        if low is None or t >= self.n:
            return None
        high = low
        if self.s[t] == ",":
            t += 1
            if t >= self.n:
                return None
            if self.s[t] == "}":
                high = -1
            else:
                parsed, t = self._parse_int(t)
                if parsed is None:
                    return None
                high, low = parsed, (-1 if parsed < 0 else low)
        if t >= self.n or self.s[t] != "}":
            return None
        return low, high, t + 1

    def _parse_int(self, t: int) -> tuple[int | None, int]:
        end = t
        while end < self.n and "0" <= self.s[end] <= "9":
            end += 1
        digits = self.s[t:end]
        if not digits or (len(digits) > 1 and digits[0] == "0"):
            return None, t
        return (int(digits) if len(digits) <= _MAX_COUNT_DIGITS else -1), end

    # --- escapes and classes ----------------------------------------------------------

    def _escape_atom(self, i: int) -> int:
        s, nxt = self.s, self.s[i + 1 : i + 2]
        if nxt in ("A", "b", "B", "z"):
            return self._atom(i + 2)
        if nxt == "C":
            raise _fail("invalid escape sequence", s[i : i + 2])
        if nxt == "Q":
            end = s.find("\\E", i + 2)
            literal_end = self.n if end < 0 else end
            self.stack.extend(_Node() for _ in range(literal_end - (i + 2)))
            return self.n if end < 0 else end + 2
        if nxt in ("p", "P"):
            return self._atom(self._unicode_class(i))
        if s[i : i + 2] in _PERL_CLASSES:
            return self._atom(i + 2)
        return self._atom(self._escape(i)[1])

    def _escape(self, i: int) -> tuple[int, int]:
        """One escaped character at i (the backslash) -> (its code point, end)."""
        s, t = self.s, i + 1
        if t >= self.n:
            raise _fail("trailing backslash at end of expression", "")
        c = s[t]
        t += 1
        if c.isascii() and not _is_alnum(c):
            return ord(c), t
        if c in _OCTAL and (c == "0" or (t < self.n and s[t] in _OCTAL)):
            end = t
            while end < min(t + 2, self.n) and s[end] in _OCTAL:
                end += 1
            return int(s[t - 1 : end], 8), end
        if c in _C_ESCAPES:
            return _C_ESCAPES[c], t
        if c == "x":
            if s.startswith("{", t):
                end = s.find("}", t)
                digits = s[t + 1 : end] if end > 0 else ""
                if digits and all(d in _HEX for d in digits) and int(digits, 16) <= _MAX_RUNE:
                    return int(digits, 16), end + 1
            elif len(s[t : t + _HEX_BYTE]) == _HEX_BYTE and all(
                d in _HEX for d in s[t : t + _HEX_BYTE]
            ):
                return int(s[t : t + _HEX_BYTE], 16), t + _HEX_BYTE
        raise _fail("invalid escape sequence", s[i:t])

    def _unicode_class(self, i: int) -> int:
        """``\\pN``, ``\\p{Name}``, ``\\P{^Name}`` at i -> end; Go's names only."""
        s, t = self.s, i + 2
        if t < self.n and s[t] == "{":
            end = s.find("}", i)
            if end < 0:
                raise _fail("invalid character class range", s[i:])
            sequence, name, t = s[i : end + 1], s[i + 3 : end], end + 1
        else:
            sequence, name, t = s[i : t + 1], s[t : t + 1], t + 1
        if name.removeprefix("^") not in _UNICODE_NAMES:
            raise _fail("invalid character class range", sequence)
        return t

    def _char_class(self, i: int) -> int:
        s, t, first = self.s, i + 1, True
        if t < self.n and s[t] == "^":
            t += 1
        while t >= self.n or s[t] != "]" or first:
            first = False
            if s.startswith("[:", t) and (end := s.find(":]", t + 2)) >= 0:
                if s[t : end + 2] not in _POSIX_CLASSES:
                    raise _fail("invalid character class range", s[t : end + 2])
                t = end + 2
            elif s[t : t + 2] in ("\\p", "\\P"):
                t = self._unicode_class(t)
            elif s[t : t + 2] in _PERL_CLASSES:
                t += 2
            else:
                t = self._class_range(t, i)
        return self._atom(t + 1)

    def _class_range(self, t: int, class_start: int) -> int:
        start = t
        low, t = self._class_char(t, class_start)
        if t + 1 < self.n and self.s[t] == "-" and self.s[t + 1] != "]":
            high, t = self._class_char(t + 1, class_start)
            if high < low:
                raise _fail("invalid character class range", self.s[start:t])
        return t

    def _class_char(self, t: int, class_start: int) -> tuple[int, int]:
        if t >= self.n:
            raise _fail("missing closing ]", self.s[class_start:])
        if self.s[t] == "\\":
            return self._escape(t)
        return ord(self.s[t]), t + 1


def _is_alnum(c: str) -> bool:
    return c.isascii() and c.isalnum()
