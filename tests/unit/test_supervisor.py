"""fakd.supervisor's relay of the driver's output: the user sees the study's lines and the workers' own output;
Ray's lines and the traceback Ray's SIGTERM handler prints when a phase ends its trial processes go to the study's
tune/ray.log."""

import io

from fakd.supervisor import RAY_LOG, _relay

WORKER = "\x1b[36m(run_trial pid=2695)\x1b[0m "
TEARDOWN = [WORKER + text for text in (
    "Exception ignored in: <function WeakSet.__init__.<locals>._remove at 0x7f975312a480>\n",
    "Traceback (most recent call last):\n",
    '  File "/usr/lib/python3.11/_weakrefset.py", line 39, in _remove\n',
    '  File "/venv/lib/python3.11/site-packages/ray/_private/worker.py", line 1063, in sigterm_handler\n',
    "    raise_sys_exit_with_custom_error_message(\n",
    "SystemExit: 1\n",
)]


def relay(lines: list[str], study) -> tuple[str, str]:
    shown = io.StringIO()
    _relay(io.BytesIO("".join(lines).encode()), shown, {"study": str(study)})
    log = study / RAY_LOG
    return shown.getvalue(), log.read_text() if log.is_file() else ""


def test_the_sigterm_teardown_of_a_trial_process_goes_to_the_ray_log(tmp_path):
    other = "\x1b[36m(run_trial pid=2700)\x1b[0m [kd] iter 10/150 loss 0.4\n"
    lines = [TEARDOWN[0], "[retrain 7/12] baseline COMPLETE\n", *TEARDOWN[1:3], other, *TEARDOWN[3:],
             "[2026-12-07 15:50:01,123 W 2305 2305] gcs_client.cc:12: lost\n", "[retrain 8/12] kd COMPLETE\n"]
    shown, log = relay(lines, tmp_path)
    assert shown == "[retrain 7/12] baseline COMPLETE\n" + other + "[retrain 8/12] kd COMPLETE\n"
    assert log == "".join(TEARDOWN) + lines[-2]


def test_any_other_worker_traceback_is_shown_whole(tmp_path):
    error = [*TEARDOWN[:3], WORKER + "ValueError: a label outside the table\n"]
    cut = TEARDOWN[:2]  # the stream ended inside the block
    for lines in (error, cut):
        shown, log = relay(lines, tmp_path)
        assert shown == "".join(lines) and log == ""
