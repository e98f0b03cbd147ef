"""Run dirs to and from storage: an absolute local path or any pyarrow.fs URI (file://, s3://, gs://, hdfs://).
A run submitted to a cluster writes its run dir there when it ends; `agentworld jobs fetch` reads it back."""

from __future__ import annotations

from pathlib import Path


def _filesystem(uri: str):
    """(filesystem, path inside it) for a storage location."""
    import pyarrow.fs as pafs

    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).resolve())
    return pafs.FileSystem.from_uri(uri)


def upload(run_dir, storage: str) -> str:
    """Copy `run_dir` to <storage>/<its name>; returns that location."""
    import pyarrow.fs as pafs

    fs, base = _filesystem(storage)
    dest = f"{base.rstrip('/')}/{Path(run_dir).name}"
    fs.create_dir(dest, recursive=True)
    pafs.copy_files(str(Path(run_dir).resolve()), dest, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)
    return dest if "://" not in storage else f"{storage.rstrip('/')}/{Path(run_dir).name}"


def download(storage: str, name: str, out) -> Path:
    """Copy <storage>/<name> to <out>/<name>; returns the local run dir."""
    import pyarrow.fs as pafs

    fs, base = _filesystem(storage)
    src = f"{base.rstrip('/')}/{name}"
    if fs.get_file_info(src).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{storage}: no run dir {name!r} there (has the job finished?)")
    dest = Path(out).resolve() / name
    dest.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(src, str(dest), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return dest
