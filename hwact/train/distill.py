"""Knowledge distillation of a swapped student from its frozen original (teacher), and the training loop.

Loss on a batch (s = student logits, t = teacher logits, T = temperature):

    L = w_kd · T² · KL( softmax(t/T) ‖ softmax(s/T) )          (Hinton, Vinyals & Dean 2015; T = 4)
      + w_ce · CE(s, y)                                       (only when labels exist and w_ce > 0)
      + w_feat · mean_b MSE(f_b^student, f_b^teacher)          (per-block features, optional)

KL is averaged over the batch ("batchmean"); the T² factor keeps the soft-target gradients at the same
scale as the hard-label ones when T changes. f_b is the output of block/stage b (the last node the
block produces, read through `tap` nodes added to a training copy of the graph; the parameters are
shared with the student, so training the copy trains the student).

The loop: AdamW at a constant learning rate with a linear warm-up over the first epoch, shuffled
mini-batches from a seeded generator (seed, round, epoch), one validation pass per epoch, the best
validation weights kept, early stop after `patience` epochs without improvement, a checkpoint per
epoch (model, optimizer, best weights, history) written atomically for `--resume`.
Validation metric: top-1 accuracy on labels when the data has labels, otherwise top-1 agreement with
the teacher.

Distributed: under `torchrun --nproc-per-node N` (WORLD_SIZE > 1) the student is wrapped in
DistributedDataParallel (gloo on CPU, nccl on GPU); every rank reads the same seeded permutation and
takes every N-th batch slot, so ranks see disjoint equal-sized shards; gradients are averaged by DDP,
so all ranks hold identical weights after every step. Every rank validates on the full validation set
(identical results, hence identical early-stop decisions); only rank 0 writes files.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.fx
import torch.nn.functional as F

from hwact.errors import InputError
from hwact.ir.graph import Graph, module_path
from hwact.train.data import Dataset
from hwact.train import guard

DEFAULT_TEMPERATURE = 4.0
DIVERGED_HINT = "lower --lr (and check --temperature and the loss weights)"


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    temperature: float = DEFAULT_TEMPERATURE
    kd_weight: float = 1.0
    ce_weight: float = 0.0          # used only when the data has labels
    feature_weight: float = 0.0     # per-block feature MSE (needs a teacher)
    patience: int = 3               # epochs without validation improvement before stopping; 0 = never stop early
    seed: int = 0
    progress: bool = True

    def describe(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "progress"}


# ------------------------------------------------------------------------------------------- the loss
def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(t/T) ‖ softmax(s/T)), averaged over the batch."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * temperature ** 2


def feature_loss(student_features: list[torch.Tensor], teacher_features: list[torch.Tensor]) -> torch.Tensor:
    """Mean over blocks of the mean squared error between student and teacher block outputs."""
    losses = [F.mse_loss(s, t) for s, t in zip(student_features, teacher_features)]
    return torch.stack(losses).mean()


# ---------------------------------------------------------------------------------- feature taps
_TAPPED: list[torch.Tensor] = []


def tap(x: torch.Tensor) -> torch.Tensor:
    """Identity that records `x` (used inside training copies of graphs to read block outputs)."""
    _TAPPED.append(x)
    return x


torch.fx.wrap("tap")


def block_output_nodes(graph: Graph, prefixes: list[str]) -> list[str]:
    """Name of the last tensor node produced inside each module prefix (e.g. 'blocks.0'), in order."""
    names = []
    for prefix in prefixes:
        last = None
        for node in graph.call_nodes():
            path = module_path(node)
            if (path == prefix or path.startswith(prefix + ".")) and isinstance(node.meta.get("val"), torch.Tensor):
                last = node.name
        if last is not None:
            names.append(last)
    return names


def tapped_module(graph: Graph, node_names: list[str]) -> torch.fx.GraphModule:
    """A GraphModule sharing `graph`'s parameters whose forward also records the named nodes via `tap`."""
    new_graph = torch.fx.Graph()
    env: dict = {}
    output_node = None
    for node in graph.fx.nodes:
        if node.op == "output":
            output_node = node
            continue
        env[node] = new_graph.node_copy(node, lambda n: env[n])
        if node.name in node_names:
            env[node] = new_graph.call_function(tap, (env[node],))
    new_graph.output(torch.fx.map_arg(output_node.args[0], lambda n: env[n]))
    new_graph._codegen = graph.fx._codegen
    return torch.fx.GraphModule(graph.module, new_graph)


