"""Tiny random-weight models of real families: Llama 3, Qwen2.5, Mistral and Gemma 2.

Every training, evaluation and sampling path must work on the models people really fine-tune,
whose special tokens and chat templates differ from the embedded tiny model's. This builds, offline
and in a second or two, a model of each family's architecture (its transformers config class, tiny
sizes, random weights) with a tokenizer that carries the family's real special tokens, its pad
rule and its published chat template (tests/fixtures/chat_templates/):

    from loop.families import build_family_model
    build_family_model("llama3", "var/models/llama3-tiny")

What is copied from the real checkpoints, because code paths depend on it:
- the special tokens and which of them are bos / eos / pad (Llama 3 and Mistral have no pad;
  Qwen2.5 has no bos; Gemma's pad has id 0);
- whether encoding adds BOS (Llama 3, Mistral, Gemma do; Qwen2.5 does not);
- generation_config.eos_token_id listing the end-of-turn token beside EOS (Llama 3, Qwen2.5,
  Gemma 2), which is how the real models stop after one reply;
- an embedding with spare rows beyond the tokenizer (Qwen2.5).
What is not: the vocabulary (a small byte-level BPE trained on the project's corpus, as for the
embedded tiny model) and sentencepiece's prefix-space rule (Mistral, Gemma).
"""

from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    set_seed,
)

from loop.corpus import CORPUS_PATH, read_corpus
from modeling.ml.loading import write_model_card

# The published templates live with the test fixtures: they are data the tests and benches share,
# and the project itself never needs them (a real model brings its own).
TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "chat_templates"


@dataclass(frozen=True)
class Family:
    name: str
    template_file: str
    special_tokens: list[str]  # in id order
    bos: str | None
    eos: str
    pad: str | None
    unk: str | None = None
    # True: the family's specials take the first ids (sentencepiece vocabularies, Gemma's pad is
    # 0); False: they follow the merges (tiktoken-style vocabularies: Llama 3, Qwen2.5).
    specials_first: bool = False
    adds_bos: bool = True  # tokenizer(text) prepends BOS, as the real tokenizer does
    # Extra ids generation stops at (generation_config.eos_token_id), e.g. the end of a turn.
    stop_tokens: list[str] = field(default_factory=list)
    embedding_multiple: int = 1  # the embedding is padded up to a multiple of this


FAMILIES: dict[str, Family] = {
    "llama3": Family(
        name="llama3",
        template_file="llama3.jinja",
        # Llama 3 reserves 250 unused special tokens; a few are enough to pick a pad from.
        special_tokens=[
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|reserved_special_token_0|>",
            "<|reserved_special_token_1|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|reserved_special_token_2|>",
            "<|eot_id|>",
        ],
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",  # the Instruct tokenizer's eos; the base model's is <|end_of_text|>
        pad=None,
        stop_tokens=["<|end_of_text|>"],
    ),
    "qwen2_5": Family(
        name="qwen2_5",
        template_file="qwen2_5.jinja",
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        adds_bos=False,
        stop_tokens=["<|endoftext|>"],
        embedding_multiple=64,
    ),
    "mistral": Family(
        name="mistral",
        template_file="mistral.jinja",
        special_tokens=["<unk>", "<s>", "</s>", "[INST]", "[/INST]"],
        bos="<s>",
        eos="</s>",
        pad=None,
        unk="<unk>",
        specials_first=True,
    ),
    "gemma2": Family(
        name="gemma2",
        template_file="gemma2.jinja",
        special_tokens=["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        unk="<unk>",
        specials_first=True,
        stop_tokens=["<end_of_turn>"],
    ),
}


@dataclass(frozen=True)
class FamilySizes:
    """Small enough that every trainer runs two steps in about a second on one CPU core."""

    vocab_size: int = 512  # BPE merges on the corpus; the specials come on top
    hidden_size: int = 32
    intermediate_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2  # grouped-query attention, as every one of these families uses
    max_position_embeddings: int = 256


def published_chat_template(family: str) -> str:
    return (TEMPLATES_DIR / FAMILIES[family].template_file).read_text()


def build_family_tokenizer(
    family: str, *, sizes: FamilySizes = FamilySizes(), corpus_path: str | None = None
) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the corpus, with the family's special tokens and template."""
    spec = FAMILIES[family]
    bpe = Tokenizer(models.BPE(unk_token=spec.unk))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=sizes.vocab_size,
        special_tokens=spec.special_tokens if spec.specials_first else [],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    docs = read_corpus(corpus_path or CORPUS_PATH)
    texts = (message["content"] for doc in docs for message in doc.get("messages", []))
    bpe.train_from_iterator([*texts, *(doc["text"] for doc in docs if "text" in doc)], trainer)
    if not spec.specials_first:
        bpe.add_special_tokens(spec.special_tokens)
    if spec.adds_bos:
        bos_id = bpe.token_to_id(spec.bos)
        bpe.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A",
            pair=f"{spec.bos} $A {spec.bos} $B",
            special_tokens=[(spec.bos, bos_id)],
        )
    named = {spec.bos, spec.eos, spec.pad, spec.unk} - {None}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=spec.bos,
        eos_token=spec.eos,
        pad_token=spec.pad,
        unk_token=spec.unk,
        extra_special_tokens=[t for t in spec.special_tokens if t not in named],
        model_max_length=sizes.max_position_embeddings,
    )
    tokenizer.chat_template = published_chat_template(family)
    return tokenizer


