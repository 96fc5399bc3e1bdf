"""``Config``: RecBole's configurator that knows the plugin's models and packaged defaults,
and checks the values it is given (:func:`value_checks`) and the keys (misspelt ones are warned about)."""
import difflib
import functools
import glob
import numbers
import os
import sys
from logging import getLogger

import recbole
import yaml
from recbole.config import Config as RecBoleConfig
from recbole.evaluator.base_metric import TopkMetric
from recbole.evaluator.register import metrics_dict
from recbole.utils import ModelType

from recbole_mm.errors import ConfigError, DataError
from recbole_mm.mmrec_format import inter_layout
from recbole_mm.model.abstract_recommender import MultiModalRecommender, modalities_optional, one_modality_refusal
from recbole_mm.options import (
    ADJACENCY_NORMS,
    CF_MODELS,
    DCT_MODES,
    DENOISE_MODES,
    EDGE_PRUNINGS,
    PGL_MODES,
    EVAL_PROTOCOLS,
    FUSIONS,
    GUIDER_WEIGHTINGS,
    KD_BALANCES,
    KD_MODES,
    KD_WEIGHT_AUTO,
    MMGCF_FUSION_MODES,
    MMGCF_WEIGHTINGS,
    OPTIMIZER_IMPLS,
    ROW_TRANSFORMS,
    SPLIT_SCORES,
    SSL_TASKS,
    THRESHOLD_MODES,
    TRAIN_SAMPLINGS,
)
from recbole_mm.utils import get_model

PROPERTIES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "properties")


