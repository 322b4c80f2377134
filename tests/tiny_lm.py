"""A tiny language-model recipe over eight short documents of real prose (about 8 KB), for tests that run the CLI
or compare_kd on a language model in seconds. Imported by name: pytest puts tests/ on sys.path (its conftest.py)."""

from pathlib import Path

from featdistill.data.text import pydoc_documents

RECIPE = '''"""A tiny LM recipe for tests."""
from featdistill import LogitKD, Pair
from featdistill.data import Data
from featdistill.recipe import Model, Recipe, Train

TINY = dict(n_embd=32, n_head=2, n_positions=16)
recipe = Recipe(
    teacher=Model("hf:gpt2", kwargs=dict(TINY, n_layer=2), pretrain=Train(epochs=1, batch_size=16, lr=3e-3)),
    student=Model("hf:gpt2", kwargs=dict(TINY, n_layer=1)),
    pairs=[Pair(student="transformer.h.0", teacher="transformer.h.1", loss="mse", adapter="linear")],
    kd=LogitKD(loss="forward_kl", temperature=1.0, alpha=0.5),
    data=Data(name="text", root=ROOT, block_size=16),
    train=Train(epochs=1, batch_size=16, lr=3e-3),
)
'''


def write_tiny_lm(folder: Path) -> Path:
    """The corpus (``folder/corpus/doc<i>.txt``) and the recipe file that trains on it; returns the recipe's path."""
    corpus = folder / "corpus"
    corpus.mkdir()
    for i, doc in enumerate(pydoc_documents()[:8]):
        (corpus / f"doc{i}.txt").write_text(doc[:1000])
    path = folder / "tiny_lm.py"
    path.write_text(RECIPE.replace("root=ROOT", f"root={str(corpus)!r}"))
    return path
