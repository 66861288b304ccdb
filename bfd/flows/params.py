"""Typed flow parameters: pydantic models that Prefect turns into a validated form.

Unknown fields are refused (``extra="forbid"``: the schema says ``additionalProperties:
false``, so a deployment run with a typo is refused when it is submitted). Prefect merges a
run's parameters over its deployment's one level deep, so a run that overrides one field of
``config`` would lose the deployment's other fields; ``with_deployment_defaults`` puts them
back (the fields the caller set win). For that, a field the deployment usually fills
(``model``) has no required mark in the schema and is checked after the merge.

Errors name the parameter as the caller wrote it: ``config.weights`` for a Prefect run,
``--weights`` on the command line (``describe_errors``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bfd.core.sampling import DEFAULT_CI_TARGET, DEFAULT_GROUPS, stored_groups
from bfd.files import input_path
from bfd.requests import (
    AUTOCASTS,
    DTYPES,
    MIN_IMAGES,
    SCHEMA,
    SITES,
    as_typed,
    check_autocast,
    check_device,
    check_init,
    check_option,
    check_shards,
)

# `bfd audit --demo`: what it audits.
DEMO_CONFIG = {
    "model": "vit_tiny_patch16_224",
    "weights": "random",
    "images": "samples",
    "n_images": 64,
    "layers": "all",
    "sites": ("attn_in", "resid"),
    "dtype": "float16",
}


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AuditConfig(_Params):
    """What to audit: a model, its weights and the images (fields of ``ExtractConfig``).

    Each field's rule is ``bfd.requests``' (the command line, the flows and the extraction's
    own check share it); the rules that need the model are the extraction's.
    """

    model: str | None = Field(None, description="timm model name (required), e.g. "
                              "vit_small_patch16_224.augreg_in21k_ft_in1k")
    weights: str = Field("pretrained", description="pretrained, random, or a checkpoint file")
    images: str = Field("samples", description="image folder, file of paths, or 'samples'")
    n_images: int | None = Field(None, description=f"the first N images, {MIN_IMAGES} at "
                                 "least (all when empty)", json_schema_extra=SCHEMA["n_images"])
    layers: str = Field("all", description="all, or block indices like 0,5,11",
                        json_schema_extra=SCHEMA["layers"])
    sites: list[Literal[SITES]] = Field(list(SITES), description="attn_in and/or resid")
    img_size: int | None = Field(None, description="input size (the model's when empty)",
                                 json_schema_extra=SCHEMA["img_size"])
    dtype: Literal[DTYPES] = "float16"
    batch_size: int = Field(32, json_schema_extra=SCHEMA["batch_size"])
    images_per_chunk: int = Field(32, json_schema_extra=SCHEMA["images_per_chunk"])
    images_per_shard: int | None = Field(None, json_schema_extra=SCHEMA["images_per_shard"])
    seed: int = Field(0, description="seed of a random init")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:K",
                        json_schema_extra=SCHEMA["device"])
    autocast: Literal[AUTOCASTS] = "none"
    model_args: dict[str, bool | int | float | str | None] = Field(
        default_factory=dict, description="timm.create_model arguments of the model (its "
        "configuration beyond the name), e.g. {\"reg_tokens\": 4}; part of the run id")

    @field_validator("model_args", mode="before")
    @classmethod
    def _model_args(cls, value: Any) -> Any:
        # before pydantic's coercion (True would pass as 1.0 of a float field's union)
        return check_option("model_args", {} if value is None else value)

    @field_validator("weights", "n_images", "layers", "img_size", "batch_size",
                     "images_per_chunk", "images_per_shard", "device")
    @classmethod
    def _rule(cls, value: Any, info: ValidationInfo) -> Any:
        # a weights file's first bytes too: junk is refused before an audit of it is recorded
        value = check_option(info.field_name, value)
        # one spelling of a weights file (bfd.files.input_path): its run id is the same
        # from any folder
        return input_path(value) if info.field_name == "weights" else value

    @field_validator("images")
    @classmethod
    def _images(cls, value: str) -> str:
        return input_path(value)  # one spelling of a folder or manifest, as weights

    @field_validator("sites", mode="before")
    @classmethod
    def _sites(cls, value: Any) -> Any:
        # before pydantic's own check of each name, so that an unknown one is named with the
        # sites there are (pydantic said "Input should be 'attn_in' or 'resid'")
        return check_option("sites", value) if isinstance(value, (list, tuple)) else value

    @model_validator(mode="after")
    def _whole_chunks(self) -> AuditConfig:
        check_shards(self.images_per_chunk, self.images_per_shard)
        check_autocast(self.autocast, self.device)
        check_init(self.weights, self.model_args)
        return self

    def extract_config(self) -> dict[str, Any]:
        """The ``ExtractConfig`` fields."""
        out = self.model_dump()
        out["sites"] = tuple(out["sites"])
        return out


class DecomposeParams(_Params):
    """Options of the decomposition (docs/method.md); ``device`` is the extraction's when empty.
    Those that change results are ``bfd decompose``'s, ``bfd audit``'s and ``bfd
    audit-checkpoints``' ``--prefix``, ``--control-seed``, ``--compute-dtype``,
    ``--jackknife-groups`` and ``--ci-target`` (``bfd.cli.decompose_options``)."""

    prefix: Literal["exclude", "include"] = "exclude"
    seed: int = Field(0, description="seed of the split-half and shuffle controls")
    compute_dtype: Literal["float32", "float64"] = "float32"
    images_per_task: int | None = Field(None, ge=1)
    device: str | None = Field(None, json_schema_extra=SCHEMA["device"])
    jackknife_groups: int = Field(DEFAULT_GROUPS, description="image groups of the 95 % "
                                  "intervals (a multiple of 4, >= 8; 0: none)")
    ci_target: float = Field(DEFAULT_CI_TARGET, gt=0, description="interval half-width the "
                             "main shares should reach")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str | None) -> str | None:
        if value is not None:
            check_device(value)
        return value

    @field_validator("jackknife_groups")
    @classmethod
    def _groups(cls, value: int) -> int:
        stored_groups(value)  # the decomposition's own rule, refused before any work
        return value


# Every drift metric moves by at most 1: the fractions lie in [0, 1] and a head_type row's
# delta is 0 or 1 (bfd.tasks.drift); a change flags when |delta| > threshold, so 1 flags
# nothing, and a threshold above 1 (2 for "2 %"?) is a mistake, refused rather than obeyed.
MAX_THRESHOLD = 1.0


_AT_MOST_ONE = {"maximum": MAX_THRESHOLD}
# A flow's count of local workers: one at least, in its parameters' schema (refused at
# submission); the run's own check (``bfd.flows.runners``) says it in the command's words.
Workers = Annotated[int, Field(description="local extraction workers (1 at least)",
                               json_schema_extra={"minimum": 1})]
# How many of a series' latest runs keep their activations after an audit (None: all):
# one at least, its next audit may reuse them (``bfd.tasks.retention``).
KeepActivations = Annotated[int | None, Field(
    description="after the audit, keep the activations of the series' K latest runs only "
    "(their results, tables and audits are all kept); none: keep every run's", ge=1)]


def _never_flags(values: dict[str, float]) -> str | None:
    """One line refusing the thresholds of ``values`` above ``MAX_THRESHOLD``; None if none."""
    above = [f"{name}{value:g}" for name, value in values.items() if value > MAX_THRESHOLD]
    if not above:
        return None
    return (f"{', '.join(above)} can never flag: every drift metric is a fraction in [0, 1] "
            "(head_type: 1 when the type changed), so it moves by at most 1; a threshold of 1 "
            "flags nothing, 0.02 flags a move of 2 points")


class DriftThresholds(_Params):
    """When a change since the previous audit of the series is flagged: |delta| above the
    threshold, every threshold in [0, 1] (``MAX_THRESHOLD``)."""

    # the upper bound in the schema alone (the server refuses 2 at submission); a run's own
    # check (``_at_most_one``) says why
    fraction: float = Field(0.05, ge=0, description="absolute change of any stored fraction, "
                            "0 to 1 (1: never flags)", json_schema_extra=_AT_MOST_ONE)
    head_type: float = Field(0.5, ge=0, description="below 1: a changed head type flags; "
                             "1: never", json_schema_extra=_AT_MOST_ONE)
    metrics: dict[str, float] = Field(
        default_factory=dict, description="per-metric thresholds, e.g. frac_pos: 0.02",
        json_schema_extra={"additionalProperties": {"type": "number", "minimum": 0,
                                                    "maximum": MAX_THRESHOLD}})

    @field_validator("fraction", "head_type")
    @classmethod
    def _at_most_one(cls, value: float, info: ValidationInfo) -> float:
        name = "" if info.field_name == "fraction" else f"{info.field_name}="
        why = _never_flags({name: value})
        if why is not None:
            raise ValueError(why)
        return value

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: dict[str, float]) -> dict[str, float]:
        from bfd.tasks.drift import COMPLEMENT_OF, drift_metrics

        known = drift_metrics()
        complements = sorted(set(value) & set(COMPLEMENT_OF))
        if complements:
            raise ValueError("; ".join(
                f"{k} is 1 - {COMPLEMENT_OF[k]}: its drift is {COMPLEMENT_OF[k]}'s, which "
                f"drift compares (set {COMPLEMENT_OF[k]}=VALUE)" for k in complements))
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ValueError(f"no drift metric named {', '.join(unknown)}; the metrics are "
                             f"{', '.join(known)}")
        negative = sorted(k for k, v in value.items() if not v >= 0)
        if negative:
            raise ValueError(f"a threshold must be a number >= 0, not "
                             f"{', '.join(f'{k}={value[k]}' for k in negative)}")
        why = _never_flags({f"{k}=": v for k, v in value.items()})
        if why is not None:
            raise ValueError(why)
        return value


def decompose_kwargs(options: DecomposeParams, config: AuditConfig) -> dict[str, Any]:
    """The keyword arguments of an audit's decomposition: ``options``, their device the
    extraction's unless given."""
    return {**options.model_dump(), "device": options.device or config.device}