class Config(RecBoleConfig):
    """RecBole's ``Config`` with these changes.

    - Model names resolve through :func:`recbole_mm.utils.get_model` (plugin first).
    - After RecBole's own internal yaml files, the plugin's packaged defaults are layered on
      in RecBole's precedence order: ``properties/overall.yaml`` < ``properties/model/<Model>.yaml``
      < ``properties/dataset/<dataset>.yaml`` < the model yaml's ``dataset_defaults`` block for
      this dataset (:func:`apply_dataset_defaults`: a model's tuned values per dataset). User
      config files, the config dict and the command line still override all of them
      (file < dict < command line), as in RecBole.
    - Values are checked up front against :func:`value_checks` (type and range; a
      :class:`~recbole_mm.errors.ConfigError` names the key), before RecBole's own setup reads
      them, and a key that no model, dataset or default knows is logged as a warning with the
      closest known key.
    - ``show_progress: ~`` (the default) shows RecBole's progress bars on an interactive terminal.
    - ``eval_args`` shows the split the data actually gets: MMRec folders keep their fixed
      ``x_label`` split and ``cold_start_items`` holds items out, whatever ``split`` says.
    """

    def _load_config_files(self, file_list):
        """RecBole's reading of ``config_file_list``, with one :class:`ConfigError` line per
        problem (missing file, not YAML, a top level that is not ``key: value`` lines) in
        place of a traceback from inside yaml; an empty file is no settings."""
        values = {}
        for path in file_list or []:
            values.update(read_config_file(path, self.yaml_loader))
        return values

    def _set_default_parameters(self):
        plugin_model = is_plugin_model(self.model_class)
        # before RecBole's own setup, which fails on some of these with a traceback
        check_values(self.final_config_dict, plugin_model=plugin_model)
        check_metrics(self.final_config_dict)
        check_checkpoint_dir(self.final_config_dict.get("checkpoint_dir"))
        super()._set_default_parameters()
        if self.final_config_dict.get("optimizer_impl") is None:  # RecBole's numbers for RecBole's models
            self.final_config_dict["optimizer_impl"] = "fused" if plugin_model else "recbole"
        for message in unknown_key_warnings(self):
            getLogger().warning(message)
        if plugin_model:
            check_modalities(self.final_config_dict, modalities_optional(self.model_class, self),
                             one_modality_refusal(self.model_class))
        if self.final_config_dict.get("show_progress") is None:
            self.final_config_dict["show_progress"] = sys.stdout.isatty() and sys.stderr.isatty()
        self._show_actual_split()

    def _show_actual_split(self):
        eval_args = self.final_config_dict["eval_args"]
        if self.final_config_dict.get("cold_start_items"):
            eval_args["split"] = {"cold_start_items": list(self.final_config_dict["cold_start_items"])}
        elif self.final_config_dict.get("benchmark_filename") is None and uses_mmrec_split(self):
            eval_args["split"] = {"x_label": "fixed: 0/1/2 = train/valid/test"}

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
        if isinstance(model, str):
            model_class = get_model(model)
            _, _, final_dataset = super()._get_model_and_dataset(model_class, dataset)
            return model, model_class, final_dataset
        return super()._get_model_and_dataset(model, dataset)

    def _set_train_neg_sample_args(self):
        """RecBole's negative-sampling setup, then ``denoise: wbpr`` (Gantner et al., 2012):
        negatives drawn with probability proportional to popularity^``wbpr_alpha`` — popular
        items the user skipped are the reliable negatives.

        A model class with ``use_neg_sampling = False`` (BM3) trains on positive pairs only:
        its yaml sets ``train_neg_sample_args: ~``, and a user file or dict that sets it again
        is overridden here with a warning (MMRec's model yaml wins in the same way), so the
        model never receives rows it would take for positives."""
        args = self.final_config_dict.get("train_neg_sample_args")
        if not getattr(self.model_class, "use_neg_sampling", True):
            if self.final_config_dict.get("denoise") == "wbpr":
                raise ConfigError(f"denoise: wbpr draws popularity negatives, but {self.model} trains without "
                                 "negative sampling")
            if args not in (None, "None") and (not isinstance(args, dict) or args.get("distribution") not in
                                               (None, "None", "none")):
                getLogger().warning(f"{self.model} trains without negative sampling: "
                                    f"train_neg_sample_args={args} is ignored")
            self.final_config_dict["train_neg_sample_args"] = None
        super()._set_train_neg_sample_args()
        if self.final_config_dict.get("denoise") == "wbpr":
            args = self.final_config_dict["train_neg_sample_args"]
            if not args or args.get("sample_num", 0) in (0, "none"):
                raise ConfigError("denoise: wbpr needs negative sampling (train_neg_sample_args)")
            alpha = self.final_config_dict.get("wbpr_alpha")
            args.update(distribution="popularity", alpha=1.0 if alpha is None else float(alpha))

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        for path in packaged_config_files(model_class, dataset):
            loaded = self._update_internal_config_dict(path)
            if loaded and path.endswith(os.path.join("dataset", f"{dataset}.yaml")):
                self.parameters["Dataset"] += [
                    key for key in loaded if key not in self.parameters["Dataset"]
                ]
        apply_dataset_defaults(self.internal_config_dict, dataset)


def model_config_file(model_class):
    """``properties/model/<Model>.yaml`` of the class or, for a subclass without one, of its
    nearest ancestor that has one (a user's ``class MyVBPR(VBPR)`` inherits VBPR's defaults)."""
    for klass in model_class.__mro__:
        path = os.path.join(PROPERTIES_DIR, "model", f"{klass.__name__}.yaml")
        if os.path.isfile(path):
            return path
    return None


def packaged_config_files(model_class, dataset):
    """The plugin's packaged yaml files that apply to ``model_class`` on ``dataset``, lowest first."""
    candidates = [
        os.path.join(PROPERTIES_DIR, "overall.yaml"),
        model_config_file(model_class),
        os.path.join(PROPERTIES_DIR, "dataset", f"{dataset}.yaml"),
    ]
    return [path for path in candidates if path and os.path.isfile(path)]


