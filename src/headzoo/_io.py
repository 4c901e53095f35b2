"""Saving and loading results: one Parquet file per result, sealed by a SHA-256 checksum.

Every result type is written the same way. The Parquet table is the result's tidy frame, so
``pandas.read_parquet`` opens any headzoo file; the schema metadata holds the format tag (which
result type wrote it), the metadata as JSON, and any side tables, arrays or JSON records.

The checksum covers the whole file as written, with only its own 64 hex digits zeroed: a bit
that flips anywhere (data pages, footer, metadata, the Parquet structure itself) makes the digest
disagree, and :func:`read` checks it before it decodes anything. A file is never half-written:
it is assembled in memory, written to a temporary file beside the target and moved into place.
"""

from __future__ import annotations

import abc
import base64
import dataclasses
import hashlib
import io
import json
import numbers
import os
import re
import tempfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import pandas as pd

from headzoo._errors import CorruptFileError, InvalidOptionError

__all__: list[str] = []

_FORMAT = b"headzoo.format"  # the result type that wrote the file, e.g. b"HeadScores"
_LAYOUT = b"headzoo.layout"  # the version of this file layout
_META = b"headzoo.meta"
_SIDES = b"headzoo.sides"  # JSON: [[name, "table" | "array" | "record"], ...]
_SIDE = b"headzoo.side/"  # + the side's index in that list
_CHECKSUM = b"headzoo.checksum"
_LAYOUT_VERSION = 1
# The checksum value is this marker and 64 hex digits. Nothing else in the footer can hold the
# marker: JSON is written with its control characters escaped, side payloads are base64, side
# keys are numbers, and column names with a \x1f are refused. So it occurs exactly once there,
# and load finds it without decoding anything.
_MARK = b"\x1fheadzoo-sha256\x1f"
_DIGEST = re.compile(re.escape(_MARK) + rb"([0-9a-f]{64})")
_ZEROS = b"0" * 64
_MAGIC = b"PAR1"
_TUPLE = "__tuple__"
# Files written before checksums existed (headzoo 0.1): meta under b"headzoo", details and
# per-example values under these keys.
_LEGACY_META = b"headzoo"
_LEGACY_DETAILS = b"headzoo_details/"
_LEGACY_EXAMPLES = b"headzoo_examples"


@dataclasses.dataclass(frozen=True, eq=False)
class Payload:
    """What one result file holds.

    Attributes:
        frame: the tidy frame (the Parquet table).
        meta: JSON-able metadata (tuples are kept as tuples).
        tables: named side frames (e.g. a detector's per-head details).
        arrays: named numpy arrays, kept with their dtype and shape (no object arrays).
        records: named JSON-able side values (e.g. lists of dicts; tuples kept).
    """

    frame: pd.DataFrame
    meta: dict[str, Any]
    tables: Mapping[str, pd.DataFrame] = dataclasses.field(default_factory=dict)
    arrays: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    records: Mapping[str, Any] = dataclasses.field(default_factory=dict)


# -- helpers shared by the result types --------------------------------------------------------
def normalise(meta: dict[str, Any]) -> dict[str, Any]:
    """Metadata as JSON would give it back, so save/load round-trips exactly."""
    return json.loads(json.dumps(meta, default=str))


