"""Packing + the document strategy: a packed batch is the same computation as each document alone."""

import pytest
import torch

from qwen3_custom_mask import CustomQwen3ForCausalLM
from qwen3_custom_mask.training.packing import IGNORE_INDEX, PackingCollator, pack_examples

DOCS = [list(range(10, 15)), list(range(40, 47)), list(range(90, 93)), list(range(120, 129)), list(range(200, 204))]


def test_pack_examples_layout():
    packed = pack_examples({"input_ids": [[1, 2, 3], [4, 5], [6, 7, 8], [9]]}, max_length=6, pad_token_id=0, strategy="in_order")
    assert packed["input_ids"] == [[1, 2, 3, 4, 5, 0], [6, 7, 8, 9, 0, 0]]
    assert packed["position_ids"] == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 0, 0, 0]]
    assert packed["document_ids"] == [[0, 0, 0, 1, 1, -1], [0, 0, 0, 1, -1, -1]]
    assert packed["labels"] == [[-100, 2, 3, -100, 5, -100], [-100, 7, 8, -100, -100, -100]]
    assert packed["attention_mask"] == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]]


def test_own_labels_are_kept_and_overflow_is_explicit():
    packed = pack_examples({"input_ids": [[1, 2, 3, 4]], "labels": [[-100, -100, 3, 4]]}, max_length=4)
    assert packed["labels"] == [[-100, -100, 3, 4]]
    split = pack_examples({"input_ids": [[1, 2, 3, 4, 5]]}, max_length=3, pad_token_id=0, overflow="split", strategy="in_order")
    assert split["input_ids"] == [[1, 2, 3], [4, 5, 0]]
    assert pack_examples({"input_ids": [[1, 2, 3, 4, 5]]}, max_length=3, overflow="truncate")["input_ids"] == [[1, 2, 3]]
    with pytest.raises(ValueError, match="more than max_length=3.*overflow"):
        pack_examples({"input_ids": [[1, 2, 3, 4, 5]]}, max_length=3, overflow="error")
    with pytest.raises(KeyError, match="needs an 'input_ids' column"):
        pack_examples({"text": ["hi"]})
    with pytest.raises(ValueError, match="labels has 2 entries but input_ids has 3"):
        pack_examples({"input_ids": [[1, 2, 3]], "labels": [[1, 2]]})


def test_best_fit_decreasing_fills_rows():
    from qwen3_custom_mask.training.packing import best_fit_decreasing

    packed = pack_examples({"input_ids": [[1, 2, 3], [4, 5], [6, 7, 8], [9]]}, max_length=6, pad_token_id=0)
    assert packed["input_ids"] == [[1, 2, 3, 6, 7, 8], [4, 5, 9, 0, 0, 0]]  # in order would need 3 rows
    assert packed["document_ids"] == [[0, 0, 0, 1, 1, 1], [0, 0, 1, -1, -1, -1]]
    rng = __import__("random").Random(0)
    lengths = [min(2048, int(rng.lognormvariate(5, 1)) + 1) for _ in range(2000)]
    bins = best_fit_decreasing(lengths, 2048)
    assert sorted(i for b in bins for i in b) == list(range(2000))  # every example exactly once
    assert all(sum(lengths[i] for i in b) <= 2048 for b in bins)
    assert sum(lengths) / (len(bins) * 2048) > 0.97  # padding under 3% on a long-tailed mix
    with pytest.raises(ValueError, match="Unknown packing strategy 'nope'"):
        pack_examples({"input_ids": [[1]]}, strategy="nope")


def test_collator_and_datasets_map_agree():
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_dict({"input_ids": DOCS})
    mapped = dataset.map(pack_examples, batched=True, fn_kwargs={"max_length": 16}, remove_columns=["input_ids"])
    collated = PackingCollator(max_length=16)([{"input_ids": d} for d in DOCS])
    for name, tensor in collated.items():
        assert torch.equal(torch.tensor(mapped[name]), tensor)


