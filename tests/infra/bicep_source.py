"""A small reader of Bicep source: declarations and object literals, for the infra tests.

No Bicep compiler runs offline, and pycep-parser (checkov's) reads a string literal and a name
reference as the same JSON string and does not read ``.bicepparam`` files, so the checks that
follow values through modules read the templates here. Literals become Python values (objects
keep their key order); any other expression stays source text (:class:`Expr`), which
:meth:`BicepProject.resolve` follows through vars, module params and module outputs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

_STRING_PART = r"\\.|\$\{(?:[^{}'\n]|'(?:\\.|[^'\\\n])*')*\}|\$(?!\{)|[^'\\\n$]"
_TOKEN = re.compile(
    rf"(?P<blank>[ \t\r]+|//[^\n]*|/\*.*?\*/)|(?P<nl>\n)|(?P<str>'''.*?'''|'(?:{_STRING_PART})*')"
    r"|(?P<num>\d+(?:\.\d+)?)|(?P<ident>[A-Za-z_]\w*)|(?P<punct>[=!<>]=|=>|&&|\|\||\?\?|[^'\w\s])",
    re.DOTALL,
)
_OPEN, _CLOSE = {"(", "[", "{"}, {")", "]", "}"}
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t"}
_KEYWORDS = {"true": True, "false": False, "null": None}
#: Top-level statements no check reads.
_SKIPPED = {"targetScope", "metadata", "type", "func", "import", "extension", "assert"}


class BicepSyntaxError(ValueError):
    """The source is not Bicep this reader understands."""


class Token(NamedTuple):
    kind: str  # nl, str, num, ident, punct
    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Expr:
    """An expression kept as source text (function calls, references, operators, interpolation)."""

    text: str


@dataclass(frozen=True)
class ForLoop:
    """``[for ... : body]``: the body stands for every item."""

    body: Any


@dataclass
class Param:
    name: str
    default: Any
    decorators: dict[str, list[Any]]


#: The default of a param declared without one.
NO_DEFAULT: Any = object()


@dataclass
class Declaration:
    """A ``resource`` or ``module``; an ``if (...)`` condition is dropped, its body kept."""

    symbol: str
    body: Any

    @property
    def properties(self) -> dict[str, Any]:
        if not isinstance(self.body, dict):
            raise BicepSyntaxError(f"{self.symbol}: body is not an object literal")
        return self.body


@dataclass
class Resource(Declaration):
    type: str
    api_version: str
    existing: bool


@dataclass
class Module(Declaration):
    path: str


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


def _tokenize(text: str) -> list[Token]:
    """Bicep source as tokens; blanks and comments dropped, newlines kept (they end statements)."""
    tokens, i = [], 0
    while i < len(text):
        match = _TOKEN.match(text, i)
        if match is None:
            line = text.count("\n", 0, i) + 1
            raise BicepSyntaxError(f"line {line}: unreadable source (an unterminated string?)")
        assert match.lastgroup is not None
        if match.lastgroup != "blank":
            tokens.append(Token(match.lastgroup, match.group(), i, match.end()))
        i = match.end()
    return tokens


def _string_value(token: Token) -> str | None:
    """The value of a string token, or None when it interpolates ``${...}``."""
    if token.text.startswith("'''"):
        return token.text[3:-3]
    parts = re.findall(r"\\.|\$\{|[^\\$]+|\$", token.text[1:-1])
    if "${" in parts:
        return None
    return "".join(_ESCAPES.get(part[1], part[1]) if part.startswith("\\") else part for part in parts)


class _Parser:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.text = path.read_text(encoding="utf-8")
        self.tokens = _tokenize(self.text)
        self.pos = 0

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def next(self) -> Token:
        token = self.peek()
        if token is None:
            raise self.error("unexpected end of file")
        self.pos += 1
        return token

    def at(self, *texts: str) -> bool:
        token = self.peek()
        return token is not None and token.kind != "str" and token.text in texts

    def expect(self, text: str) -> None:
        if not self.at(text):
            raise self.error(f"expected {text!r}")
        self.pos += 1

    def skip(self, *texts: str) -> None:
        while self.at(*texts):
            self.pos += 1

    def error(self, message: str) -> BicepSyntaxError:
        token = self.peek()
        line = self.text.count("\n", 0, token.start) + 1 if token else "end"
        return BicepSyntaxError(f"{self.path}:{line}: {message}, found {token.text if token else 'nothing'!r}")

    def scan(self, *stops: str) -> list[Token]:
        """The tokens before the first of ``stops`` outside brackets (or before the end)."""
        start, depth = self.pos, 0
        while (token := self.peek()) is not None:
            if token.kind != "str":
                if depth == 0 and token.text in stops:
                    break
                depth += (token.text in _OPEN) - (token.text in _CLOSE)
            self.pos += 1
        return self.tokens[start : self.pos]

    def end_of(self, closer: str) -> bool:
        """Past separators: True (and consumed) at ``closer``, False before another item."""
        self.skip("\n", ",")
        if self.at(closer):
            self.pos += 1
            return True
        return False

    # --- values -------------------------------------------------------------------------------
    def value(self) -> Any:
        if self.at("{"):
            return self.object_literal()
        if self.at("["):
            return self.array_literal()
        if self.at("if"):  # if (condition) body: the checks read the body
            self.pos += 1
            self.expect("(")
            self.scan(")")
            self.expect(")")
            return self.value()
        return self.literal(self.scan("\n", ",", ")", "]", "}"))

    def object_literal(self) -> dict[str, Any]:
        self.expect("{")
        result: dict[str, Any] = {}
        while not self.end_of("}"):
            key = self.next()
            if key.kind not in {"ident", "str"}:
                raise self.error("expected a property name")
            # An interpolated key ('${identityId}') is kept as its source text.
            name = key.text if key.kind == "ident" else _string_value(key) or key.text
            if name in result:
                raise self.error(f"duplicate property {name!r}")
            self.expect(":")
            result[name] = self.value()
        return result

    def array_literal(self) -> list[Any] | ForLoop:
        self.expect("[")
        if self.at("for"):
            self.scan(":")
            self.expect(":")
            self.skip("\n")
            loop = ForLoop(self.value())
            if not self.end_of("]"):
                raise self.error("expected the end of the for loop")
            return loop
        items = []
        while not self.end_of("]"):
            items.append(self.value())
        return items

    def literal(self, parts: list[Token]) -> Any:
        """A string, number, true/false/null as Python; anything else as an :class:`Expr`."""
        if not parts:
            raise self.error("expected a value")
        texts = [part.text for part in parts]
        if len(parts) == 1 and parts[0].kind == "str" and (value := _string_value(parts[0])) is not None:
            return value
        number = "".join(texts)
        if parts[-1].kind == "num" and re.fullmatch(r"-?[\d.]+", number):
            return float(number) if "." in number else int(number)
        if len(parts) == 1 and parts[0].kind == "ident" and texts[0] in _KEYWORDS:
            return _KEYWORDS[texts[0]]
        return Expr(self.text[parts[0].start : parts[-1].end])

    # --- declarations ---------------------------------------------------------------------
    def parse(self) -> BicepFile:
        result = BicepFile(self.path, self.text)
        handlers = {"param": self.param, "var": self.var, "output": self.output}
        handlers |= {"resource": self.resource, "module": self.module, "using": self.using}
        while True:
            self.skip("\n")
            if self.peek() is None:
                return result
            decorators = self.decorators()
            keyword = self.next().text
            if keyword in handlers:
                handlers[keyword](result, decorators)
            elif keyword in _SKIPPED:
                self.scan("\n")
            else:
                raise self.error(f"unexpected {keyword!r} at the top level")
            if self.peek() is not None and not self.at("\n"):
                raise self.error("expected the end of the line")

    def decorators(self) -> dict[str, list[Any]]:
        found: dict[str, list[Any]] = {}
        while self.at("@"):
            self.pos += 1
            name = self.scan("(", "\n")[-1].text  # the last part of sys.description
            args = []
            if self.at("("):
                self.pos += 1
                while not self.end_of(")"):
                    args.append(self.value())
            found[name] = args
            self.skip("\n")
        return found

    def param(self, result: BicepFile, decorators: dict[str, list[Any]]) -> None:
        name = self.next().text
        if self.path.suffix == ".bicepparam":
            self.expect("=")
            result.assignments[name] = self.value()
            return
        self.scan("=", "\n")  # the type
        default = NO_DEFAULT
        if self.at("="):
            self.pos += 1
            default = self.value()
        result.params[name] = Param(name, default, decorators)

    def var(self, result: BicepFile, _: object) -> None:
        name = self.next().text
        self.expect("=")
        result.vars[name] = self.value()

    def output(self, result: BicepFile, _: object) -> None:
        name = self.next().text
        self.scan("=")  # the type
        self.expect("=")
        result.outputs[name] = self.value()

    def using(self, result: BicepFile, _: object) -> None:
        result.using = _string_value(self.next())

    def resource(self, result: BicepFile, _: object) -> None:
        symbol = self.next().text
        declared = _string_value(self.next()) or ""
        if "@" not in declared:
            raise self.error("expected 'Type@apiVersion'")
        resource_type, api_version = declared.split("@", 1)
        existing = self.at("existing")
        self.skip("existing")
        self.expect("=")
        result.resources[symbol] = Resource(symbol, self.value(), resource_type, api_version, existing)

    def module(self, result: BicepFile, _: object) -> None:
        symbol = self.next().text
        path = _string_value(self.next()) or ""
        self.expect("=")
        result.modules[symbol] = Module(symbol, self.value(), path)


class BicepProject:
    """Every Bicep file under a folder, with references resolved across modules."""

    def __init__(self, root: Path) -> None:
        self.files = {path: _Parser(path).parse() for path in sorted(root.resolve().rglob("*.bicep"))}
        self.param_files = {path: _Parser(path).parse() for path in sorted(root.resolve().rglob("*.bicepparam"))}

    def module_target(self, owner: BicepFile, module: Module) -> BicepFile:
        path = (owner.path.parent / module.path).resolve()
        if path not in self.files:
            raise KeyError(f"{owner.path}: module {module.symbol} points at missing {module.path}")
        return self.files[path]

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
        if text in owner.vars:
            return self.resolve(owner, owner.vars[text], depth + 1)
        if text in owner.params:
            callers = self.callers(owner)
            passed = callers[0][1].properties.get("params", {}) if len(callers) == 1 else {}
            if isinstance(passed, dict) and text in passed:
                return self.resolve(callers[0][0], passed[text], depth + 1)
            return owner, owner.params[text]
        if match := re.fullmatch(r"(\w+)\.outputs\.(\w+)", text):
            module = owner.modules.get(match[1])
            target = self.module_target(owner, module) if module else None
            if target is not None and match[2] in target.outputs:
                return self.resolve(target, target.outputs[match[2]], depth + 1)
        return owner, value

    def callers(self, target: BicepFile) -> list[tuple[BicepFile, Module]]:
        """The module declarations that deploy ``target``."""
        return [
            (owner, module)
            for owner in self.files.values()
            for module in owner.modules.values()
            if self.module_target(owner, module) is target
        ]