def apply_dataset_defaults(values, dataset):
    """Apply, in place, the ``dataset_defaults`` block of a packaged model yaml: a mapping
    dataset name -> {key: value} of the settings the model's authors tuned per dataset, e.g.

    .. code-block:: yaml

        alpha: 0.3              # the model's default
        dataset_defaults:
          sports: {alpha: 0.6}  # replaces it when the dataset is 'sports'

    The block is removed from ``values``; the entry of ``dataset`` (if any) overrides the
    packaged defaults loaded so far (overall, model and dataset yaml). The user's files, dict
    and command line are applied later and override it in turn.

    Raises:
        ConfigError: the block is not a mapping of dataset names to mappings.
    """
    block = values.pop("dataset_defaults", None)
    if block is None:
        return
    if not isinstance(block, dict) or not all(isinstance(entry, dict) for entry in block.values()):
        raise ConfigError(f"dataset_defaults must map dataset names to {{key: value}} mappings, got {block!r}")
    values.update(block.get(dataset) or {})


# ---------------------------------------------------------------------------- value checks
YAML_NOTHING = ("~", "null")  # how yaml writes None; RecBole's command line passes them on as strings


class Rule:
    """What one key's value must be: ``convert(value)`` returns the value (normalised: ``"3"``
    -> 3, ``"text"`` -> ``["text"]``) or raises ``ValueError``; ``wanted`` says it in words;
    ``required``: ``~`` (None) is refused too."""

    required = False

    def __init__(self, wanted, convert):
        self.wanted, self.convert = wanted, convert


def _bound_words(low, high, low_open, high_open):
    words = []
    if low is not None:
        words.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        words.append(f"{'<' if high_open else '<='} {high}")
    return " and ".join(words)


def _in_range(value, low, high, low_open, high_open):
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError
    return value


def _as_number(value):
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, str):
        value = float(value)  # "1e-4" from a yaml or a command line that RecBole left a string
    if not isinstance(value, numbers.Real) or value != value:
        raise ValueError
    return value


def number(low=None, high=None, low_open=False, high_open=False):
    if low is not None and high is not None:
        bounds = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    else:
        bounds = _bound_words(low, high, low_open, high_open)
    return Rule(f"a number {bounds}".strip(),
                lambda v: _in_range(float(_as_number(v)), low, high, low_open, high_open))


def integer(low=None, high=None):
    def convert(value):
        value = _as_number(value)
        if not float(value).is_integer():
            raise ValueError
        return _in_range(int(value), low, high, False, False)

    return Rule(f"an integer {_bound_words(low, high, False, False)}".strip(), convert)


def boolean():
    def convert(value):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ValueError
        return value

    return Rule("True or False", convert)


def choice(options):
    options = [option for option in options if option is not None]

    def convert(value):
        if value not in options:
            raise ValueError
        return value

    return Rule(f"one of {options}", convert)


def number_or(rule, word):
    """``rule`` (a number rule), or the word ``word`` itself (e.g. ``auto``)."""
    def convert(value):
        return word if value == word else rule.convert(value)

    return Rule(f"{rule.wanted} or '{word}'", convert)


def names():
    """A list of names; ``text`` or ``text,image`` (the command line's spelling) become lists."""
    def convert(value):
        if isinstance(value, str):
            value = [part for part in value.strip("[]() ").replace(",", " ").split() if part]
        if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
            raise ValueError
        return [v.strip("'\"") for v in value]

    return Rule("a list of names, e.g. [text, image]", convert)


def sequence(item, length=None):
    def convert(value):
        if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length):
            raise ValueError
        return [item.convert(v) for v in value]

    size = f"{length} " if length else ""
    return Rule(f"a list of {size}values, each {item.wanted}", convert)


def mapping():
    def convert(value):
        if not isinstance(value, dict):
            raise ValueError
        return value

    return Rule("a mapping, e.g. {key: value}", convert)


def required(rule):
    """``rule``, and ``~`` (None) is not allowed: RecBole has no meaning for it."""
    strict = Rule(rule.wanted, rule.convert)
    strict.required = True
    return strict