def build_family_model(
    family: str,
    output_dir: str,
    *,
    sizes: FamilySizes = FamilySizes(),
    seed: int = 0,
    corpus_path: str | None = None,
) -> str:
    """Tokenizer and random-weight model of `family`, saved to output_dir (loadable by every
    trainer and evaluation). Returns output_dir."""
    set_seed(seed)
    spec = FAMILIES[family]
    tokenizer = build_family_tokenizer(family, sizes=sizes, corpus_path=corpus_path)
    multiple = spec.embedding_multiple
    vocab_size = -(-len(tokenizer) // multiple) * multiple
    model = _family_model(family, sizes, vocab_size, tokenizer)
    stops = [tokenizer.eos_token_id, *tokenizer.convert_tokens_to_ids(spec.stop_tokens)]
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=stops if len(stops) > 1 else stops[0],
        pad_token_id=tokenizer.pad_token_id,
    )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_model_card(
        out,
        kind="policy",
        base_model=None,
        lora=False,
        parameter_count=sum(p.numel() for p in model.parameters()),
        train_tokens=0,
    )
    return str(out)


def _family_model(family: str, sizes: FamilySizes, vocab_size: int, tokenizer) -> PreTrainedModel:
    common = dict(
        vocab_size=vocab_size,
        hidden_size=sizes.hidden_size,
        intermediate_size=sizes.intermediate_size,
        num_hidden_layers=sizes.num_hidden_layers,
        num_attention_heads=sizes.num_attention_heads,
        num_key_value_heads=sizes.num_key_value_heads,
        max_position_embeddings=sizes.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if family == "llama3":
        return LlamaForCausalLM(LlamaConfig(**common, rope_theta=500_000.0))
    if family == "qwen2_5":
        # The small Qwen2.5 models tie the output head to the embedding.
        return Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=True))
    if family == "mistral":
        return MistralForCausalLM(MistralConfig(**common, sliding_window=None))
    if family == "gemma2":
        head_dim = sizes.hidden_size // sizes.num_attention_heads
        return Gemma2ForCausalLM(
            Gemma2Config(
                **common,
                head_dim=head_dim,
                query_pre_attn_scalar=head_dim,
                sliding_window=64,  # alternating local/global layers, as in the real model
                attn_implementation="eager",  # what Gemma 2's soft-capping needs
            )
        )
    raise ValueError(f"Unknown family {family!r}; expected one of {sorted(FAMILIES)}")
