"""``Config``: RecBole's configurator that knows the plugin's models and packaged defaults."""
import os
from logging import getLogger

from recbole.config import Config as RecBoleConfig

from recbole_mm.utils import get_model

PROPERTIES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "properties")


class Config(RecBoleConfig):
    """RecBole's ``Config`` with two changes.

    - Model names resolve through :func:`recbole_mm.utils.get_model` (plugin first).
    - After RecBole's own internal yaml files, the plugin's packaged defaults are layered on
      in RecBole's precedence order: ``properties/overall.yaml`` < ``properties/model/<Model>.yaml``
      < ``properties/dataset/<dataset>.yaml``. User config files, the config dict and the
      command line still override all of them (file < dict < command line), as in RecBole.
    """

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
                raise ValueError(f"denoise: wbpr draws popularity negatives, but {self.model} trains without "
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
                raise ValueError("denoise: wbpr needs negative sampling (train_neg_sample_args)")
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
