"""CUDA graphs of the training step (hearproto.training.graphs), checked on the CPU with a
stand-in that records ATen operations and replays them on the same tensors
(graph_emulation.ReplayedOps): a replayed run must give exactly the numbers of an eager one.
One thread, so that eager runs are themselves bit for bit repeatable."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from conftest import write_tones
from graph_emulation import ReplayedOps
from hearproto.frontend import PRESETS
from hearproto.kernels import use_backend
from hearproto.model import TRANSFORMATIONS, PrototypeModel
from hearproto.training import TrainConfig, Trainer, train
from hearproto.training.graphs import (CudaGraph, GraphedStep, float_learning_rates,
                                       set_learning_rate, use_tensor_learning_rates)
from hearproto.training.losses import loss_from_errors


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _regression(tensor_lr: bool):
    """A linear model, its fused AdamW and a step; the learning rate falls every step."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(3, 3))
    optimizer = torch.optim.AdamW([weight], lr=0.1, fused=True)
    if tensor_lr:
        use_tensor_learning_rates(optimizer, torch.device("cpu"))

    def step(x, y, key):
        loss = ((x @ weight - y) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()
    return weight, optimizer, step


def _batches(n: int, rows: int = 4):
    generator = torch.Generator().manual_seed(1)
    return [(torch.rand(rows, 3, generator=generator), torch.rand(rows, 3, generator=generator))
            for _ in range(n)]


def _fit(graph_type, tensor_lr: bool, batches) -> tuple[list[float], torch.Tensor, GraphedStep]:
    weight, optimizer, step = _regression(tensor_lr)
    graphed = GraphedStep(step, "cpu", graph_type=graph_type)
    losses = []
    for i, (x, y) in enumerate(batches):
        set_learning_rate(optimizer.param_groups[0], 0.1 / (1 + i))
        losses.append(float(graphed(x, y, "k")))
    return losses, weight.detach().clone(), graphed


def test_a_replayed_step_equals_the_eager_step(one_thread):
    batches = _batches(7)
    eager = _fit(None, True, batches)
    replayed = _fit(ReplayedOps, True, batches)
    assert replayed[2].replays == 5  # two eager steps, then one recording replayed five times
    assert replayed[0] == eager[0]
    assert torch.equal(replayed[1], eager[1])


def test_the_stand_in_catches_a_learning_rate_baked_in_as_a_number(one_thread):
    """A float learning rate is frozen into a recording: the emulation must show it, as a
    CUDA graph would (else the test above could not fail)."""
    batches = _batches(7)
    eager = _fit(None, False, batches)
    replayed = _fit(ReplayedOps, False, batches)
    assert replayed[2].replays == 5
    assert not torch.equal(replayed[1], eager[1])


def test_keys_and_shapes_record_their_own_graphs(one_thread):
    _, _, step = _regression(True)
    graphed = GraphedStep(step, "cpu", warmup=1, graph_type=ReplayedOps)
    for (x, y), key in zip(_batches(4), ["a", "a", "b", "b"]):
        graphed(x, y, key)
    assert graphed.replays == 2  # a: eager, recorded; b: eager, recorded
    x, y = _batches(1, rows=2)[0]
    graphed(x, y, "a")  # new shapes: eager first
    assert graphed.replays == 2
    graphed.reset()
    graphed(*_batches(1)[0], "a")
    assert graphed.replays == 2


def test_a_step_that_reads_back_to_the_host_falls_back_to_eager(one_thread):
    weight, optimizer, step = _regression(True)

    def reading(x, y, key):
        loss = step(x, y, key)
        float(loss)  # .item(): on a GPU this waits for the device
        return loss

    graphed = GraphedStep(reading, "cpu", warmup=1, graph_type=ReplayedOps)
    batches = _batches(4)
    with pytest.warns(RuntimeWarning, match="CUDA graph failed .*reads a value back"):
        losses = [float(graphed(x, y)) for x, y in batches]
    assert graphed.failed and not graphed.enabled and graphed.replays == 0
    eager_weight, _, eager_step = _regression(True)
    assert losses == [float(eager_step(x, y, None)) for x, y in batches]
    assert torch.equal(weight, eager_weight)  # the failed recording left no trace


def test_cuda_graphs_on_the_cpu_train_eagerly_and_say_so(tmp_path, data_home):
    root = write_tones(tmp_path / "tones")
    config = TrainConfig(dataset="folder", root=str(root), out=str(tmp_path / "run"),
                         preset="speakers", cuda_graphs=True, device="cpu")
    with pytest.warns(RuntimeWarning, match="CUDA graphs need a CUDA device; on cpu every "
                      "step runs eagerly"):
        trainer = Trainer(config, progress=False)
    assert not trainer._graphed.enabled


def test_graphs_need_cuda_or_a_stand_in():
    graphed = GraphedStep(lambda x, y, key: x.sum(), "cpu", graph_type=CudaGraph)
    assert not graphed.enabled  # CUDA graphs on the CPU: eager
    with pytest.raises(ValueError, match="warmup"):
        GraphedStep(lambda x, y, key: x.sum(), "cpu", warmup=0)


def test_checkpoints_hold_numbers_not_tensors():
    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([weight], lr=0.1, fused=True)
    assert use_tensor_learning_rates(optimizer, torch.device("cpu"))
    assert not use_tensor_learning_rates(optimizer, torch.device("cpu"))  # kept
    set_learning_rate(optimizer.param_groups[0], 0.25)
    saved = float_learning_rates(optimizer.state_dict())
    assert saved["param_groups"][0]["lr"] == 0.25 and not saved["param_groups"][0]["capturable"]
    assert torch.is_tensor(optimizer.param_groups[0]["lr"])  # the optimiser's own: untouched


def test_the_model_reads_its_active_set_from_the_device_once(monkeypatch):
    """``model.active`` is read every forward; on a GPU ``tolist`` would wait for the device
    each step. It reads the mask again only after the mask changed."""
    model = PrototypeModel(3, PRESETS["instruments"])
    model.activate("gain")
    reads = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append(1) or tolist(self))
    for _ in range(3):
        assert model.active == {"gain"}
    assert not reads
    model.active_mask[2] = True  # written in place (as load_state_dict does)
    assert model.active == {"gain", "filters"} and len(reads) == 1
    model.load_state_dict(PrototypeModel(3, PRESETS["instruments"]).state_dict())
    assert model.active == set()


