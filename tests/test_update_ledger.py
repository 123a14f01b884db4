"""The getUpdates offset passes an update only once it is finished; none is started twice."""

from __future__ import annotations

from bot.update_ledger import UpdateLedger


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_fresh_ledger_asks_for_everything() -> None:
    assert UpdateLedger().offset == 0


def test_updates_finishing_out_of_order_are_confirmed_only_up_to_the_lowest_running() -> None:
    ledger = UpdateLedger()
    assert ledger.take([10, 11, 12]) == [10, 11, 12]

    ledger.finish(12)
    assert ledger.offset == 10
    ledger.finish(10)
    assert ledger.offset == 11
    ledger.finish(11)
    assert ledger.offset == 13


def test_a_batch_delivered_again_starts_only_what_is_new() -> None:
    ledger = UpdateLedger()
    ledger.take([10, 11, 12])
    ledger.finish(11)

    assert ledger.take([10, 11, 12, 13]) == [13]
    assert ledger.running == {10, 12, 13}


def test_finished_updates_are_forgotten_once_confirmed() -> None:
    ledger = UpdateLedger()
    ledger.take([10, 11])
    ledger.finish(10)
    ledger.finish(11)
    ledger.take([12])
    assert ledger.done == set()


def test_a_failed_update_holds_the_offset_and_runs_again_after_a_delay() -> None:
    clock = Clock()
    ledger = UpdateLedger(retry_delay=1.0, clock=clock)
    ledger.take([10, 11])
    assert ledger.finish(10, retry=True)
    ledger.finish(11)

    assert ledger.offset == 10
    assert ledger.take([10, 11]) == []  # too early, and 11 is done
    clock.now = 1.0
    assert ledger.take([10, 11]) == [10]
    ledger.finish(10)
    assert ledger.offset == 12


def test_an_update_failing_every_time_is_given_up_and_confirmed() -> None:
    clock = Clock()
    ledger = UpdateLedger(max_attempts=3, retry_delay=0.0, clock=clock)
    for _ in range(2):
        assert ledger.take([10]) == [10]
        assert ledger.finish(10, retry=True)
    assert ledger.take([10]) == [10]

    assert not ledger.finish(10, retry=True)
    assert ledger.offset == 11


def test_a_handler_that_failed_for_good_is_confirmed() -> None:
    ledger = UpdateLedger()
    ledger.take([10])
    assert ledger.finish(10)
    assert ledger.offset == 11
