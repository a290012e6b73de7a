"""Meta Networks (Munkhdalai & Yu 2017): fast-weight networks, their generators and memory.

Shapes: ``T`` tasks, ``N`` support images, ``Q`` queries, ``S`` meta-information steps (the
paper's T sampled examples or pairs), ``P`` coordinates of a group of parameters. A *parameter
dict* maps parameter names (as in ``module.named_parameters()``) to tensors; a *fast-weight
dict* maps the names of the augmented layers' weights to tensors of the same shapes, with any
leading batch dimensions (per task, per support image, per query).

The two convolutional networks are written as pure functions of a parameter dict
(:func:`class_scores`, :func:`representation`), so that :mod:`torch.func` can take per-example
gradients of them (``vmap(grad(...))``) and run them with per-example fast weights
(``vmap(...)`` over the fast weights and the images); :class:`FastWeightCNN` holds the slow
weights and calls those functions with them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as functional
from torch import Tensor, nn
from torch.func import grad, vmap

from metactl.nn.functional import Parameters, flatten_parameters, preprocess_gradients
from metactl.nn.metric import cosine_similarities
from metactl.nn.pairs import Pairs, sample_pairs

KINDS = ("conv", "linear")
"""Fast weights are generated per kind of layer, each kind with its own generator (as in the
authors' code): 3x3 convolution kernels and fully connected weight matrices."""


def kind_of(shape: torch.Size | tuple[int, ...]) -> str:
    """``"conv"`` for a 4-d convolution kernel, ``"linear"`` for a 2-d weight matrix."""
    return "conv" if len(shape) == 4 else "linear"


def augment(slow: Tensor, fast: Tensor | None) -> Tensor:
    """Layer augmentation: the slow and the fast branch each go through a ReLU, then are added
    element-wise. ``fast=None`` (a layer without fast weights) gives ``relu(slow)``.

    Args:
        slow: the layer's input transformed by its slow weights, any shape.
        fast: the same input transformed by its fast weights, the same shape, or None.
    """
    activation = functional.relu(slow)
    return activation if fast is None else activation + functional.relu(fast)


def conv_features(params: Mapping[str, Tensor], images: Tensor, fast: Mapping[str, Tensor],
              blocks: int) -> Tensor:
    """The augmented conv blocks (3x3 convolution without bias, ReLU, 2x2 max-pooling that
    keeps a partial window, as Chainer's default does), flattened: (B, C, H, W) -> (B, F)."""
    hidden = images
    for index in range(blocks):
        name = f"convs.{index}.weight"
        slow = functional.conv2d(hidden, params[name], padding=1)
        quick = functional.conv2d(hidden, fast[name], padding=1) if name in fast else None
        hidden = functional.max_pool2d(augment(slow, quick), 2, ceil_mode=True)
    return hidden.flatten(1)


def _linear(params: Mapping[str, Tensor], fast: Mapping[str, Tensor], name: str,
            inputs: Tensor) -> tuple[Tensor, Tensor | None]:
    """The slow and (if any) fast transforms of ``inputs`` by the weight matrix ``name``."""
    slow = functional.linear(inputs, params[name])
    return slow, functional.linear(inputs, fast[name]) if name in fast else None


def blocks_of(params: Mapping[str, Tensor]) -> int:
    return sum(1 for name in params if name.startswith("convs."))


def class_scores(params: Mapping[str, Tensor], images: Tensor,
                 fast: Mapping[str, Tensor] | None = None) -> Tensor:
    """The base learner b(W, W*, x) (or the representation network's classifier): augmented
    conv blocks, an augmented fully connected layer, and a softmax layer whose slow and fast
    transforms are added *before* the softmax (the paper's rule for the output layer).

    Args:
        params: slow weights, ``convs.{i}.weight``, ``fc.weight`` and ``head.weight`` (its rows
            are the classes: pass it sliced to the task's way).
        images: (B, C, H, W).
        fast: fast weights of the augmented layers (unbatched shapes), or None.

    Returns:
        (B, classes), unnormalised.
    """
    fast = fast or {}
    features = conv_features(params, images, fast, blocks_of(params))
    hidden = augment(*_linear(params, fast, "fc.weight", features))
    slow, quick = _linear(params, fast, "head.weight", hidden)
    return slow if quick is None else slow + quick


def representation(params: Mapping[str, Tensor], images: Tensor,
                   fast: Mapping[str, Tensor] | None = None) -> Tensor:
    """The dynamic representation function u(Q, Q*, x): the output of the fully connected layer,
    slow and fast transforms added (no ReLU: it is the network's output, as in the authors'
    code). Images (B, C, H, W) -> (B, hidden)."""
    fast = fast or {}
    features = conv_features(params, images, fast, blocks_of(params))
    slow, quick = _linear(params, fast, "fc.weight", features)
    return slow if quick is None else slow + quick


class FastWeightCNN(nn.Module):
    """The CNN of the base learner b and of the representation function u: ``blocks`` blocks of
    a 3x3 convolution with ``hidden`` filters (no bias), ReLU and 2x2 max-pooling, a fully
    connected layer of ``hidden`` units and, if ``outputs`` > 0, a softmax layer; no biases and
    no batch norm (the authors' Omniglot network). 28x28 Omniglot: 28 -> 14 -> 7 -> 4 -> 2 -> 1.

    The last ``augmented`` of the hidden layers (the convolutions, then the fully connected
    layer) take fast weights, and the softmax layer too when ``augment_head``.

    Args:
        in_channels: image channels.
        image_size: (height, width).
        hidden: filters of each convolution and units of the fully connected layer.
        blocks: conv blocks.
        augmented: hidden layers with fast weights, counted from the last (blocks + 1: all).
        outputs: classes of the softmax layer (0: none).
        augment_head: give the softmax layer fast weights too.
    """

    def __init__(self, in_channels: int, image_size: tuple[int, int], hidden: int = 64,
                 blocks: int = 5, augmented: int = 6, outputs: int = 0,
                 augment_head: bool = False) -> None:
        super().__init__()
        if not 0 <= augmented <= blocks + 1:
            from metactl.errors import UsageError

            raise UsageError(f"augmented_layers must be in [0, {blocks + 1}], got {augmented}",
                             f"a network of {blocks} conv blocks and one fully connected layer "
                             f"has {blocks + 1} layers to augment")
        widths = [in_channels] + [hidden] * blocks
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1, bias=False)
                                   for a, b in zip(widths[:-1], widths[1:], strict=True))
        height, width = image_size
        for _ in range(blocks):
            height, width = math.ceil(height / 2), math.ceil(width / 2)
        self.fc = nn.Linear(hidden * height * width, hidden, bias=False)
        self.head = nn.Linear(hidden, outputs, bias=False) if outputs else None
        layers = [f"convs.{index}.weight" for index in range(blocks)] + ["fc.weight"]
        heads = ["head.weight"] if outputs and augment_head else []
        self.augmented = tuple(layers[len(layers) - augmented:] + heads)

    @property
    def outputs(self) -> int:
        return 0 if self.head is None else self.head.out_features

    def slow_weights(self, way: int | None = None) -> Parameters:
        """The parameters as a dict, the softmax layer cut to its first ``way`` classes."""
        params = dict(self.named_parameters())
        if way is not None and "head.weight" in params:
            params["head.weight"] = params["head.weight"][:way]
        return params

    def forward(self, images: Tensor, fast: Mapping[str, Tensor] | None = None) -> Tensor:
        """Class scores (B, outputs) of images (B, C, H, W); see :func:`class_scores`."""
        return class_scores(self.slow_weights(), images, fast)


