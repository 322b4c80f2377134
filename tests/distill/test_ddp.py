"""Two CPU processes (gloo): DDP keeps student and adapter weights identical across ranks."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from featdistill import Distiller, Pair


def tiny_cnn(width):
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(width * 16, 5))


def worker(rank, world_size, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(100 + rank)  # different init per rank: DDP must broadcast rank 0's weights
    teacher, student = tiny_cnn(16), tiny_cnn(8)
    x = torch.randn(4, 3, 8, 8)
    distiller = Distiller(teacher, student, [Pair("0", "0"), Pair("2", "2", loss="cosine")], sample_input=x[:2])
    model = DDP(distiller)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        y = torch.randint(0, 5, (4,))
        loss = model(torch.randn(4, 3, 8, 8), y)["loss"]  # different data on each rank
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = {k: v.detach().clone() for k, v in distiller.state_dict().items() if "running" not in k}
    torch.save(state, os.path.join(out_dir, f"rank{rank}.pt"))
    distiller.close()
    dist.destroy_process_group()


def test_ddp_syncs_student_and_adapters(tmp_path):
    mp.spawn(worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert any(k.startswith("adapters.") for k in a) and any(k.startswith("student.") for k in a)
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
