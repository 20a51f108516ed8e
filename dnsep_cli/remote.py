"""Inputs and outputs named by URL (``s3://``, ``gs://``, ``file://``, any fsspec filesystem), for workers that
share no filesystem with the files: ``dnsep enhance s3://bucket/noisy/ s3://bucket/enhanced/``.

``plan_url_jobs`` lists a URL folder (or takes a URL file) and mirrors it under the output URL, as
``jobs.plan_jobs`` does for paths. ``staged`` runs one such job through local files: the input is downloaded
into a temporary folder, enhanced there by the same ``Enhancer.enhance_file``, and the output uploaded to a
temporary name beside its target and then moved onto it, so a reader never sees half an object. An existing
output is skipped, or with ``overwrite`` replaced only when dnsep wrote it (its tag is read over the
filesystem), or with ``force`` replaced whatever it is: the rules of local outputs.

fsspec is imported only when a URL is given; a filesystem's own package (s3fs, gcsfs) is the user's to install.
"""

from __future__ import annotations

import contextlib
import posixpath
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dnsep_cli.errors import DnsepError, MissingExtraError, UsageError, first_line


def is_url(name: str | Path) -> bool:
    """Whether ``name`` is a URL (``scheme://...``) rather than a local path."""
    text = str(name)
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.isidentifier() and len(scheme) > 1  # "C://" on Windows is a drive


def filesystem(name: str) -> tuple[Any, str]:
    """``(fsspec filesystem, path inside it)`` of a URL or a local path; one line when fsspec or the protocol
    is missing."""
    url = name if is_url(name) else Path(name).absolute().as_uri()
    try:
        import fsspec
    except ImportError:
        raise MissingExtraError("remote", "fsspec") from None
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as err:
        raise UsageError(f"{url}: {first_line(err)}") from None


def plan_url_jobs(names: list[str], output: str, exts: tuple[str, ...], new_ext: str | None) -> list[Any]:
    """Jobs for URL (or path) ``names`` into the URL (or path) ``output``: a folder is listed recursively for
    ``exts`` and mirrored under ``output``; a single file goes to ``output`` itself unless it ends with ``/``."""
    from dnsep_cli.jobs import Job

    jobs = []
    out_fs, out_root = filesystem(output)
    single = len(names) == 1 and not str(output).endswith("/")
    for name in names:
        fs, root = filesystem(name)
        if fs.isdir(root):
            files = sorted(p for p in fs.find(root) if posixpath.splitext(p)[1].lower() in exts)
            if not files:
                jobs.append(Job(name, None, f"{name}: no audio files here (looked for {', '.join(exts)})"))
            for path in files:
                rel = posixpath.relpath(path, root)
                target = posixpath.splitext(rel)[0] + new_ext if new_ext else rel
                jobs.append(Job(_child(name, rel), _child(output, target), key=rel))
        elif fs.exists(root):
            base = posixpath.basename(root)
            if single and not out_fs.isdir(out_root):
                jobs.append(Job(name, output, key=base))
            else:
                renamed = posixpath.splitext(base)[0] + new_ext if new_ext else base
                jobs.append(Job(name, _child(output, renamed), key=base))
        else:
            jobs.append(Job(name, None, f"{name}: no such file or folder"))
    return jobs


def _child(parent: str, rel: str) -> str:
    return parent.rstrip("/") + "/" + rel


@contextlib.contextmanager
def staged(source: str, target: str, overwrite: bool, force: bool) -> Iterator[tuple[Path, Path] | None]:
    """Local ``(input, output)`` paths for a URL job, or ``None`` when its output exists and stays (skipped).

    The caller enhances ``input`` into ``output``; on a clean exit the output is uploaded and moved onto
    ``target``. Nothing is uploaded when the body raises, and the local folder is always removed.
    """
    from dnsep_cli.audio import skip_existing_output

    out_fs, out_path = filesystem(target)
    ours = lambda: _is_dnsep_output(out_fs, out_path)  # noqa: E731
    if out_fs.exists(out_path) and skip_existing_output(target, ours, overwrite, force):
        yield None
        return
    in_fs, in_path = filesystem(source)
    with tempfile.TemporaryDirectory(prefix="dnsep-url-") as folder:
        local_in = Path(folder) / ("in" + posixpath.splitext(in_path)[1])
        local_out = Path(folder) / "out" / posixpath.basename(out_path)
        try:
            in_fs.get_file(in_path, str(local_in))
        except (OSError, ValueError) as err:
            raise DnsepError(f"{source}: cannot download ({first_line(err)})") from None
        yield local_in, local_out
        partial = f"{out_path}.{uuid.uuid4().hex[:8]}.dnsep-upload"
        try:
            out_fs.makedirs(posixpath.dirname(out_path), exist_ok=True)
            out_fs.put_file(str(local_out), partial)
            out_fs.mv(partial, out_path)
        except (OSError, ValueError) as err:
            with contextlib.suppress(OSError, ValueError):
                out_fs.rm(partial)
            raise DnsepError(f"{target}: cannot upload ({first_line(err)})") from None


def _is_dnsep_output(fs: Any, path: str) -> bool:
    from dnsep_cli.audio import is_dnsep_output

    try:
        with fs.open(path, "rb") as f:
            return is_dnsep_output(f)
    except OSError:
        return False
