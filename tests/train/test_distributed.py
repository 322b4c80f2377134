"""The torchrun room without processes: the world from the environment, the global batch, derived seeds, the
sync_bn setting; and that a single process (no torchrun environment) takes none of the distributed paths."""

import pytest
import torch

from featdistill.config import Recipe, Train
from featdistill.errors import FeatdistillError
from featdistill.recipe import Model, apply_overrides, dumps
from featdistill.train import distributed
from featdistill.train.distributed import World, average, from_env, per_rank_batch, seed_rank


def test_the_world_comes_from_torchruns_environment():
    assert from_env({}) == World() and not World().distributed and World().main and World().tag() == ""
    world = from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (world.rank, world.size, world.local_rank, world.main) == (3, 4, 1, False)
    assert world.tag() == " (rank 3 of 4)"
    with pytest.raises(FeatdistillError, match="RANK < WORLD_SIZE"):
        from_env({"RANK": "4", "WORLD_SIZE": "4"})


def test_batch_size_is_the_global_batch():
    assert per_rank_batch(64, World(0, 4)) == 16 and per_rank_batch(7, World()) == 7
    with pytest.raises(FeatdistillError, match=r"global batch .* --set train.batch_size=66 or 64"):
        per_rank_batch(65, World(1, 2))


def test_each_rank_draws_its_own_stream_and_rank_0_the_single_process_one():
    draws = []
    for rank in (0, 1, 2):
        torch.manual_seed(5)
        seed_rank(5, World(rank, 3))
        draws.append(torch.rand(3))
    torch.manual_seed(5)
    assert torch.equal(draws[0], torch.rand(3))
    assert not torch.equal(draws[1], draws[2]) and not torch.equal(draws[0], draws[1])


def test_a_single_process_takes_no_distributed_path():
    assert distributed.current() == World() and distributed.shutdown(2) == 2  # no process group: nothing to leave
    values, stop = average(torch.tensor([1.0, 2.0]), None, World())
    assert values == [1.0, 2.0] and stop is None
    assert distributed.share("x") == "x"


def test_sync_bn_is_checked_and_left_out_of_saved_recipes_while_false():
    assert any("sync_bn must be True or False" in p for p in Train(sync_bn="yes").problems())
    recipe = Recipe(teacher=Model("resnet18"), student=Model("resnet18"))
    assert "sync_bn" not in dumps(recipe)  # runs and cached teachers made before the field still match
    assert '"sync_bn": true' in dumps(apply_overrides(recipe, ["train.sync_bn=True"]))


def _average_worker(rank: int, init_file: str, signals: list, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        values, stop = average(torch.tensor([float(rank), 10.0]), signals[rank], World(rank=rank, size=2))
        torch.save({"values": values, "stop": stop}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("signals, agreed", [([None, None], [None, None]), ([2, None], [2, 2]),
                                             ([None, 15], [15, 15]), ([2, 2], [2, 2])])
def test_two_ranks_average_their_terms_and_stop_on_the_same_signal(tmp_path, signals, agreed):
    """A signal seen by one rank stops both, with that signal's number (130 vs 143 must not differ by rank)."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "avg")
    mp.spawn(_average_worker, args=(str(tmp_path / "init"), signals, out), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(f"{out}.{rank}", weights_only=True)
        assert got["values"] == [0.5, 10.0] and got["stop"] == agreed[rank]