def test_the_benchmark_step_records_and_replays(one_thread):
    """The bench's step (every transformation, cross-entropy, fused AdamW) replays exactly."""
    def run(graph_type):
        torch.manual_seed(0)
        model = PrototypeModel(4, PRESETS["instruments"])
        for name in TRANSFORMATIONS:
            model.activate(name)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)

        def step(x, y, key):
            errors = model.errors(x, 2)[0]
            loss = loss_from_errors(errors, y, "supervised", model.beta, 0.01, True)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return loss.detach()
        graphed = GraphedStep(step, "cpu", graph_type=graph_type)
        generator = torch.Generator().manual_seed(1)
        with use_backend("torch"):  # ATen operations, which the stand-in sees
            losses = [float(graphed(torch.rand(2, 32, 128, generator=generator),
                                    torch.randint(4, (2,), generator=generator)))
                      for _ in range(4)]
        return losses, model.state_dict(), graphed.replays

    eager, replayed = run(None), run(ReplayedOps)
    assert replayed[2] == 2 and replayed[0] == eager[0]
    for name, value in eager[1].items():
        assert torch.equal(replayed[1][name], value), name


def _metrics(out: Path) -> list[dict]:
    with open(out / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("mode", ["supervised", "unsupervised"])
def test_training_with_graphs_gives_the_eager_numbers(mode, tmp_path, monkeypatch, data_home,
                                                      one_thread):
    """The default recipe (random error phases, warm-ups of the learning rate and of the
    cross-entropy weight, beta calibrated, unsupervised counts and reassignment) trained
    with every step replayed from a recording gives the eager run's losses and weights."""
    root = write_tones(tmp_path / "tones")
    values = dict(dataset="folder", root=str(root), mode=mode, epochs=8, preset="speakers",
                  compile=False, batch_size=2, lr=3e-3, k_chunk=2, seed=0, eval_batch_size=16,
                  threads=1, stage_steps=8, ce_stage_steps=16, val_every=2, error_stride=2,
                  prototypes=None if mode == "supervised" else 3, device="cpu")
    recorded = []
    monkeypatch.setattr(Trainer, "graph_type", ReplayedOps)
    monkeypatch.setattr(GraphedStep, "_record", _counting(GraphedStep._record, recorded))
    with use_backend("torch"):
        train(TrainConfig.from_recipe("default", out=str(tmp_path / "eager"), **values),
              progress=False)
        assert not recorded
        train(TrainConfig.from_recipe("default", out=str(tmp_path / "graphs"),
                                      cuda_graphs=True, **values), progress=False)
    assert len(recorded) >= 6  # every stage after the raw one, both error phases
    eager, graphs = _metrics(tmp_path / "eager"), _metrics(tmp_path / "graphs")
    columns = ["train_loss", "val_OA", "val_L_rec", "lr", "reassigned", "beta"]
    assert [[r[c] for c in columns] for r in graphs] == [[r[c] for c in columns] for r in eager]
    a = torch.load(tmp_path / "eager" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "graphs" / "last.pt", weights_only=True)
    for name, value in a["model"].items():
        assert torch.equal(b["model"][name], value), name
    assert b["optimizer"]["param_groups"] == a["optimizer"]["param_groups"]


def _counting(record, calls: list):
    def counted(self, *args):
        calls.append(1)
        return record(self, *args)
    return counted


def test_cuda_graphs_share_the_first_graphs_memory_pool(monkeypatch):
    """Every graph of a GraphedStep after the first records into the first one's pool (the
    pool is known only once the first has recorded). torch.cuda's graph API is faked here."""
    from contextlib import contextmanager

    class FakeCUDAGraph:
        made = 0

        def __init__(self):
            FakeCUDAGraph.made += 1
            self.id, self.memory = FakeCUDAGraph.made, None

        def pool(self):
            return self.memory

        def replay(self):
            pass

    @contextmanager
    def recording(graph, pool=None):
        graph.memory = pool if pool is not None else ("pool", graph.id)
        yield

    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeCUDAGraph)
    monkeypatch.setattr(torch.cuda, "graph", recording)
    first = CudaGraph()
    with first.capture():
        pass
    second = CudaGraph(share=first)
    with second.capture():
        pass
    assert first.pool == second.pool == ("pool", 1)


