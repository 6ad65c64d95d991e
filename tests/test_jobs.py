"""The job format: builders, and the validation a worker runs on a task's arguments."""

from __future__ import annotations

import pytest

from turbo_tasks.exceptions import InvalidJob
from turbo_tasks.jobs import recheck_job, trailing_refresh_job, validate

REF = {"stream": "testapp.RoomStream", "args": [1], "kwargs": {}}


def broadcast(**fields):
    return {"action": "broadcast", "stream": REF, **fields}


def test_built_recheck_and_trailing_refresh_jobs_are_valid():
    jobs = [recheck_job(REF), trailing_refresh_job(REF, "ab12", exclude_sender=True)]
    assert validate(jobs) == [
        {"action": "recheck", "stream": REF},
        {
            "action": "broadcast",
            "stream": REF,
            "turbo_action": "refresh",
            "trailing": "ab12",
            "exclude_sender": True,
        },
    ]


@pytest.mark.parametrize(
    ("job", "message"),
    [
        (broadcast(turbo_action="refresh", target="room"), "job 0: A refresh takes no target"),
        (broadcast(turbo_action="refresh", text="x"), "job 0: A refresh takes no template"),
        (broadcast(turbo_action="append", text="x"), "job 0: Pass exactly one of id="),
        (
            broadcast(turbo_action="append", target="a", targets=".b", text="x"),
            "job 0: Pass exactly one of id=",
        ),
        (broadcast(turbo_action="append", target="a"), r"job 0: append\(\) needs a template"),
        (
            broadcast(turbo_action="append", target="a", text="x", method="morph"),
            "job 0: method='morph': only method='morph' is supported, on replace and update",
        ),
        (
            broadcast(turbo_action="append", target="a", text="x", debounce=True),
            "job 0: only a refresh can be debounced",
        ),
        (broadcast(turbo_action="append", target=5, text="x"), "job 0: 'target' must be a string"),
    ],
)
def test_broadcast_jobs_follow_the_rules_an_action_call_follows(job, message):
    with pytest.raises(InvalidJob, match=message):
        validate([job])


def test_raw_jobs_carry_markup_and_are_checked():
    from turbo_tasks.jobs import raw_job

    job = raw_job(REF, '<turbo-stream action="remove" target="a"></turbo-stream>', True)
    assert validate([job]) == [job]
    with pytest.raises(InvalidJob, match="job 0: 'html' must be a string"):
        validate([{"action": "raw", "stream": REF, "html": 5}])
