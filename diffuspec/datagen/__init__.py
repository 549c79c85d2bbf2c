"""Verifier data generation, the drafters' training data: the verifier's own continuations of a prompt set, optionally with its top-K log-probs.

``generate_dataset`` (``train/generate_data.py``) runs five steps:

1. Prompts, checked before any model loads: a JSONL file (``{"prompt"}``, ``{"text"}``, chat ``{"messages"}``,
   ShareGPT ``{"conversations"}`` or Spec-Bench ``{"question_id", "turns"}``, first turn), a Hub dataset with the
   same fields, or pre-tokenized ``{"prompt_ids"}`` rows. Chat rows go through the verifier tokenizer's chat
   template; plain text is tokenized as is (with the tokenizer's own special tokens, e.g. a BOS).
2. Process ``rank`` of ``world`` takes rows ``rank::world``. Prompts that cannot fit ``max_new_tokens`` in the
   verifier's context are skipped and recorded in the metadata, never silently truncated.
3. The verifier continues each row, one at a time, by plain decoding through ``SpeculativeDecoder`` (exact,
   the same code path as every baseline) or, on request, vLLM. Row ``id`` samples with a generator seeded by
   ``(seed, id)``, so its completion does not depend on sharding or resumption.
4. Rows are appended in chunks to ``OUT.shards/rank-R-of-W.jsonl``, one write and fsync per chunk. A kill can only
   tear the last line, which the owner drops on restart; ids already in any shard are skipped.
5. Each rank marks its shard done; rank 0 waits for every marker (a file, not a collective barrier: ranks may
   finish hours apart) and merges the shards in prompt order into a ``datasets`` folder (``save_to_disk`` into a
   temporary folder renamed to OUT) with ``metadata.json``: generation parameters, skipped rows, versions.

Dataset schema (``dataset.dataset_features``): ``id`` (str), ``prompt_ids`` and ``completion_ids`` (list[int32]; the
completion ends with EOS when the verifier emitted one) and, with ``teacher_topk = K > 0``,
``teacher_topk_ids`` (list[list[int32]]) and ``teacher_topk_logprobs`` (list[list[float32]]): for completion
token t, the K largest entries of ``log_softmax(logits)`` of ``p(. | prompt, completion[:t])`` at temperature 1
(the verifier's raw distribution, as ``OnlineTeacher`` computes it), largest first.
"""

from ..extras import require

require("train", what="diffuspec.datagen")

from .config import DataGenerationConfig  # noqa: E402
from .dataset import METADATA_FILE, SCHEMA, dataset_features, read_metadata  # noqa: E402
from .pipeline import generate_dataset  # noqa: E402

__all__ = ["METADATA_FILE", "SCHEMA", "DataGenerationConfig", "dataset_features", "generate_dataset", "read_metadata"]