def _deployment_parameters() -> dict[str, Any]:
    """The parameters of the deployment this flow run came from ({} when none)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import deployment

    if not deployment.id:
        return {}
    with get_client(sync_client=True) as client:
        return dict(client.read_deployment(deployment.id).parameters or {})


def with_deployment_defaults(name: str, given: _Params | None, kind: type[_Params]) -> _Params:
    """``given`` completed with the deployment's value of parameter ``name``: fields the
    caller set win, the others keep the deployment's values, then the model's defaults."""
    given = given if given is not None else kind()
    defaults = _deployment_parameters().get(name) or {}
    if not isinstance(defaults, dict) or not defaults:
        return given
    merged = {**defaults, **given.model_dump(include=given.model_fields_set)}
    try:
        return kind.model_validate(merged)
    except ValidationError as err:
        raise ValueError(describe_errors(err, prefix=f"{name}.")) from None


def cli_option(field: str) -> str:
    return "--model-arg" if field == "model_args" else "--" + field.replace("_", "-")


def describe_errors(err: ValidationError, prefix: str = "", cli: bool = False) -> str:
    """One line naming each bad field as its caller wrote it (``config.n_images`` or
    ``--n-images``) with what was wrong and what was given."""
    parts = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"] if not isinstance(p, int)) or "?"
        where = cli_option(field) if cli else prefix + field
        msg = e["msg"].removeprefix("Value error, ")
        value = as_typed(e.get("input")) if cli else e.get("input")
        shown = e["type"] == "extra_forbidden" or repr(value) in msg
        given = "" if shown else f" (given {value!r})"
        if e["type"] == "extra_forbidden":
            msg = "unknown parameter"
        if not e["loc"]:  # a rule of several fields (a model validator): its text names them
            parts.append(msg)
            continue
        parts.append(f"{where}: {msg}{given}")
    return "; ".join(parts)


def require_model(config: AuditConfig, cli: bool = False) -> str:
    if not config.model:
        where = "--model" if cli else "config.model"
        raise ValueError(f"{where} is required: a timm model name, e.g. vit_small_patch16_224")
    return config.model
