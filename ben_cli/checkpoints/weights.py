"""Finding a model's checkpoint file: explicit path (a file or a folder), $BEN_WEIGHTS,
./weights/, the user cache, then a download of the model's official file from the
Hugging Face Hub.

Each registry model has its own official file (``ben2-base``: ``BEN2_Base.pth``,
``ben-base``: ``BEN_Base.pth``); the search looks for that file and its
``.safetensors`` conversion, never for another model's file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

from ben_cli.checkpoints.cache import is_cache_file
from ben_cli.checkpoints.format import RUN_BEST, RUN_CONFIG
from ben_cli.errors import BenWarning, WeightsNotFoundError
from ben_cli.models.registry import DEFAULT_MODEL, MODELS, ModelEntry, get_entry
from ben_cli.paths import cache_dir, weights_dir

CHECKPOINT_SUFFIXES = (".pth", ".safetensors", ".pt")
ETAG_TIMEOUT_S = 5.0  # the Hub's metadata request; offline, the download fails after one such try


def file_names(model: str = DEFAULT_MODEL) -> list[str]:
    """The file names that hold ``model``: its official file, then the .safetensors conversion (none for tiny)."""
    entry = get_entry(model)
    return [entry.filename, f"{Path(entry.filename).stem}.safetensors"] if entry.filename else []


def _candidates(model: str) -> list[tuple[str, Path]]:
    """(where, path) for the model's files in ./weights/, then in the cache."""
    names = file_names(model)
    return [(where, d / n) for where, d in (("weights/", weights_dir()), ("cache", cache_dir()))
            for n in names]


def search_locations(model: str = DEFAULT_MODEL) -> list[tuple[str, Path]]:
    """(where, path) pairs in search order, for ``ben weights`` and error messages."""
    get_entry(model)
    out: list[tuple[str, Path]] = []
    env = os.environ.get("BEN_WEIGHTS")
    if env:
        out.append(("$BEN_WEIGHTS", Path(env).expanduser()))
    return out + _candidates(model)


def find_weights(explicit: str | Path | None = None, model: str = DEFAULT_MODEL, *,
                 download: bool = True) -> Path:
    """The checkpoint of ``model`` to use: ``explicit``, $BEN_WEIGHTS, ./weights/, cache, else download.

    ``explicit`` and $BEN_WEIGHTS may name a folder: the model's file is looked
    for inside it (see :func:`find_in_folder`). Raises WeightsNotFoundError (one
    line: which file, where it was looked for, where to put it) and
    UnknownModelError (a UsageError) for a model the registry does not know.
    """
    entry = get_entry(model)
    if explicit is not None:
        return _resolve_given(Path(explicit).expanduser(), model, "weights file not found")
    env = os.environ.get("BEN_WEIGHTS")
    if env:
        return _resolve_given(Path(env).expanduser(), model, "$BEN_WEIGHTS points to a missing file")
    if entry.filename is None:
        raise WeightsNotFoundError(f"model {model!r} has no official checkpoint file; pass --weights PATH "
                                   "(or set $BEN_WEIGHTS)")
    for _, p in _candidates(model):
        if p.is_file():
            return p
    if download:
        return download_weights(model)
    raise WeightsNotFoundError(_missing_message(entry))


def run_weights(folder: Path) -> Path | None:
    """A training run folder's (``config.toml`` and ``best.safetensors``) weights, said once as a
    :class:`~ben_cli.errors.BenWarning`; None for any other folder or file."""
    best = folder / RUN_BEST
    if not (folder.is_dir() and (folder / RUN_CONFIG).is_file() and best.is_file()):
        return None
    warnings.warn(BenWarning(f"{folder} is a training run: using its {RUN_BEST}"), stacklevel=3)
    return best


def checkpoint_path(path: str | Path) -> Path:
    """``path``, or the weights of the training run it names (:func:`run_weights`): for ``--init``."""
    path = Path(path).expanduser()
    return run_weights(path) or path


def _resolve_given(p: Path, model: str, missing: str) -> Path:
    if p.is_dir():
        return run_weights(p) or find_in_folder(p, model)
    if not p.is_file():
        raise WeightsNotFoundError(f"{missing}: {p}")
    return p