@functools.lru_cache(maxsize=1)
def value_checks():
    """The table of checked keys: ``{"recbole": ..., "plugin": ..., "model": ...}``, each
    key -> :class:`Rule`. ``recbole`` keys are checked for every model, ``plugin`` keys
    (``properties/overall.yaml``) too, ``model`` keys (the plugin's model yamls) for the plugin's
    models only (RecBole's models give some of these names other meanings). ``~`` passes unless
    the rule is :func:`required`. (Built on first use; the allowed values come from :mod:`recbole_mm.options`.)"""
    share, positive, non_negative = number(0, 1), number(0, low_open=True), number(0)
    count, layers = integer(1), integer(0)
    recbole = {
        "learning_rate": required(positive),
        "embedding_size": required(count),
        "epochs": required(integer(0)),
        "train_batch_size": required(count),
        "eval_batch_size": required(count),
        "stopping_step": required(integer(0)),
        "eval_step": required(integer(0)),
        "weight_decay": non_negative,
        "topk": required(Rule("a list of integers >= 1", lambda v: sequence(count).convert(
            [v] if isinstance(v, (int, str)) else v))),
        "seed": required(integer()),
        "show_progress": boolean(),
        "reproducibility": boolean(),
        "clip_grad_norm": mapping(),
        "worker": integer(0),  # DataLoader worker processes (a negative one is a torch traceback)
    }
    plugin = {
        "modalities": names(),
        "learning_rate_scheduler": sequence(number(), length=2),
        "optimizer_impl": choice(OPTIMIZER_IMPLS),
        "eval_protocol": choice(EVAL_PROTOCOLS),
        "train_sampling": choice(TRAIN_SAMPLINGS),
        "noise_ratio": number(0, 1, high_open=True),
        "cold_start_items": sequence(number(0, 1, low_open=True, high_open=True), length=2),
        "denoise": choice(DENOISE_MODES),
        "tce_drop_rate": number(0, 1, high_open=True),
        "tce_num_gradual": count,
        "rce_beta": non_negative,
        "wbpr_alpha": non_negative,
        # bod_*: checked (naming the key) by trainer/bod.py's BOD_KEYS when denoise: bod builds its trainer
        # denoise: damrs's item graphs (trainer/damrs_denoise.py); the behaviour keys are DAMRS's too
        "damrs_knn_k": count,
        "damrs_behaviour_k": count,
        "damrs_behaviour_min_count": count,
        "damrs_mm_layers": count,
        "guider": boolean(),
        "guider_teacher": Rule("a model name", lambda v: v if isinstance(v, str) else _raise()),
        "guider_teacher_config": mapping(),
        "guider_teacher_learning_rate": positive,
        "guider_teacher_weight_decay": non_negative,
        "guider_teacher_batch_size": count,
        "guider_dbpr": boolean(),
        "guider_dbpr_weight": non_negative,
        "guider_bpr_weight": non_negative,
        "guider_amsc": boolean(),
        "guider_modalities": names(),
        "guider_split_score": choice(SPLIT_SCORES),
        "guider_threshold_mode": choice(THRESHOLD_MODES),
        "guider_threshold": number(),
        "guider_teacher_pretrain_epochs": layers,
        "guider_calibrate_every": count,
        "guider_warmup_epochs": layers,
        "guider_loss_negatives": count,
        "guider_hash_confidence": boolean(),
        "guider_hash_bits": count,
        "guider_cca_dims": count,
        "guider_kd": choice(KD_MODES),
        "guider_kd_weight": number_or(non_negative, KD_WEIGHT_AUTO),
        "guider_weighting": choice(GUIDER_WEIGHTINGS),
        "guider_mgda_sum_quirk": boolean(),
        "guider_kd_balance": choice(KD_BALANCES),
        "guider_kd_start": required(number(0, None, low_open=True)),
        "guider_kd_retry": number(0, None, low_open=True),
        "guider_kd_decay": number(0, 1, high_open=True),
        "guider_fallback": boolean(),
        "guider_kd_users": count,
        "guider_kd_items": count,
        "guider_kd_transform": choice(ROW_TRANSFORMS),
        "guider_kd_pairs": count,
        "guider_sinkhorn_reg": positive,
        "guider_sinkhorn_iterations": count,
        "guider_student_weight_decay": non_negative,
        "guider_eval_teacher": boolean(),
    }
    model = {
        "knn_k": count,
        "image_knn_k": count,
        "text_knn_k": count,
        "dropout_rate": share,
        "shrink": non_negative,
        "n_layers": layers,
        "n_ui_layers": layers,
        "n_mm_layers": layers,
        "n_uu_layers": layers,
        "n_routing": layers,
        "n_id_layers": layers,
        "reg_weight": non_negative,
        "dropout": number(0, 1, high_open=True),
        "mm_image_weight": share,
        "lambda_coeff": share,
        "decay_weight": share,
        "decay_base": share,
        "cl_weight": non_negative,
        "cl_loss": non_negative,
        "cl_temperature": positive,
        "ssl_temperature": positive,
        "ssl_weight": non_negative,
        "ssl_task": choice(SSL_TASKS),
        "feat_embed_dim": count,
        "content_embedding_size": count,
        "mft_hidden_size": count,
        "pwc_hidden_size": count,
        "clipmlp_hidden_size": count,
        "weight_size": sequence(count),
        "user_graph_k": count,
        "user_graph_stored": count,
        "user_graph_sampling": choice(["resample", "fixed"]),
        "cf_model": choice(CF_MODELS),
        "adjacency_norm": choice(sorted(ADJACENCY_NORMS)),
        "dct_mode": choice(DCT_MODES),
        "fusion": choice(FUSIONS),
        "edge_pruning": choice(EDGE_PRUNINGS),
        "mode": choice(PGL_MODES),
        "fusion_mode": choice(MMGCF_FUSION_MODES),
        "weighting": choice(MMGCF_WEIGHTINGS),
        "subgraph_keep": share,
        "fusion_dim": count,
        "fusion_tokens": count,
        "fusion_heads": count,
        "fusion_weight": non_negative,
        "ssl_items": choice(["batch", "all"]),
        "clipmlp_activation": choice(["relu", "leakyrelu", "tanh"]),
        "nfvlm_rank": count,
        "nfvlm_lambda": non_negative,
        "nfvlm_noise_scope": choice(["batch", "catalogue"]),
        "nfvlm_init": choice(["pca", "random"]),
        "nfvlm_user_init_std": positive,
        "trainable_features": boolean(),
        "use_pwc": boolean(),
        "use_visual": boolean(),
        "use_textual": boolean(),
        "pruning": boolean(),
        "concat": boolean(),
        "vbpr_bias": boolean(),
        "clipmlp_user_input": boolean(),
        "fusion_checkpoint": boolean(),
        "n_hyper_layer": count,
        "hyper_num": count,
        "keep_rate": number(0, 1, low_open=True),
        "alpha": non_negative,
        "gumbel_temperature": positive,
        "lgmrec_eval_noise_quirk": boolean(),
        "lgmrec_user_assignment_quirk": boolean(),
        "grcn_routing_quirk": boolean(),
        "mmgcn_frozen_quirk": boolean(),
        "beta": non_negative,
        "mvgae_frozen_quirk": boolean(),
        "sigmoid_latent": boolean(),
        "mvgae_item_offset_quirk": boolean(),
        "cohesion_detach_id_quirk": boolean(),
        "align_weight": non_negative,
        "mask_weight_f": non_negative,
        "mask_weight_g": non_negative,
        "perturbation_eps": non_negative,
        "mentor_mask_no_grad_quirk": boolean(),
        "mentor_shared_perturbed_encoder": boolean(),
        "mentor_user_graph": boolean(),
        "slmrec_stale_eval_quirk": boolean(),
        "aggr_mode": choice(["add", "mean"]),
        "dualgnn_user_fusion_quirk": boolean(),
        "dualgnn_padding_quirk": boolean(),
        "dualgnn_stale_eval_quirk": boolean(),
        "modality_latent_dim": mapping(),
        "kl_weight": non_negative,
        "neighbor_weight": non_negative,
    }
    return {"recbole": recbole, "plugin": plugin, "model": model}


