"""``MultiModalDataset``: RecBole's ``Dataset`` plus item-feature matrices and MMRec folders.

Dataset yaml keys read here (see ``recbole_mm/properties/dataset/baby.yaml``)::

    modality_files: {image: image_feat.npy, text: text_feat.npy}   # relative to the data folder;
                                 # unset: an MMRec folder's <modality>_feat.npy files are used
    modality_dims: {image: 4096, text: 384}                      # optional: checked against the files
    feature_id_map: ~            # optional: file with the item token of each feature row
    synthetic_generator: {...}   # optional: generate the folder on first use (``synthetic``)
    dataset_builder: ml100k_text # optional: build the folder on first use with recbole_mm.prepare
                                 # (``recbole_mm.data.bundled``)
"""
import os

import numpy as np
import torch
from recbole.data.dataset import Dataset
from recbole.utils import FeatureSource, FeatureType, set_color

from recbole_mm.data.modality import (
    FeatureFileError,
    align_rows,
    load_matrix,
    read_id_map,
    rows_for_tokens,
)
from recbole_mm.data.noise import inject_noise
from recbole_mm.data.synthetic import ensure_synthetic_dataset
from recbole_mm.errors import ConfigError, DataError
from recbole_mm.mmrec_format import (
    MMREC_ITEM,
    MMREC_LABEL,
    MMREC_USER,
    feature_files,
    inter_layout,
    read_mmrec_inter,
)

SPLIT_NAMES = ("train", "valid", "test")


class DatasetNotFoundError(DataError, FileNotFoundError):
    """The dataset folder or its interaction file is missing; the message says what goes where."""


