"""A user's own documents as passages: reading files and folders, and splitting them.

Readers: plain text (.txt), Markdown (.md, .markdown: headings name sections), PDF (.pdf, its text
layer, page by page, through pypdf), JSON (.json: an object or a list of objects) and JSON Lines
(.jsonl), whose text is the field `text_field` (an optional `title_field` names it). A file that
cannot be read (binary, not UTF-8, empty, an encrypted PDF or one without a text layer, JSON without
the field, an unknown type) is reported by name with the reason and skipped; a set of paths with
nothing readable is a `DocumentError`.

Documents are untrusted input. A file over `MAX_FILE_BYTES`, a JSON file of more than `MAX_RECORDS`
records, a PDF of more than `MAX_PDF_PAGES` pages, a file name with control characters, and a symbolic
link (to a file or a folder) that leads outside the folder it was found in are skipped with their
reason, never read; nothing here writes anywhere.

Splitting is paragraph- and heading-aware and bounded in tokens: a passage is the consecutive
paragraphs of one section that fit `max_tokens` (a longer paragraph is cut between sentences), and
its title is the document's title and the section's heading. Documents are read as a stream of
blocks, so a long PDF is never held as one text or as tokens. No torch here.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from seal.knowledge.data import DataError, Passage

SUFFIXES = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown", ".pdf": "pdf",
            ".json": "json", ".jsonl": "jsonl"}
MAX_FILE_BYTES = 64 * 2**20  # a document larger than this is skipped (a 2 GB text file is not read)
MAX_RECORDS = 20_000  # JSON / JSON Lines records a file may hold
MAX_PDF_PAGES = 2_000
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


class DocumentError(DataError):
    """Nothing readable in the given paths, or a path that does not exist."""


@dataclass
class Block:
    """A paragraph, with the heading of the section it is in."""

    text: str
    section: str = ""


@dataclass
class Document:
    path: str
    title: str
    sha256: str  # of the file's bytes (a JSON Lines record: of the file, with the record's line number)
    blocks: Callable[[], Iterator[Block]] = field(repr=False)  # read again on each call


@dataclass
class Skipped:
    path: str
    reason: str


def find_files(paths: list[str | Path]) -> tuple[list[Path], list[Skipped]]:
    """Every file named or under a folder named, folders walked in sorted order (symbolic links to
    folders are not followed); and the files left out with why: a link out of its folder, a name with
    control characters, a file over MAX_FILE_BYTES."""
    out, skipped = [], []
    for p in map(Path, paths):
        if p.is_dir():
            root = p.resolve()
            for f in sorted(p.rglob("*")):
                if f.name.startswith(".") or not f.is_file():
                    continue
                if f.is_symlink() and not f.resolve().is_relative_to(root):
                    skipped.append(Skipped(_shown(f), "a symbolic link to a file outside the folder (not followed)"))
                    continue
                out.append(f)
        elif p.is_file():
            out.append(p)
        else:
            raise DocumentError(f"{_shown(p)}: no such file or folder")
    kept = []
    for f in out:
        if CONTROL.search(f.name):
            skipped.append(Skipped(_shown(f), "control characters in the file name"))
        elif (size := f.stat().st_size) > MAX_FILE_BYTES:
            skipped.append(Skipped(_shown(f), f"{_size(size)}, over the {_size(MAX_FILE_BYTES)} a document may have"))
        else:
            kept.append(f)
    return kept, skipped


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


def _shown(path: Path) -> str:
    """A path as messages and reports print it: control characters escaped."""
    text = str(path)
    return ascii(text)[1:-1] if CONTROL.search(text) else text


def read_documents(paths: list[str | Path], text_field: str = "text", title_field: str = "title") -> tuple[list[Document], list[Skipped]]:
    """The readable documents among `paths`, and the files skipped with why."""
    docs = []
    files, skipped = find_files(paths)
    for f in files:
        kind = SUFFIXES.get(f.suffix.lower())
        if kind is None:
            skipped.append(Skipped(str(f), f"unsupported type '{f.suffix or f.name}' (read: {', '.join(sorted(SUFFIXES))})"))
            continue
        try:
            docs += _READERS[kind](f, text_field, title_field)
        except _Unreadable as err:
            skipped.append(Skipped(str(f), str(err)))
    if not docs:
        reasons = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:3]) or "no files"
        raise DocumentError(f"nothing readable in {', '.join(map(str, paths))} ({reasons})")
    return docs, skipped


class _Unreadable(Exception):
    pass


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _title_from_name(path: Path) -> str:
    return re.sub(r"[_-]+", " ", path.stem).strip() or path.name


def _decode(path: Path) -> tuple[str, bytes]:
    data = path.read_bytes()
    if not data.strip():
        raise _Unreadable("empty file")
    if b"\x00" in data[:8192]:
        raise _Unreadable("binary file (not text)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise _Unreadable(f"not UTF-8 text (byte {err.start})") from None
    return text, data


def paragraphs(text: str, section: str = "", markdown: bool = False) -> Iterator[Block]:
    """Blocks of a text: paragraphs separated by blank lines; in Markdown a heading line starts a new
    section and is not itself a paragraph."""
    lines: list[str] = []
    for line in text.splitlines() + [""]:
        m = HEADING.match(line) if markdown else None
        if m or not line.strip():
            if lines:
                yield Block(" ".join(lines), section)
                lines = []
            if m:
                section = m.group(2)
            continue
        lines.append(line.strip())


def _text_doc(path: Path, text_field: str, title_field: str) -> list[Document]:
    text, data = _decode(path)
    return [Document(str(path), _title_from_name(path), _digest(data), lambda: paragraphs(text))]


def _markdown_doc(path: Path, text_field: str, title_field: str) -> list[Document]:
    text, data = _decode(path)
    first = next((HEADING.match(line) for line in text.splitlines() if HEADING.match(line)), None)
    title = first.group(2) if first is not None and first.group(1) == "#" else _title_from_name(path)

    def blocks():
        for b in paragraphs(text, markdown=True):
            yield Block(b.text, "" if b.section == title else b.section)
    return [Document(str(path), title, _digest(data), blocks)]


def _pdf_doc(path: Path, text_field: str, title_field: str) -> list[Document]:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:
        raise _Unreadable("reading PDF needs pypdf (pip install pypdf)") from None
    data = path.read_bytes()
    if not data.strip():
        raise _Unreadable("empty file")
    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted:
            raise _Unreadable("encrypted PDF")
        if len(reader.pages) > MAX_PDF_PAGES:
            raise _Unreadable(f"{len(reader.pages)} pages, over the {MAX_PDF_PAGES} a PDF may have")
        first = reader.pages[0].extract_text() if len(reader.pages) else ""
        meta_title = (reader.metadata.title if reader.metadata else None) or ""
    except (PdfReadError, ValueError, KeyError, TypeError, RecursionError) as err:  # a malformed file, whatever pypdf raises
        raise _Unreadable(f"not a readable PDF ({type(err).__name__}: {err})"[:300]) from None
    if not (first or "").strip() and not any((p.extract_text() or "").strip() for p in reader.pages[1:5]):
        raise _Unreadable("no text layer (a scanned PDF needs OCR first)")

    def blocks():
        for page in PdfReader(str(path)).pages:  # one page's text at a time
            try:
                text = page.extract_text() or ""
            except Exception:  # a malformed page of an untrusted file adds nothing; it never ends the run
                continue
            yield from paragraphs(text)
    return [Document(str(path), meta_title.strip() or _title_from_name(path), _digest(data), blocks)]


def _records(path: Path, text_field: str, title_field: str, rows: list, data: bytes) -> list[Document]:
    if len(rows) > MAX_RECORDS:
        raise _Unreadable(f"{len(rows)} records, over the {MAX_RECORDS} a file may have (split it)")
    docs = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get(text_field), str) or not row[text_field].strip():
            continue
        title = row.get(title_field) if isinstance(row.get(title_field), str) else f"{_title_from_name(path)} #{i + 1}"
        text = row[text_field]
        docs.append(Document(f"{path}#{i + 1}", title.strip(), _digest(data + f"#{i}".encode()),
                             lambda text=text: paragraphs(text)))
    if not docs:
        raise _Unreadable(f"no record with a non-empty '{text_field}' field (set the text field's name)")
    return docs


def _json_doc(path: Path, text_field: str, title_field: str) -> list[Document]:
    text, data = _decode(path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise _Unreadable(f"not valid JSON ({err})") from None
    return _records(path, text_field, title_field, value if isinstance(value, list) else [value], data)


def _jsonl_doc(path: Path, text_field: str, title_field: str) -> list[Document]:
    text, data = _decode(path)
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise _Unreadable(f"line {n} is not valid JSON ({err})") from None
    return _records(path, text_field, title_field, rows, data)


_READERS = {"text": _text_doc, "markdown": _markdown_doc, "pdf": _pdf_doc, "json": _json_doc, "jsonl": _jsonl_doc}


def sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE_END.split(text) if s.strip()]


def split_passages(doc: Document, count: Callable[[str], int], max_tokens: int = 256) -> Iterator[Passage]:
    """The document's passages: as many consecutive paragraphs of one section as fit `max_tokens` (a
    longer paragraph is cut between sentences, a longer sentence between words)."""
    section, parts, size = None, [], 0

    def flush():
        text = "\n".join(parts)
        title = f"{doc.title} — {section}" if section else doc.title
        return Passage(title, text)

    for block in doc.blocks():
        if block.section != section and parts:
            yield flush()
            parts, size = [], 0
        section = block.section
        for piece in _bounded(block.text, count, max_tokens):
            n = count(piece)
            if parts and size + n > max_tokens:
                yield flush()
                parts, size = [], 0
            parts.append(piece)
            size += n
    if parts:
        yield flush()


def _bounded(text: str, count: Callable[[str], int], max_tokens: int) -> Iterator[str]:
    """The paragraph, or its sentences grouped to fit, a longer sentence's words grouped to fit."""
    if count(text) <= max_tokens:
        yield text
        return
    pieces = (piece for s in sentences(text)
              for piece in ([s] if count(s) <= max_tokens else _grouped(s.split(), count, max_tokens)))
    yield from _grouped(pieces, count, max_tokens)


def _grouped(pieces, count: Callable[[str], int], max_tokens: int) -> Iterator[str]:
    """Consecutive pieces joined by spaces, as many as fit `max_tokens` (a piece alone may not)."""
    group: list[str] = []
    for piece in pieces:
        if group and count(" ".join(group + [piece])) > max_tokens:
            yield " ".join(group)
            group = []
        group.append(piece)
    if group:
        yield " ".join(group)
