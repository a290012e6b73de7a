"""Plain-PyTorch references for benchmarks/speed.py: each algorithm's training step and
evaluation written the way a practitioner writes them without a framework.

Every reference draws its tasks the plain way (random classes, random images per class,
``torch.rot90``, one task at a time), builds its own network with the same layers as metactl's,
and starts from metactl's weights, so that :meth:`Reference.loss` can be checked against
metactl's loss on the same batch. For Meta-Learner LSTM, MANN and MetaNet the network and its
adaptation are metactl's own modules driven by a plain loop: those references measure the
engine's overhead, not the networks'.

Shapes: ``way`` classes, ``S`` support and ``Q`` query images of (1, H, W).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as functional
from torch import Tensor, nn
from torch.func import functional_call

from metactl.data.episodes import EpisodeSet, SplitData


class PlainTasks:
    """Draws one task at a time: ``way`` random classes, ``shot + query`` random images of each,
    rotated with ``torch.rot90`` and made float in [0, 1] on the split's device."""

    def __init__(self, split: SplitData, way: int, shot: int, query: int) -> None:
        self.split, self.way, self.shot, self.query = split, way, shot, query
        self.offsets = split.offsets.tolist()
        self.turns = len(split.rotations)

    def images_of(self, sampling_class: int, numbers: Tensor) -> Tensor:
        """(n,) image numbers of one class -> float (n, 1, H, W)."""
        stored, turn = divmod(sampling_class, self.turns)
        pixels = self.split.images[(numbers + self.offsets[stored]).to(self.split.images.device)]
        quarter_turns = self.split.rotations[turn] // 90
        return torch.rot90(pixels, quarter_turns, dims=(1, 2)).unsqueeze(1).float() / 255

    def sample(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Support images (way * shot, 1, H, W), labels (way * shot,), queries and labels."""
        classes = torch.randperm(self.split.num_classes)[:self.way].tolist()
        support, queries = [], []
        for sampling_class in classes:
            stored = sampling_class // self.turns
            count = self.offsets[stored + 1] - self.offsets[stored]
            pixels = self.images_of(sampling_class, torch.randperm(count)[:self.shot + self.query])
            support.append(pixels[:self.shot])
            queries.append(pixels[self.shot:])
        return (torch.cat(support), self.labels(self.shot), torch.cat(queries),
                self.labels(self.query))

    def labels(self, per_class: int) -> Tensor:
        return torch.arange(self.way, device=self.split.images.device).repeat_interleave(
            per_class)

    def episode(self, episodes: EpisodeSet, index: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Episode ``index`` of a fixed episode set, gathered the plain way."""
        support, queries = [], []
        for sampling_class, numbers in zip(episodes.classes[index].tolist(),
                                           episodes.images[index], strict=True):
            pixels = self.images_of(sampling_class, numbers)
            support.append(pixels[:self.shot])
            queries.append(pixels[self.shot:])
        return (torch.cat(support), self.labels(self.shot), torch.cat(queries),
                self.labels(self.query))


def copy_weights(source: nn.Module, target: nn.Module) -> nn.Module:
    """Copy parameters and buffers in registration order (the layers must match one to one)."""
    pairs = [*zip(source.parameters(), target.parameters(), strict=True),
             *zip(source.buffers(), target.buffers(), strict=True)]
    with torch.no_grad():
        for mine, theirs in pairs:
            if mine.shape != theirs.shape:
                raise ValueError(f"layer shapes differ: {tuple(mine.shape)} vs "
                                 f"{tuple(theirs.shape)}")
            theirs.copy_(mine)
    return target


def conv_block(inputs: int, outputs: int, padding: int = 1, pool: bool = True, stride: int = 1,
               bias: bool = True, running_stats: bool = True) -> list[nn.Module]:
    layers = [nn.Conv2d(inputs, outputs, 3, stride=stride, padding=padding, bias=bias),
              nn.BatchNorm2d(outputs, track_running_stats=running_stats), nn.ReLU()]
    return layers + [nn.MaxPool2d(2)] if pool else layers


def conv4(hidden: int = 64) -> nn.Sequential:
    return nn.Sequential(*conv_block(1, hidden), *conv_block(hidden, hidden),
                         *conv_block(hidden, hidden), *conv_block(hidden, hidden), nn.Flatten())


class Reference:
    """A plain training step: sample a task (or ``tasks`` of them), loss, backward, step."""

    tasks_per_step = 1

    def __init__(self, tasks: PlainTasks, ours: nn.Module, network: nn.Module, lr: float = 1e-3
                 ) -> None:
        self.tasks = tasks
        self.network = copy_weights(ours, network.to(tasks.split.images.device))
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=lr)

    def loss(self, support: Tensor, support_labels: Tensor, queries: Tensor,
             query_labels: Tensor) -> Tensor:
        raise NotImplementedError

    def step(self) -> int:
        self.network.train()
        self.optimizer.zero_grad()
        self.loss(*self.tasks.sample()).backward()
        self.optimizer.step()
        return self.tasks_per_step

    def predict(self, support: Tensor, support_labels: Tensor, queries: Tensor) -> Tensor:
        """Predicted labels of the queries, (Q,)."""
        raise NotImplementedError

    def evaluate(self, episodes: EpisodeSet, indices: range) -> Tensor:
        """Query accuracy of each episode in ``indices``, (episodes,)."""
        self.network.eval()
        accuracies = []
        for index in indices:
            support, support_labels, queries, query_labels = self.tasks.episode(episodes, index)
            predicted = self.predict(support, support_labels, queries)
            accuracies.append((predicted == query_labels).float().mean())
        return torch.stack(accuracies)


