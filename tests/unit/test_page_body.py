"""What a page's body becomes in its output line (harvester.core.pagebody.PageBody):
one line whatever CR/LF the API put between tokens, the same JSON value, and a
compact body passed on without a copy. No sockets."""

from __future__ import annotations

import json
import random

from harvester.core.pagebody import PageBody
from harvester.core.scan import one_line

PREFIX = b'{"page":1,"url":"u","status":200,"fetched_at":"t","body":'


def _page_line(body: bytes, sizes: list[int], **options) -> bytes:
    out = bytearray()
    settings = dict(records_mode=False, records_path=None, value_paths=[],
                    count_records=False, json_lines=False)
    settings.update(options)
    page = PageBody(write=out.extend, line_prefix=PREFIX, **settings)
    at = 0
    for size in sizes:
        page.feed(body[at:at + size])
        at += size
    page.feed(body[at:])
    page.finish()
    return bytes(out)


def test_a_pretty_printed_body_becomes_one_line_with_the_same_value_at_any_chunking():
    """CR, LF and CRLF between tokens (an API's indent=2, Windows line ends) become
    spaces: the page is one line, and its body parses to what the API sent, whatever
    the chunk boundaries (a CRLF split across two chunks included)."""
    value = {"data": [{"id": i, "name": f"n\u00e9\r\n{i}", "tags": ["a", "b"]} for i in range(30)],
             "meta": {"next": None, "total": 30}}
    pretty = json.dumps(value, indent=2).encode()
    rng = random.Random(7)
    for body in (pretty, pretty.replace(b"\n", b"\r\n"), b"\r\n" + pretty + b"\n\n"):
        for _ in range(20):
            sizes = [rng.randrange(1, 64) for _ in range(len(body) // 8)]
            line = _page_line(body, sizes)
            assert line.count(b"\n") == 1 and line.endswith(b"}\n") and b"\r" not in line
            assert json.loads(line)["body"] == value


def test_a_compact_body_is_passed_on_uncopied():
    """No CR or LF in a chunk: the very same bytes object is written (most APIs send
    compact JSON, and a translate of 1 MB costs as much as validating it)."""
    chunk = json.dumps({"data": list(range(1000))}, separators=(",", ":")).encode()
    assert one_line(chunk) is chunk
    assert one_line(b'[1,\n2,\r3]') == b'[1, 2, 3]'
    assert one_line(b'[1,\r2]') == b'[1, 2]'
    written = []
    page = PageBody(write=written.append, line_prefix=PREFIX, records_mode=False,
                    records_path=None, value_paths=[], count_records=False, json_lines=False)
    page.feed(chunk)
    page.finish()
    assert any(piece is chunk for piece in written)


def test_pretty_records_are_one_line_each_in_records_mode():
    """In records mode each record of a pretty-printed array is one line of its own."""
    records = [{"id": i, "text": "x\ny"} for i in range(5)]
    body = json.dumps({"data": records}, indent=4).encode()
    out = _page_line(body, [17] * (len(body) // 17), records_mode=True, records_path="data",
                     count_records=True)
    lines = out.decode().splitlines()
    assert [json.loads(line) for line in lines] == records
