"""Every default in one place: the job-file schema (pydantic) and the engine's tunables.

Library code takes these values as arguments; only the CLI reads the environment.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    """A section of the job file: unknown keys are errors, not silently ignored, and so is a value
    of the wrong type (``rpm: "6000"``, ``logprobs: "yes"``): strict, except paths, written as strings."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class InputSpec(Strict):
    path: Path = Field(strict=False)  # paths are written as strings
    text_field: str = "text"
    id_field: str | None = None
    format: Literal["jsonl", "csv"] | None = None  # from the file's suffix when absent

    def resolved_format(self) -> str:
        if self.format:
            return self.format
        return "csv" if self.path.suffix.lower() == ".csv" else "jsonl"


class Price(Strict):
    """USD per million tokens."""

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    # prompt tokens the provider served from its prompt cache (usage.prompt_tokens_details.cached_tokens);
    # None: billed like any other prompt token
    cached_input_per_mtok: float | None = Field(None, ge=0)


class ModelSpec(Strict):
    name: str
    base_url: str | None = None  # falls back to OPENAI_BASE_URL, then OpenAI itself
    rpm: int = Field(500, gt=0)
    tpm: int = Field(200_000, gt=0)
    # requests in flight; ``auto``: found from the latency the endpoint gives (self-hosted servers)
    max_concurrency: Union[int, Literal["auto"]] = Field(32)
    temperature: float = Field(0.0, ge=0, le=2)
    seed: int | None = None
    logprobs: bool = True  # ask for them; confidence is null where the endpoint gives none
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(6, ge=0, le=20)  # 5xx/timeouts, owned by prelabel.llm.retry
    # 429s are not counted as attempts: a request waits on the rate limit up to this long, then the
    # run stops (exit 8) with its items back in the queue
    max_rate_limit_wait_s: float = Field(600.0, gt=0)
    price: Price | None = None  # overrides prelabel.budget.pricing for this model
    # live: one request at a time; batch: the provider's Batch API (half the price, within 24 h)
    mode: Literal["live", "batch"] = "live"
    batch_price: Price | None = None  # the Batch API's price; default: prelabel.budget.pricing's
    # azure: Azure OpenAI through the SDK's AsyncAzureOpenAI; base_url is the resource's endpoint
    # (https://NAME.openai.azure.com), ``deployment`` the deployment (default: ``name``).
    provider: Literal["openai", "azure"] = "openai"
    deployment: str | None = None
    api_version: str = "2024-10-21"


    @field_validator("max_concurrency", mode="before")
    @classmethod
    def _concurrency_range(cls, value):
        # before the union: one message, not one per member (``.int``, ``.literal['auto']``)
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
            raise ValueError("must be an integer from 1 to 1024, or auto")
        return value

    @property
    def slots(self) -> int:
        """Requests the worker may have under way: ``auto``'s ceiling, or the number given."""
        return AUTO_MAX_CONCURRENCY if self.max_concurrency == "auto" else self.max_concurrency


AUTO_MAX_CONCURRENCY = 256  # the most requests in flight ``max_concurrency: auto`` goes to
# ``auto`` keeps answers under this share of ``model.timeout_s`` (a one-slot server's queue would
# otherwise outwait the timeout: prelabel.llm.concurrency)
AUTO_MAX_RTT_SHARE = 0.5

_LABEL_NAME = r"^\S(.*\S)?$"  # no leading or trailing space: a label is compared exactly


class TaskSpecBase(Strict):
    """What every task kind's section shares: its prompt, guidelines, few-shot examples and re-asks.

    Each kind's own section (its ``kind`` tag and fields) lives in its module under
    ``prelabel/tasks/`` and is listed once in ``prelabel.tasks.registry``, which makes ``TaskSpec``.
    """

    # False: the drafts have no label an augmented variant could carry (instruction generation).
    carries_label: ClassVar[bool] = True

    guidelines: Path | None = Field(None, strict=False)
    prompt: str | None = None  # a template under prompts/ or a path; default: the kind's
    max_reasks: int = Field(1, ge=0, le=5)
    examples: Path | None = Field(None, strict=False)  # JSONL: text plus the gold answer in the kind's shape
    example_selection: Literal["fixed", "similar", "diverse"] = "fixed"
    max_examples: int = Field(3, ge=0, le=50)  # shown per item (fewer when the budget trims them)
    # ``similar`` ranks examples by the endpoint's /v1/embeddings with this model; without one,
    # by a lexical similarity that needs no model.
    embedding_model: str | None = None


