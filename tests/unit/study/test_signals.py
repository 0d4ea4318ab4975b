"""fakd.study.signals: the first SIGINT or SIGTERM inside a phase asks it to stop, a second one (or one outside a
phase) stops the driver at once; the handlers before the command come back after it."""

import os
import signal

import pytest

from fakd.study.signals import StopSignals, StudyInterrupted


def send(signum: int) -> None:
    os.kill(os.getpid(), signum)  # delivered to the main thread before the next bytecode


def test_outside_a_phase_a_signal_stops_at_once(monkeypatch):
    monkeypatch.delenv("TUNE_DISABLE_SIGINT_HANDLER", raising=False)
    lines: list[str] = []
    with pytest.raises(StudyInterrupted) as stopped, StopSignals(lines.append):
        assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"  # Tune's handler would end a phase as finished
        send(signal.SIGTERM)
    assert stopped.value.signum == signal.SIGTERM and lines == []


def test_in_a_phase_the_first_signal_asks_and_the_second_stops():
    lines: list[str] = []
    with StopSignals(lines.append) as signals:
        signals.in_phase = True
        send(signal.SIGINT)
        assert signals.requested == signal.SIGINT and len(lines) == 1 and "send it again" in lines[0]
        with pytest.raises(StudyInterrupted) as checked:
            signals.check()  # what the driver does after the phase returned
        assert checked.value.signum == signal.SIGINT
        with pytest.raises(StudyInterrupted) as again:
            send(signal.SIGTERM)
        assert again.value.signum == signal.SIGINT  # the exit status names the first signal


def test_the_handlers_come_back_and_install_takes_them_back_from_others():
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    with StopSignals(lambda line: None) as signals:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as `ray.init` replaces SIGTERM's handler
        signals.install()
        with pytest.raises(StudyInterrupted):
            send(signal.SIGTERM)
    assert {signum: signal.getsignal(signum) for signum in before} == before