class Prototypical(Reference):
    def __init__(self, tasks: PlainTasks, ours: nn.Module) -> None:
        super().__init__(tasks, ours, conv4())

    def scores(self, support: Tensor, support_labels: Tensor, queries: Tensor) -> Tensor:
        return self.distances(self.network(support), self.network(queries))

    def distances(self, support: Tensor, queries: Tensor) -> Tensor:
        prototypes = support.view(self.tasks.way, -1, 64).mean(1)
        return -(queries.unsqueeze(1) - prototypes).pow(2).sum(-1)

    def loss(self, support, support_labels, queries, query_labels):
        # One forward over both sets in training, as the authors' code does.
        embedded = self.network(torch.cat([support, queries]))
        scores = self.distances(embedded[:len(support)], embedded[len(support):])
        return functional.cross_entropy(scores, query_labels)

    @torch.no_grad()
    def predict(self, support, support_labels, queries):
        return self.scores(support, support_labels, queries).argmax(-1)


class Matching(Reference):
    def __init__(self, tasks: PlainTasks, ours: nn.Module) -> None:
        super().__init__(tasks, ours, conv4())

    def loss(self, support, support_labels, queries, query_labels):
        embedded = functional.normalize(self.network(torch.cat([support, queries])), dim=-1)
        embedded_support, embedded_queries = embedded[:len(support)], embedded[len(support):]
        attention = (embedded_queries @ embedded_support.T).softmax(-1)
        probabilities = attention @ functional.one_hot(support_labels, self.tasks.way).float()
        return functional.nll_loss(probabilities.log(), query_labels)


class Relation(Reference):
    def __init__(self, tasks: PlainTasks, ours: nn.Module) -> None:
        hidden = 64
        embedding = nn.Sequential(*conv_block(1, hidden, padding=0),
                                  *conv_block(hidden, hidden, padding=0),
                                  *conv_block(hidden, hidden, pool=False),
                                  *conv_block(hidden, hidden, pool=False))
        relation = nn.Sequential(*conv_block(2 * hidden, hidden), *conv_block(hidden, hidden),
                                 nn.Flatten(), nn.Linear(hidden, 8), nn.ReLU(), nn.Linear(8, 1),
                                 nn.Sigmoid())
        super().__init__(tasks, ours, nn.ModuleDict({"embedding": embedding,
                                                     "relation": relation}))

    def loss(self, support, support_labels, queries, query_labels):
        way = self.tasks.way
        maps = self.network["embedding"](support)
        classes = maps.view(way, -1, *maps.shape[1:]).sum(1)  # (way, hidden, h, w)
        query_maps = self.network["embedding"](queries)
        count = query_maps.shape[0]
        pairs = torch.cat([classes.unsqueeze(0).expand(count, *classes.shape),
                           query_maps.unsqueeze(1).expand(count, way, *query_maps.shape[1:])],
                          dim=2).flatten(0, 1)
        scores = self.network["relation"](pairs).view(count, way)
        return functional.mse_loss(scores, functional.one_hot(query_labels, way).float())