class ExampleWeightGenerator(nn.Module):
    """m(Z, grad): a three-layer MLP (2 -> hidden -> hidden -> 1, ReLU) applied to every
    coordinate of a loss gradient, its weights shared across coordinates; the input is the
    gradient preprocessed as in Andrychowicz et al. (2016) with p = ``power``.

    Maps gradients (..., P) to fast weights (..., P).
    """

    def __init__(self, hidden: int = 20, power: float = 7.0) -> None:
        super().__init__()
        self.power = power
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, gradients: Tensor) -> Tensor:
        return self.net(preprocess_gradients(gradients, self.power)).squeeze(-1)


class TaskWeightGenerator(nn.Module):
    """d(G, {grad_s}): a one-layer LSTM of ``hidden`` units that reads the S gradients of one
    coordinate in turn, then a linear map of its last output to that coordinate's fast weight;
    weights shared across coordinates, gradients preprocessed (p = ``power``).

    Maps gradients (T, S, P) to fast weights (T, P).
    """

    def __init__(self, hidden: int = 20, power: float = 7.0) -> None:
        super().__init__()
        self.power = power
        self.lstm = nn.LSTM(2, hidden, batch_first=True)
        self.output = nn.Linear(hidden, 1)

    def forward(self, gradients: Tensor) -> Tensor:
        tasks, steps, coordinates = gradients.shape
        inputs = preprocess_gradients(gradients, self.power)  # (T, S, P, 2)
        inputs = inputs.transpose(1, 2).reshape(tasks * coordinates, steps, 2)
        outputs, _ = self.lstm(inputs)
        return self.output(outputs[:, -1]).view(tasks, coordinates)


