"""Reading the JSON that TensorRT's tools write, with one clear error for each way it can fail.

Scripts that loop over runs often append one JSON document after another to the same file (the
TensorRT 7 files in ../shared/trt-artifacts are such), so a file is read as a sequence of documents.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Union

from ..errors import DataError

PathLike = Union[str, Path]


def read_text(path: PathLike, what: str, errors: str = "strict") -> str:
    """The text of ``path`` (``errors="replace"`` for logs with stray bytes); a DataError otherwise."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors=errors)
    except OSError as exc:
        raise DataError(f"cannot read {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a JSON file (binary content); expected {what}") from None
    if not text.strip():
        raise DataError(f"{path} is empty; expected {what}")
    return text


def parse_documents(text: str, path: PathLike, what: str) -> list[Any]:
    """Every JSON document in ``text``, one after another."""
    decoder, pos, docs = json.JSONDecoder(), 0, []
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return docs
        try:
            doc, pos = decoder.raw_decode(text, pos)
        except ValueError as exc:
            state = "is truncated" if exc.pos >= len(text.rstrip()) - 1 else "is not valid JSON"
            raise DataError(f"{path} {state} (document {len(docs) + 1}: {exc.msg} at character {exc.pos}); "
                            f"expected {what}") from None
        docs.append(doc)


def json_documents(path: PathLike, what: str) -> list[Any]:
    """Every JSON document in the file at ``path`` (a file holding one is the usual case)."""
    return parse_documents(read_text(path, what), path, what)


def json_document(path: PathLike, what: str) -> Any:
    """The one JSON document in ``path``."""
    docs = json_documents(path, what)
    if len(docs) > 1:
        raise DataError(f"{path} holds {len(docs)} JSON documents one after another; expected one ({what})")
    return docs[0]