def _packed_and_alone(model, packed):
    """(packed loss * tokens, packed logits) vs (sum of per-document losses * tokens, per-document logits)."""
    out = model(**packed)
    tokens = (packed["labels"][:, 1:] != IGNORE_INDEX).sum()
    pieces = []
    for row in range(packed["input_ids"].shape[0]):
        for doc in packed["document_ids"][row].unique().tolist():
            if doc < 0:
                continue
            where = (packed["document_ids"][row] == doc).nonzero().view(-1)
            ids = packed["input_ids"][row, where][None]
            pieces.append((row, where, model(ids, labels=ids, document_ids=torch.zeros_like(ids))))
    return out, tokens, pieces


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_packed_logits_loss_and_gradients_equal_documents_alone(checkpoint, backend):
    model = CustomQwen3ForCausalLM.from_pretrained(checkpoint, attn_implementation=backend, mask_strategy="document")
    model.train()
    packed = PackingCollator(max_length=16, pad_token_id=255)([{"input_ids": d} for d in DOCS])
    assert packed["input_ids"].shape[0] >= 2 and (packed["document_ids"].amax(-1) >= 1).all()  # really packed

    out, tokens, pieces = _packed_and_alone(model, packed)
    for row, where, alone in pieces:
        torch.testing.assert_close(out.logits[row, where], alone.logits[0], atol=1e-5, rtol=1e-5)
    alone_sum = sum(p.loss * (p.logits.shape[1] - 1) for _, _, p in pieces)
    torch.testing.assert_close(out.loss * tokens, alone_sum, atol=1e-4, rtol=1e-5)

    params = [p for p in model.parameters() if p.requires_grad]
    packed_grads = torch.autograd.grad(out.loss * tokens, params, retain_graph=True)
    alone_grads = torch.autograd.grad(alone_sum, params)
    for name, a, b in zip([n for n, p in model.named_parameters() if p.requires_grad], packed_grads, alone_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=name)


def test_without_the_document_strategy_packing_leaks(checkpoint):
    """Guards the test above: plain causal attention over the same packed rows does see the other documents."""
    model = CustomQwen3ForCausalLM.from_pretrained(checkpoint, attn_implementation="sdpa").eval()
    packed = PackingCollator(max_length=16, pad_token_id=255, strategy="in_order")([{"input_ids": d} for d in DOCS])
    with torch.no_grad():
        leaky = model(packed["input_ids"], attention_mask=packed["attention_mask"]).logits
        alone = model(torch.tensor([DOCS[1]])).logits
    where = (packed["document_ids"][0] == 1).nonzero().view(-1)
    assert (leaky[0, where] - alone[0]).abs().max() > 1e-2


@torch.no_grad()
def test_packed_flex_forward_equals_documents_alone(checkpoint):
    model = CustomQwen3ForCausalLM.from_pretrained(checkpoint, attn_implementation="flex_attention", mask_strategy="document").eval()
    packed = PackingCollator(max_length=16, pad_token_id=255)([{"input_ids": d} for d in DOCS])
    out, _, pieces = _packed_and_alone(model, packed)
    for row, where, alone in pieces:
        torch.testing.assert_close(out.logits[row, where], alone.logits[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["eager", "sdpa", "flex_attention"])
@torch.no_grad()
def test_interleaved_documents_equal_each_document_alone(model_for, backend):
    """A document split in runs (ids 0,0,0,1,1,1,0,0,0,1,1,1) counts its positions on across its runs: each
    document's logits equal that document alone (positions restarted per run gave a 0.16 difference)."""
    model = model_for(backend, "document")
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 250, (1, 12), generator=g)
    docs = torch.tensor([[0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1]])
    packed = model(ids, document_ids=docs).logits[0]
    plain = model_for(backend, "causal")
    for doc in (0, 1):
        where = (docs[0] == doc).nonzero().flatten()
        alone = plain(ids[:, where]).logits[0]
        torch.testing.assert_close(packed[where], alone, atol=1e-5, rtol=1e-5)