class MetaNetwork(nn.Module):
    """All the slow weights of MetaNet: the base learner b (W), the representation function u
    (Q), the example-level generators m (Z) and the task-level generators d (G), one generator
    of each per kind of layer (:data:`KINDS`).

    Args:
        in_channels, image_size: the images.
        way: classes of the softmax layers.
        hidden, blocks, augmented: see :class:`FastWeightCNN`.
        generator_hidden: hidden units of m's MLP and of d's LSTM.
        power: p of the gradient preprocessing.
        classifier_head: give u a softmax layer (for the cross-entropy representation loss).
        task_fast_weights: build d and give u task-level fast weights (False: MetaNet-).
        init_range: every parameter is drawn from U[-init_range, init_range) (0: PyTorch's
            default initialisation), except the output units of m and d:
        fast_init, fast_init_range: the bias of m's and d's output units and the range of their
            weights (see :meth:`start_generators`).
    """

    def __init__(self, in_channels: int, image_size: tuple[int, int], way: int,
                 hidden: int = 64, blocks: int = 5, augmented: int = 6,
                 generator_hidden: int = 20, power: float = 7.0, classifier_head: bool = True,
                 task_fast_weights: bool = True, init_range: float = 0.1,
                 fast_init: float = 1e-3, fast_init_range: float = 0.01) -> None:
        super().__init__()
        self.base = FastWeightCNN(in_channels, image_size, hidden, blocks, augmented,
                                  outputs=way, augment_head=True)
        self.representation = FastWeightCNN(in_channels, image_size, hidden, blocks, augmented,
                                            outputs=way if classifier_head else 0)
        self.example_generators = nn.ModuleDict(
            {kind: ExampleWeightGenerator(generator_hidden, power) for kind in KINDS})
        self.task_generators = nn.ModuleDict(
            {kind: TaskWeightGenerator(generator_hidden, power) for kind in KINDS}
            if task_fast_weights else {})
        if init_range > 0:
            for parameter in self.parameters():
                nn.init.uniform_(parameter, -init_range, init_range)
        self.start_generators(fast_init, fast_init_range)

    def start_generators(self, value: float, spread: float) -> None:
        """Draw the weights of m's and d's output units from U[-spread, spread) and set their
        biases to ``value``: every fast weight starts near this small positive value, and
        differs a little with the gradient it comes from.

        With the paper's U[-0.1, 0.1) there, the generated weights start nearly equal across
        coordinates (most preprocessed gradients are close to (-1, 0)) at up to +-0.1: a
        positive constant 3x3 kernel over 64 channels multiplies the activations by up to ~50
        per augmented layer (the initial loss explodes), a negative one silences the fast
        branch behind its ReLU (its generator then gets no gradient). With all output weights
        at zero, every support image gets the same fast weights, attention gets no gradient and
        learning starts late.
        """
        outputs = [generator.net[-1] for generator in self.example_generators.values()]
        outputs += [generator.output for generator in self.task_generators.values()]
        with torch.no_grad():
            for layer in outputs:
                layer.weight.uniform_(-spread, spread)
                layer.bias.fill_(value)

    @property
    def way(self) -> int:
        return self.base.outputs

    @property
    def task_fast_weights(self) -> bool:
        return len(self.task_generators) > 0


