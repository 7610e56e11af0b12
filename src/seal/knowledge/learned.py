"""A `seal learn` output folder: what it holds (the adapter or merged checkpoint, manifest.json with
every document's content hash, passages, questions, kept self-edits and settings, report.md), how it is
written (complete or not at all), read back as untrusted input (every file listed with its hash, no
pickles), learned more into (`Earlier`, for --add), and answered from (`Asker`, for `seal ask`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from seal.core.config import dump_config
from seal.core.generation import format_prompt, generate, resolve_precision
from seal.core.models import LoadedModel, load_model
from seal.core.runs import Run
from seal.core.stats import mean
from seal.core.tables import Column, Table
from seal.knowledge.data import DataError, Passage, Question

MANIFEST = "manifest.json"


def _by_document(items: list[Item]) -> dict[str, list[Item]]:
    out: dict[str, list[Item]] = {}
    for item in items:
        out.setdefault(item.document, []).append(item)
    return out


def document_slug(n: int, path: str) -> str:
    import re

    return f"{n + 1:03d}-" + (re.sub(r"[^a-z0-9]+", "-", Path(path.split("#")[0]).stem.lower()).strip("-") or "document")


MANIFEST = "manifest.json"


class LearnError(DataError):
    """An output folder that cannot be written, or documents that changed under a resumed run."""


@dataclass
class Item:
    """One passage of one document, with its selection and held-out questions."""

    document: str
    selection: Passage
    held: Passage

    @property
    def id(self) -> str:
        return self.selection.id


def _dump(questions: list[Question]) -> list[dict]:
    return [dict(question=q.question, answers=list(q.answers)) for q in questions]


def _load(rows: list[dict]) -> tuple[Question, ...]:
    return tuple(Question(r["question"], tuple(r["answers"])) for r in rows)


@dataclass
class Earlier:
    """What an output folder already learned (`--add`): its manifest, its items and kept self-edits."""

    folder: Path
    manifest: dict
    items: list[Item]
    kept: dict[str, str]
    scores: dict[str, dict]  # passage id -> its held-out scores when it was learned

    @classmethod
    def read(cls, folder: Path) -> Earlier:
        m = read_manifest(folder, f"--add {folder}")
        if (folder / "config.json").is_file():
            raise LearnError(f"--add {folder}: a merged checkpoint; learning more needs an adapter folder (no --merge)")
        items = [Item(p["document"], Passage(p["title"], p["context"], _load(p["selection"])),
                      Passage(p["title"], p["context"], _load(p["held_out"]))) for p in m["passages"]]
        return cls(folder, m, items, {p["id"]: p["self_edit"] for p in m["passages"]},
                   {p["id"]: p["scores"] for p in m["passages"]})

    def known(self) -> set[str]:
        return {d["sha256"] for d in self.manifest["documents"]}


# --- the report and the output folder --------------------------------------------------------------------
COLUMNS = [Column("document", kind="text"), Column("passages", kind="int"), Column("questions", "held-out questions", kind="int"),
           Column("before"), Column("after"), Column("open book"), Column("gap closed", digits=2),
           Column("EM before", digits=2), Column("EM after", digits=2), Column("when learned", "after, when learned")]


def scores(run: Run, item: Item, earlier: Earlier | None) -> dict:
    """A passage's held-out scores: this run's records, or for an earlier passage its manifest's, with
    "after" asked again now (after-add) and the old "after" kept as "when learned"."""
    def reward_em(kind):
        r = run.get(f"learn/{kind}/{item.id}")
        return (None, None) if r is None else (r["reward"], mean(r["grades"]["em"]))
    old = earlier.scores.get(item.id) if earlier else None
    if old is None:
        (before, em_before), (after, em_after), (ceiling, _) = (reward_em(k) for k in ("before", "after", "open-book"))
        return dict(before=before, after=after, open_book=ceiling, em_before=em_before, em_after=em_after, when_learned=None)
    after, em_after = reward_em("after-add") if run.get(f"learn/after-add/{item.id}") else (old["after"], old["em_after"])
    return dict(old, after=after, em_after=em_after, when_learned=old["after"])


def report_table(run: Run, items: list[Item], earlier: Earlier | None = None) -> Table:
    """Per document and in all: the held-out questions' reward before and after, and the open-book
    ceiling; for documents learned earlier, also their score when they were learned."""
    everything = (earlier.items if earlier else []) + items
    rows = [_row(run, name, group, earlier) for name, group in _by_document(everything).items()]
    rows.append(_row(run, "all documents", everything, earlier))
    return Table(COLUMNS, rows, "after", f"held-out self-generated questions, {run.config.reward.metric}")


def _row(run: Run, name: str, items: list[Item], earlier: Earlier | None) -> dict:
    got = [scores(run, i, earlier) for i in items]
    avg = lambda key: mean(g[key] for g in got)
    before, after, ceiling = avg("before"), avg("after"), avg("open_book")
    gap = None if None in (before, after, ceiling) or ceiling == before else (after - before) / (ceiling - before)
    return {"document": name, "passages": len(items), "questions": sum(len(i.held.questions) for i in items),
            "before": before, "after": after, "open book": ceiling, "gap closed": gap,
            "EM before": avg("em_before"), "EM after": avg("em_after"), "when learned": avg("when_learned")}


def manifest(run: Run, items: list[Item], kept: dict[str, str], policy: str | None, earlier: Earlier | None = None) -> dict:
    docs = run.get("learn/documents")
    mode = run.config.learn.mode
    documents = (earlier.manifest["documents"] if earlier else []) + docs["documents"]
    if mode == "per-document":
        for n, d in enumerate(documents):
            d.setdefault("adapter", f"documents/{document_slug(n, d['path'])}")
    everything = (earlier.items if earlier else []) + items
    kept = {**(earlier.kept if earlier else {}), **kept}
    return dict(model=run.config.model.name, mode=mode, policy=policy, runs=(earlier.manifest["runs"] if earlier else []) + [str(run.path)],
                documents=documents, skipped=docs["skipped"],
                passages_not_scored=sum(not i.held.questions for i in everything),
                passages=[dict(id=i.id, document=i.document, title=i.selection.title, context=i.selection.context,
                               selection=_dump(list(i.selection.questions)), held_out=_dump(list(i.held.questions)),
                               self_edit=kept.get(i.id), scores=scores(run, i, earlier)) for i in everything],
                settings=json.loads(json.dumps(run.config.model_dump(mode="json"))))


def write_output(run: Run, lm: LoadedModel, out: Path, items: list[Item], kept: dict[str, str], policy: str | None,
                 merge: bool, earlier: Earlier | None = None) -> Path:
    """Write the output folder beside its place, then rename it into place (with --add, the earlier
    folder is replaced only once the new one is complete)."""
    if out.exists() and earlier is None:
        raise LearnError(f"{out} exists; choose another --out (an existing folder is never overwritten)")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if run.config.learn.mode == "per-document":
        if earlier:
            shutil.copytree(earlier.folder / "documents", tmp / "documents")
        for adapter in sorted((run.path / "adapters").iterdir()):
            shutil.copytree(adapter, tmp / "documents" / adapter.name)
    elif merge:
        from peft import PeftModel

        merged = PeftModel.from_pretrained(lm.model, str(run.path / "adapter")).merge_and_unload()
        merged.save_pretrained(tmp)
        lm.tokenizer.save_pretrained(tmp)
    else:
        for f in (run.path / "adapter").iterdir():
            shutil.copy2(f, tmp / f.name)
    table = report_table(run, items, earlier)
    written = dict(manifest(run, items, kept, policy, earlier), files=folder_files(tmp))
    (tmp / MANIFEST).write_text(json.dumps(written, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (tmp / "config.yaml").write_text(dump_config(run.config), encoding="utf-8")
    (tmp / "report.md").write_text(report_markdown(run, table), encoding="utf-8")
    if earlier is not None:
        old = out.with_name(out.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)
    return out


def report_markdown(run: Run, table: Table) -> str:
    docs = run.get("learn/documents")
    lines = ["# What was learned", "", f"Run: `{run.path}`; model: `{run.config.model.name}`; mode: {run.config.learn.mode}.", "",
             f"Closed-book {table.score_label} on each passage's held-out questions (never used to choose or "
             "train), before and after the update, and the open-book ceiling (each question asked with its passage). "
             "For documents learned earlier, 'after' is asked again now and 'after, when learned' is their "
             "score right after they were learned.", "", table.markdown(), ""]
    unscored = sum(1 for r in run.records("questions") if r["key"].startswith("learn/") and not r["held_out"])
    if unscored:
        lines += [f"{unscored} passage(s) got no held-out question: learned, but not scored.", ""]
    if docs["skipped"]:
        lines += ["Skipped files:", ""] + [f"- `{s['path']}`: {s['reason']}" for s in docs["skipped"]] + [""]
    return "\n".join(lines)


# --- an output folder as untrusted input ------------------------------------------------------------------
# `seal ask` and `seal learn --add` load what a folder holds: weights as safetensors only (a pickle can
# run code when loaded), each file the manifest lists with its SHA-256, nothing the manifest does not list,
# nothing outside the folder. Tokenizer and configuration files are JSON or text; trust_remote_code is
# never set, so nothing in a folder is executed.
NOT_LISTED = (MANIFEST, "report.md", "config.yaml")  # written after the list, read as text only


PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".npy", ".npz", ".joblib")


def folder_files(folder: Path) -> dict[str, str]:
    """Every file of an output folder (but NOT_LISTED) by its path inside it, with its SHA-256."""
    return {f.relative_to(folder).as_posix(): _sha256(f) for f in sorted(folder.rglob("*"))
            if f.is_file() and f.relative_to(folder).as_posix() not in NOT_LISTED}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()  # a block at a time: adapters and merged checkpoints are large
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(folder: Path, label: str) -> dict:
    """The manifest of a `seal learn` output folder, once the folder is verified against it; a LearnError
    (one line, starting with `label`) for anything else."""
    path = folder / MANIFEST
    if not path.is_file():
        raise LearnError(f"{label}: not a `seal learn` output folder (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LearnError(f"{path}: not valid JSON ({err})") from None
    verify_folder(folder, manifest)
    return manifest


def verify_folder(folder: Path, manifest: dict) -> None:
    """A LearnError (one line) unless the folder holds exactly the files its manifest lists, unchanged,
    inside the folder, and no pickle."""
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        raise LearnError(f"{folder}: its {MANIFEST} lists no files (written by an older seal, or not by seal learn); "
                         "run seal learn again")
    root = folder.resolve()
    for f in sorted(folder.rglob("*")):
        name = f.relative_to(folder).as_posix()
        if f.is_symlink():
            raise LearnError(f"{folder}: {name} is a symbolic link; an output folder holds plain files only")
        if f.is_file() and f.suffix.lower() in PICKLES:
            raise LearnError(f"{folder}: {name} is a pickle-format file; seal ask loads safetensors weights only")
        if f.is_file() and name not in NOT_LISTED and name not in listed:
            raise LearnError(f"{folder}: {name} is not in its {MANIFEST}; the folder was changed after seal learn wrote it")
    for name, digest in listed.items():
        path = folder / name
        if not path.resolve().is_relative_to(root):
            raise LearnError(f"{folder}: {MANIFEST} names {name!r}, outside the folder")
        if not path.is_file():
            raise LearnError(f"{folder}: {name} is missing (listed in its {MANIFEST})")
        if _sha256(path) != digest:
            raise LearnError(f"{folder}: {name} differs from what seal learn wrote (SHA-256)")
    for doc in manifest.get("documents", []):
        if "adapter" in doc and doc["adapter"] is not None and not (folder / doc["adapter"]).resolve().is_relative_to(root):
            raise LearnError(f"{folder}: {MANIFEST} names the adapter {doc['adapter']!r}, outside the folder")


# --- asking ---------------------------------------------------------------------------------------------
class Asker:
    """Answers closed-book from a `seal learn` output folder: its adapter on the base model, its merged
    checkpoint, or (per-document mode) the adapter of the document whose passage retrieval ranks first.
    A question's topic line is that passage's title, and the answer says which document it came from."""

    def __init__(self, folder: Path, device: str = "auto"):
        from seal.knowledge.config import KnowledgeConfig
        from seal.knowledge.retrieval import TfIdf

        self.manifest = read_manifest(folder, str(folder))
        self.config = KnowledgeConfig.model_validate(self.manifest["settings"])
        self.passages = self.manifest["passages"]
        self.index = TfIdf([f"{p['title']} {p['context']}" for p in self.passages])
        self.adapter_of: dict[str, str] = {}  # per-document mode: document path -> adapter name
        if self.manifest.get("mode") == "per-document":
            from peft import PeftModel

            self.lm = load_model(self.manifest["model"], device, self.config.model.dtype)
            for n, doc in enumerate(self.manifest["documents"]):
                name = f"d{n}"
                if n == 0:
                    self.lm.model = PeftModel.from_pretrained(self.lm.model, str(folder / doc["adapter"]), adapter_name=name)
                else:
                    self.lm.model.load_adapter(str(folder / doc["adapter"]), adapter_name=name)
                self.adapter_of[doc["path"]] = name
            self.merged = None
        elif (folder / "adapter_config.json").is_file():
            from peft import PeftModel

            self.lm = load_model(self.manifest["model"], device, self.config.model.dtype)
            self.lm.model = PeftModel.from_pretrained(self.lm.model, str(folder))
            self.merged = None
        else:
            self.lm = load_model(str(folder), device, self.config.model.dtype)
            self.merged = self.manifest["model"]
        self.lm.model.eval()

    def source(self, question: str) -> dict:
        return self.passages[self.index.best(question)]

    def answer(self, question: str, base: bool = False) -> str:
        """The learned model's answer (with `base`, the model before it learned anything)."""
        from contextlib import nullcontext

        from seal.knowledge.prompts import answer_prompt

        cfg = self.config.answer
        source = self.source(question)
        prompt = format_prompt(self.lm, answer_prompt(cfg.prompt_style, source["title"], question),
                               chat=cfg.prompt_style == "chat")
        if self.adapter_of:
            self.lm.model.set_adapter(self.adapter_of[source["document"]])
        if base and self.merged is not None:
            lm = self._base()
            context = nullcontext()
        else:
            lm = self.lm
            context = self.lm.model.disable_adapter() if base else nullcontext()
        with context:
            [gen] = generate(lm, [prompt], max_new_tokens=cfg.max_new_tokens,
                             stop_at_newline=cfg.prompt_style == "completion",
                             precision=resolve_precision(self.config.model.precision, lm.device))
        return gen.text.strip()

    def _base(self) -> LoadedModel:
        if not hasattr(self, "_base_lm"):
            self._base_lm = load_model(self.merged, str(self.lm.device), self.lm.dtype)
        return self._base_lm