def _raise():
    raise ValueError


def check_values(values, plugin_model=True):
    """Check (and normalise, in place) the keys of ``values`` that :func:`value_checks` lists.

    Raises:
        ConfigError: naming the first key whose value does not fit, what it must be and what
            it got.
    """
    tables = value_checks()
    rules = {**tables["recbole"], **tables["plugin"], **(tables["model"] if plugin_model else {})}
    for key, rule in rules.items():
        if key not in values:
            continue
        value = values[key]
        if isinstance(value, str) and value.strip() in YAML_NOTHING:  # the command line's "~": None, as in yaml
            value = values[key] = None
        if value is None:
            if rule.required:
                raise ConfigError(f"{key} must be {rule.wanted}, got nothing (~)")
            continue
        try:
            values[key] = rule.convert(value)
        except (ValueError, TypeError):
            raise ConfigError(f"{key} must be {rule.wanted}, got {value!r}") from None


def read_config_file(path, loader=yaml.SafeLoader):
    """The settings of one config file (a dict; ``{}`` for an empty file).

    Raises:
        ConfigError: naming the file, when it is missing or unreadable, not valid YAML (with the
            line of the problem), or its top level is not a mapping of keys to values.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist (config_files / --config_files)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path} cannot be read: {error}") from None
    try:
        values = yaml.load(text, Loader=loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold 'key: value' lines at its top level; it holds a "
                          f"{type(values).__name__}")
    return values


def metric_keys(metrics, topk):
    """The result keys full-sort evaluation gives for ``metrics`` at ``topk``: ``recall@20`` for
    a top-k metric, ``gauc`` for the others."""
    keys = []
    for metric in metrics:
        if issubclass(metrics_dict[metric.lower()], TopkMetric):
            keys += [f"{metric.lower()}@{k}" for k in topk]
        else:
            keys.append(metric.lower())
    return keys


def check_metrics(values):
    """``metrics`` must name RecBole metrics and ``valid_metric`` one of the results they give
    (checked before training: RecBole would fail with a KeyError after the first epoch).

    Raises:
        ConfigError: naming the key, the value and the choices.
    """
    metrics = values.get("metrics")
    if metrics is None:
        return
    metrics = [metrics] if isinstance(metrics, str) else metrics
    if not isinstance(metrics, (list, tuple)) or not all(isinstance(m, str) for m in metrics):
        raise ConfigError(f"metrics must be a list of metric names, got {metrics!r}")
    unknown = [m for m in metrics if m.lower() not in metrics_dict]
    if unknown:
        raise ConfigError(f"metrics: no metric named {', '.join(map(repr, unknown))}; RecBole's metrics are "
                          f"{', '.join(sorted(metrics_dict))}")
    valid = values.get("valid_metric")
    topk = values.get("topk") or []
    if valid is None or not values.get("eval_step", 1):
        return
    topk = topk if isinstance(topk, list) else [topk]
    if not isinstance(valid, str) or valid.lower() not in metric_keys(metrics, topk):
        at_k = [m for m in metrics if "@" in metric_keys([m], [1])[0]]
        plain = [m for m in metrics if m not in at_k]
        wanted = f"<metric>@<k> with <metric> one of metrics ({', '.join(at_k)}) and k one of topk {topk}"
        wanted += f", or one of {', '.join(plain)}" if plain else ""
        raise ConfigError(f"valid_metric must be {wanted}; got {valid!r}")


def check_checkpoint_dir(path):
    """A ``checkpoint_dir`` that cannot be created is a :class:`ConfigError` now, not an
    ``OSError`` once the data is loaded. Nothing is created here."""
    if not path:
        return
    folder = os.path.abspath(os.path.expanduser(str(path)))
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"checkpoint_dir {path} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"checkpoint_dir {path} cannot be {'written' if existing == folder else 'created'}: "
                          f"{existing} is not writable")


def check_modalities(values, one_modality_ok=False, refusal=""):
    """``modalities`` (and ``guider_modalities`` under ``guider: true``) must name modalities
    that the dataset config lists in ``modality_files``; for a model that runs on any of its
    modalities (``one_modality_ok``), at least one of ``modalities``. ``refusal``: the model's
    reason for needing them all, added to the message about ``modalities``."""
    files = values.get("modality_files")
    if not isinstance(files, dict):
        return
    keys = ["modalities"] + (["guider_modalities"] if values.get("guider") and values.get("guider_amsc") else [])
    for key in keys:
        wanted = list(values.get(key) or [])
        unknown = [name for name in wanted if name not in files]
        if unknown and key == "modalities" and one_modality_ok and len(unknown) < len(wanted):
            continue  # the model leaves the missing ones out (MultiModalRecommender._select_modalities)
        if unknown:
            user = "GUIDER" if key == "guider_modalities" else values["model"]
            raise ConfigError(
                f"{user} needs modalities {unknown} (config key {key}: {wanted}); dataset '{values['dataset']}' "
                f"lacks {unknown}: it has {sorted(files)} (modality_files of its dataset config). Set {key} to "
                "some of these, or add their files to modality_files." + (refusal if key == "modalities" else ""))


def is_plugin_model(model_class):
    return isinstance(model_class, type) and issubclass(model_class, MultiModalRecommender)


# ---------------------------------------------------------------------------- unknown keys
# keys read in code that no packaged yaml sets: RecBole's run-time keys and the plugin's optional ones
CODE_KEYS = {
    "model", "dataset", "config_files", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "device", "local_rank",
    "single_spec", "world_size", "nproc", "offset", "ip", "port", "valid_neg_sample_args",
    "test_neg_sample_args", "feature_id_map", "cold_start_items", "synthetic_generator", "dataset_builder",
    "modality_files", "modality_dims", "hyper_parameters",
}


def _yaml_keys(pattern):
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    keys = set()
    for path in glob.glob(pattern, recursive=True):
        with open(path, encoding="utf-8") as handle:
            loaded = yaml.load(handle, Loader=loader)
        if isinstance(loaded, dict):
            keys.update(loaded)
    return keys


@functools.lru_cache(maxsize=1)
def known_keys():
    """Every key a default knows: RecBole's yaml files (overall, dataset, model, quick-start),
    the plugin's (overall, model, dataset) and :data:`CODE_KEYS`."""
    recbole_properties = os.path.join(os.path.dirname(recbole.__file__), "properties")
    return frozenset(_yaml_keys(os.path.join(recbole_properties, "**", "*.yaml"))
                     | _yaml_keys(os.path.join(PROPERTIES_DIR, "**", "*.yaml")) | CODE_KEYS)


