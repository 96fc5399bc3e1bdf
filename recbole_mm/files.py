"""Files a run writes: atomic replacement, and the folder of the derived-data cache.

Several runs may share a checkpoint folder or a dataset's cache (a grid search, two jobs on
one machine, a cluster's shared disk). Every writer here therefore writes a temporary file
of its own (``tempfile.mkstemp`` in the destination folder, so the rename never crosses a
file system) and moves it into place with ``os.replace``: a reader sees the old file or the
whole new one, never a mix, and two writers never share a temporary name.
"""
import contextlib
import hashlib
import logging
import os
import tempfile

AUTO_CACHE = "auto"
CACHE_FOLDER = "recbole_mm_cache"
NO_CACHE = ("", "~", "none", "null", "false")  # as the command line spells them (--cache_dir=~)

logger = logging.getLogger(__name__)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def staged_path(path):
    """A fresh, empty temporary file next to ``path``, unique to this writer, with the
    permissions a plain ``open`` would give (``0o666`` less the umask, not ``mkstemp``'s
    private ``0o600``). The caller writes it and moves it onto ``path`` with ``os.replace``
    (or removes it on failure); for writers that need a file name (``np.lib.format.open_memmap``)."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(handle)
    os.chmod(temporary, 0o666 & ~_UMASK)
    return temporary


def write_staged(path, write):
    """Write ``write(handle)`` (a binary file object) to a :func:`staged_path` of ``path``,
    flushed to disk; returns the temporary file's name, which the caller ``os.replace``s onto
    ``path`` (several files can so be staged first and replaced together)."""
    temporary = staged_path(path)
    try:
        with open(temporary, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
    except BaseException:
        discard(temporary)
        raise
    return temporary


def discard(temporary):
    """Remove a staged file, if it is still there."""
    with contextlib.suppress(OSError):
        os.unlink(temporary)


def atomic_write(path, write):
    """Write ``path`` through ``write(handle)`` (a binary file object) without ever exposing a
    partial file: :func:`write_staged`, then ``os.replace``. On any error the temporary file is
    removed and ``path`` keeps its previous content."""
    temporary = write_staged(path, write)
    try:
        os.replace(temporary, path)
    except BaseException:
        discard(temporary)
        raise


def atomic_torch_save(obj, path, **kwargs):
    """``torch.save(obj, path, **kwargs)`` through :func:`atomic_write`."""
    import torch  # here, so that the feature extractors' command lines start without torch

    atomic_write(path, lambda stream: torch.save(obj, stream, **kwargs))


def unwritable_reason(folder):
    """Why files cannot be created in ``folder`` (created if missing), or ``None`` if they can.

    Tries it rather than asking ``os.access`` (which says yes to root on a read-only mount
    and knows nothing of ACLs): makes the folder, creates and removes a probe file.
    """
    try:
        os.makedirs(folder, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".probe-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        return f"{type(error).__name__}: {error.strerror or error}"
    return None


def user_cache_dir(data_path):
    """The per-user cache folder of a dataset folder: ``$XDG_CACHE_HOME/recbole_mm/<name>-<hash>``
    (``~/.cache`` when ``XDG_CACHE_HOME`` is unset), keyed by the dataset folder's absolute path
    so that two datasets of the same name never share it."""
    data_path = os.path.abspath(data_path)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    key = hashlib.sha1(data_path.encode()).hexdigest()[:12]
    return os.path.join(base, "recbole_mm", f"{os.path.basename(os.path.normpath(data_path))}-{key}")


def resolve_cache_dir(setting, data_path):
    """The folder derived data (kNN item graphs) of the dataset at ``data_path`` is cached in.

    Args:
        setting: the ``cache_dir`` config value: ``auto`` (the dataset's own
            ``<data_path>/recbole_mm_cache``), a folder (``~/...`` expanded), or ``None``
            (yaml ``~``; ``--cache_dir=~`` / ``None`` / ``False`` on the command line) for no
            disk cache.
        data_path: the dataset folder (RecBole's ``config['data_path']``).

    Returns:
        str or ``None`` (no disk cache). When the chosen folder cannot be written (a read-only
        dataset folder, a shared installation), the user cache :func:`user_cache_dir` is used
        with a warning; when that cannot be written either, ``None`` with a warning.
    """
    if setting is None or setting is False or str(setting).strip().lower() in NO_CACHE:
        return None
    setting = str(setting)
    wanted = os.path.join(data_path, CACHE_FOLDER) if setting == AUTO_CACHE else os.path.expanduser(setting)
    problem = unwritable_reason(wanted)
    if problem is None:
        return wanted
    fallback = user_cache_dir(data_path)
    fallback_problem = unwritable_reason(fallback)
    if fallback_problem is None:
        logger.warning(f"cache_dir: cannot write to {wanted} ({problem}); caching in {fallback} instead "
                       "(set cache_dir to a writable folder, or to ~ for no disk cache)")
        return fallback
    logger.warning(f"cache_dir: cannot write to {wanted} ({problem}) nor to {fallback} ({fallback_problem}); "
                   "derived data is computed without a disk cache")
    return None
