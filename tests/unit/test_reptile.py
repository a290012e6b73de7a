"""Reptile: the outer update is the interpolation towards the task-trained weights."""

from __future__ import annotations

import pytest
import torch
from testsupport import float64_task_batch, train_plainly

from metactl.algorithm import ModelSpec
from metactl.engine.config import resolve_config
from metactl.errors import UsageError
from metactl_plugins.reptile import Reptile

SMALL = {"hidden": 5, "inner_batch_size": 0, "inner_steps": 3, "inner_lr": 0.02,
         "meta_batch": 3, "episodes": 30}


def make_algorithm(**overrides):
    return Reptile(resolve_config("reptile", Reptile.defaults, {}, {**SMALL, **overrides}, {}))


def task_batch(tasks=3, way=3, shot=2, query=0, seed=0):
    return float64_task_batch(tasks, way, shot, query, side=14, seed=seed)


def build(algorithm):
    torch.manual_seed(0)
    return algorithm.build_model(ModelSpec(1, 14, 14, way=3)).double().train()


def train_copy(model, images, labels, steps, lr, optimizer):
    """One task trained the ordinary way, with torch.optim on a copy of the model."""
    copy = build(make_algorithm(keep_inner_state=False))
    copy.load_state_dict(model.state_dict(), strict=False)  # the weights, not the inner state
    return train_plainly(copy, images, labels, steps, lr, optimizer)


def outer_step(algorithm, model, batch):
    optimizer = torch.optim.SGD(model.parameters(), lr=float(algorithm.hparams["lr"]))
    optimizer.zero_grad()
    result = algorithm.meta_gradient(model, batch)
    optimizer.step()
    return result


@pytest.mark.parametrize("inner_optimizer", ["adam", "sgd"])
def test_batched_update_interpolates_towards_the_mean_of_the_adapted_weights(inner_optimizer):
    algorithm = make_algorithm(inner_optimizer=inner_optimizer)
    algorithm.progress = 0.25  # epsilon = 1.0 * (1 - 0.25) + 0.25 * 0.0
    model = build(algorithm)
    batch = task_batch()
    initial = {name: value.detach().clone() for name, value in model.named_parameters()}
    adapted = [dict(train_copy(model, batch.support_images[t], batch.support_labels[t], 3,
                               0.02, inner_optimizer).named_parameters())
               for t in range(batch.tasks)]
    outer_step(algorithm, model, batch)
    for name, value in model.named_parameters():
        mean = torch.stack([a[name].detach() for a in adapted]).mean(0)
        expected = initial[name] + 0.75 * (mean - initial[name])
        assert torch.allclose(value, expected, atol=1e-10), name


def test_serial_update_applies_the_tasks_in_turn():
    algorithm = make_algorithm(reptile_batched=False, inner_optimizer="sgd", lr=0.5)
    algorithm.progress = 0.0
    model = build(algorithm)
    batch = task_batch()
    expected = build(algorithm)
    expected.load_state_dict(model.state_dict())
    for task in range(batch.tasks):
        trained = train_copy(expected, batch.support_images[task], batch.support_labels[task],
                             3, 0.02, "sgd")
        with torch.no_grad():
            for value, target in zip(expected.parameters(), trained.parameters(), strict=True):
                value.add_(0.5 * (target - value))
    outer_step(algorithm, model, batch)
    for (name, value), target in zip(model.named_parameters(), expected.parameters(),
                                     strict=True):
        assert torch.allclose(value, target, atol=1e-10), name


def test_outer_step_size_is_annealed_linearly_to_lr_final():
    algorithm = make_algorithm(lr=1.0, lr_final=0.2)
    factors = []
    for fraction in (0.0, 0.5, 1.0):
        algorithm.progress = fraction
        factors.append(algorithm.annealing_factor())
    assert factors == pytest.approx([1.0, 0.6, 0.2])


def test_without_engine_progress_the_steps_are_counted():
    algorithm = make_algorithm(episodes=12, meta_batch=3)  # 4 steps
    model = build(algorithm)
    sizes = [outer_step(algorithm, model, task_batch()).extra["step_size"] for _ in range(4)]
    assert sizes == pytest.approx([1.0, 0.75, 0.5, 0.25])


def test_query_accuracy_is_reported_when_the_batch_has_queries():
    algorithm = make_algorithm()
    result = outer_step(algorithm, build(algorithm), task_batch(query=2))
    assert result.accuracy is not None and 0 <= result.accuracy <= 1
    assert torch.isfinite(result.loss)


def test_serial_version_refuses_an_outer_optimizer_it_cannot_drive():
    with pytest.raises(UsageError, match="plain SGD"):
        make_algorithm(reptile_batched=False, optimizer="adam")


def test_omniglot_defaults_follow_the_paper():
    five = resolve_config("reptile", Reptile.defaults, {}, {"way": 5, "shot": 1}, {})
    assert (five["inner_optimizer"], five["inner_lr"], five["inner_steps"]) == ("adam", 1e-3, 5)
    assert (five["inner_batch_size"], five["train_shot"], five["meta_batch"]) == (10, 10, 5)
    assert (five["test_inner_steps"], five["test_inner_batch_size"]) == (50, 5)
    assert (five["optimizer"], five["lr"], five["lr_final"], five["momentum"]) == (
        "sgd", 1.0, 0.0, 0.0)
    assert five["episodes"] // five["meta_batch"] == 100_000
    twenty = resolve_config("reptile", Reptile.defaults, {}, {"way": 20, "shot": 1}, {})
    assert (twenty["inner_steps"], twenty["inner_batch_size"], twenty["inner_lr"]) == (
        10, 20, 5e-4)
    assert twenty["episodes"] // twenty["meta_batch"] == 200_000


