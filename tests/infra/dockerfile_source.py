"""Read Dockerfiles and .dockerignore the way the tests need: instructions by stage, and
whether a path reaches the build context."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

_LEADING_FLAGS = re.compile(r"(?:--\S+\s+)*")
_SUBSTITUTION = re.compile(r"\$\{(\w+)(?::([-+])([^}]*))?\}|\$(\w+)")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper-case: FROM, RUN, COPY, ...
    arguments: str
    line: int

    @property
    def flags(self) -> dict[str, str]:
        """``--name=value`` options at the start (COPY --from=..., RUN --mount=...)."""
        leading = _LEADING_FLAGS.match(self.arguments)
        assert leading is not None
        pairs = (flag.removeprefix("--").partition("=") for flag in leading.group().split())
        return {name: value for name, _, value in pairs}

    @property
    def words(self) -> list[str]:
        """The arguments after the flags: the JSON array of the exec form, or shell words."""
        leading = _LEADING_FLAGS.match(self.arguments)
        assert leading is not None
        rest = self.arguments[leading.end() :]
        if rest.startswith("["):
            parsed: list[str] = json.loads(rest)
            return parsed
        return shlex.split(rest)


@dataclass
class Stage:
    name: str | None
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [instruction for instruction in self.instructions if instruction.keyword == keyword]


@dataclass
class Dockerfile:
    path: Path
    #: ARGs declared before the first FROM, with their defaults.
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        return next(stage for stage in self.stages if stage.name == name)


def parse_dockerfile(path: Path) -> Dockerfile:
    """Split a Dockerfile into stages of instructions (continuation lines joined, comments dropped)."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped by the parser
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        keyword, _, arguments = " ".join(pending).partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
        pending = []
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = instruction.words
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(name, words[0]))
        elif not stages:
            if instruction.keyword == "ARG":
                arg_name, _, default = instruction.arguments.partition("=")
                global_args[arg_name] = default
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(path, global_args, stages)


def key_values(instruction: Instruction) -> dict[str, str]:
    """``ENV a=b c=d`` or ``ARG a=b`` as a dict (values unquoted, not substituted)."""
    pairs = {}
    for word in shlex.split(instruction.arguments):
        name, _, value = word.partition("=")
        pairs[name] = value
    return pairs


def substitute(text: str, variables: dict[str, str]) -> str:
    """Docker's ``$VAR``, ``${VAR}``, ``${VAR:-word}`` and ``${VAR:+word}`` replacement."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(4)
        value = variables.get(name, "")
        if match.group(2) == "-":
            return value or substitute(match.group(3), variables)
        if match.group(2) == "+":
            return substitute(match.group(3), variables) if value else ""
        return value

    return _SUBSTITUTION.sub(replace, text)


def is_in_build_context(path: str, dockerignore: Path) -> bool:
    """Whether ``path`` (relative to the context) survives .dockerignore: last match wins, and a
    pattern that matches a parent folder matches everything inside it."""
    patterns = []
    for raw in dockerignore.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        patterns.append((negated, _pattern_regex(line.lstrip("!").strip().strip("/"))))
    parts = Path(path).parts
    prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    included = True
    for negated, regex in patterns:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            included = negated
    return included


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = []
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out.append("(?:.*/)?")
            index += 3
        elif pattern.startswith("**", index):
            out.append(".*")
            index += 2
        elif pattern[index] == "*":
            out.append("[^/]*")
            index += 1
        elif pattern[index] == "?":
            out.append("[^/]")
            index += 1
        elif pattern[index] == "[":
            end = pattern.index("]", index)
            out.append(pattern[index : end + 1])
            index = end + 1
        else:
            out.append(re.escape(pattern[index]))
            index += 1
    return re.compile("".join(out))
