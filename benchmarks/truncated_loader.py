"""Part of an epoch, for timing: a data loader cut after its first ``n`` batches, and a
trainer class whose ``fit`` trains on such a loader. Plain Python, no recbole_mm import: the
reference runner uses it in the reference's own interpreter, as ``scale.py`` and
``ours_runner.py`` do in ours.
"""
import copy
import functools
import itertools


def truncated(loader, n):
    """A shallow copy of a RecBole (or MMRec) data loader that yields only its first ``n``
    batches, for timing part of an epoch or of an evaluation. It stays an instance of the
    loader's class (RecBole's trainer tells full-sort evaluation apart by ``isinstance``)."""
    cls = type(loader)

    def first_batches(self):
        batches = cls.__iter__(self)
        if batches is not self:  # RecBole: a fresh iterator per epoch
            yield from itertools.islice(batches, n)
            return
        # MMRec: the loader is its own iterator and keeps its position in ``pr``, which an epoch
        # cut short would leave mid-way: every truncated epoch starts from the first batch
        self.pr = 0
        for _ in range(n):
            try:
                yield cls.__next__(self)
            except StopIteration:
                return

    subclass = type(f"Truncated{cls.__name__}", (cls,), {
        "__iter__": first_batches,
        "__len__": lambda self: min(n, cls.__len__(self)),
    })
    clone = copy.copy(loader)
    clone.__class__ = subclass
    return clone


def truncate_training(trainer_cls, n):
    """Patch ``trainer_cls.fit`` (RecBole's or MMRec's signature: the train loader first) so
    that every epoch trains on the first ``n`` batches of the loader only; the rest of ``fit``
    (evaluation, early stopping, logging) is untouched. Returns the original ``fit``."""
    original = trainer_cls.fit

    @functools.wraps(original)
    def fit(self, train_data, *args, **kwargs):
        if not getattr(train_data, "_truncated_for_timing", False):
            train_data = truncated(train_data, n)
            train_data._truncated_for_timing = True
        return original(self, train_data, *args, **kwargs)

    trainer_cls.fit = fit
    return original
