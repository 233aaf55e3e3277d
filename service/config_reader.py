"""Reading the configuration files: TOML parsing, drop-in merging, and typed, checked access.

`read_config_tree` reads the main file and its `conf.d/*.toml` drop-ins, merges them and
remembers which file supplied each value. `Table` hands out the values of one TOML table, each
checked for type and range, and raises `ConfigError` naming the file, the dotted key, what was
found and what was expected. `service.config` builds the typed settings on top of it.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

PathPart = str | int
TreePath = tuple[PathPart, ...]
Scalar = str | int | float | bool

_T = TypeVar("_T")


class ConfigError(Exception):
    """A configuration file is unreadable, not TOML, or holds a missing or bad value.

    `file` is the file that supplied the bad value (the main file for a missing key), `key` the
    dotted key ("" when the whole file is at fault), `found` what is there and `expected` what
    should be. `line`/`column` are set for TOML syntax and encoding errors. str() is one line.
    """

    def __init__(
        self,
        file: Path,
        key: str,
        found: str,
        expected: str,
        *,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.file = file
        self.key = key
        self.found = found
        self.expected = expected
        self.line = line
        self.column = column
        super().__init__(file, key, found, expected)

    def __str__(self) -> str:
        where = str(self.file)
        if self.line is not None:
            where += f":{self.line}" + (f":{self.column}" if self.column is not None else "")
        key = f" {self.key}:" if self.key else ""
        text = f"{where}:{key} found {self.found}; expected {self.expected}"
        return " ".join(text.splitlines())


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final = _Required()

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_TOML_POS_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_AT_END = " (at end of document)"
_MAX_SHOWN = 60


def show(value: object) -> str:
    """A short, one-line rendering of a TOML value for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 4] + '..."'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        if value and all(isinstance(item, dict) for item in value):
            return f"an array of {len(value)} tables"
        return f"an array of {len(value)} items"
    return f"a {type(value).__name__} ({value})"


def format_key(path: Sequence[PathPart]) -> str:
    """Dotted key for a tree path; array positions are shown counted from 1: evse[2].id."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part + 1}]"
        else:
            name = part if _BARE_KEY_RE.fullmatch(part) else json.dumps(part, ensure_ascii=False)
            out += f".{name}" if out else name
    return out


def read_toml(path: Path) -> dict[str, object]:
    """Parse one TOML file; any failure becomes a ConfigError naming the file (and line/col)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            path, "", f"a file that cannot be read ({reason})", "a readable TOML file"
        ) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        raise ConfigError(
            path,
            "",
            f"bytes that are not UTF-8 ({data[exc.start : exc.end].hex(' ')})",
            "a UTF-8 encoded TOML file",
            line=line,
            column=column,
        ) from exc
    text = text.removeprefix("\ufeff")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = _TOML_POS_RE.search(message)
        position: tuple[int | None, int | None] = (None, None)
        if match:
            position = (int(match.group(1)), int(match.group(2)))
            message = message[: match.start()]
        elif message.endswith(_AT_END):
            lines = text.split("\n")
            position = (len(lines), len(lines[-1]) + 1)
            message = message.removesuffix(_AT_END)
        raise ConfigError(
            path,
            "",
            f"invalid TOML ({message})",
            "a valid TOML document",
            line=position[0],
            column=position[1],
        ) from exc


def drop_in_files(main: Path) -> list[Path]:
    """`<dir of main>/conf.d/*.toml` in name order; hidden files (editor locks) are skipped."""
    conf_d = main.parent / "conf.d"
    if not conf_d.is_dir():
        return []
    try:
        names = sorted(
            entry.name
            for entry in conf_d.iterdir()
            if entry.name.endswith(".toml") and not entry.name.startswith(".")
        )
    except OSError as exc:
        raise ConfigError(
            conf_d,
            "",
            f"a directory that cannot be listed ({exc.strerror or exc})",
            "a readable drop-in directory",
        ) from exc
    return [conf_d / name for name in names]


