"""nbserve's model cache: checkpoints built into a folder once, published whole, checked on reuse.

A builder writes its checkpoint into a temporary folder beside the target, then a marker file
last (the recipe's digest and the size of every file), then renames the folder into place. A
reader trusts a folder only when its marker carries the recipe's digest and every file it lists
has its recorded size; a marker with another digest means an older recipe (rebuilt), files that
differ from the marker mean a damaged cache (refused, with the way out). This module knows
nothing of any particular model: `nbserve.models.tiny` and `nbserve.models.smollm2` build.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator

logger = logging.getLogger(__name__)

__all__ = ["DamagedCheckpointError", "build_once", "quiet_progress_bars"]

MARKER = ".nbserve-complete"


class DamagedCheckpointError(RuntimeError):
    """A cached checkpoint's files are not the ones its marker recorded (truncated, removed)."""


def _marker_lines(path: pathlib.Path) -> list[str] | None:
    try:
        return (path / MARKER).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None


def _is_complete(path: pathlib.Path, digest: str) -> bool:
    """True if ``path`` has a marker for this recipe (its files are checked by `_damage`)."""
    lines = _marker_lines(path)
    return bool(lines) and lines[0].strip() == digest  # type: ignore[index]


def _damage(path: pathlib.Path) -> str | None:
    """What differs between ``path``'s files and its marker's record, or None if nothing.

    Markers written before sizes were recorded hold the digest only and check nothing more.
    """
    for line in (_marker_lines(path) or [])[1:]:
        size, _, name = line.partition(" ")
        try:
            actual = (path / name).stat().st_size
        except OSError:
            return f"{name} is missing"
        if actual != int(size):
            return f"{name} has {actual} bytes, {size} when it was built"
    return None


def _durable(file: pathlib.Path) -> None:
    """Make ``file`` world-readable and flush it to disk."""
    os.chmod(file, 0o644)
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _seal(directory: pathlib.Path, digest: str) -> None:
    """Make ``directory``'s files world-readable and durable, then write its marker last.

    ``mkdtemp`` creates the folder 0700 and safetensors are written 0600; the checkpoint should
    be readable like an ordinary download (for example by a Ray worker's user).
    """
    os.chmod(directory, 0o755)
    sizes = []
    for file in sorted(directory.iterdir()):
        _durable(file)
        sizes.append(f"{file.stat().st_size} {file.name}")
    marker = directory / MARKER
    marker.write_text("\n".join([digest, *sizes]) + "\n", encoding="utf-8")
    _durable(marker)


@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Silence transformers' tqdm bars (they write to stderr) for the duration."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _publish(tmp: pathlib.Path, target: pathlib.Path, digest: str, *, replace: bool) -> bool:
    """Move the finished build ``tmp`` to ``target`` without ever exposing a partial one.

    If another builder published a complete checkpoint meanwhile, theirs is kept and ``tmp``
    is discarded (unless ``replace``). A stale or empty ``target`` is moved aside first, then
    removed.

    Returns:
        True if ``tmp`` was published, False if an existing checkpoint was kept instead.
    """
    for _ in range(5):
        try:
            os.rename(tmp, target)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                raise
        if not replace and _is_complete(target, digest) and _damage(target) is None:
            logger.info("another builder finished %s first; keeping theirs", target)
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        trash = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        try:
            os.rename(target, trash / target.name)
        except FileNotFoundError:
            pass  # someone else moved it aside; retry the rename
        shutil.rmtree(trash, ignore_errors=True)
    raise RuntimeError(f"could not publish the checkpoint at {target}")


def build_once(
    target: pathlib.Path,
    digest: str,
    build: Callable[[pathlib.Path], None],
    *,
    what: str,
    rebuild_hint: str,
    force: bool = False,
) -> pathlib.Path:
    """Return ``target`` holding the checkpoint of recipe ``digest``, building it if needed.

    Args:
        target: The checkpoint's folder.
        digest: A digest of everything that determines the checkpoint's contents.
        build: Writes the checkpoint into the (empty, temporary) folder it is given.
        what: The checkpoint's name in messages, e.g. ``"the tiny demo model"``.
        rebuild_hint: The call that rebuilds it, named in the damaged-cache message.
        force: Rebuild even if a complete checkpoint is already there.

    Raises:
        FileExistsError: ``target`` is a file, or a non-empty folder nbserve did not build.
        DamagedCheckpointError: ``target`` was built for this recipe but its files changed since.
    """
    if not force and _is_complete(target, digest):
        damage = _damage(target)
        if damage is not None:
            raise DamagedCheckpointError(
                f"the cached checkpoint of {what} at {target} is damaged ({damage}); "
                f"rebuild it with {rebuild_hint}, or delete the folder"
            )
        logger.debug("%s already built at %s", what, target)
        return target
    if not force and (
        (target.exists() and not target.is_dir())
        or (target.is_dir() and not (target / MARKER).exists() and any(target.iterdir()))
    ):
        raise FileExistsError(
            f"{target} exists and is not a checkpoint nbserve built; pass force=True to replace "
            "it, or choose another path"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("building %s at %s", what, target)
    start = time.monotonic()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        build(tmp)
        _seal(tmp, digest)  # the marker, written last, means the checkpoint is whole
        published = _publish(tmp, target, digest, replace=force)
    finally:
        if tmp.exists():
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
    if published:
        logger.info("built %s in %.1f s", what, time.monotonic() - start)
    return target
