"""A small reader of Bicep source: declarations and object literals, for the infra tests.

No Bicep compiler runs offline, so the tests read the templates themselves. This parser
understands what our templates use: ``param``/``var``/``resource``/``module``/``output``
declarations with decorators, object and array literals (keys in order), strings with
``${}`` interpolation, ``if (...)`` conditions and ``[for ...]`` loops. Any other expression
is kept as its source text (:class:`Expr`) and can be resolved through vars, module params
and module outputs with :meth:`BicepProject.resolve`. ``.bicepparam`` files parse too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"\d+(\.\d+)?")
_PUNCT2 = ("==", "!=", "<=", ">=", "&&", "||", "??", "?.", "=>", "::", ".?")
_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = set(_OPEN.values())


class BicepSyntaxError(ValueError):
    """The source is not Bicep this reader understands."""


@dataclass(frozen=True)
class Token:
    kind: str  # ident, num, str, punct, nl
    text: str
    start: int
    end: int
    value: Any = None  # str tokens: the literal text, or None when interpolated


@dataclass(frozen=True)
class Expr:
    """An expression kept as source text (function calls, references, operators, interpolation)."""

    text: str


@dataclass(frozen=True)
class Cond:
    """``if (condition) body`` on a resource or module."""

    condition: str
    body: Any


@dataclass(frozen=True)
class ForLoop:
    """``[for item in items: body]``."""

    header: str
    body: Any


@dataclass
class Param:
    name: str
    type: str
    default: Any
    decorators: dict[str, list[Any]]
    line: int


@dataclass
class Resource:
    symbol: str
    type: str
    api_version: str
    existing: bool
    body: Any
    decorators: dict[str, list[Any]]
    line: int

    @property
    def properties(self) -> dict[str, Any]:
        """The object literal under the condition, if any."""
        body = self.body.body if isinstance(self.body, Cond) else self.body
        if not isinstance(body, dict):
            raise BicepSyntaxError(f"resource {self.symbol}: body is not an object literal")
        return body


@dataclass
class Module:
    symbol: str
    path: str
    body: Any
    line: int

    @property
    def properties(self) -> dict[str, Any]:
        body = self.body.body if isinstance(self.body, Cond) else self.body
        if not isinstance(body, dict):
            raise BicepSyntaxError(f"module {self.symbol}: body is not an object literal")
        return body


@dataclass
class BicepFile:
    path: Path
    text: str
    params: dict[str, Param] = field(default_factory=dict)
    vars: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Resource] = field(default_factory=dict)
    modules: dict[str, Module] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    using: str | None = None
    #: ``param name = value`` of a .bicepparam file.
    assignments: dict[str, Any] = field(default_factory=dict)


def tokenize(text: str) -> list[Token]:
    """Split Bicep source into tokens; comments are dropped, newlines kept."""
    tokens: list[Token] = []
    i = 0
    while i < len(text):
        token, i = _next_token(text, i)
        if token is not None:
            tokens.append(token)
    return tokens


def _next_token(text: str, i: int) -> tuple[Token | None, int]:
    """The token at offset ``i`` (None for blanks and comments) and the offset after it."""
    ch = text[i]
    if ch in " \t\r":
        return None, i + 1
    if ch == "\n":
        return Token("nl", ch, i, i + 1), i + 1
    if text.startswith("//", i):
        end = text.find("\n", i)
        return None, end if end >= 0 else len(text)
    if text.startswith("/*", i):
        end = text.find("*/", i + 2)
        if end < 0:
            raise BicepSyntaxError(f"unterminated comment at offset {i}")
        return None, end + 2
    if ch == "'":
        return _string_token(text, i)
    for kind, pattern in (("num", _NUMBER), ("ident", _IDENT)):
        if match := pattern.match(text, i):
            return Token(kind, match.group(), i, match.end()), match.end()
    size = 2 if text[i : i + 2] in _PUNCT2 else 1
    return Token("punct", text[i : i + size], i, i + size), i + size


def _string_token(text: str, start: int) -> tuple[Token, int]:
    if text.startswith("'''", start):
        end = text.find("'''", start + 3)
        if end < 0:
            raise BicepSyntaxError(f"unterminated multi-line string at offset {start}")
        return Token("str", text[start : end + 3], start, end + 3, text[start + 3 : end]), end + 3
    end, value = _scan_string(text, start)
    return Token("str", text[start:end], start, end, value), end


def _scan_string(text: str, start: int) -> tuple[int, str | None]:
    """End offset of the string at ``start`` and its value (None when it interpolates)."""
    out: list[str] = []
    interpolated = False
    i = start + 1
    escapes = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", "'": "'", "$": "$"}
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            out.append(escapes.get(text[i + 1], text[i + 1]))
            i += 2
        elif ch == "'":
            return i + 1, None if interpolated else "".join(out)
        elif text.startswith("${", i):
            interpolated = True
            i = _skip_interpolation(text, i + 2)
        elif ch == "\n":
            break
        else:
            out.append(ch)
            i += 1
    raise BicepSyntaxError(f"unterminated string at offset {start}")


def _skip_interpolation(text: str, i: int) -> int:
    depth = 1
    while i < len(text) and depth:
        if text[i] == "'":
            i, _ = _scan_string(text, i)
            continue
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    if depth:
        raise BicepSyntaxError("unterminated ${...}")
    return i


class _Parser:
    def __init__(self, text: str, path: Path) -> None:
        self.text = text
        self.path = path
        self.tokens = tokenize(text)
        self.pos = 0

    # --- token helpers ---------------------------------------------------------------------
    def peek(self, offset: int = 0) -> Token | None:
        index = self.pos + offset
        return self.tokens[index] if index < len(self.tokens) else None

    def next(self) -> Token:
        token = self.peek()
        if token is None:
            raise self.error("unexpected end of file")
        self.pos += 1
        return token

    def expect(self, text: str) -> Token:
        token = self.next()
        if token.text != text:
            raise self.error(f"expected {text!r}, found {token.text!r}", token)
        return token

    def at(self, text: str) -> bool:
        token = self.peek()
        return token is not None and token.text == text and token.kind != "str"

    def skip_newlines(self) -> None:
        while (token := self.peek()) is not None and token.kind == "nl":
            self.pos += 1

    def line_of(self, token: Token) -> int:
        return self.text.count("\n", 0, token.start) + 1

    def error(self, message: str, token: Token | None = None) -> BicepSyntaxError:
        token = token or self.peek()
        where = f"{self.path}:{self.line_of(token)}" if token else str(self.path)
        return BicepSyntaxError(f"{where}: {message}")

    # --- values -------------------------------------------------------------------------------
    def value(self) -> Any:
        token = self.peek()
        if token is None:
            raise self.error("expected a value")
        if token.text == "{" and token.kind == "punct":
            return self.object()
        if token.text == "[" and token.kind == "punct":
            following = self.peek(1)
            if following is not None and following.text == "for":
                return self.for_loop()
            return self.array()
        if token.text == "if" and (after := self.peek(1)) is not None and after.text == "(":
            self.next()
            condition = self.balanced("(")
            return Cond(condition, self.value())
        return self.expression()

    def object(self) -> dict[str, Any]:
        self.expect("{")
        result: dict[str, Any] = {}
        while True:
            self.skip_newlines()
            if self.at(","):
                self.next()
                continue
            if self.at("}"):
                self.next()
                return result
            key_token = self.next()
            if key_token.kind == "ident":
                key = key_token.text
            elif key_token.kind == "str":
                key = key_token.value if key_token.value is not None else key_token.text
            else:
                raise self.error(f"expected a property name, found {key_token.text!r}", key_token)
            self.expect(":")
            if key in result:
                raise self.error(f"duplicate property {key!r}", key_token)
            result[key] = self.value()

    def array(self) -> list[Any]:
        self.expect("[")
        result: list[Any] = []
        while True:
            self.skip_newlines()
            if self.at(","):
                self.next()
                continue
            if self.at("]"):
                self.next()
                return result
            result.append(self.value())

    def for_loop(self) -> ForLoop:
        self.expect("[")
        self.expect("for")
        start = self.peek()
        depth = 0
        while True:
            token = self.next()
            depth += 1 if token.text in _OPEN else -1 if token.text in _CLOSE else 0
            if token.text == ":" and depth == 0:
                break
        assert start is not None
        header = self.text[start.start : token.start].strip()
        self.skip_newlines()
        body = self.value()
        self.skip_newlines()
        self.expect("]")
        return ForLoop(header, body)

    def balanced(self, opener: str) -> str:
        """Consume ``(...)`` and return its inner source text."""
        first = self.expect(opener)
        depth = 1
        while depth:
            token = self.next()
            if token.text in _OPEN:
                depth += 1
            elif token.text in _CLOSE:
                depth -= 1
        return self.text[first.end : token.start].strip()

    def expression(self) -> Any:
        """Tokens up to the end of the line (or , } ] ) at depth 0), as a literal or an Expr."""
        start = self.pos
        depth = 0
        while (token := self.peek()) is not None:
            if depth == 0 and (token.kind == "nl" or (token.kind == "punct" and token.text in {",", "}", "]", ")"})):
                break
            if token.kind == "punct" and token.text in _OPEN:
                depth += 1
            elif token.kind == "punct" and token.text in _CLOSE:
                depth -= 1
            self.pos += 1
        parts = self.tokens[start : self.pos]
        if not parts:
            raise self.error("expected an expression")
        return _literal(parts, self.text)

    # --- declarations ---------------------------------------------------------------------
    def decorators(self) -> dict[str, list[Any]]:
        found: dict[str, list[Any]] = {}
        while self.at("@"):
            self.next()
            name = self.next().text
            while self.at("."):  # sys.description
                self.next()
                name = self.next().text
            args: list[Any] = []
            if self.at("("):
                self.next()
                while not self.at(")"):
                    self.skip_newlines()
                    if self.at(","):
                        self.next()
                        continue
                    if self.at(")"):
                        break
                    args.append(self.value())
                    self.skip_newlines()
                self.expect(")")
            found[name] = args
            self.skip_newlines()
        return found

    def type_text(self) -> str:
        start = self.peek()
        depth = 0
        while (token := self.peek()) is not None:
            if depth == 0 and (token.kind == "nl" or token.text == "="):
                break
            depth += 1 if token.text in _OPEN else -1 if token.text in _CLOSE else 0
            self.pos += 1
        assert start is not None
        end = self.tokens[self.pos - 1]
        return self.text[start.start : end.end]

    def skip_statement(self) -> None:
        depth = 0
        while (token := self.peek()) is not None:
            if depth == 0 and token.kind == "nl":
                return
            depth += 1 if token.text in _OPEN else -1 if token.text in _CLOSE else 0
            self.pos += 1

    def parse(self) -> BicepFile:
        result = BicepFile(self.path, self.text)
        while True:
            self.skip_newlines()
            if self.peek() is None:
                return result
            decorators = self.decorators()
            keyword = self.next()
            line = self.line_of(keyword)
            if keyword.text in {"param", "resource"}:
                getattr(self, keyword.text)(result, decorators, line)
            elif keyword.text in {"var", "module", "output", "using"}:
                getattr(self, f"_{keyword.text}")(result, line)
            elif keyword.text in {"targetScope", "metadata", "type", "func", "import", "extension", "assert"}:
                self.skip_statement()
            else:
                raise self.error(f"unexpected {keyword.text!r} at the top level", keyword)
            token = self.peek()
            if token is not None and token.kind != "nl":
                raise self.error(f"expected the end of the line, found {token.text!r}", token)

    def _var(self, result: BicepFile, line: int) -> None:
        name = self.next().text
        self.expect("=")
        result.vars[name] = self.value()

    def _module(self, result: BicepFile, line: int) -> None:
        symbol = self.next().text
        path = self.next().value
        self.expect("=")
        result.modules[symbol] = Module(symbol, path, self.value(), line)

    def _output(self, result: BicepFile, line: int) -> None:
        name = self.next().text
        self.type_text()
        self.expect("=")
        result.outputs[name] = self.value()

    def _using(self, result: BicepFile, line: int) -> None:
        result.using = self.next().value

    def param(self, result: BicepFile, decorators: dict[str, list[Any]], line: int) -> None:
        name = self.next().text
        if result.path.suffix == ".bicepparam":
            self.expect("=")
            result.assignments[name] = self.value()
            return
        type_text = self.type_text()
        default: Any = _NO_DEFAULT
        if self.at("="):
            self.next()
            default = self.value()
        result.params[name] = Param(name, type_text, default, decorators, line)

    def resource(self, result: BicepFile, decorators: dict[str, list[Any]], line: int) -> None:
        symbol = self.next().text
        type_token = self.next()
        if type_token.kind != "str" or type_token.value is None or "@" not in type_token.value:
            raise self.error("expected 'Type@apiVersion'", type_token)
        resource_type, api_version = type_token.value.split("@", 1)
        existing = self.at("existing")
        if existing:
            self.next()
        self.expect("=")
        body = self.value()
        result.resources[symbol] = Resource(symbol, resource_type, api_version, existing, body, decorators, line)


_KEYWORD_LITERALS = {"true": True, "false": False, "null": None}


def _literal(parts: list[Token], text: str) -> Any:
    """A one-token string, number, true/false/null as Python; anything else as an Expr."""
    if len(parts) == 1:
        only = parts[0]
        if only.kind == "str" and only.value is not None:
            return only.value
        if only.kind == "num":
            return float(only.text) if "." in only.text else int(only.text)
        if only.kind == "ident" and only.text in _KEYWORD_LITERALS:
            return _KEYWORD_LITERALS[only.text]
    if len(parts) == 2 and parts[0].text == "-" and parts[1].kind == "num":
        return -int(parts[1].text)
    return Expr(text[parts[0].start : parts[-1].end])


class _NoDefault:
    def __repr__(self) -> str:
        return "<no default>"


#: The default of a param declared without one.
_NO_DEFAULT = _NoDefault()
NO_DEFAULT = _NO_DEFAULT


def parse_file(path: Path) -> BicepFile:
    """Parse one .bicep or .bicepparam file."""
    return _Parser(path.read_text(encoding="utf-8"), path).parse()


class BicepProject:
    """Every Bicep file under a folder, with references resolved across modules."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = {path: parse_file(path) for path in sorted(root.rglob("*.bicep"))}
        self.param_files = {path: parse_file(path) for path in sorted(root.rglob("*.bicepparam"))}

    def module_target(self, owner: BicepFile, module: Module) -> BicepFile:
        path = (owner.path.parent / module.path).resolve()
        for candidate, parsed in self.files.items():
            if candidate.resolve() == path:
                return parsed
        raise KeyError(f"{owner.path}: module {module.symbol} points at missing {module.path}")

    def callers(self, target: BicepFile) -> list[tuple[BicepFile, Module]]:
        """The module declarations that deploy ``target``."""
        return [
            (owner, module)
            for owner in self.files.values()
            for module in owner.modules.values()
            if self.module_target(owner, module) is target
        ]

    def resources(self, resource_type: str | None = None) -> list[tuple[BicepFile, Resource]]:
        """Every declared (not ``existing``) resource, optionally of one type (case-insensitive)."""
        return [
            (bicep, resource)
            for bicep in self.files.values()
            for resource in bicep.resources.values()
            if not resource.existing and (resource_type is None or resource.type.lower() == resource_type.lower())
        ]

    def resolve(self, owner: BicepFile, value: Any, depth: int = 0) -> tuple[BicepFile, Any]:
        """Follow a bare var/param name or ``module.outputs.name`` to the value it stands for.

        A module's param resolves through the (single) module declaration that deploys it; a
        param of the top-level template resolves to its :class:`Param`. Anything else is returned
        as it is, with the file it is to be read in.
        """
        if depth > 20 or not isinstance(value, Expr):
            return owner, value
        text = value.text.strip()
        if _IDENT.fullmatch(text):
            if text in owner.vars:
                return self.resolve(owner, owner.vars[text], depth + 1)
            if text in owner.params:
                callers = self.callers(owner)
                if len(callers) == 1:
                    caller, module = callers[0]
                    passed = module.properties.get("params", {})
                    if isinstance(passed, dict) and text in passed:
                        return self.resolve(caller, passed[text], depth + 1)
                return owner, owner.params[text]
        if match := re.fullmatch(r"([A-Za-z_]\w*)\.outputs\.([A-Za-z_]\w*)", text):
            module = owner.modules.get(match[1])
            if module is not None:
                target = self.module_target(owner, module)
                if match[2] in target.outputs:
                    return self.resolve(target, target.outputs[match[2]], depth + 1)
        return owner, value