@dataclass(slots=True)
class Provenance:
    """Which file supplied each part of the merged tree."""

    main: Path
    origins: dict[TreePath, Path]

    def file_of(self, path: TreePath) -> Path:
        """The file that supplied the value at `path` (or the deepest enclosing part of it)."""
        for end in range(len(path), 0, -1):
            found = self.origins.get(path[:end])
            if found is not None:
                return found
        return self.main


def _merge(
    base: dict[str, object],
    over: dict[str, object],
    path: TreePath,
    source: Path,
    origins: dict[TreePath, Path],
) -> None:
    # Tables merge key by key; anything else (values, arrays, arrays of tables) replaces whole.
    for key, value in over.items():
        here = (*path, key)
        current = base.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            _merge(current, value, here, source, origins)
            continue
        for stale in [p for p in origins if p[: len(here)] == here]:
            del origins[stale]
        base[key] = value
        origins[here] = source


def read_config_tree(main: Path) -> tuple[dict[str, object], Provenance, tuple[Path, ...]]:
    """Read and merge the main file and its drop-ins: (tree, provenance, files read in order)."""
    files = (main, *drop_in_files(main))
    tree: dict[str, object] = {}
    origins: dict[TreePath, Path] = {}
    for file in files:
        _merge(tree, read_toml(file), (), file, origins)
    return tree, Provenance(main, origins), files