class LabelledSpec(TaskSpecBase):
    """A kind whose answer uses a fixed set of labels (classify, multilabel, ner's entity types)."""

    labels: dict[str, str]  # label -> definition
    # Near-misses the model may write for a label (besides case and spacing), normalised and flagged.
    aliases: dict[str, list[str]] = {}

    @field_validator("labels")
    @classmethod
    def _named(cls, labels: dict[str, str]) -> dict[str, str]:
        if not labels:
            raise ValueError("at least one label is needed (for ner: the entity types)")
        for name in labels:
            if not name.strip() or name != name.strip():
                raise ValueError(f"label name {name!r} is empty or has leading/trailing spaces")
        return labels

    @model_validator(mode="after")
    def _aliases_name_labels(self):
        for name in self.aliases:
            if name not in self.labels:
                raise ValueError(f"aliases: {name!r} is not one of the labels {list(self.labels)}")
        return self


class BudgetSpec(Strict):
    max_input_tokens: int | None = Field(None, gt=0)  # the whole prompt, per request
    on_overflow: Literal["truncate", "skip"] = "truncate"
    max_output_tokens: int = Field(64, gt=0)
    # a re-ask after an answer cut off at max_tokens (finish_length) may use up to this; default
    # REASK_CEILING (4) x max_output_tokens
    max_output_tokens_reask: int | None = Field(None, gt=0)
    max_total_tokens: int | None = Field(None, gt=0)
    max_cost_usd: float | None = Field(None, gt=0)


class BatchSpec(Strict):
    """How ``model.mode: batch`` submits: input files within the provider's limits, and retries."""

    max_requests_per_file: int = Field(50_000, ge=1, le=50_000)            # OpenAI's limit
    max_bytes_per_file: int = Field(200_000_000, ge=1 << 16, le=200_000_000)  # 200 MB
    live_reasks: bool = False          # an invalid answer re-asked live at once, not in the next batch
    max_attempts: int = Field(3, ge=1, le=10)  # batches a line is sent in before its item fails
    poll_interval_s: float = Field(60.0, gt=0)  # `run --batch`: between looks at the batches in flight


class ReviewSpec(Strict):
    min_confidence: float = Field(0.7, ge=0, le=1)
    # logprobs: the probability the model gave its answer; consistency: the share of ``samples``
    # answers (one request, n choices, at ``sample_temperature``) that agree; both: the lower.
    confidence: Literal["logprobs", "consistency", "both"] = "logprobs"
    samples: int = Field(5, ge=2, le=20)
    sample_temperature: float = Field(0.8, gt=0, le=2)
    # `review report`: the error allowed among drafts accepted unreviewed, for the calibrated threshold.
    target_error: float = Field(0.02, gt=0, lt=1)


class OutputSpec(Strict):
    dir: Path | None = Field(None, strict=False)  # default: out/<name> beside the job file
    formats: list[Literal["jsonl", "labelstudio", "openai_finetune"]] = ["jsonl", "labelstudio"]
    val_fraction: float = Field(0.0, ge=0, lt=1)  # openai_finetune: share of sources held out
    include_flagged: bool = False                 # openai_finetune: flagged drafts go in too
    validation_variants: bool = False             # openai_finetune: variants of held-out sources go in the validation file