def unknown_key_warnings(config):
    """One warning per key given in a config file, the config dict or the command line that no
    model, dataset or default knows (it would be silently ignored), with the closest known key."""
    known = known_keys() | set(config.internal_config_dict)
    sources = [("command line", config.cmd_config_dict), ("config_dict", config.variable_config_dict),
               ("config files", config.file_config_dict)]
    messages = []
    for key in config.external_config_dict:
        if key in known:
            continue
        source = next(name for name, given in sources if key in (given or {}))
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        messages.append(f"config key '{key}' (from the {source}) is unknown to every model, dataset and "
                        f"default, so nothing reads it{hint}")
    return messages


def uses_mmrec_split(config):
    """True when the dataset's interactions come in MMRec's layout (fixed ``x_label`` split):
    the file is one, or the synthetic generator is about to write one."""
    if config["MODEL_TYPE"] not in (ModelType.GENERAL, ModelType.TRADITIONAL):
        return False
    path = os.path.join(config["data_path"], f"{config['dataset']}.inter")
    if os.path.isfile(path):
        try:
            return inter_layout(path) == "mmrec"
        except DataError:  # reported, with the file's name, when the dataset is loaded
            return False
    generator = config["synthetic_generator"]
    if not generator and config["dataset_builder"]:
        return True  # recbole_mm.prepare writes MMRec's layout
    return bool(generator) and dict(generator).get("layout", "mmrec") == "mmrec"
