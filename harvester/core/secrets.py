"""``${ENV_VAR}`` templates, resolved only at request time, and everything that
keeps a resolved secret from being stored or logged.

The job spec travels through Redis, task arguments, logs and the manifest with
its templates intact; only the fetcher on a worker resolves them. Three tools
keep the resolved values in:

- :class:`Template`: a string with *holes* for the job's secrets. A job-file
  string is parsed into one (``${NAME}`` is a hole). Text the API sends back
  (a next URL, a cursor) is *captured* into one: every form of a job secret in
  it (raw, percent-encoded in either case, ``+`` for spaces, or any mix) becomes
  a hole that remembers how it was spelled, so the link is stored without the
  secret yet requested byte for byte as the API sent it. A literal ``${X}`` the
  API sends stays literal: API text never resolves a variable of the worker.
- :class:`SecretSet`: one job's resolved secrets and :meth:`SecretSet.redact`,
  which replaces every form of each (raw, percent-encoded, ``repr`` and JSON
  escapes, base64 of ``user:pass`` for URL credentials) with ``***``.
- :func:`scrub`: redaction against every secret this process has resolved,
  used at the edges where text leaves a worker (the log formatter, the ledger).
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

TEMPLATE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
REDACTED = "***"


class MissingSecret(KeyError):
    """A template names an environment variable the worker does not have."""


def names_in(value: Any) -> set[str]:
    """Every variable name referenced by templates anywhere inside ``value``."""
    found: set[str] = set()
    if isinstance(value, str):
        found.update(TEMPLATE.findall(value))
    elif isinstance(value, Template):
        found.update(value.names)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            found |= names_in(key) | names_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            found |= names_in(item)
    return found


def resolve(value: Any, env: Mapping[str, str] | None = None) -> Any:
    """A copy of ``value`` (job-file data) with every ``${NAME}`` replaced from ``env``;
    :class:`Template` values are filled in."""
    env = os.environ if env is None else env

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise MissingSecret(name)
        return env[name]

    if isinstance(value, str):
        return TEMPLATE.sub(substitute, value)
    if isinstance(value, Template):
        return value.fill(env)
    if isinstance(value, Mapping):
        return {resolve(k, env): resolve(v, env) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(resolve(item, env) for item in value)
    return value


# ------------------------------------------------------------ spelling a secret

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _char_pattern(char: str) -> str:
    """A character as itself, or percent-encoded (hex digits in either case), or
    (a space) as ``+``."""
    escaped = "".join(f"%[{h}{h.lower()}][{l}{l.lower()}]" if h.isalpha() or l.isalpha()
                      else f"%{h}{l}"
                      for h, l in (f"{byte:02X}" for byte in char.encode("utf-8")))
    forms = [re.escape(char), escaped] + (["\\+"] if char == " " else [])
    return "(?:" + "|".join(forms) + ")"


@lru_cache(maxsize=256)
def _spellings(secret: str) -> str:
    """A regex source matching ``secret`` spelt raw, percent-encoded or any mix."""
    return "".join(_char_pattern(char) for char in secret)


def _spelling_of(secret: str, text: str) -> str:
    """How ``text`` (a match of :func:`_spellings`) spells ``secret``, one flag a
    character: ``r`` raw, ``U``/``l`` percent-encoded in upper/lower case hex,
    ``+`` a space as plus. Collapsed to one flag when all agree."""
    flags = []
    position = 0
    for char in secret:
        if text.startswith("%", position) and not (char == "%" and text[position + 1:position + 3]
                                                   .upper() != "25"):
            width = 3 * len(char.encode("utf-8"))
            digits = text[position + 1:position + width]
            flags.append("l" if any(c in "abcdef" for c in digits) else "U")
            position += width
        elif char == " " and text.startswith("+", position):
            flags.append("+")
            position += 1
        else:
            flags.append("r")
            position += len(char)
    return flags[0] if len(set(flags)) == 1 else "".join(flags)


def _spell(secret: str, spelling: str) -> str:
    """``secret`` written the way ``spelling`` (see :func:`_spelling_of`) says."""
    if len(spelling) == 1:
        spelling = spelling * len(secret)
    out = []
    for char, flag in zip(secret, spelling):
        if flag in "Ul":
            encoded = "".join(f"%{byte:02X}" for byte in char.encode("utf-8"))
            out.append(encoded.lower() if flag == "l" else encoded)
        elif flag == "+":
            out.append("+")
        else:
            out.append(char)
    return "".join(out)


# ------------------------------------------------------------------ templates

@dataclass(frozen=True)
class Hole:
    """Where a secret goes: the variable, and how it is spelt there."""

    name: str
    spelling: str = "r"


@dataclass(frozen=True)
class Template:
    """A string with holes for secrets: literal text and :class:`Hole` parts."""

    parts: tuple[str | Hole, ...]

    @classmethod
    def parse(cls, text: str) -> "Template":
        """A job-file string: each ``${NAME}`` is a hole."""
        parts: list[str | Hole] = []
        position = 0
        for match in TEMPLATE.finditer(text):
            if match.start() > position:
                parts.append(text[position:match.start()])
            parts.append(Hole(match.group(1)))
            position = match.end()
        if position < len(text):
            parts.append(text[position:])
        return cls(tuple(parts))

    @classmethod
    def literal(cls, text: str) -> "Template":
        return cls((text,) if text else ())

    @property
    def names(self) -> set[str]:
        return {part.name for part in self.parts if isinstance(part, Hole)}

    def render(self) -> str:
        """For people and storage: holes shown as ``${NAME}``."""
        return "".join(part if isinstance(part, str) else "${" + part.name + "}"
                       for part in self.parts)

    def fill(self, env: Mapping[str, str] | None = None) -> str:
        """The text to send: each hole filled, spelt as it was captured."""
        env = os.environ if env is None else env
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            elif part.name not in env:
                raise MissingSecret(part.name)
            else:
                out.append(_spell(env[part.name], part.spelling))
        return "".join(out)

    def to_json(self) -> list[Any]:
        return [part if isinstance(part, str) else [part.name, part.spelling]
                for part in self.parts]

    @classmethod
    def from_json(cls, data: Any) -> "Template":
        if isinstance(data, str):  # links stored before templates had holes
            return cls.parse(data)
        return cls(tuple(part if isinstance(part, str) else Hole(*part) for part in data))

    def __str__(self) -> str:
        return self.render()


# ------------------------------------------------------------------ redaction

class SecretSet:
    """One job's resolved secrets (``name -> value``) and every way to hide them."""

    def __init__(self, values: Mapping[str, str], extra: Iterable[str] = ()):
        self.values = {name: value for name, value in values.items() if value}
        self._extra = tuple(value for value in extra if value)
        register(self.all_values())

    @classmethod
    def for_job(cls, templated: Any, url: str | None = None,
                env: Mapping[str, str] | None = None) -> "SecretSet":
        """The secrets ``templated`` (the job's templated parts) refers to, plus the
        base64 of ``user:pass`` that requests sends for credentials in ``url``."""
        env = os.environ if env is None else env
        values = {name: env[name] for name in names_in(templated) if env.get(name)}
        extra = []
        if url is not None and names_in(url):
            # From the template, whose netloc holds no '/' a secret might carry.
            netloc = url.split("//", 1)[-1].split("/", 1)[0]
            userinfo, at, _ = netloc.rpartition("@")
            if at:
                user, _, password = userinfo.partition(":")
                try:
                    pair = f"{unquote(resolve(user, env))}:{unquote(resolve(password, env))}"
                except MissingSecret:
                    pair = ""
                if pair:
                    extra.append(base64.b64encode(pair.encode("latin-1", "replace")).decode())
        return cls(values, extra)

    def all_values(self) -> list[str]:
        return sorted({*self.values.values(), *self._extra}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        return redact(text, self.all_values())

    def capture(self, text: str) -> Template:
        """API text as a template: every spelling of a job secret becomes a hole."""
        if not self.values:
            return Template.literal(text)
        names = sorted(self.values, key=lambda n: -len(self.values[n]))
        pattern = _capture_pattern(tuple(self.values[n] for n in names))
        parts: list[str | Hole] = []
        position = 0
        for match in pattern.finditer(text):
            index = next(i for i, group in enumerate(match.groups()) if group is not None)
            name = names[index]
            if match.start() > position:
                parts.append(text[position:match.start()])
            parts.append(Hole(name, _spelling_of(self.values[name], match.group())))
            position = match.end()
        if position < len(text):
            parts.append(text[position:])
        return Template(tuple(parts))


@lru_cache(maxsize=64)
def _capture_pattern(secrets: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(f"({_spellings(secret)})" for secret in secrets))


@lru_cache(maxsize=256)
def _secret_pattern(secret: str) -> str:
    """Every form of one secret in messages and URLs: raw, percent-encoded (either
    case, %20 or +, or a mix), and escaped as in ``repr`` or JSON."""
    forms = {repr(secret)[1:-1], json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    patterns = {_spellings(secret)} | {re.escape(form) for form in forms if form and form != secret}
    return "|".join(sorted(patterns, key=len, reverse=True))


@lru_cache(maxsize=64)
def _redaction(secrets: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{_secret_pattern(secret)})" for secret in secrets))


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every form of every secret value replaced by ``***``."""
    ordered = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))
    if not ordered or not text:
        return text
    return _redaction(ordered).sub(REDACTED, text)


# ----------------------------------------------- everything this process knows

_known: set[str] = set()
_known_lock = threading.Lock()
_known_frozen: tuple[str, ...] = ()


def register(values: Iterable[str]) -> None:
    """Remember resolved secrets, so that :func:`scrub` hides them everywhere."""
    global _known_frozen
    new = {value for value in values if value} - _known
    if new:
        with _known_lock:
            _known.update(new)
            _known_frozen = tuple(sorted(_known, key=len, reverse=True))


def scrub(text: str) -> str:
    """``text`` with every secret this process ever resolved redacted."""
    known = _known_frozen
    if not known or not text:
        return text
    return _redaction(known).sub(REDACTED, text)


def scrub_value(value: Any) -> Any:
    """:func:`scrub` applied to every string inside a JSON-like value."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {scrub_value(k): scrub_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_value(item) for item in value]
    return value