@dataclass
class MetaNetState:
    """The task state of MetaNet: what the query pass needs from the support set.

    Attributes:
        task_weights: Q*, u's task-level fast weights, name -> (T, *shape); empty without them.
        memory: M, the support images' example-level fast weights for b, name -> (T, N, *shape).
        keys: R, the support images' task-dependent representations u(Q, Q*, x'_i), (T, N, dim).
        way: classes per task.
    """

    task_weights: Parameters
    memory: Parameters
    keys: Tensor
    way: int


def example_gradients(params: Mapping[str, Tensor], names: tuple[str, ...],
                      loss: Callable[..., Tensor], *inputs: Tensor) -> Parameters:
    """Gradients of ``loss(params, *input_b)`` with respect to the parameters ``names``, one per
    item b of the inputs, as constants (no graph to the parameters: the meta information).

    Args:
        params: name -> tensor; detached here.
        names: the parameters to differentiate.
        loss: ``loss(params, *item) -> scalar``.
        inputs: tensors of leading size B, split into the B items.

    Returns:
        name -> (B, *shape) for each of ``names``.
    """
    constants = {name: value.detach() for name, value in params.items()}

    def item_loss(selected: Parameters, *item: Tensor) -> Tensor:
        return loss({**constants, **selected}, *item)

    selected = {name: constants[name] for name in names}
    in_dims = (None,) + (0,) * len(inputs)
    return vmap(grad(item_loss), in_dims=in_dims)(selected, *inputs)


def generate(generators: nn.ModuleDict, gradients: Mapping[str, Tensor], lead: int
             ) -> Parameters:
    """Run each kind's generator on the flattened gradients of its parameters.

    Args:
        generators: kind -> a module mapping (*lead shape, P) to (*out shape, P).
        gradients: name -> (*lead shape, *parameter shape); ``lead`` leading dimensions.

    Returns:
        name -> (*out shape, *parameter shape), for every name of ``gradients``.
    """
    weights: Parameters = {}
    for kind in KINDS:
        names = [name for name, value in gradients.items() if kind_of(value.shape[lead:]) == kind]
        if not names:
            continue
        leading = gradients[names[0]].shape[:lead]
        flat = flatten_parameters({name: gradients[name].flatten(0, lead - 1)
                                   for name in names})
        generated = generators[kind](flat.view(*leading, flat.shape[-1]))
        start = 0
        for name in names:
            shape = gradients[name].shape[lead:]
            size = math.prod(shape)
            weights[name] = generated[..., start:start + size].reshape(
                *generated.shape[:-1], *shape)
            start += size
    return weights