def test_the_baselines_steps_read_nothing_back_to_the_host():
    """A training step of each baseline (loss, backward, clipping, AdamW), recorded by the
    stand-in, which refuses any read back to the host (on a GPU, a wait every step)."""
    from hearproto.baselines.apnet import APNet
    from hearproto.baselines.autoencoder import ConvAutoencoder
    from hearproto.baselines.direct import DirectClassifier

    torch.manual_seed(0)
    x, y = torch.rand(4, 32, 32), torch.tensor([0, 1, 2, 0])
    for model in (DirectClassifier(3, n_mels=32), ConvAutoencoder(n_mels=32),
                  APNet(3, n_mels=32, frames=32)):
        optimizer = torch.optim.AdamW(model.parameters(), fused=True)
        graph = ReplayedOps()
        with graph.capture():
            loss, parts = model.loss(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        assert graph.ops and all(torch.is_tensor(v) for v in parts.values())


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_the_benchmark_step_replays_on_a_gpu():
    from hearproto.bench import bench_step

    eager = bench_step("sol", batch_size=8, device="cuda", repeats=3)
    graphed = bench_step("sol", batch_size=8, device="cuda", repeats=3, graphs=True)
    assert graphed["graphs"] and graphed["clips_per_second"] > 0
    assert graphed["peak_memory_gb"] < 4 * eager["peak_memory_gb"]


@needs_cuda
def test_training_with_cuda_graphs_follows_eager_training(tmp_path, data_home):
    """On a GPU the recorded steps compute what eager ones do, up to float32 rounding (the
    learning rate a recorded AdamW reads is a float32 tensor) and the atomic adds' order."""
    root = write_tones(tmp_path / "tones")
    values = dict(dataset="folder", root=str(root), mode="supervised", epochs=4,
                  preset="speakers", batch_size=2, lr=3e-3, seed=0, stage_steps=8,
                  error_stride=2, device="cuda")
    runs = {}
    for graphs in (False, True):
        out = tmp_path / f"graphs-{graphs}"
        trainer = Trainer(TrainConfig.from_recipe("default", out=str(out), cuda_graphs=graphs,
                                                  **values), progress=False)
        trainer.fit()
        runs[graphs] = ([float(r["train_loss"]) for r in _metrics(out)], trainer._graphed)
    assert runs[True][1].replays > 0 and runs[True][1].failed is None
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-3)