# ISO 639-1 codes and the English names the translation prompt uses (pivot and source languages).
LANGUAGES: dict[str, str] = dict(entry.split(" ", 1) for entry in (
    "aa Afar|ab Abkhazian|ae Avestan|af Afrikaans|ak Akan|am Amharic|an Aragonese|ar Arabic|as Assamese|"
    "av Avaric|ay Aymara|az Azerbaijani|ba Bashkir|be Belarusian|bg Bulgarian|bi Bislama|bm Bambara|"
    "bn Bengali|bo Tibetan|br Breton|bs Bosnian|ca Catalan|ce Chechen|ch Chamorro|co Corsican|cr Cree|"
    "cs Czech|cu Church Slavic|cv Chuvash|cy Welsh|da Danish|de German|dv Divehi|dz Dzongkha|ee Ewe|"
    "el Greek|en English|eo Esperanto|es Spanish|et Estonian|eu Basque|fa Persian|ff Fulah|fi Finnish|"
    "fj Fijian|fo Faroese|fr French|fy Western Frisian|ga Irish|gd Scottish Gaelic|gl Galician|gn Guarani|"
    "gu Gujarati|gv Manx|ha Hausa|he Hebrew|hi Hindi|ho Hiri Motu|hr Croatian|ht Haitian Creole|"
    "hu Hungarian|hy Armenian|hz Herero|ia Interlingua|id Indonesian|ie Interlingue|ig Igbo|ii Sichuan Yi|"
    "ik Inupiaq|io Ido|is Icelandic|it Italian|iu Inuktitut|ja Japanese|jv Javanese|ka Georgian|kg Kongo|"
    "ki Kikuyu|kj Kuanyama|kk Kazakh|kl Kalaallisut|km Khmer|kn Kannada|ko Korean|kr Kanuri|ks Kashmiri|"
    "ku Kurdish|kv Komi|kw Cornish|ky Kyrgyz|la Latin|lb Luxembourgish|lg Ganda|li Limburgish|ln Lingala|"
    "lo Lao|lt Lithuanian|lu Luba-Katanga|lv Latvian|mg Malagasy|mh Marshallese|mi Maori|mk Macedonian|"
    "ml Malayalam|mn Mongolian|mr Marathi|ms Malay|mt Maltese|my Burmese|na Nauru|nb Norwegian Bokmal|"
    "nd North Ndebele|ne Nepali|ng Ndonga|nl Dutch|nn Norwegian Nynorsk|no Norwegian|nr South Ndebele|"
    "nv Navajo|ny Chichewa|oc Occitan|oj Ojibwa|om Oromo|or Odia|os Ossetian|pa Punjabi|pi Pali|pl Polish|"
    "ps Pashto|pt Portuguese|qu Quechua|rm Romansh|rn Rundi|ro Romanian|ru Russian|rw Kinyarwanda|"
    "sa Sanskrit|sc Sardinian|sd Sindhi|se Northern Sami|sg Sango|sh Serbo-Croatian|si Sinhala|sk Slovak|"
    "sl Slovenian|sm Samoan|sn Shona|so Somali|sq Albanian|sr Serbian|ss Swati|st Southern Sotho|"
    "su Sundanese|sv Swedish|sw Swahili|ta Tamil|te Telugu|tg Tajik|th Thai|ti Tigrinya|tk Turkmen|"
    "tl Tagalog|tn Tswana|to Tonga|tr Turkish|ts Tsonga|tt Tatar|tw Twi|ty Tahitian|ug Uyghur|uk Ukrainian|"
    "ur Urdu|uz Uzbek|ve Venda|vi Vietnamese|vo Volapuk|wa Walloon|wo Wolof|xh Xhosa|yi Yiddish|"
    "yo Yoruba|za Zhuang|zh Chinese|zu Zulu").split("|"))


def _language(code: str) -> str:
    if code not in LANGUAGES:
        raise ValueError(f"{code!r} is not an ISO 639-1 language code (two lower-case letters, e.g. de, fr)")
    return code


class SynonymStep(Strict):
    """WordNet synonyms that fit their sentence (offline) for a share of the words that may change."""

    kind: Literal["synonym"]
    n: int = Field(1, ge=1, le=20)             # variants per source
    aug_p: float = Field(0.15, gt=0, le=1)     # share of the words replaced (at least one)


class NoiseStep(Strict):
    """Typing noise (nlpaug, offline); each variant applies every op in ``ops``, in order."""

    kind: Literal["noise"]
    n: int = Field(1, ge=1, le=20)
    # keyboard: a neighbouring key for one letter; swap: two adjacent letters; word_swap: two adjacent words
    ops: list[Literal["keyboard", "swap", "word_swap"]] = Field(["keyboard"], min_length=1)
    aug_p: float = Field(0.1, gt=0, le=1)      # share of the words each op touches (at least one)

    @field_validator("ops")
    @classmethod
    def _once_each(cls, ops: list[str]) -> list[str]:
        if len(set(ops)) != len(ops):
            raise ValueError("an op is listed twice")
        return ops