def cross_entropy_item(params: Mapping[str, Tensor], images: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of u's (or b's) slow classifier on a group of images (G, C, H, W)
    with labels (G,)."""
    return functional.cross_entropy(class_scores(params, images), labels)


def contrastive_loss(first: Tensor, second: Tensor, same: Tensor, margin: float = 1.0
                     ) -> Tensor:
    """The contrastive loss of Hadsell, Chopra & LeCun (2006), per pair:
    ``same * d^2 / 2 + (1 - same) * max(0, margin - d)^2 / 2`` with d the Euclidean distance.

    Args:
        first, second: embeddings (..., dim).
        same: 1 where the pair shares a class, else 0, (...).
    """
    squared = (first - second).pow(2).sum(-1)
    distance = squared.clamp_min(1e-12).sqrt()
    return 0.5 * (same * squared + (1 - same) * functional.relu(margin - distance).pow(2))


def contrastive_item(margin: float) -> Callable[..., Tensor]:
    """The loss of one pair of images (2, C, H, W) with its same-class flag (a scalar) on u's
    slow representations."""

    def loss(params: Mapping[str, Tensor], images: Tensor, same: Tensor) -> Tensor:
        embedded = representation(params, images)
        return contrastive_loss(embedded[0], embedded[1], same, margin)

    return loss


def sample_groups(tasks: int, size: int, steps: int,
                  generator: torch.Generator | None = None) -> Tensor:
    """Split each task's ``size`` support images, in random order, into ``min(steps, size)``
    groups of ``ceil(size / groups)`` (a group may reuse an image when ``size`` is not a
    multiple): the items whose gradients d reads, one group per step.

    Returns:
        int64, (T, groups, group size), indices into the support set.
    """
    steps = max(1, min(steps, size))
    group = math.ceil(size / steps)
    order = torch.rand(tasks, size, generator=generator).argsort(-1)
    if steps * group > size:  # pad with a second random order
        extra = torch.rand(tasks, size, generator=generator).argsort(-1)
        order = torch.cat([order, extra[:, :steps * group - size]], dim=1)
    return order.view(tasks, steps, group)


def balanced_pairs(labels: Tensor, count: int, generator: torch.Generator | None = None
                   ) -> Pairs:
    """``count`` distinct pairs per task, half of one class (as many as there are) and the rest
    of two classes, drawn uniformly without replacement (:func:`metactl.nn.pairs.sample_pairs`).

    Args:
        labels: int64, (T, N).

    Returns:
        :class:`~metactl.nn.pairs.Pairs` of at most ``count`` pairs per task.
    """
    equal = labels.unsqueeze(2) == labels.unsqueeze(1)
    upper = torch.ones_like(equal[0]).triu(1)
    same_available = int((equal & upper).flatten(1).sum(1).min())
    different_available = int((~equal & upper).flatten(1).sum(1).min())
    same = min(count // 2, same_available)
    different = min(count - same, different_available)
    same = min(count - different, same_available)
    if same + different == 0:
        from metactl.errors import UsageError

        raise UsageError("the contrastive representation loss needs two support images",
                         "give each task at least two support images")
    return sample_pairs(labels, same, different, generator)


def attention(queries: Tensor, keys: Tensor) -> Tensor:
    """Soft attention over the memory: softmax of the cosine similarities.

    Args:
        queries: r_i, (T, Q, dim).
        keys: R, (T, N, dim).

    Returns:
        (T, Q, N), each row summing to 1.
    """
    return cosine_similarities(queries, keys).softmax(-1)


def read_memory(weights: Tensor, memory: Mapping[str, Tensor]) -> Parameters:
    """W*_i = softmax(a_i)^T M: each query's fast weights, the attention-weighted sum of the
    memory's entries.

    Args:
        weights: attention of each query over the N entries, (Q, N).
        memory: name -> (N, *shape).

    Returns:
        name -> (Q, *shape).
    """
    return {name: torch.tensordot(weights, value, dims=1) for name, value in memory.items()}


def task_representations(params: Mapping[str, Tensor], images: Tensor,
                         task_weights: Mapping[str, Tensor]) -> Tensor:
    """u(Q, Q*, x) for the images of every task with that task's fast weights.

    Args:
        params: u's slow weights (shared by all tasks).
        images: (T, n, C, H, W).
        task_weights: Q*, name -> (T, *shape); empty for u without fast weights.

    Returns:
        (T, n, dim).
    """
    if not task_weights:
        return representation(params, images.flatten(0, 1)).view(*images.shape[:2], -1)
    return vmap(lambda fast, task_images: representation(params, task_images, fast))(
        dict(task_weights), images)


def query_scores(params: Mapping[str, Tensor], images: Tensor, weights: Tensor,
                 memory: Mapping[str, Tensor], chunk: int = 256) -> Tensor:
    """b(W, W*_i, x_i) for the queries of one task, each with the fast weights it reads from
    the memory, ``chunk`` queries at a time (their fast weights are materialised).

    Args:
        params: b's slow weights, the softmax layer cut to the task's way.
        images: (Q, C, H, W).
        weights: the attention of each query over the memory, (Q, N).
        memory: M, name -> (N, *shape).

    Returns:
        (Q, way).
    """
    def one(fast: Parameters, image: Tensor) -> Tensor:
        return class_scores(params, image.unsqueeze(0), fast).squeeze(0)

    scores = []
    for start in range(0, images.shape[0], chunk):
        fast = read_memory(weights[start:start + chunk], memory)
        scores.append(vmap(one)(fast, images[start:start + chunk]))
    return torch.cat(scores)