class Siamese(Reference):
    """Verification training on 64 same-class and 64 different-class pairs drawn one by one."""

    def __init__(self, tasks: PlainTasks, ours: nn.Module, pairs: int = 128) -> None:
        network = nn.ModuleDict({"encoder": conv4(), "embedding": nn.Linear(64, 4096),
                                 "head": nn.Linear(4096, 1)})
        super().__init__(tasks, ours, network)
        self.pairs = pairs

    def loss(self, support, support_labels, queries, query_labels):
        images = torch.cat([support, queries])
        labels = torch.cat([support_labels, query_labels]).tolist()
        embedded = torch.sigmoid(self.network["embedding"](self.network["encoder"](images)))
        by_class: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            by_class.setdefault(label, []).append(index)
        first, second, same = [], [], []
        generator = torch.randint(0, 1 << 30, (self.pairs, 3)).tolist()
        for number, (a, b, c) in enumerate(generator):
            members = by_class[labels[a % len(labels)]]
            if number < self.pairs // 2:  # same class
                i = members[b % len(members)]
                j = members[(members.index(i) + 1 + c % (len(members) - 1)) % len(members)]
            else:
                i = a % len(labels)
                others = [k for k in range(len(labels)) if labels[k] != labels[i]]
                j = others[b % len(others)]
            first.append(i)
            second.append(j)
            same.append(float(number < self.pairs // 2))
        difference = (embedded[first] - embedded[second]).abs()
        logits = self.network["head"](difference).squeeze(-1)
        return functional.binary_cross_entropy_with_logits(
            logits, torch.tensor(same, device=logits.device))


def conv_learner(way: int, hidden: int = 64, downsample: str = "stride",
                 features: int = 4) -> nn.Sequential:
    stride, pool = (2, False) if downsample == "stride" else (1, True)
    layers = []
    for inputs in (1, hidden, hidden, hidden):
        layers += conv_block(inputs, hidden, stride=stride, pool=pool, bias=False,
                             running_stats=False)
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(hidden * features, way))


class MAML(Reference):
    """The usual per-task loop: adapt a copy of the weights with ``torch.autograd.grad``, then
    backpropagate each task's query loss into the initialisation."""

    def __init__(self, tasks: PlainTasks, ours: nn.Module, meta_batch: int, steps: int,
                 test_steps: int, inner_lr: float, first_order: bool) -> None:
        super().__init__(tasks, ours, conv_learner(tasks.way))
        self.tasks_per_step, self.steps, self.test_steps = meta_batch, steps, test_steps
        self.inner_lr, self.first_order = inner_lr, first_order

    def adapt(self, support: Tensor, labels: Tensor, steps: int, create_graph: bool
              ) -> dict[str, Tensor]:
        parameters = dict(self.network.named_parameters())
        for _ in range(steps):
            loss = functional.cross_entropy(functional_call(self.network, parameters, support),
                                            labels)
            gradients = torch.autograd.grad(loss, list(parameters.values()),
                                            create_graph=create_graph)
            parameters = {name: value - self.inner_lr * gradient for (name, value), gradient
                          in zip(parameters.items(), gradients, strict=True)}
        return parameters

    def loss(self, support, support_labels, queries, query_labels):
        adapted = self.adapt(support, support_labels, self.steps, not self.first_order)
        return functional.cross_entropy(functional_call(self.network, adapted, queries),
                                        query_labels)

    def step(self) -> int:
        self.network.train()
        self.optimizer.zero_grad()
        for _ in range(self.tasks_per_step):
            (self.loss(*self.tasks.sample()) / self.tasks_per_step).backward()
        self.optimizer.step()
        return self.tasks_per_step

    def predict(self, support, support_labels, queries):
        adapted = {name: value.detach() for name, value in
                   self.adapt(support, support_labels, self.test_steps, False).items()}
        with torch.no_grad():
            return functional_call(self.network, adapted, queries).argmax(-1)


class Reptile(Reference):
    """Per task: train a copy with Adam (beta1 = 0) on mini-batches of the support set; then an
    SGD step of the initialisation towards the mean of the copies."""

    def __init__(self, tasks: PlainTasks, ours: nn.Module, meta_batch: int, steps: int,
                 batch_size: int, test_steps: int, test_batch_size: int, inner_lr: float
                 ) -> None:
        super().__init__(tasks, ours, conv_learner(tasks.way))
        self.optimizer = torch.optim.SGD(self.network.parameters(), lr=1.0)
        self.tasks_per_step, self.steps, self.batch_size = meta_batch, steps, batch_size
        self.test_steps, self.test_batch_size, self.inner_lr = test_steps, test_batch_size, inner_lr

    def train_copy(self, images: Tensor, labels: Tensor, steps: int, batch_size: int
                   ) -> nn.Module:
        copy_ = copy.deepcopy(self.network)
        inner = torch.optim.Adam(copy_.parameters(), lr=self.inner_lr, betas=(0.0, 0.999))
        order = torch.cat([torch.randperm(len(labels))
                           for _ in range(math.ceil(steps * batch_size / len(labels)))])
        for step in range(steps):
            chosen = order[step * batch_size:(step + 1) * batch_size].to(images.device)
            inner.zero_grad()
            functional.cross_entropy(copy_(images[chosen]), labels[chosen]).backward()
            inner.step()
        return copy_

    def step(self) -> int:
        self.network.train()
        totals = [torch.zeros_like(p) for p in self.network.parameters()]
        for _ in range(self.tasks_per_step):
            support, labels, _, _ = self.tasks.sample()
            adapted = self.train_copy(support, labels, self.steps, self.batch_size)
            for total, value in zip(totals, adapted.parameters(), strict=True):
                total.add_(value.detach())
        for parameter, total in zip(self.network.parameters(), totals, strict=True):
            parameter.grad = parameter.detach() - total / self.tasks_per_step
        self.optimizer.step()
        return self.tasks_per_step

    def predict(self, support, support_labels, queries):
        adapted = self.train_copy(support, support_labels, self.test_steps,
                                  min(self.test_batch_size, len(support_labels)))
        with torch.no_grad():
            return adapted(queries).argmax(-1)


class EngineFree(Reference):
    """metactl's own network and algorithm, driven by a plain loop with plainly drawn tasks:
    what the engine (sampler, trainer, plugin dispatch) costs on top of the model."""

    def __init__(self, tasks: PlainTasks, ours: nn.Module, algorithm, meta_batch: int,
                 optimizer: str = "adam", lr: float = 1e-3, grad_clip: float = 0.0) -> None:
        self.tasks, self.algorithm = tasks, algorithm
        self.network = copy.deepcopy(ours)
        self.tasks_per_step, self.grad_clip = meta_batch, grad_clip
        parameters = self.network.parameters()
        self.optimizer = (torch.optim.RMSprop(parameters, lr=lr) if optimizer == "rmsprop"
                          else torch.optim.Adam(parameters, lr=lr))

    def batch(self):
        from metactl.data.episodes import TaskBatch

        tasks = [self.tasks.sample() for _ in range(self.tasks_per_step)]
        stacked = [torch.stack(parts) for parts in zip(*tasks, strict=True)]
        return TaskBatch(*stacked, torch.zeros(len(tasks), self.tasks.way, dtype=torch.long),
                         self.tasks.way, self.tasks.shot, self.tasks.query)

    def step(self) -> int:
        self.network.train()
        self.optimizer.zero_grad()
        self.algorithm.loss(self.network, self.batch()).loss.backward()
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
        self.optimizer.step()
        return self.tasks_per_step
