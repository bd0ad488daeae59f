"""``${ENV_VAR}`` templates: kept verbatim everywhere, resolved only at request time.

The job spec travels through Redis, task arguments, logs and the manifest with
its templates intact; only the fetcher on a worker calls :func:`resolve`, and
anything it reports passes through :func:`redact` first.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from collections.abc import Mapping
from typing import Any

TEMPLATE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
REDACTED = "***"


class MissingSecret(KeyError):
    """A template names an environment variable the worker does not have."""


def names_in(value: Any) -> set[str]:
    """Every variable name referenced by templates anywhere inside ``value``."""
    found: set[str] = set()
    if isinstance(value, str):
        found.update(TEMPLATE.findall(value))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            found |= names_in(key) | names_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            found |= names_in(item)
    return found


def resolve(value: Any, env: Mapping[str, str] | None = None) -> Any:
    """A copy of ``value`` with every ``${NAME}`` replaced from ``env``."""
    env = os.environ if env is None else env

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise MissingSecret(name)
        return env[name]

    if isinstance(value, str):
        return TEMPLATE.sub(substitute, value)
    if isinstance(value, Mapping):
        return {resolve(k, env): resolve(v, env) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(resolve(item, env) for item in value)
    return value


def secret_values(value: Any, env: Mapping[str, str] | None = None) -> list[str]:
    """The resolved values of the templates in ``value``, longest first."""
    env = os.environ if env is None else env
    values = {env[name] for name in names_in(value) if env.get(name)}
    return sorted(values, key=len, reverse=True)


@lru_cache(maxsize=64)
def _secret_pattern(secret: str) -> re.Pattern[str]:
    """Every form a secret takes in messages and URLs: raw, percent-encoded (either
    case of hex digits, %20 or +), and escaped as in ``repr`` or JSON."""
    from urllib.parse import quote, quote_plus

    def encoded(form: str) -> str:
        # Only the hex digits of a %XX escape may differ in case.
        parts = re.split(r"(%[0-9A-F]{2})", form)
        return "".join(
            f"%[{p[1]}{p[1].lower()}][{p[2]}{p[2].lower()}]" if re.fullmatch(r"%[0-9A-F]{2}", p)
            else re.escape(p) for p in parts)

    forms = {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1]}
    patterns = {re.escape(form) for form in forms if form}
    patterns |= {encoded(form) for form in (quote(secret, safe=""), quote_plus(secret)) if form}
    return re.compile("|".join(sorted(patterns, key=len, reverse=True)))


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with every form of every secret value replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = _secret_pattern(secret).sub(REDACTED, text)
    return text


def templatize(text: str, value: Any, env: Mapping[str, str] | None = None) -> str:
    """``text`` with each secret of ``value``'s templates turned back into ``${NAME}``.

    APIs often echo every query parameter into their next links, credentials
    included; a link is stored only after this.
    """
    env = os.environ if env is None else env
    names = sorted((n for n in names_in(value) if env.get(n)), key=lambda n: -len(env[n]))
    for name in names:
        text = _secret_pattern(env[name]).sub("${" + name + "}", text)
    return text
