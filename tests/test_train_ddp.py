"""Two processes under torchrun (gloo, CPU): sharded data, identical weights after every step, one writer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from ben_cli.train.data import write_synthetic_pairs

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    from ben_cli.train.base import train_base
    from ben_cli.train.config import TrainConfig

    data, out, dumps = sys.argv[1:4]
    rank = os.environ["RANK"]
    seen = []

    def hook(step, model, row):
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, f"{dumps}/rank{rank}.step{step}.pt")

    import ben_cli.train.data as data_mod
    getitem = data_mod.PairDataset.__getitem__

    def recording(self, key):  # which samples this rank draws (workers=0: same process)
        seen.append([int(key[0]), int(key[1])])
        return getitem(self, key)

    data_mod.PairDataset.__getitem__ = recording
    cfg = TrainConfig(model="tiny", data=data, out=out, max_steps=2, resolution=256, batch_size=1, grad_accum=2,
                      device="cpu", seed=0, workers=0)
    train_base(cfg, on_step=hook, say=lambda m: None)
    with open(f"{dumps}/rank{rank}.draws.json", "w") as f:
        json.dump(seen, f)
''')


def test_two_ranks_hold_identical_weights_after_each_step(tmp_path):
    data = write_synthetic_pairs(tmp_path / "data", n=8, size=(260, 270), seed=3)
    script, dumps, run = tmp_path / "ddp_train.py", tmp_path / "dumps", tmp_path / "run"
    script.write_text(SCRIPT)
    dumps.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(script), str(data), str(run), str(dumps)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]

    before = None
    for step in (1, 2):
        w0 = torch.load(dumps / f"rank0.step{step}.pt", weights_only=True)
        w1 = torch.load(dumps / f"rank1.step{step}.pt", weights_only=True)
        for k in w0:
            assert torch.equal(w0[k], w1[k]), (step, k)
        if before is not None:
            assert any(not torch.equal(before[k], w0[k]) for k in w0)  # the step changed the weights
        before = w0

    d0 = json.loads((dumps / "rank0.draws.json").read_text())
    d1 = json.loads((dumps / "rank1.draws.json").read_text())
    assert [d for _, d in d0] == [0, 2, 4, 6] and [d for _, d in d1] == [1, 3, 5, 7]  # interleaved shards
    from ben_cli.train.data import epoch_permutation

    perm = list(epoch_permutation(8, 0, 0))
    assert sorted(i for i, _ in d0 + d1) == sorted(perm) and [i for i, _ in d0] == perm[0::2]

    lines = (run / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]  # rank 0 alone writes
    from ben_cli.checkpoints.load import read_checkpoint

    last = read_checkpoint(run / "last.safetensors")
    for k, v in last.state_dict.items():
        assert torch.equal(v, before[k]), k
    state = torch.load(run / "last.state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["samples_seen"] == 2 * 2 * 2