class ParaphraseStep(Strict):
    """Rewrites by the job's model: ``n`` paraphrases in one request."""

    kind: Literal["paraphrase"]
    n: int = Field(1, ge=1, le=10)


class BackTranslationStep(Strict):
    """By the job's model: into each pivot language and back, one variant per pivot."""

    kind: Literal["back_translation"]
    via: list[str] = Field(min_length=1, max_length=10)

    @field_validator("via")
    @classmethod
    def _languages(cls, via: list[str]) -> list[str]:
        for code in via:
            _language(code)
        if len(set(via)) != len(via):
            raise ValueError("a pivot language is listed twice")
        return via


AugmentStep = Annotated[Union[SynonymStep, NoiseStep, ParaphraseStep, BackTranslationStep],
                        Field(discriminator="kind")]
AUGMENT_STEPS = tuple(get_args(m.model_fields["kind"].annotation)[0] for m in get_args(get_args(AugmentStep)[0]))


class AugmentSpec(Strict):
    """Variants of each labelled item, carrying its label (made by the ``augment`` package)."""

    source_lang: str = "en"        # the items' language: back-translation returns to it
    steps: list[AugmentStep] = Field(min_length=1)
    seed: int = 0                  # same seed, same input: the same local (synonym, noise) variants
    recheck: bool = False          # label each variant again and flag label_drift where it differs
    fidelity: bool = False         # ask the job's model whether each variant keeps its source's meaning;
                                   # flag unfaithful_variant where it does not
    include_flagged: bool = False  # also make variants of originals flagged for review
    # A variant whose word-bigram Jaccard similarity to its source or to a sibling variant reaches
    # this is a near duplicate and dropped (augment.dedupe); exact duplicates always are.
    near_duplicate_threshold: float = Field(0.9, gt=0, le=1)

    @field_validator("source_lang")
    @classmethod
    def _source_language(cls, code: str) -> str:
        return _language(code)

    @field_validator("steps")
    @classmethod
    def _pivots_differ_from_source(cls, steps: list, info) -> list:
        source = info.data.get("source_lang", "en")  # validated first: declared first
        for i, step in enumerate(steps):
            if isinstance(step, BackTranslationStep) and source in step.via:
                raise ValueError(f"step {i}: via lists {source!r}, the source language (source_lang); "
                                 f"a pivot must differ from it")
        return steps


class JobSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    input: InputSpec
    model: ModelSpec
    task: TaskSpec
    budget: BudgetSpec = BudgetSpec()
    batch: BatchSpec = BatchSpec()
    review: ReviewSpec = ReviewSpec()
    output: OutputSpec = OutputSpec()
    augment: AugmentSpec | None = None

    @model_validator(mode="after")
    def _augment_has_a_label_to_carry(self) -> "JobSpec":
        if self.augment is not None and not self.task.carries_label:
            raise ValueError(f"augment: variants carry their source's label, and {self.task.kind} drafts have "
                             f"none (augment the passages in a labelling job instead)")
        return self

    @model_validator(mode="after")
    def _budget_fits_output(self) -> "JobSpec":
        b = self.budget
        if b.max_total_tokens is not None and b.max_total_tokens < b.max_output_tokens:
            raise ValueError("budget.max_total_tokens is smaller than budget.max_output_tokens")
        return self


