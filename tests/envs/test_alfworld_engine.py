"""The fast engine says exactly what alfworld's stock textworld engine says."""

from __future__ import annotations

import sys

import pytest

from bench.alfworld_equivalence import engine_trace
from sdar_envs.alfworld.data import read_walkthrough
from sdar_envs.alfworld.engine import start_fast, start_stock
from tests.helpers import sample_per_type

GAMES = sample_per_type("valid_seen", 1) + sample_per_type("valid_unseen", 1)


def _trace(env, commands_and_seed: tuple[list[str], int], n_random: int = 0) -> list[tuple]:
    commands, seed = commands_and_seed
    return engine_trace(env, commands, seed, n_random)


@pytest.mark.parametrize("task", GAMES, ids=lambda t: t.task_id.split("/")[1])
def test_walkthrough_then_random_walk_identical(task):
    walkthrough = read_walkthrough(task.game_file)
    stock = _trace(start_stock(task.game_file), (walkthrough, 7), n_random=8)
    fast = _trace(start_fast(task.game_file), (walkthrough, 7), n_random=8)
    assert fast == stock
    assert stock[len(walkthrough)][3] is True  # the walkthrough wins: the comparison covered a win


@pytest.mark.parametrize("task", GAMES[::3], ids=lambda t: t.task_id.split("/")[1])
def test_random_walk_from_start_identical(task):
    # Random walks wander into states the walkthrough never visits (open receptacles, inventory, ...).
    stock = _trace(start_stock(task.game_file), ([], 11), n_random=25)
    fast = _trace(start_fast(task.game_file), ([], 11), n_random=25)
    assert fast == stock


def test_invalid_commands_and_repeated_resets_identical():
    task = GAMES[2]
    commands = ["jump around", "look", "inventory", "", "help", "go to nowhere 1"]
    stock = start_stock(task.game_file)
    fast = start_fast(task.game_file)
    assert _trace(fast, (commands, 0)) == _trace(stock, (commands, 0))
    # A second reset of the same loaded game (served from the cache) starts from the same state.
    assert _trace(fast, (commands, 0)) == _trace(stock, (commands, 0))


def test_engine_leaves_sys_argv_alone():
    argv = list(sys.argv)
    start_fast(GAMES[0].game_file).reset()
    start_stock(GAMES[1].game_file).reset()
    assert sys.argv == argv


def test_translations_on_disk_give_identical_games_and_survive_corruption(tmp_path):
    from sdar_envs.alfworld.engine import GameCache, TranslationCache

    task = GAMES[4]
    walkthrough = read_walkthrough(task.game_file)
    stock = _trace(start_stock(task.game_file), (walkthrough, 3), n_random=5)
    cold = _trace(
        start_fast(task.game_file, cache=GameCache(translations=TranslationCache(tmp_path))), (walkthrough, 3), 5
    )
    files = list(tmp_path.rglob("*.pkl.z"))
    assert len(files) == 1
    warm = _trace(
        start_fast(task.game_file, cache=GameCache(translations=TranslationCache(tmp_path))), (walkthrough, 3), 5
    )
    files[0].write_bytes(b"not a translation")  # a truncated or hand-broken cache entry
    broken = _trace(
        start_fast(task.game_file, cache=GameCache(translations=TranslationCache(tmp_path))), (walkthrough, 3), 5
    )
    assert cold == warm == broken == stock
    assert files[0].read_bytes() != b"not a translation"  # rewritten