class MultiModalDataset(Dataset):
    """A RecBole ``Dataset`` whose items carry one feature matrix per modality.

    Attributes:
        modality_features (dict[str, torch.FloatTensor]): modality name -> (n_items x d) matrix,
            row ``i`` = internal item id ``i``, row 0 (padding) all zeros. CPU tensors; models
            move them to ``config['device']``.
    """

    def _load_data(self, token, dataset_path):
        generator_args = self.config["synthetic_generator"]
        if generator_args:
            ensure_synthetic_dataset(dataset_path, token, generator_args)
        elif self.config["dataset_builder"]:
            from recbole_mm.data.bundled import ensure_bundled_dataset

            ensure_bundled_dataset(dataset_path, token, self.config["dataset_builder"])
        self._check_interactions_exist(token, dataset_path)
        super()._load_data(token, dataset_path)
        self._warn_about_repeated_pairs(os.path.join(dataset_path, f"{token}.inter"))

    def _warn_about_repeated_pairs(self, path):
        """One warning with the count when user–item pairs occur more than once (RecBole and
        MMRec train on every row, so a repeated train pair weighs double); nothing is changed
        unless ``rm_dup_inter`` asks RecBole to drop the repeats."""
        if self.inter_feat is None or self.config["rm_dup_inter"] is not None:
            return
        repeats = int(self.inter_feat.duplicated(subset=[self.uid_field, self.iid_field]).sum())
        if repeats:
            remedy = ("delete the repeated rows" if getattr(self, "mmrec_layout", False)
                      else "set rm_dup_inter: first (or last) or delete the repeated rows")
            self.logger.warning(f"{path}: {repeats} of {len(self.inter_feat)} rows repeat a user–item pair of an "
                                f"earlier row; they are kept, and a pair repeated in train is trained on as often "
                                f"as it occurs; to train each pair once, {remedy}")

    def _check_interactions_exist(self, token, dataset_path):
        if self.benchmark_filename_list is not None:
            expected = [f"{token}.{part}.inter" for part in self.benchmark_filename_list]
        else:
            expected = [f"{token}.inter"]
        missing = [name for name in expected if not os.path.isfile(os.path.join(dataset_path, name))]
        if missing:
            raise DatasetNotFoundError(self._not_found_message(token, dataset_path, missing))

    def _not_found_message(self, token, dataset_path, missing):
        files = dict(self.config["modality_files"] or {})
        dims = dict(self.config["modality_dims"] or {})
        features = ", ".join(
            f"{name}" + (f" ({dims[key]}-d {key} features)" if key in dims else f" ({key} features)")
            for key, name in files.items()
        )
        lines = [
            f"Dataset '{token}' not found: missing {', '.join(missing)} in {os.path.abspath(dataset_path)}.",
            f"Put the dataset folder at {os.path.join(dataset_path, '')} with:",
            f"  {token}.inter  - MMRec layout (tab-separated columns userID, itemID, x_label with "
            "0/1/2 = train/valid/test) or a RecBole atomic file",
        ]
        if features:
            lines.append(f"  {features}  - feature rows in item-id order")
        lines.append(
            "MMRec's preprocessed folders (baby, sports, clothing, ...) are linked from "
            "https://github.com/enoche/MMRec; copy one as is, nothing needs converting."
        )
        return "\n".join(lines)

    # ------------------------------------------------------------------ MMRec import
    def _load_inter_feat(self, token, dataset_path):
        path = os.path.join(dataset_path, f"{token}.inter")
        if self.benchmark_filename_list is None and inter_layout(path) == "mmrec":
            self._load_mmrec_inter(path)
            return
        for part in self.benchmark_filename_list or []:
            part_path = os.path.join(dataset_path, f"{token}.{part}.inter")
            if inter_layout(part_path) != "atomic":
                raise DataError(f"{part_path}: benchmark_filename files need RecBole's typed header "
                                "(user_id:token<TAB>item_id:token...), not MMRec's")
        super()._load_inter_feat(token, dataset_path)

    def _load_mmrec_inter(self, path):
        """Read an MMRec ``.inter`` as a fixed train/valid/test split.

        Rows are ordered train, valid, test and ``file_size_list`` records the three sizes, so
        RecBole's ``build`` returns the split as it does for ``benchmark_filename`` files. As in
        MMRec (``filter_out_cod_start_users``), valid/test rows of users absent from train are
        dropped.
        """
        frame = read_mmrec_inter(path)
        in_train = frame[MMREC_USER].isin(frame.loc[frame[MMREC_LABEL] == 0, MMREC_USER])
        dropped = int((~in_train).sum())
        if dropped:
            self.logger.info(f"{path}: dropped {dropped} valid/test rows of users absent from train")
        frame = frame[in_train].sort_values(MMREC_LABEL, kind="stable").reset_index(drop=True)
        sizes = [int((frame[MMREC_LABEL] == label).sum()) for label in range(3)]
        frame = frame.drop(columns=[MMREC_LABEL]).rename(
            columns={MMREC_USER: self.uid_field, MMREC_ITEM: self.iid_field}
        )
        for field in frame.columns:
            ftype = FeatureType.TOKEN if field in (self.uid_field, self.iid_field) else FeatureType.FLOAT
            frame[field] = frame[field].astype(str if ftype == FeatureType.TOKEN else np.float64)
            self.set_field_property(field, ftype, FeatureSource.INTERACTION, 1)
        self.inter_feat = frame
        self.mmrec_layout = True
        self.file_size_list = sizes
        self.benchmark_filename_list = list(SPLIT_NAMES)

    # ------------------------------------------------------------------ cold-start split
    def build(self):
        """RecBole's split, or the item cold-start split when ``cold_start_items`` is set;
        then ``noise_ratio`` random pairs added to the train split (:mod:`recbole_mm.data.noise`)."""
        shares = self.config["cold_start_items"]
        splits = self._cold_start_split(*shares) if shares else super().build()
        if len(splits) == 3:
            self._inject_noise(*splits)
        return splits

    def _inject_noise(self, train, valid, test):
        """Add ``noise_ratio`` · |train| random pairs to ``train`` (never a pair of any split, nor
        a held-out cold-start item) and record them in ``train.injected_pairs`` (None when none)."""
        ratio = self.config["noise_ratio"] or 0.0
        cold = getattr(train, "cold_items", None)
        excluded = np.concatenate(cold) if cold is not None else None
        injected = inject_noise(train, [valid, test], ratio, self.config["seed"], excluded)
        if injected:
            self.logger.info(set_color(
                f"noise_ratio {ratio}: {injected} random user-item pairs added to the train split "
                f"({train.inter_num} train interactions now)", "yellow"))

    def _cold_start_split(self, valid_share, test_share):
        """Hold out items, not interactions (LIRDRec's cold-start protocol).

        A random ``valid_share`` of the items (seeded by ``seed``) and a disjoint ``test_share``
        are held out; every interaction follows its item, so held-out items never appear in
        the train split (any fixed split of the data is pooled first). The held-out items are
        kept in ``self.cold_items`` = (valid ids, test ids);
        :func:`recbole_mm.data.data_preparation` keeps them out of training negatives too.
        The valid and test splits carry ``candidate_items``: their own held-out items, the only
        items :class:`~recbole_mm.trainer.MultiModalTrainer` ranks when evaluating them (so
        random scores give GAUC 0.5).
        """
        if not (0 < valid_share and 0 < test_share and valid_share + test_share < 1):
            raise ConfigError(f"cold_start_items needs two positive shares summing below 1, got {[valid_share, test_share]}")
        self._change_feat_format()
        items = self.inter_feat[self.iid_field].numpy()
        present = np.unique(items)
        order = np.random.default_rng(self.config["seed"]).permutation(present)
        n_valid = max(1, int(round(valid_share * len(present))))
        n_test = max(1, int(round(test_share * len(present))))
        valid_items, test_items = np.sort(order[:n_valid]), np.sort(order[n_valid:n_valid + n_test])
        in_valid, in_test = np.isin(items, valid_items), np.isin(items, test_items)
        in_train = ~(in_valid | in_test)
        self.cold_items = (valid_items, test_items)
        self.logger.info(
            f"cold-start split: {n_valid} valid items, {n_test} test items held out "
            f"({int(in_valid.sum())} / {int(in_test.sum())} interactions)"
        )
        splits = [self.copy(self.inter_feat[np.nonzero(mask)[0]]) for mask in (in_train, in_valid, in_test)]
        splits[1].candidate_items, splits[2].candidate_items = valid_items, test_items
        return splits

    # ------------------------------------------------------------------ features
    def _data_processing(self):
        super()._data_processing()
        self.modality_features = self._load_modalities()

    def _load_modalities(self):
        files = self.config["modality_files"]
        files = self._detect_feature_files() if files is None else dict(files)   # {}: no features
        if not files:
            return {}
        dims = dict(self.config["modality_dims"] or {})
        unknown = sorted(set(dims) - set(files))
        if unknown:
            raise FeatureFileError(f"modality_dims names {unknown}, which modality_files does not list.")
        id_map_file = self.config["feature_id_map"]
        id_map = read_id_map(os.path.join(self.dataset_path, id_map_file)) if id_map_file else None
        item_tokens = self.field2id_token[self.iid_field][1:]
        features, row_counts = {}, {}
        for modality, file_name in files.items():
            path = os.path.join(self.dataset_path, file_name)
            matrix = load_matrix(path, modality, dims.get(modality))
            row_counts[file_name] = matrix.shape[0]
            rows = rows_for_tokens(item_tokens, matrix.shape[0], id_map, source=path,
                                   id_map_source=id_map_file and os.path.join(self.dataset_path, id_map_file))
            features[modality] = torch.from_numpy(align_rows(matrix, rows))
            self.logger.info(
                set_color(f"modality {modality}", "blue") + f": {path} {tuple(matrix.shape)}"
            )
        if len(set(row_counts.values())) > 1:
            raise FeatureFileError(
                f"Feature files of {self.dataset_name} disagree on the number of items: {row_counts}."
            )
        return features

    def _detect_feature_files(self):
        """Without ``modality_files`` in any config (``{}`` means none), an MMRec folder's
        ``<modality>_feat.npy`` files (row ``i`` = item ``i``), found and logged; RecBole atomic
        folders name theirs."""
        if not getattr(self, "mmrec_layout", False):
            return {}
        files = feature_files(self.dataset_path)
        if files:
            self.logger.info(set_color("modality_files", "blue") + f" not set: found {files} in {self.dataset_path}")
            id_maps = sorted(name for name in os.listdir(self.dataset_path) if name.endswith("_items.txt"))
            if id_maps and not self.config["feature_id_map"]:
                self.logger.warning(f"{self.dataset_path} holds {id_maps}: if the feature rows follow one of them, "
                                    "name it in feature_id_map (and the files in modality_files)")
        return files

    def __getitem__(self, index, join=True):
        """RecBole's rows ``index`` of the interactions (joined with user / item features), a
        numpy or tensor index applied to each field as one tensor: RecBole's ``Interaction``
        turns it into a Python list first, about 1 ms of every 2,048-row train batch."""
        if isinstance(index, (np.ndarray, torch.Tensor)):
            index = torch.as_tensor(index, device=self.inter_feat[self.uid_field].device)
            frame = self.inter_feat
            df = type(frame)({field: values[index] for field, values in frame.interaction.items()})
        else:
            df = self.inter_feat[index]
        return self.join(df) if join else df

    def __str__(self):
        info = [super().__str__()]
        for name, matrix in getattr(self, "modality_features", {}).items():
            info.append(set_color(f"Modality {name}", "blue") + f": {tuple(matrix.shape)}")
        return "\n".join(info)