def find_in_folder(folder: Path, model: str = DEFAULT_MODEL) -> Path:
    """``model``'s checkpoint inside ``folder`` (not recursive).

    Looks for the model's own file names (``BEN_Base.pth``, ``BEN_Base.safetensors``);
    failing that, the folder's only checkpoint file (``.pth``, ``.safetensors``,
    ``.pt``), unless it is another registry model's official file. Safetensors
    caches of pickled files (``*.cache.safetensors``) are never candidates.
    WeightsNotFoundError names what was looked for otherwise.
    """
    names = file_names(model)
    for name in names:
        if (folder / name).is_file():
            return folder / name
    others = {Path(n).stem.lower() for m in MODELS if m != model for n in file_names(m)}
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in CHECKPOINT_SUFFIXES and p.is_file()
                       and not p.name.startswith(".") and not is_cache_file(p))
    except OSError as e:
        raise WeightsNotFoundError(f"{folder}: cannot list the folder ({e.strerror or e})") from None
    usable = [p for p in files if p.stem.lower() not in others]
    if len(usable) == 1:
        return usable[0]
    wanted = f"{' or '.join(names)}, or a single checkpoint file" if names else "a single checkpoint file"
    if not files:
        found = "no .pth, .safetensors or .pt file there"
    elif not usable:
        found = f"only other models' files: {', '.join(p.name for p in files)}"
    else:
        shown = ", ".join(p.name for p in usable[:5]) + (", ..." if len(usable) > 5 else "")
        found = f"{len(usable)} candidates: {shown}; pass the file"
    raise WeightsNotFoundError(f"{folder}: looked for {wanted} of model {model!r}; {found}")


def _missing_message(entry: ModelEntry) -> str:
    return (f"{entry.filename} not found: put it in ./weights/ or {cache_dir()}, or pass --weights PATH "
            f"(or set $BEN_WEIGHTS)")


_HUB_LOCK = threading.Lock()


@contextlib.contextmanager
def fail_fast_hub() -> Iterator[None]:
    """While downloading: no retry loop when the Hub cannot be reached, and no retry chatter.

    huggingface_hub retries a failed metadata request with back-off (about 25 s
    offline, each try logged as a warning). Its retry-on-network-error list is
    emptied for the call (when this version has it), and its log is limited to
    errors; both are restored afterwards. Progress bars of a real download stay.
    """
    with _HUB_LOCK:
        logger = logging.getLogger("huggingface_hub")
        level = logger.level
        logger.setLevel(logging.ERROR)
        fd = None
        with contextlib.suppress(ImportError):
            from huggingface_hub import file_download as fd
        retry_on = getattr(fd, "_DEFAULT_RETRY_ON_EXCEPTIONS", None)
        if retry_on is not None:
            fd._DEFAULT_RETRY_ON_EXCEPTIONS = ()
        try:
            yield
        finally:
            if retry_on is not None:
                fd._DEFAULT_RETRY_ON_EXCEPTIONS = retry_on
            logger.setLevel(level)


def _download_reason(e: Exception) -> str:
    """A short reason for a failed download (the Hub's own messages span lines)."""
    cause = e.__cause__ or e.__context__
    names = {type(e).__name__, type(cause).__name__}
    if "OfflineModeIsEnabled" in names:
        return "offline mode is on ($HF_HUB_OFFLINE)"
    name = type(e).__name__
    if name in ("LocalEntryNotFoundError", "IncompleteSnapshotError"):
        return "cannot reach the Hub" + (f": {_first_line(cause)}" if cause is not None and str(cause).strip() else "")
    if name in ("RepositoryNotFoundError", "GatedRepoError", "RemoteEntryNotFoundError", "EntryNotFoundError"):
        return f"{name}: not available on the Hub"
    return f"{name}: {_first_line(e)}" if str(e).strip() else name