def run_tapped(module, args) -> tuple[torch.Tensor, list[torch.Tensor]]:
    _TAPPED.clear()
    logits = first_output(module(*args))
    features = list(_TAPPED)
    _TAPPED.clear()
    return logits, features


def first_output(out) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


# ----------------------------------------------------------------------------------- distributed
@dataclass
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def gather(self, obj) -> list:
        if not self.distributed:
            return [obj]
        out = [None] * self.size
        torch.distributed.all_gather_object(out, obj)
        return out


def init_world() -> World:
    """The torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on GPU), else a single process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise InputError(f"torchrun local rank {local}, but this machine has {torch.cuda.device_count()} "
                             "CUDA device(s)", hint="use --nproc-per-node <= the number of GPUs, or "
                                                    "CUDA_VISIBLE_DEVICES='' for gloo on the CPU")
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return World(rank, size, device)


# -------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def predict(module, x: torch.Tensor, batch_size: int = 256, device=None) -> torch.Tensor:
    outs = []
    for start in range(0, x.shape[0], batch_size):
        batch = x[start:start + batch_size]
        if device is not None:
            batch = batch.to(device)
        outs.append(first_output(module(batch)).float().cpu())
    return torch.cat(outs)


def evaluate(module, data: Dataset, teacher_classes: torch.Tensor | None, device=None) -> dict:
    """Top-1 accuracy on labels (when present) and top-1 agreement with the teacher (when given)."""
    classes = predict(module, data.x, device=device).argmax(dim=1)
    result = {"accuracy": None, "teacher_agreement": None}
    if data.y is not None:
        result["accuracy"] = (classes == data.y).double().mean().item()
    if teacher_classes is not None:
        result["teacher_agreement"] = (classes == teacher_classes).double().mean().item()
    return result


def check_classifier(graph: Graph, data: Dataset, need_classes: bool, what: str) -> int | None:
    """The model's class count when its first output is (N, C) logits; InputError when CE needs it and it is not."""
    out = first_output(graph(data.x[:2]))
    if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] > 1 and out.dtype.is_floating_point:
        return int(out.shape[1])
    if need_classes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"{what}: the model has no classification output (first output {shape}, expected "
                         "(N, classes) logits), so labels / cross-entropy cannot be used",
                         hint="drop the labels (pure distillation) or --ce-weight 0")
    return None


# -------------------------------------------------------------------------------------- the loop
def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _shard(count: int, batch_size: int, world: World, generator: torch.Generator) -> list[torch.Tensor]:
    """This rank's mini-batches of one epoch: a seeded permutation cut into world·k equal batches."""
    order = torch.randperm(count, generator=generator)
    per_rank = count // world.size
    order = order[:per_rank * world.size]
    mine = order[world.rank::world.size]
    return [mine[s:s + batch_size] for s in range(0, per_rank, batch_size)]


def _ddp_batches_equal(batches: list[torch.Tensor], world: World) -> list[torch.Tensor]:
    sizes = world.gather(len(batches))
    return batches[:min(sizes)]