def _suggest(key: str, allowed: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


class Table:
    """Checked access to the keys of one TOML table of the merged tree."""

    def __init__(self, data: dict[str, object], path: TreePath, provenance: Provenance) -> None:
        self.data = data
        self.tree_path = path
        self.provenance = provenance

    def key(self, name: PathPart) -> str:
        return format_key((*self.tree_path, name))

    def file_of(self, name: PathPart) -> Path:
        if isinstance(name, str) and name not in self.data:
            return self.provenance.main
        return self.provenance.file_of((*self.tree_path, name))

    def error(self, name: PathPart, found: str, expected: str) -> ConfigError:
        return ConfigError(self.file_of(name), self.key(name), found, expected)

    def has(self, name: str) -> bool:
        return name in self.data

    def check_keys(self, allowed: Sequence[str], what: str = "") -> None:
        """Refuse any key not in `allowed`; `what` replaces the list of keys in the message."""
        for name in self.data:
            if name not in allowed:
                listing = what or "one of " + ", ".join(allowed)
                raise self.error(name, "an unknown key", listing + _suggest(name, allowed))

    def items(self) -> Iterator[tuple[str, object]]:
        return iter(self.data.items())

    def _missing(self, name: str, expected: str) -> ConfigError:
        return ConfigError(self.provenance.main, self.key(name), "no value", expected)

    def _checked(
        self,
        name: str,
        default: _T | _Required,
        expected: str,
        convert: Callable[[object], _T | None],
    ) -> _T:
        if name not in self.data:
            if isinstance(default, _Required):
                raise self._missing(name, expected)
            return default
        value = self.data[name]
        result = convert(value)
        if result is None:
            raise self.error(name, show(value), expected)
        return result

    def string(
        self,
        name: str,
        default: str | _Required = REQUIRED,
        *,
        min_len: int = 0,
        max_len: int = 500,
        pattern: re.Pattern[str] | None = None,
        pattern_doc: str = "",
        secret: bool = False,
    ) -> str:
        expected = (
            f"a string of {min_len} to {max_len} characters"
            if min_len
            else f"a string of at most {max_len} characters"
        ) + (f" {pattern_doc}" if pattern_doc else "")
        if name not in self.data:
            if isinstance(default, _Required):
                raise self._missing(name, expected)
            return default
        value = self.data[name]
        ok = (
            isinstance(value, str)
            and min_len <= len(value) <= max_len
            and (pattern is None or pattern.fullmatch(value) is not None)
        )
        if not ok:
            found = show(value)
            if secret:  # never echo a password into the journal
                found = (
                    f"a string of {len(value)} characters"
                    if isinstance(value, str)
                    else f"a value of type {type(value).__name__}"
                )
            raise self.error(name, found, expected)
        assert isinstance(value, str)
        return value

    def choice(self, name: str, choices: Sequence[str], default: str | _Required = REQUIRED) -> str:
        expected = "one of " + ", ".join(json.dumps(c) for c in choices)
        return self._checked(
            name,
            default,
            expected,
            lambda v: v if isinstance(v, str) and v in choices else None,
        )

    def integer(self, name: str, default: int | _Required, minimum: int, maximum: int) -> int:
        expected = f"an integer from {minimum} to {maximum}"
        return self._checked(
            name,
            default,
            expected,
            lambda v: (
                v
                if isinstance(v, int) and not isinstance(v, bool) and minimum <= v <= maximum
                else None
            ),
        )

    def integer_choice(self, name: str, choices: Sequence[int], default: int | _Required) -> int:
        expected = " or ".join(str(c) for c in choices)
        return self._checked(
            name,
            default,
            expected,
            lambda v: (
                v if isinstance(v, int) and not isinstance(v, bool) and v in choices else None
            ),
        )

    def number(
        self,
        name: str,
        default: float | _Required,
        minimum: float,
        maximum: float,
        *,
        above_minimum: bool = False,
    ) -> float:
        low = f"greater than {minimum:g}" if above_minimum else f"at least {minimum:g}"
        expected = f"a number {low} and at most {maximum:g}"

        def convert(v: object) -> float | None:
            if isinstance(v, bool) or not isinstance(v, int | float):
                return None
            number = float(v)
            too_low = number <= minimum if above_minimum else number < minimum
            return None if too_low or number > maximum or number != number else number

        return self._checked(name, default, expected, convert)

    def boolean(self, name: str, default: bool | _Required) -> bool:
        return self._checked(
            name, default, "true or false", lambda v: v if isinstance(v, bool) else None
        )

    def path(
        self, name: str, default: Path | None, *, must_be_file: bool = False, allow_empty: bool
    ) -> Path | None:
        """An absolute path; "" means None when `allow_empty`; optionally an existing file."""
        what = "an absolute path of an existing file" if must_be_file else "an absolute path"
        expected = what + (' or "" for none' if allow_empty else "")
        if name not in self.data:
            return default
        value = self.data[name]
        if allow_empty and value == "":
            return None
        if not isinstance(value, str) or not value or not Path(value).is_absolute():
            raise self.error(name, show(value), expected)
        if must_be_file and not Path(value).is_file():
            raise self.error(name, f"{show(value)}, which is not an existing file", expected)
        return Path(value)

    def table(self, name: str, allowed: Sequence[str], what: str = "") -> Table:
        """A sub-table (empty if absent) whose keys have been checked against `allowed`."""
        value = self.data.get(name, {})
        if not isinstance(value, dict):
            raise self.error(name, show(value), f"a table ([{self.key(name)}])")
        sub = Table(value, (*self.tree_path, name), self.provenance)
        sub.check_keys(allowed, what)
        return sub

    def table_array(self, name: str, minimum: int, maximum: int) -> list[Table] | None:
        """The tables of an array of tables, None if absent; the count must be in range."""
        if name not in self.data:
            return None
        value = self.data[name]
        expected = f"an array of {minimum} to {maximum} tables ([[{self.key(name)}]])"
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise self.error(name, show(value), expected)
        if not minimum <= len(value) <= maximum:
            raise self.error(name, show(value), expected)
        return [
            Table(item, (*self.tree_path, name, i), self.provenance) for i, item in enumerate(value)
        ]

    def scalar_map(self, name: str) -> dict[str, Scalar]:
        """A table of free keys whose values are strings, integers, floats or booleans."""
        value = self.data.get(name, {})
        if not isinstance(value, dict):
            raise self.error(name, show(value), f"a table ([{self.key(name)}])")
        sub = Table(value, (*self.tree_path, name), self.provenance)
        result: dict[str, Scalar] = {}
        for key, item in sub.items():
            if not isinstance(item, str | int | float | bool):
                raise sub.error(key, show(item), "a string, integer, float or boolean")
            result[key] = item
        return result