class EngineSettings(BaseModel):
    """Tunables of the engine and worker that job files do not set (tests shrink the delays)."""

    model_config = ConfigDict(frozen=True)

    retry_base_s: float = 0.5        # first backoff; doubles each attempt, full jitter
    retry_max_s: float = 30.0        # one wait never exceeds this (retry-after may ask for more)
    rate_headroom: float = 0.99      # pace at this share of the limit: windows are enforced per second
    rate_recovery: float = 0.02      # after a 429 the pace grows back by this share of itself a second
    lease_s: float = 300.0           # an item leased by a dead worker is retaken after this
    heartbeat_s: float = 30.0        # leases are renewed this often while work is in flight
    share_interval_s: float = 0.25   # workers sharing an endpoint and key beat this often for their share...
    share_stale_s: float = 1.0       # ...are counted out after this long without a beat (stopped, a lock; killed: on PostgreSQL at once)...
    share_recheck_s: float = 0.1     # ...and beat this often while not yet counted by every peer, or once the queue ran dry
    commit_every: int = 64           # results committed together (group commit)...
    commit_interval_s: float = 0.05  # ...or after this long, whichever comes first
    lease_batch: int = 256           # items taken from the store at a time
    poll_s: float = 5.0              # `work` without --once: wait between empty polls
    outage_after: int = 10           # items in a row failing for good stop the run (nothing is lost)
    augment_slots: int = 32          # augment units in progress at once, beside the request slots
    embed_batch: int = 128           # texts per /v1/embeddings request...
    embed_batch_tokens: int = 250_000  # ...and tokens (OpenAI allows 2048 inputs, 300k tokens)
    embed_max_input_tokens: int = 8191  # one input's limit at OpenAI's embedding models: cut to it
    top_logprobs: int = 5            # alternatives per token with logprobs: a label's confidence is computed from them
    # Work taken ahead of the slots, so none waits on the store: items leased (at most
    # ``lease_batch``) per request slot, and augment units queued per augment slot.
    lease_ahead: int = 2
    # A worker holds at most the items its share of the rate sends in this share of a lease: a dead or
    # paused one strands that much, and several split a job evenly.
    lease_work_share: float = 0.25
    augment_ahead: int = 2
    hold_ahead: int = 2  # a budget hold asked of the store covers this many requests per slot: fewer trips
    budget_recheck_s: float = 1.0  # refused a hold while others hold the rest of the budget: ask again this often
    read_threads: int = 4  # cache look-ups in flight at once when the store is a server (PostgreSQL)


# Tunables read where they are used, as module constants (no settings object reaches those places:
# the store, the ingest of a job's input, the retry policy, the planner). Tests patch the module's name.
INGEST_BATCH = 5000          # input items stored per transaction while a job's input is read...
INGEST_BEAT_S = 1.0          # ...or after this long, whichever comes first: a kill loses at most that
INGEST_STALE_S = 120.0       # a loader on another host that stored no batch for this long is dead
# A batch tick's item leases (those waiting on batches are held to its end): its claim on the job,
# renewed by its heartbeat, is what says it is alive; a tick taking a lapsed claim over takes them back.
BATCH_ITEM_LEASE_S = 8 * 24 * 3600.0
MAX_RETRY_AFTER_S = 120.0    # a server asking (retry-after) for longer is treated as asking for this
# A refused connection to an endpoint that never answered in this process is given up after this
# many attempts (a wrong URL, a server not started: a configuration error, said in seconds, not after
# minutes of backoff); the requests after it are sent at once, unpaced, until one is answered.
REFUSED_UNANSWERED_ATTEMPTS = 1
AUGMENT_BATCH = 64           # texts per round trip to the augment process, at most
PLAN_BATCH = 2000            # texts tokenised together by `prelabel plan`
LOADING_POLL_S = 0.5         # `run` looks again this often while another process loads its job
# A re-ask after an answer cut off at max_tokens gets this many times the tokens it used, up to
# budget.max_output_tokens_reask, whose default is REASK_CEILING times budget.max_output_tokens.
REASK_GROWTH = 2
REASK_CEILING = 4


EXIT_OK = 0
EXIT_ERROR = 1          # an unexpected error: a bug, or the store unreachable
EXIT_USAGE = 2          # the command line itself (argparse), a flag's value or an environment setting (UsageError)
EXIT_JOB_ERROR = 3      # a job file, input or reviewers' file that cannot be used; bad input lines after the run
EXIT_BUDGET = 4         # a budget cap stopped the job; raise it and run again to resume
EXIT_ITEMS_FAILED = 5   # some items failed after every retry; the rest are written
EXIT_UNAVAILABLE = 6    # the endpoint kept failing (down, wrong key, unknown model): the run stopped, nothing lost
EXIT_STORAGE = 7        # the store or an output folder cannot be used (full, locked, damaged, read-only)

