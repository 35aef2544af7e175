"""The process group's helpers, in one process (two real ranks: tests/data/test_prepared.py)."""

from __future__ import annotations

import json
import pickle

import pytest
import torch.distributed as dist

from iopo_fast.data.sources import DataError
from iopo_fast.distributed import RankError, raise_if_any_rank_failed


class LocalError(Exception):
    """An exception class of these tests: the other ranks import it by its module and name."""


def raised_on_rank_1(monkeypatch, error: Exception) -> Exception:
    """What rank 1 of 2 raises when rank 0 fails with `error`: both calls in this process, the gather faked
    (it hands rank 1 what rank 0 sent, after checking that it pickles)."""
    sent = []

    def all_gather_object(gathered, mine):
        sent.append(pickle.loads(pickle.dumps(mine)))
        gathered[:] = [sent[0], None]

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    with pytest.raises(type(error)) as own:
        raise_if_any_rank_failed(error)
    assert own.value is error
    with pytest.raises(Exception) as other:
        raise_if_any_rank_failed(None)
    return other.value


def test_a_single_process_raises_its_own_error_or_nothing():
    raise_if_any_rank_failed(None)
    error = DataError("data.json:1: invalid JSON array: Expecting value")
    with pytest.raises(DataError) as raised:
        raise_if_any_rank_failed(error)
    assert raised.value is error


def local_error(message: str) -> Exception:
    class LocalError(Exception):
        pass

    return LocalError(message)


@pytest.mark.parametrize("error, expected", [
    (DataError("data.json:1: invalid JSON array: Expecting value"), DataError),
    (FileNotFoundError("data.json: no such file"), FileNotFoundError),
    (LocalError("a module-level class"), LocalError),
    (local_error("a class local to a function"), RankError),
    (KeyError("quoted by its str"), RankError),
    (json.JSONDecodeError("Expecting value", "[{", 2), RankError),  # built from three arguments
])
def test_the_other_ranks_raise_the_same_message_as_its_class_where_it_rebuilds(monkeypatch, error, expected):
    raised = raised_on_rank_1(monkeypatch, error)
    assert type(raised) is expected and str(raised) == str(error)
    assert raised.__notes__ == ["(the error of rank 0, raised on every rank)"]