def _first_line(e: BaseException, limit: int = 120) -> str:
    line = str(e).strip().splitlines()[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def download_weights(model: str = DEFAULT_MODEL) -> Path:
    """Download ``model``'s official checkpoint into the cache (with a progress bar); its path.

    Offline, fails after one metadata request (:data:`ETAG_TIMEOUT_S` at most)
    with WeightsNotFoundError saying which file is missing and where to put it.
    """
    entry = get_entry(model)
    if not (entry.filename and entry.repo_id):
        raise WeightsNotFoundError(f"model {model!r} has no downloadable checkpoint; pass --weights PATH")
    target = cache_dir()
    try:
        import huggingface_hub

        with fail_fast_hub():
            path = huggingface_hub.hf_hub_download(entry.repo_id, entry.filename, local_dir=target,
                                                   etag_timeout=ETAG_TIMEOUT_S)
    except Exception as e:
        _drop_hub_leftovers(target, entry.filename)
        raise WeightsNotFoundError(
            f"{_missing_message(entry)}; download from {entry.repo_id} failed ({_download_reason(e)})"
        ) from None
    return Path(path)


_HUB_BOILERPLATE = ("CACHEDIR.TAG", ".gitignore")  # what huggingface_hub writes into every local_dir's .cache


def _drop_hub_leftovers(target: Path, filename: str) -> None:
    """After a failed download into ``target``: remove the lock huggingface_hub left for ``filename``
    and the ``.cache/huggingface`` folders it made, when nothing else is in them (a partial
    download, kept for resuming, keeps them)."""
    hub = target / ".cache" / "huggingface"
    with contextlib.suppress(OSError):
        (hub / "download" / f"{filename}.lock").unlink(missing_ok=True)
        (hub / "download").rmdir()  # only when empty
        if {p.name for p in hub.iterdir()} <= set(_HUB_BOILERPLATE):
            for name in _HUB_BOILERPLATE:
                (hub / name).unlink(missing_ok=True)
            hub.rmdir()
            hub.parent.rmdir()


REFINER_FILE = "BEN_Refiner.safetensors"
"""The file name the refiner network's weights are looked for under (no official file exists)."""

REFINER_HOWTO = (f"train them with `ben train refiner --data DIR --base-weights CK --out RUN` and pass "
                 f"--refiner-weights RUN/best.safetensors (or put {REFINER_FILE} in ./weights/ or the cache)")


def find_refiner_weights(explicit: str | Path | None = None, *, required: bool = False) -> Path | None:
    """The refiner network's checkpoint: ``explicit``, $BEN_REFINER_WEIGHTS, ./weights/, the cache.

    ``explicit`` and the variable may name a file or a folder holding ``BEN_Refiner.safetensors``,
    a training run's ``best.safetensors``, or a single checkpoint. Nothing is downloaded: there
    are no official refiner weights. Returns None when nothing is found, unless ``required`` (then WeightsNotFoundError
    says how to get them); an explicit path that does not exist is always an error.
    """
    for given, label in ((explicit, "refiner weights file not found"),
                         (os.environ.get("BEN_REFINER_WEIGHTS"), "$BEN_REFINER_WEIGHTS points to a missing file")):
        if given is None or given == "":
            continue
        p = Path(given).expanduser()
        if p.is_file():
            return p
        if p.is_dir():
            return _refiner_in_folder(p)
        raise WeightsNotFoundError(f"{label}: {p}")
    for folder in (weights_dir(), cache_dir()):
        if (folder / REFINER_FILE).is_file():
            return folder / REFINER_FILE
    if required:
        raise WeightsNotFoundError(f"no refiner weights found: {REFINER_HOWTO}")
    return None


def _refiner_in_folder(folder: Path) -> Path:
    if not (folder / REFINER_FILE).is_file() and (run := run_weights(folder)) is not None:
        return run
    for name in (REFINER_FILE, "best.safetensors"):  # the shipped name, then a `ben train refiner` run folder
        if (folder / name).is_file():
            return folder / name
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file() and not p.name.startswith(".")
                   and not is_cache_file(p))
    if len(files) == 1:
        return files[0]
    raise WeightsNotFoundError(f"{folder}: looked for {REFINER_FILE}, best.safetensors or a single .safetensors file "
                               f"({len(files)} found); pass the file")