EXIT_RATE_LIMITED = 8   # waited on the rate limit past model.max_rate_limit_wait_s: the run stopped, nothing lost
EXIT_BATCHES_WAITING = 75  # model.mode: batch: batches are in flight; the next tick goes on (EX_TEMPFAIL: try again later)

STORE_BUSY_TIMEOUT_S = 30.0  # how long a write waits for another process's lock on the store
STORE_IDLE_TRANSACTION_S = 2.0  # PostgreSQL ends a session whose transaction waits this long on its client
STORE_RECONNECT_S = 60.0     # a store call that lost its server (a restart) is made again for this long
STORE_CALL_KEEP_S = 600.0    # a write's recorded result is kept this long: its repeats come within STORE_RECONNECT_S
STORE_CLOCK_CHECK_S = 60.0   # how often a store reads the database's clock again to measure this host's skew
STORE_CLOCK_SKEW_S = 1.0     # a skew under this is measurement noise: lease times are taken as given
VACUUM_CHECK_ROWS = 5_000    # PostgreSQL: every this many item rows a process changes, it checks the items' dead versions
VACUUM_DEAD_ROWS = 50_000    # ...and past this many, vacuums the table (store/upkeep.py: autovacuum may be off or behind)
VACUUM_MIN_INTERVAL_S = 30.0  # ...at most this often per process (a long-open snapshot keeps dead versions alive)
VACUUM_STOP_S = 5.0          # closing a store cancels its vacuum under way and waits this long for it to end
WORKER_BEAT_WAIT_S = 0.5     # a worker's beat waits this long for the store (within share_stale_s - share_interval_s)
WORKER_FORGET_S = 3600.0     # a worker's row is deleted this long after its last beat (it was killed)
LIFE_CONNECT_S = 2           # PostgreSQL: a worker's life connection is made within this (libpq's least)
LIFE_KEEPALIVE_IDLE_S = 2    # ...and probes a silent peer (both ends: TCP keepalives) after this long idle,
LIFE_KEEPALIVE_INTERVAL_S = 1  # ...then every this long,
LIFE_KEEPALIVE_COUNT = 3     # ...and drops it after this many unanswered: a dead host or path is seen in ~5 s

# Files a job names that are read whole (the input is streamed, so it has no limit). A job file is
# a few hundred bytes: these refuse a hostile one (a YAML "billion laughs" is 9^9 values once its
# aliases are expanded) at once instead of after gigabytes.
JOB_FILE_MAX_BYTES = 1 << 20       # 1 MiB
JOB_FILE_MAX_VALUES = 20_000       # YAML values (keys, scalars, lists, mappings), aliases expanded: 0.5 s at most
JOB_FILE_MAX_DEPTH = 64            # mappings and lists inside each other
EXAMPLES_MAX_BYTES = 64 << 20      # task.examples (JSONL): far more than a prompt can show
GUIDELINES_MAX_BYTES = 1 << 20     # task.guidelines: it goes into every prompt


Engine = EngineSettings  # the name before the rename, kept so code written against it still imports

# The task kinds: each kind's section is defined in its own module and listed once in
# prelabel.tasks.registry, which builds the tagged union ``TaskSpec`` and installs it here when it is
# complete. Imported last, as those modules derive from the bases above; when the registry was
# imported first it is still loading here, and installs itself once done.
def _install_task_kinds(task_spec) -> None:
    global TaskSpec
    TaskSpec = task_spec
    JobSpec.model_rebuild(force=True, _types_namespace={"TaskSpec": task_spec})


def __getattr__(name: str):
    # ``config.ClassifyTask`` and the like, the kinds' sections before they moved to their modules.
    if name.endswith("Task") and not name.startswith("_"):
        from .tasks.registry import spec_by_old_name

        if (spec := spec_by_old_name(name)) is not None:
            return spec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


import importlib  # noqa: E402

importlib.import_module(".tasks.registry", __package__)  # for its side effect: it puts the kinds' union here
