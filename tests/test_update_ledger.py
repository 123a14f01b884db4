"""The getUpdates offset passes an update only once it is finished; none is started twice."""

from __future__ import annotations

from bot.update_ledger import UpdateLedger


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
    ledger.confirmed(12)
    assert ledger.done == set()


def test_once_everything_is_confirmed_a_lower_numbering_is_taken() -> None:
    """Telegram numbers again from a random value after a week without updates: new ids may be lower."""
    ledger = UpdateLedger()
    ledger.take([900_000, 900_001])
    ledger.finish(900_000)
    ledger.finish(900_001)
    assert ledger.offset == 900_002
    ledger.confirmed(900_002)
    assert ledger.offset == 0  # not an offset that would hide ids below it
    assert ledger.take([17]) == [17]
    assert ledger.offset == 17


def test_an_offset_below_a_running_update_keeps_it() -> None:
    ledger = UpdateLedger()
    ledger.take([10, 11])
    ledger.finish(11)
    ledger.confirmed(10)
    assert ledger.offset == 10
    assert ledger.take([10, 11]) == []