def authors_reference(model, batches, steps, lr, epsilon):
    """The authors' batched Reptile with one torch.optim Adam (beta1 = 0) serving every task in
    turn: weights reset to theta before each task, the optimizer's state never reset."""
    learner = build(make_algorithm())
    learner.load_state_dict(model.state_dict(), strict=False)
    inner = torch.optim.Adam(learner.parameters(), lr=lr, betas=(0.0, 0.999), eps=1e-8)
    for batch in batches:
        theta = [value.detach().clone() for value in learner.parameters()]
        adapted = []
        for task in range(batch.tasks):
            with torch.no_grad():
                for value, start in zip(learner.parameters(), theta, strict=True):
                    value.copy_(start)
            for _ in range(steps):
                inner.zero_grad()
                torch.nn.functional.cross_entropy(learner(batch.support_images[task]),
                                                  batch.support_labels[task]).backward()
                inner.step()
            adapted.append([value.detach().clone() for value in learner.parameters()])
        with torch.no_grad():
            for index, value in enumerate(learner.parameters()):
                mean = torch.stack([task[index] for task in adapted]).mean(0)
                value.copy_(theta[index] + epsilon * (mean - theta[index]))
    return learner, inner


def test_kept_inner_adam_state_matches_one_optimizer_serving_every_task_in_turn():
    algorithm = make_algorithm(meta_batch=1, lr_final=1.0)  # one task per step: exact
    model = build(algorithm)
    assert hasattr(model, "inner_optimizer_state")
    batches = [task_batch(tasks=1, seed=seed) for seed in range(3)]
    learner, inner = authors_reference(model, batches, 3, 0.02, 1.0)
    for batch in batches:
        outer_step(algorithm, model, batch)
    for (name, value), expected in zip(model.named_parameters(), learner.parameters(),
                                       strict=True):
        assert torch.allclose(value, expected, atol=1e-10), name
        state = inner.state[expected]
        assert torch.allclose(model.inner_optimizer_state.moment("second", name),
                              state["exp_avg_sq"], atol=1e-12), name
    assert int(model.inner_optimizer_state.steps) == 9


def test_a_batch_of_tasks_leaves_the_state_of_running_them_in_turn():
    """With gradients that do not depend on the weights, folding the side-by-side tasks'
    moments gives exactly the state of one optimizer running the tasks one after another."""
    from metactl.nn.inner_loops import InnerAdamState, ReptileSteps

    betas = (0.5, 0.9)
    loop = ReptileSteps(steps=3, lr=0.1, optimizer="adam", batch_size=0, betas=betas,
                        loss=lambda predictions, targets: predictions.sum((1, 2)),
                        keep_state=True)
    state = InnerAdamState(torch.nn.Linear(2, 1, bias=False)).double()
    state.moment("first", "weight").fill_(0.3)
    state.moment("second", "weight").fill_(0.2)
    state.steps.fill_(4)
    inputs = torch.rand(3, 4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    gradients = inputs.sum(1, keepdim=True)  # d loss / d weight of each task, (T, 1, 2)
    expected = {"first": state.moment("first", "weight").clone(),
                "second": state.moment("second", "weight").clone()}
    for task in range(3):
        for _ in range(3):
            expected["first"] = betas[0] * expected["first"] + (1 - betas[0]) * gradients[task]
            expected["second"] = (betas[1] * expected["second"]
                                  + (1 - betas[1]) * gradients[task] ** 2)
    start = {"weight": torch.zeros(3, 1, 2, dtype=torch.float64)}
    adaptation = loop.run(lambda parameters, images: parameters["weight"] * images, start,
                          inputs, torch.zeros(3, 4), state=state)
    loop._keep(state, adaptation.moments, 3)
    for which in ("first", "second"):
        assert torch.allclose(state.moment(which, "weight"), expected[which], atol=1e-14)
    assert int(state.steps) == 4 + 3 * 3


def test_evaluation_uses_the_kept_state_and_leaves_it_unchanged():
    algorithm = make_algorithm()
    model = build(algorithm)
    outer_step(algorithm, model, task_batch())
    kept = {name: value.clone() for name, value in model.inner_optimizer_state.named_buffers()}
    assert int(kept["steps"]) == 9
    support = task_batch(seed=5)
    from metactl.algorithm import support_of

    model.eval()
    adapted = algorithm.adapt(model, support_of(support))
    fresh = make_algorithm(keep_inner_state=False).adapt(model, support_of(support))
    for name, value in model.inner_optimizer_state.named_buffers():
        assert torch.equal(value, kept[name]), name
    assert not torch.allclose(adapted["classifier.weight"], fresh["classifier.weight"])
    assert "inner_optimizer_state.steps" in model.state_dict()  # checkpoints carry it