def strings_as_str(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (a copy, index reset) with object columns that hold only strings as pandas'
    string dtype, the dtype Parquet gives them back as, so a saved frame loads equal."""
    frame = frame.reset_index(drop=True).copy()
    for col in frame.columns:
        values = frame[col]
        if values.dtype == object and len(values) and all(isinstance(v, str) for v in values):
            frame[col] = values.astype(str)
    return frame


def positive_int(name: str, value: Any) -> int:
    """``value`` as an ``int`` when it is an integer >= 1 (bools and floats refused).

    Raises:
        InvalidOptionError: anything else.
    """
    if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)) or value < 1:
        raise InvalidOptionError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def write_atomic(path: Path, write: Callable[[str], Any]) -> None:
    """Run ``write(tmp)`` on a temporary file beside ``path``, then move it into place, so a
    crash or an error never leaves a half-written ``path`` (an old one stays as it was)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_bytes(tmp: str, data: bytes) -> None:
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # the bytes are on disk before the rename makes them the file


def _as_path(path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidOptionError(f"path must be a str or os.PathLike; got {type(path).__name__}")
    return Path(path)


def _corrupt(path: Path, why: str) -> CorruptFileError:
    err = CorruptFileError(f"{path} {why}")
    err.path = path  # type: ignore[attr-defined]
    return err


# -- exact JSON ---------------------------------------------------------------------------------
def _tag(value: Any, where: str) -> Any:
    """``value`` as JSON-able data that decodes back to an equal value, tuples included."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int) and type(value) is int:
        return value
    if isinstance(value, float):
        return float(value)
    if isinstance(value, list):
        return [_tag(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {_TUPLE: [_tag(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad or (len(value) == 1 and _TUPLE in value):
            raise InvalidOptionError(
                f"{where} cannot be saved exactly: JSON keys must be strings (got {bad!r})"
                if bad else f"{where} cannot be saved: its only key {_TUPLE!r} is reserved"
            )
        return {k: _tag(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise InvalidOptionError(
        f"{where} holds a {type(value).__name__}, which a headzoo file cannot store exactly; "
        "use str, int, float, bool, None, lists, tuples and dicts with string keys"
    )


def _untag(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and _TUPLE in obj:
        return tuple(obj[_TUPLE])
    return obj


def _dump_json(value: Any, where: str) -> bytes:
    # ensure_ascii: the \x1f of the checksum marker can never appear unescaped
    return json.dumps(_tag(value, where), ensure_ascii=True, allow_nan=True).encode("ascii")


def _load_json(raw: bytes) -> Any:
    return json.loads(raw, object_hook=_untag)


# -- encoding side payloads ---------------------------------------------------------------------
def _table_bytes(frame: pd.DataFrame) -> bytes:
    import pyarrow as pa

    table = pa.Table.from_pandas(frame, preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:  # Arrow IPC: exact types, little overhead
        writer.write_table(table)
    return zlib.compress(sink.getvalue().to_pybytes())


def _table_from(raw: bytes) -> pd.DataFrame:
    import pyarrow as pa

    return pa.ipc.open_stream(zlib.decompress(raw)).read_all().to_pandas()


def _legacy_table_from(raw: bytes) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(raw)).to_pandas()


def _array_bytes(array: np.ndarray, where: str) -> bytes:
    if not isinstance(array, np.ndarray) or array.dtype.hasobject:
        raise InvalidOptionError(f"{where} must be a numpy array of numbers or booleans (no objects); got {array!r:.80}")
    sink = io.BytesIO()
    np.save(sink, array, allow_pickle=False)
    return zlib.compress(sink.getvalue())  # metadata is not compressed by Parquet; key indices shrink well


def _array_from(raw: bytes) -> np.ndarray:
    return np.load(io.BytesIO(zlib.decompress(raw)), allow_pickle=False)


# -- write ----------------------------------------------------------------------------------------
def write(path: str | os.PathLike[str], fmt: str, payload: Payload) -> Path:
    """Write ``payload`` as a headzoo file of type ``fmt``, atomically; returns the path.

    The file is a Parquet table of ``payload.frame``; the schema metadata holds ``fmt``, the
    layout version, ``payload.meta`` as JSON, every side payload (tables as Arrow IPC streams and
    arrays as ``.npy``, both zlib-compressed and base64; records as JSON) and the checksum of the file.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = _as_path(path)
    if any("\x1f" in str(c) for c in payload.frame.columns):  # Parquet keeps column names raw in its footer
        raise InvalidOptionError(f"column names cannot contain the control character \\x1f; got {list(payload.frame.columns)!r}")
    sides: list[list[str]] = []  # [name, kind]; the keys are numbered, so no name sits raw in the footer
    extra: dict[bytes, bytes] = {
        _FORMAT: fmt.encode("ascii"),
        _LAYOUT: str(_LAYOUT_VERSION).encode("ascii"),
        _META: _dump_json(payload.meta, "meta"),
    }
    groups: list[tuple[str, Mapping[str, Any], Callable[[Any, str], bytes]]] = [
        ("table", payload.tables, lambda v, where: base64.b64encode(_table_bytes(v))),
        ("array", payload.arrays, lambda v, where: base64.b64encode(_array_bytes(v, where))),
        ("record", payload.records, lambda v, where: _dump_json(v, where)),
    ]
    for kind, items, encode in groups:
        for name, value in items.items():
            if not isinstance(name, str) or name in [n for n, _ in sides]:
                raise InvalidOptionError(f"side payload names must be distinct strings; {name!r} is not")
            extra[_SIDE + str(len(sides)).encode("ascii")] = encode(value, f"{kind} {name!r}")
            sides.append([name, kind])
    extra[_SIDES] = _dump_json(sides, "sides")
    extra[_CHECKSUM] = _MARK + _ZEROS
    table = pa.Table.from_pandas(payload.frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
    sink = pa.BufferOutputStream()
    # No statistics: min/max copies of the data would sit in the footer beside the checksum.
    # (pyarrow also stores the schema, metadata included, base64-encoded; base64 cannot hold
    # the marker, so the checksum field stays the footer's only match.)
    pq.write_table(table, sink, write_statistics=False)
    raw = bytearray(sink.getvalue().to_pybytes())
    found = _digests(bytes(raw))
    if len(found) != 1:  # cannot happen unless pyarrow changes how it writes metadata
        raise RuntimeError(f"headzoo could not place the checksum in {path} ({len(found)} places)")
    at = found[0].start(1)
    raw[at : at + 64] = hashlib.sha256(raw).hexdigest().encode("ascii")
    data = bytes(raw)
    write_atomic(path, lambda tmp: _write_bytes(tmp, data))
    return path


# -- read -----------------------------------------------------------------------------------------
def _footer_start(raw: bytes, path: Path) -> int:
    if len(raw) < 12 or raw[:4] != _MAGIC or raw[-4:] != _MAGIC:
        raise _corrupt(path, "is not a headzoo result file: it is not a complete Parquet file (a Parquet "
                             "file starts and ends with 'PAR1'), so it is truncated or another kind of file")
    size = int.from_bytes(raw[-8:-4], "little")
    if not 0 < size <= len(raw) - 12:
        raise _corrupt(path, "is damaged: its Parquet footer length does not fit the file (truncated?)")
    return len(raw) - 8 - size


def _digests(raw: bytes) -> list[re.Match[bytes]]:
    """Checksum fields in the Parquet footer (the only place metadata lives)."""
    start = len(raw) - 8 - int.from_bytes(raw[-8:-4], "little")
    return list(_DIGEST.finditer(raw, max(start, 4), len(raw) - 8))


def _metadata(raw: bytes, path: Path) -> dict[bytes, bytes]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return dict(pq.read_metadata(pa.BufferReader(raw)).metadata or {})
    except Exception as exc:  # pyarrow raises several types for a damaged footer
        raise _corrupt(path, f"is damaged: its Parquet footer cannot be read ({type(exc).__name__}: {exc})") from None


def _frame(raw: bytes, path: Path) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(raw))
    except Exception as exc:
        raise _corrupt(path, f"is damaged: its table cannot be read ({type(exc).__name__}: {exc})") from None
    return table.to_pandas()


def read(path: str | os.PathLike[str], fmt: str, *, unchecked: bool = False) -> Payload:
    """Read a file written by :func:`write` for result type ``fmt``, checksum first.

    Args:
        unchecked: also read a file saved before headzoo files carried a checksum (its
            content cannot be verified). A file with a checksum is always verified.

    Raises:
        CorruptFileError: (naming the file) not a Parquet file, truncated, not written by
            headzoo, damaged (the checksum disagrees), written by another result type (the
            message names the type that loads it), written by a newer headzoo, or written
            before checksums existed and ``unchecked`` is False (the message says how to
            re-save it).
    """
    path = _as_path(path)
    raw = path.read_bytes()
    _footer_start(raw, path)
    found = _digests(raw)
    if len(found) != 1:
        return _unverified(raw, path, fmt, unchecked)
    stored = found[0].group(1)
    at = found[0].start(1)
    actual = hashlib.sha256(raw[:at] + _ZEROS + raw[at + 64 :]).hexdigest().encode("ascii")
    if stored != actual:
        raise _corrupt(path, f"is damaged: its content does not match the SHA-256 checksum stored in it "
                             f"(stored {stored.decode()[:12]}..., content {actual.decode()[:12]}...). It changed "
                             "after headzoo wrote it (an interrupted copy, a disk error, an edit); save the "
                             "result again from where it was computed")
    keys = _metadata(raw, path)
    tag = keys.get(_FORMAT, b"").decode("ascii", "replace")
    layout = keys.get(_LAYOUT, b"")
    if layout != str(_LAYOUT_VERSION).encode("ascii"):
        raise _corrupt(path, f"was written by a newer headzoo (file layout {layout.decode('ascii', 'replace')!r}; "
                             f"this version reads layout {_LAYOUT_VERSION}); upgrade headzoo to load it")
    if tag != fmt:
        raise _corrupt(path, f"is a {tag} file, not a {fmt} file: load it with hz.{tag}.load({str(path)!r})")
    try:
        meta = _load_json(keys[_META])
        sides = _load_json(keys[_SIDES])
        tables, arrays, records = {}, {}, {}
        for i, (name, kind) in enumerate(sides):
            value = keys[_SIDE + str(i).encode("ascii")]
            if kind == "table":
                tables[name] = _table_from(base64.b64decode(value, validate=True))
            elif kind == "array":
                arrays[name] = _array_from(base64.b64decode(value, validate=True))
            elif kind == "record":
                records[name] = _load_json(value)
            else:
                raise ValueError(f"unknown side kind {kind!r}")
    except Exception as exc:  # the checksum matched, so headzoo itself wrote something it cannot read
        raise _corrupt(path, f"passes its checksum but its metadata cannot be decoded ({type(exc).__name__}: "
                             f"{exc}); it was written by an incompatible headzoo version") from None
    return Payload(_frame(raw, path), meta, tables, arrays, records)


def _legacy_format(frame: pd.DataFrame) -> str:
    return "HeadScores" if "detector" in frame.columns else "HeadEffects" if "effect" in frame.columns else "unknown"


def _unverified(raw: bytes, path: Path, fmt: str, unchecked: bool) -> Payload:
    """A Parquet file without exactly one readable checksum: say what it is, and read it only
    when it is a pre-checksum headzoo file and the caller accepted that."""
    keys = _metadata(raw, path)
    if not any(k.startswith(b"headzoo") for k in keys):
        raise _corrupt(path, "is not a headzoo result file: it is a Parquet file without headzoo metadata "
                             "(written by another tool?); read it with pandas.read_parquet")
    if _FORMAT in keys or _CHECKSUM in keys or _LEGACY_META not in keys:
        raise _corrupt(path, "is damaged: its checksum field is missing or unreadable, so its content cannot be "
                             "verified; save the result again from where it was computed")
    frame = _frame(raw, path)
    kind = _legacy_format(frame)
    if kind != fmt:
        raise _corrupt(path, f"is a {kind} file saved before headzoo files carried a checksum, not a {fmt} file: "
                             f"load it with hz.{kind}.load({str(path)!r}, unchecked=True)")
    if not unchecked:
        raise _corrupt(path, f"was saved by an earlier headzoo, before result files carried a checksum, so its "
                             f"content cannot be verified. If you trust it, re-save it once with a checksum: "
                             f"hz.{fmt}.load({str(path)!r}, unchecked=True).save({str(path)!r})")
    try:
        meta = json.loads(keys[_LEGACY_META])
        tables = {
            "details/" + k.decode("utf-8").removeprefix(_LEGACY_DETAILS.decode()): _legacy_table_from(v)
            for k, v in keys.items() if k.startswith(_LEGACY_DETAILS)
        }
        arrays = {}
        if _LEGACY_EXAMPLES in keys:
            arrays["examples"] = np.asarray(json.loads(keys[_LEGACY_EXAMPLES]), dtype=np.float64)
    except Exception as exc:
        raise _corrupt(path, f"is an unreadable pre-checksum headzoo file ({type(exc).__name__}: {exc})") from None
    return Payload(frame, meta, tables, arrays, {})


# -- the protocol every result type follows --------------------------------------------------
_R = TypeVar("_R", bound="Result")  # typing.Self would do, but beartype refuses it outside its own classes


class Result(abc.ABC):
    """What every headzoo result offers: a tidy frame, a figure, offline HTML, and a file.

    A result type sets ``_FORMAT`` (its name, the tag its files carry) and says how it becomes
    a :class:`Payload` and back; ``save`` and ``load`` are the same for all of them.
    """

    __slots__ = ()
    _FORMAT: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # One place for every result's figures: each ``plot``/``plot_*`` method a result type
        # defines returns a headzoo Figure (a go.Figure that also exports to HTML offline and
        # sizes to its container), however the method built it.
        super().__init_subclass__(**kwargs)
        from headzoo._figures import returns_figure

        for name, value in list(vars(cls).items()):
            if (name == "plot" or name.startswith("plot_")) and callable(value) and not getattr(value, "__isabstractmethod__", False):
                setattr(cls, name, returns_figure(value))

    @abc.abstractmethod
    def to_frame(self) -> pd.DataFrame:
        """The tidy frame (a copy)."""

    @abc.abstractmethod
    def plot(self) -> Any:
        """A plotly ``Figure`` (returned, never shown)."""

    @abc.abstractmethod
    def _repr_html_(self) -> str:
        """Self-contained HTML: no scripts, no network, every string escaped."""

    @abc.abstractmethod
    def _to_payload(self) -> Payload:
        """Everything :meth:`load` needs to rebuild an equal result."""

    @classmethod
    @abc.abstractmethod
    def _from_payload(cls: type[_R], payload: Payload) -> _R:
        """The result :meth:`_to_payload` described."""

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write this result to ``path`` as Parquet (atomically) and return the path.

        The table is :meth:`to_frame`'s data, so ``pandas.read_parquet(path)`` reads it; the
        metadata, any side tables and arrays and a SHA-256 checksum of the file ride in the
        Parquet schema metadata. ``type(self).load(path)`` gives back an equal result.
        """
        return write(path, self._FORMAT, self._to_payload())

    @classmethod
    def load(cls: type[_R], path: str | os.PathLike[str], *, unchecked: bool = False) -> _R:
        """Read a file written by :meth:`save`, verifying its checksum first.

        Args:
            unchecked: also read a file saved by headzoo before files carried a checksum
                (nothing can verify it); re-save it to add one. Ignored for files that have a
                checksum: those are always verified.

        Raises:
            CorruptFileError: the file is damaged, truncated, not a headzoo file, written by
                another result type or a newer headzoo, or an unchecked pre-checksum file.
                The message names the file and says what to do.
        """
        path = _as_path(path)
        payload = read(path, cls._FORMAT, unchecked=unchecked)
        try:
            return cls._from_payload(payload)
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise _corrupt(path, f"holds a {cls._FORMAT} this headzoo cannot rebuild ({type(exc).__name__}: {exc}); "
                                 "it was written by an incompatible headzoo version") from exc

