"""The SSE progress stream of harvest serve, as pure logic: which events each reading
of a job's status yields."""

from __future__ import annotations

import json

from harvester.client import JobStatus
from harvester.service.events import KEEPALIVE_SECONDS, ProgressStream, parse_event_id, sse


def status(state="running", committed=0, failed=0, total=100, raw=0, created=1000.0):
    return JobStatus(job_id="j", state=state, total=total, total_known=True,
                     committed=committed, failed=failed, pending=total - committed - failed,
                     in_flight=8, raw_bytes=raw, compressed_bytes=raw // 4, lines=committed,
                     output_dir="/o", error=None, capped=None, created_at=created,
                     finished_at=None, paused_until=None, requests=committed)


def decode(events):
    out = []
    for event in events:
        fields = dict(line.split(": ", 1) for line in event.decode().strip().splitlines()
                      if not line.startswith(":"))
        out.append((fields.get("event"), fields.get("id"),
                    json.loads(fields["data"]) if "data" in fields else None))
    return out


def test_progress_only_when_something_moved_with_rate_and_eta():
    """A reading that changes nothing yields nothing (until a keepalive is due); one that
    moves yields progress with the rate over the stream's readings and the ETA."""
    stream = ProgressStream()
    [(kind, event_id, data)] = decode(stream.feed(status(committed=10, raw=1000), 1010.0))
    assert kind == "progress" and event_id == "1010000.running"
    assert data["rate_pages"] == 1.0  # the first reading: the job's own average (10 in 10 s)
    assert decode(stream.feed(status(committed=10, raw=1000), 1011.0)) == []
    [(_, _, data)] = decode(stream.feed(status(committed=30, raw=3000), 1020.0))
    assert data["rate_pages"] == 2.0 and data["eta_seconds"] == 35.0
    assert data["committed"] == 30 and data["pending"] == 70
    assert list(stream.feed(status(committed=30, raw=3000), 1020.0 + KEEPALIVE_SECONDS)) == \
        [b": keepalive\n\n"]


def test_a_state_change_then_the_end():
    """running -> finalizing -> done: a state event at each change, and after the final
    reading an end event; nothing more is yielded after the end."""
    stream = ProgressStream()
    list(stream.feed(status(committed=99), 1001.0))
    kinds = [k for k, _, _ in decode(stream.feed(status("finalizing", committed=100), 1002.0))]
    assert kinds == ["state", "progress"]
    events = decode(stream.feed(status("done", committed=100), 1003.0))
    assert [k for k, _, _ in events] == ["state", "progress", "end"]
    assert events[0][2] == {"state": "done", "previous": "finalizing"}
    assert events[1][2]["eta_seconds"] is None and events[1][2]["final"]
    assert events[2][1] == "1003000.done"
    assert stream.ended and list(stream.feed(status("done", committed=100), 1004.0)) == []


def test_resuming_with_last_event_id_reports_a_missed_state_change():
    """A client back with the id of a 'running' event while the job is now 'failed' gets
    the state change first; one back with the id of the current state does not; an id
    that is not ours is treated as a fresh start."""
    resumed = decode(ProgressStream("1000.running").feed(status("failed", 90, 10), 2000.0))
    assert [k for k, _, _ in resumed] == ["state", "progress", "end"]
    assert resumed[0][2] == {"state": "failed", "previous": "running"}
    same = decode(ProgressStream("1000.running").feed(status("running", 5), 2000.0))
    assert [k for k, _, _ in same] == ["progress"]
    assert parse_event_id("garbage") is None and parse_event_id("12.<script>") is None
    assert parse_event_id("12.done") == (12, "done")
    fresh = decode(ProgressStream("../../etc").feed(status("done", 100), 2000.0))
    assert [k for k, _, _ in fresh] == ["progress", "end"]


def test_an_event_is_one_line_of_json_whatever_the_data():
    """Newlines in the data (a message from the API) cannot split or inject an event."""
    event = sse("progress", {"message": "a\n\nevent: end\ndata: {}"}, event_id="1.running")
    assert event.count(b"\n\n") == 1 and event.endswith(b"\n\n")
    assert event.decode().splitlines()[2].startswith("data: {")
