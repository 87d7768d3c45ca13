"""WordNet for synonym replacement, offline: installing it, finding it, and guessing a word's part
of speech from it.

NLTK's own WordNet and POS tagger are downloads, which fail offline. Debian's ``wordnet-base`` and
``wordnet-sense-index`` packages carry the same WordNet 3.0 database; ``install`` turns it into an
NLTK corpus under ``<sys.prefix>/share/nltk_data``, a folder NLTK searches by default, so an
installed prelabel finds it with no environment variable:

    apt-get install -y wordnet-base wordnet-sense-index   # as root
    python -m augment install-wordnet                     # or: make setup

The part of speech comes from WordNet itself (its most frequent sense), not from a tagger model.
"""
from __future__ import annotations

import shutil
import sys
import threading
from functools import lru_cache
from pathlib import Path

from prelabel.errors import PrelabelError

DEBIAN_DIR = Path("/usr/share/wordnet")
DATA_DIR = Path(sys.prefix) / "share" / "nltk_data"  # on NLTK's default search path

HINT = ("WordNet is not installed (synonym augmentation needs it; the other kinds run without it). "
        "Install it with `make setup`, or: `apt-get install -y wordnet-base wordnet-sense-index` (as root), "
        "then `python -m augment install-wordnet`.")

# NLTK's WordNet reader serves lookups from shared open files (seek, then readline): one thread at a time.
LOCK = threading.RLock()

# The fixed table of lexicographer files from lexnames(5WN); Debian's packages leave the file out.
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
_FILES = ("data.noun", "data.verb", "data.adj", "data.adv", "index.noun", "index.verb", "index.adj",
          "index.adv", "index.sense", "noun.exc", "verb.exc", "adj.exc", "adv.exc", "cntlist.rev")


class WordNetMissing(PrelabelError):
    """WordNet is not where NLTK looks; the message says how to install it."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(HINT + (f" ({detail})" if detail else ""))
        self.detail = detail

    def __reduce__(self):  # raised in the augmentation process, re-raised in the worker's
        return type(self), (self.detail,)


def install(source: Path = DEBIAN_DIR, data_dir: Path = DATA_DIR) -> Path:
    """Build the NLTK ``wordnet`` corpus from a WordNet 3.0 database folder; returns the corpus folder."""
    missing = [name for name in _FILES if not (source / name).is_file()]
    if missing:
        raise WordNetMissing(f"{source} lacks {', '.join(missing)}")
    target = data_dir / "corpora" / "wordnet"
    building = target.with_name("wordnet.building")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    for name in _FILES:
        shutil.copyfile(source / name, building / name)
    (building / "lexnames").write_text("".join(
        f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES)))
    shutil.rmtree(target, ignore_errors=True)
    building.rename(target)  # whole or absent: a half-copied corpus is never found
    return target


_reader = None


def reader():
    """NLTK's WordNet reader, loaded once (loading is not thread-safe); WordNetMissing if absent."""
    global _reader
    with LOCK:
        if _reader is None:
            try:
                from nltk.corpus import wordnet

                wordnet.ensure_loaded()
                wordnet.synsets("test")
            except (LookupError, OSError, ValueError, AssertionError) as e:  # absent, or a broken copy
                raise WordNetMissing() from e
            _reader = wordnet
        return _reader


def check_wordnet() -> str | None:
    """None when WordNet can be used, else the message that says how to install it."""
    try:
        reader()
    except WordNetMissing as e:
        return str(e)
    return None


_POS_ORDER = "nvar"


@lru_cache(maxsize=1)
def _sense_pos() -> dict[str, str]:
    """Each single-word lemma's most frequent part of speech: the one whose senses WordNet's
    sense-tagged corpus counts most often (ties: more senses), from ``index.sense``."""
    import nltk

    counts: dict[str, list[int]] = {}
    with nltk.data.find("corpora/wordnet/index.sense").open() as lines:
        for raw in lines:
            key, _offset, _number, tagged = raw.decode("utf-8").split()
            lemma, rest = key.split("%", 1)
            if "_" in lemma:
                continue
            i = (0, 1, 2, 3, 2)[int(rest[0]) - 1]  # n, v, a, r; 5 is an adjective satellite
            row = counts.setdefault(lemma, [0] * 8)  # tagged occurrences per part of speech, then senses
            row[i] += int(tagged)
            row[4 + i] += 1
    return {lemma: _POS_ORDER[max(range(4), key=lambda i: (row[i], row[4 + i]))]
            for lemma, row in counts.items()}


@lru_cache(maxsize=100_000)
def pos_guess(word: str) -> str | None:
    """``n``, ``v``, ``a`` or ``r`` for a word WordNet knows (inflected forms through its morphology),
    else None. Call with LOCK held, like every WordNet lookup."""
    word = word.lower()
    best = _sense_pos()
    if word in best:
        return best[word]
    wn = reader()
    found = [(pos, base) for pos in _POS_ORDER if (base := wn.morphy(word, pos))]
    for pos, base in found:  # "walked": the verb, because "walk" is most often a verb
        if best.get(base) == pos:
            return pos
    return found[0][0] if found else None