def train(student: Graph, teacher: Graph | None, train_data: Dataset, val_data: Dataset, config: TrainConfig,
          world: World | None = None, log=print, tag: str = "train", round_index: int = 0,
          feature_prefixes: list[str] | None = None, checkpoint: Path | None = None, resume_state: dict | None = None,
          on_epoch=None) -> dict:
    """Train `student.module` in place (distillation from `teacher`, or plain CE when teacher is None).

    Returns {"epochs_run", "best_epoch", "best_metric", "metric", "stopped_early", "seconds", "history"}.
    `on_epoch(state)` is called after every epoch with a resumable state dict (the caller saves it).
    """
    world = world or World()
    labeled = train_data.y is not None
    use_ce = labeled and (config.ce_weight > 0 or teacher is None)
    if teacher is None and not labeled:
        raise InputError(f"{train_data.name}: training without a teacher needs labels")
    device = world.device
    module = student.module.to(device)
    taps_student = taps_teacher = None
    if teacher is not None and config.feature_weight > 0 and feature_prefixes:
        names_s = block_output_nodes(student, feature_prefixes)
        names_t = block_output_nodes(teacher, feature_prefixes)
        if len(names_s) == len(names_t) and names_s:
            taps_student, taps_teacher = tapped_module(student, names_s), tapped_module(teacher, names_t)
    train_module = taps_student if taps_student is not None else module
    teacher_module = None
    if teacher is not None:
        teacher_module = (taps_teacher if taps_teacher is not None else teacher.module).to(device)
        for p in teacher_module.parameters():
            p.requires_grad_(False)
    for p in module.parameters():
        p.requires_grad_(True)
    model = train_module
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(train_module, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    val_teacher = predict(teacher.module, val_data.x, device=device).argmax(1) if teacher is not None else None
    metric_name = "accuracy" if val_data.y is not None else "teacher_agreement"

    state = {"epoch": 0, "best_metric": -math.inf, "best_epoch": 0, "bad_epochs": 0, "history": [],
             "best_state": None}
    if resume_state is not None:
        module.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        state.update({k: resume_state[k] for k in ("epoch", "best_metric", "best_epoch", "bad_epochs", "history",
                                                    "best_state")})
        log(f"  {tag}: resumed after epoch {state['epoch']}")
    steps_per_epoch = max(1, len(train_data) // world.size // config.batch_size)
    warmup = steps_per_epoch
    start = time.perf_counter()
    stopped_early = False
    for epoch in range(state["epoch"] + 1, config.epochs + 1):
        if state["bad_epochs"] >= config.patience > 0:
            stopped_early = True
            break
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + round_index * 1009 + epoch)
        batches = _ddp_batches_equal(_shard(len(train_data), config.batch_size, world, generator), world)
        bar = _progress(batches, config.progress and world.main, f"{tag} epoch {epoch}/{config.epochs}")
        seen = correct = 0
        loss_sum = 0.0
        for step, index in enumerate(bar):
            global_step = (epoch - 1) * steps_per_epoch + step
            for group in optimizer.param_groups:
                group["lr"] = config.lr * min(1.0, (global_step + 1) / warmup)
            x = train_data.x[index].to(device)
            if taps_student is not None:
                logits, feats = run_tapped(model, (x,))
            else:
                logits, feats = first_output(model(x)), []
            loss = logits.new_zeros(())
            if teacher_module is not None:
                with torch.no_grad():
                    if taps_teacher is not None:
                        t_logits, t_feats = run_tapped(teacher_module, (x,))
                    else:
                        t_logits, t_feats = first_output(teacher_module(x)), []
                loss = loss + config.kd_weight * kd_loss(logits, t_logits, config.temperature)
                if feats:
                    loss = loss + config.feature_weight * feature_loss(feats, t_feats)
            if labeled:
                y = train_data.y[index].to(device)
                correct += int((logits.argmax(1) == y).sum())
                if use_ce:
                    loss = loss + (config.ce_weight if teacher is not None else 1.0) * F.cross_entropy(logits, y)
            value = float(loss.detach())
            guard.check_loss(value, epoch, step + 1, DIVERGED_HINT)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            guard.step(optimizer, epoch, step + 1, DIVERGED_HINT)
            seen += len(index)
            loss_sum += value * len(index)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}" if labeled else "-")
        guard.check_weights(module, epoch, DIVERGED_HINT)
        val = evaluate(module, val_data, val_teacher, device)
        metric = val[metric_name]
        record = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1),
                  "train_accuracy": correct / seen if labeled and seen else None,
                  "val_accuracy": val["accuracy"], "val_teacher_agreement": val["teacher_agreement"]}
        state["history"].append(record)
        improved = metric > state["best_metric"]
        if improved:
            state.update(best_metric=metric, best_epoch=epoch, bad_epochs=0,
                         best_state={k: v.detach().cpu().clone() for k, v in module.state_dict().items()})
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        if world.main:
            log(f"  {tag} epoch {epoch}: loss {record['train_loss']:.4f}  val {metric_name} {metric:.4f}"
                + ("  (best)" if improved else ""))
        if on_epoch is not None:
            on_epoch({**state, "model": module.state_dict(), "optimizer": optimizer.state_dict()})
    else:
        stopped_early = state["bad_epochs"] >= config.patience > 0 and state["epoch"] < config.epochs
    if state["best_state"] is not None:
        module.load_state_dict(state["best_state"])
    module.to("cpu")
    for p in module.parameters():
        p.requires_grad_(False)
    return {"epochs_run": state["epoch"], "best_epoch": state["best_epoch"], "metric": metric_name,
            "best_metric": state["best_metric"] if state["best_state"] is not None else None,
            "stopped_early": stopped_early, "seconds": round(time.perf_counter() - start, 3),
            "history": state["history"]}


def _progress(batches, enabled: bool, description: str):
    if not enabled:
        return batches
    from tqdm import tqdm

    return tqdm(batches, desc=description, leave=False, dynamic_ncols=True, mininterval=0.5)


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over the module's parameters and buffers (name order), to compare ranks."""
    import hashlib

    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
