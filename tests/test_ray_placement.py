"""Where the Ray engine's model actors and I/O tasks go (:mod:`ben_cli.engines.ray_placement`): no stage is ever
left without CPUs to run on, whatever node Ray puts each actor on, and after nodes are lost. Pure arithmetic."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ben_cli.engines.ray_placement import IO_CPUS, Node, place

EPS = 1e-6


def _worst_leftover(nodes: list[Node], p) -> float:
    """The least CPU any node keeps when it holds as many of the actors as fit on it."""
    left = []
    for n in nodes:
        held = min(p.workers, math.floor(n.cpus / p.actor_cpus + EPS))
        if p.gpus:
            held = min(held, math.floor(n.gpus / p.gpus + EPS))
        if held:
            left.append(n.cpus - held * p.actor_cpus)
    return min(left, default=math.inf)


def _assert_never_starves(nodes: list[Node], p) -> None:
    assert p.io_cpus in IO_CPUS
    assert _worst_leftover(nodes, p) >= p.io_cpus - EPS, (nodes, p)  # reads and writes fit beside any packing
    assert p.workers * p.actor_cpus + 2 * p.io_cpus <= sum(n.cpus for n in nodes) + EPS, (nodes, p)  # Ray Data's budget


def test_two_one_cpu_nodes_and_two_workers_keep_room_to_read():
    """The issue's hang: each actor took 0.5 of a 1-CPU node and every read asked for a whole CPU."""
    nodes = [Node(1), Node(1)]
    p = place(nodes, 2)
    assert p.workers == 2 and not p.note
    assert p.actor_cpus > 0.5  # one actor per node at most: spread, and each node keeps room
    assert p.io_cpus <= 1 - p.actor_cpus + EPS
    _assert_never_starves(nodes, p)
    assert _worst_leftover(nodes[:1], p) >= p.io_cpus - EPS  # a node lost: the one left still reads
    one = place(nodes, 1)  # the default: one worker
    _assert_never_starves(nodes, one)
    assert _worst_leftover(nodes[:1], one) >= one.io_cpus - EPS


def test_big_cpu_nodes_read_with_whole_cpus_and_give_the_model_the_rest():
    p = place([Node(16)], 1)
    assert p.io_cpus == 1.0 and 13 <= p.actor_cpus <= 15


def test_gpu_actors_take_one_cpu_and_reads_whole_ones():
    nodes = [Node(4), Node(8, 1), Node(8, 1)]
    p = place(nodes, 2, gpus=1)
    assert (p.workers, p.actor_cpus, p.io_cpus, p.gpus) == (2, 1.0, 1.0, 1)
    dense = place([Node(8, 8)], 8, gpus=1)  # eight actors on one node of eight cores: half a CPU each
    _assert_never_starves([Node(8, 8)], dense)
    assert dense.workers == 8 and dense.actor_cpus < 1


def test_gpus_not_up_yet_keep_the_defaults():
    """A joined cluster whose autoscaler adds GPU nodes: nothing to plan with yet, Ray waits for them."""
    p = place([Node(2)], 3, gpus=1)
    assert (p.workers, p.actor_cpus, p.io_cpus) == (3, 1.0, 1.0)


def test_more_workers_than_fit_run_as_many_as_fit_and_say_so():
    p = place([Node(1), Node(1)], 40)
    assert 1 <= p.workers < 40
    assert "40 model workers do not fit" in p.note and f"running {p.workers}" in p.note and "2 x 1 CPU" in p.note
    _assert_never_starves([Node(1), Node(1)], p)


def test_bad_arguments():
    with pytest.raises(ValueError, match="workers"):
        place([Node(2)], 0)
    with pytest.raises(ValueError, match="no model worker fits"):
        place([Node(0.05)], 1)


@settings(max_examples=150, deadline=None)
@given(cpus=st.lists(st.sampled_from([0.5, 1, 1, 2, 3, 4, 8, 16]), min_size=1, max_size=6),
       gpus=st.lists(st.sampled_from([0, 0, 1, 2, 4]), min_size=6, max_size=6),
       workers=st.integers(1, 10), per_worker=st.sampled_from([0, 0, 0.5, 1]))
def test_no_layout_starves_a_stage(cpus, gpus, workers, per_worker):
    nodes = [Node(c, g if per_worker else 0) for c, g in zip(cpus, gpus)]
    try:
        p = place(nodes, workers, per_worker)
    except ValueError:  # only when not even one actor fits beside the I/O
        assert sum(cpus) < 0.5
        return
    if per_worker and not any(n.gpus >= per_worker for n in nodes):
        return  # GPU nodes not up: Ray waits for them (said by the engine)
    assert 1 <= p.workers <= workers
    _assert_never_starves(nodes, p)
    for lost in range(len(nodes)):  # any node lost: each one left that holds actors still keeps room
        rest = nodes[:lost] + nodes[lost + 1 :]
        if rest:
            assert _worst_leftover(rest, p) >= p.io_cpus - EPS
