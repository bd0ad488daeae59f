"""harvester.core.secrets: ${VAR} templates found, resolved on demand, and redacted."""

from __future__ import annotations

from urllib.parse import quote, quote_plus

import pytest

import base64

from harvester.core.secrets import (REDACTED, MissingSecret, SecretSet, Template, names_in, redact,
                               resolve, scrub)

ENV = {"TOKEN": "s3cr3t-token", "USER": "alice", "EMPTY": "", "PASS": "p@ss w/rd&x=1"}


@pytest.mark.parametrize("value, names", [
    ("Bearer ${TOKEN}", {"TOKEN"}),
    ("${A}${B_2} and ${A}", {"A", "B_2"}),
    ("no templates", set()),
    ("$TOKEN {TOKEN} ${1BAD} ${} ${a-b}", set()),
    ({"h": {"deep": ["x", "${DEEP}"]}, "${KEYVAR}": 1}, {"DEEP", "KEYVAR"}),
    (["${A}", ("${B}",), 5, None, 2.5], {"A", "B"}),
    (None, set()),
    (42, set()),
])
def test_names_in(value, names):
    """Every ${NAME} anywhere (strings, dict keys and values, lists, tuples) is found."""
    assert names_in(value) == names


def test_resolve_string():
    """Each template in a string is replaced by its environment value."""
    assert resolve("Bearer ${TOKEN} for ${USER}", ENV) == "Bearer s3cr3t-token for alice"


def test_resolve_nested_structures():
    """Templates in nested dicts and lists (values and keys) resolve; other values pass through."""
    value = {"auth": {"token": "${TOKEN}", "n": 3, "ok": True},
             "list": ["${USER}", {"x": "${USER}"}, None], "${USER}": "k"}
    assert resolve(value, ENV) == {"auth": {"token": "s3cr3t-token", "n": 3, "ok": True},
                                   "list": ["alice", {"x": "alice"}, None], "alice": "k"}


def test_resolve_returns_a_copy():
    """The original structure keeps its templates after resolving."""
    value = {"h": ["${TOKEN}"]}
    resolve(value, ENV)
    assert value == {"h": ["${TOKEN}"]}


def test_resolve_empty_value():
    """A variable set to the empty string resolves to the empty string."""
    assert resolve("a${EMPTY}b", ENV) == "ab"


def test_resolve_missing_raises_missing_secret():
    """An unset variable raises MissingSecret naming it (a KeyError)."""
    with pytest.raises(MissingSecret) as info:
        resolve({"h": ["ok ${USER}", "${NOPE}"]}, ENV)
    assert info.value.args[0] == "NOPE"
    assert isinstance(info.value, KeyError)


def test_resolve_value_is_not_re_expanded():
    """A resolved value that itself looks like a template is inserted literally."""
    assert resolve("${A}", {"A": "${B}", "B": "no"}) == "${B}"


def test_resolve_defaults_to_os_environ(monkeypatch):
    """Without env, resolve reads os.environ."""
    monkeypatch.setenv("HARVEST_UNIT_SECRET", "from-env")
    assert resolve("x=${HARVEST_UNIT_SECRET}") == "x=from-env"


def test_resolve_tuple_like_names_in():
    """Whatever names_in finds inside a tuple is resolved too."""
    value = ("${TOKEN}",)
    assert names_in(value) == {"TOKEN"}
    assert "${TOKEN}" not in str(resolve(value, ENV))


def test_secret_set_longest_first_and_skip_empty_or_unset():
    """A job's SecretSet holds the resolved values of used templates, longest first."""
    value = {"h": "${USER}", "p": ["${PASS}", "${EMPTY}", "${UNSET}"], "t": "${TOKEN}"}
    assert SecretSet.for_job(value, env=ENV).all_values() == \
        ["p@ss w/rd&x=1", "s3cr3t-token", "alice"]


def test_secret_set_only_for_referenced_names():
    """Variables the job does not reference are not its secrets."""
    assert SecretSet.for_job("${USER}", env=ENV).all_values() == ["alice"]


def test_url_credentials_add_their_basic_auth_form():
    """Credentials in the job's URL are sent as Basic base64(user:pass): that form is
    redacted too."""
    url = "https://${USER}:${PASS}@api.example.com/x"
    secrets = SecretSet.for_job([url], url, env=ENV)
    basic = base64.b64encode(b"alice:p@ss w/rd&x=1").decode()
    assert secrets.redact(f"Authorization: Basic {basic}") == f"Authorization: Basic {REDACTED}"


def test_scrub_hides_every_secret_this_process_resolved():
    """scrub (the log and ledger edge) knows every SecretSet built in the process."""
    SecretSet({"X": "only-known-after-registering-9f2"})
    assert scrub("a only-known-after-registering-9f2 b") == f"a {REDACTED} b"


def test_template_parse_render_fill():
    """A job string's ${NAME} is a hole; render shows it, fill sends the value."""
    template = Template.parse("https://a/x?k=${TOKEN}&q=${USER}")
    assert template.render() == "https://a/x?k=${TOKEN}&q=${USER}"
    assert template.fill(ENV) == "https://a/x?k=s3cr3t-token&q=alice"
    with pytest.raises(MissingSecret):
        Template.parse("${UNSET}").fill(ENV)


def test_redact_raw_value():
    """A raw secret in text is replaced by ***."""
    assert redact("Authorization: Bearer s3cr3t-token", ["s3cr3t-token"]) == \
        f"Authorization: Bearer {REDACTED}"


@pytest.mark.parametrize("encode", [quote_plus, lambda s: quote(s, safe="")],
                         ids=["quote_plus", "quote-safe-empty"])
def test_redact_url_quoted_forms(encode):
    """A secret URL-quoted in a query string (%20, +, %2F, %40...) is redacted too."""
    secret = ENV["PASS"]
    text = f"GET https://api.example.com/x?key={encode(secret)}&page=2"
    out = redact(text, [secret])
    assert "rd" not in out and "p%40ss" not in out and "p@ss" not in out
    assert out.endswith("&page=2")
    assert REDACTED in out


def test_redact_several_and_all_occurrences():
    """Every occurrence of every secret is replaced; other text stays."""
    out = redact("alice:s3cr3t-token alice", ["s3cr3t-token", "alice"])
    assert out == f"{REDACTED}:{REDACTED} {REDACTED}"


def test_redact_ignores_empty_secret():
    """An empty secret does not turn the text into a sea of ***."""
    assert redact("plain text", [""]) == "plain text"


def test_redact_with_secret_values_round_trip():
    """What resolve puts into a URL, redact(secret_values(...)) takes out again."""
    template = "https://api.example.com/?k=${PASS}&u=${USER}"
    resolved = resolve(template, ENV)
    assert SecretSet.for_job(template, env=ENV).redact(resolved) == \
        f"https://api.example.com/?k={REDACTED}&u={REDACTED}"
