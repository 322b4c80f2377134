"""Sequence-level KD: the student of lm_to_small_lm.py trained on text its teacher wrote, tested on the real text.

What it shows: Kim & Rush's sequence-level knowledge distillation on a causal LM. The teacher (the same spec as
recipes/lm_to_small_lm.py, so the same cached teacher) continues 2,000 prompts drawn from the training split of the
embedded pydoc text; the student then trains with plain cross-entropy on that generated text instead of the real
training split (``data.train_root``), with no token-level KD (``kd=None``) and no hidden-state pairs. Validation
and test stay the real held-out pydoc text, so its bits per byte compare directly with lm_to_small_lm.py's.

First generate the text (about 256 KB; the teacher is trained and cached first if it is not yet), then train:

    python -m featdistill.generate recipes/lm_synthetic.py --samples 2000
    python -m featdistill.run recipes/lm_synthetic.py

The first command writes runs/synthetic/pydoc-teacher.jsonl (data.train_root, relative to the working folder)
and its settings in runs/synthetic/pydoc-teacher.jsonl.json; it never overwrites them (delete both to generate
again, or write elsewhere with --out and point --set data.train_root='...' at it). Variants:

    python -m featdistill.run recipes/lm_synthetic.py --set kd.loss=forward_kl    # synthetic text + token KD
    python -m featdistill.generate recipes/lm_synthetic.py --temperature 0.8 --top-p 0.9 --out runs/synthetic/t08.jsonl

Measured (benchmarks/RESULTS.md, "The LM recipe on the fixed split"): with lm_to_small_lm.py's converged settings
(teacher 48 epochs with dropout 0.1, 2.177 test bits/byte; student 24 epochs, its plateau), training on the
teacher's text loses to forward KL on the real text on fresh seeds 70-73: 2.503 +- 0.007 against 2.208 +- 0.014
bits/byte, -0.295 [-0.318, -0.273]. Its one earlier win (4 student epochs, a weaker teacher, the old leaky split)
does not hold at convergence.

``--set kd.loss=forward_kl`` starts token KD from LogitKD's defaults (T=4, alpha=0.5); add --set kd.temperature=1 for
lm_to_small_lm.py's setting. benchmarks/compare_kd.py recipes/lm_to_small_lm.py runs both synthetic modes beside
student alone, forward KL, reverse KL and JSD on paired seeds (it generates its own copy of the text).
"""

from featdistill.data import Data
from featdistill.recipe import Model, Recipe, Train

# the teacher spec must equal lm_to_small_lm.py's, field for field, to share its cached teacher
GPT2 = dict(n_embd=128, n_head=4, n_positions=128, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
SYNTHETIC = "runs/synthetic/pydoc-teacher.jsonl"  # written by: python -m featdistill.generate recipes/lm_synthetic.py

recipe = Recipe(
    teacher=Model(
        "hf:gpt2",
        kwargs=dict(GPT2, n_layer=4),
        pretrain=Train(epochs=4, batch_size=32, lr=3e-3, warmup_epochs=0.5, weight_decay=0.1),
    ),
    student=Model("hf:gpt2", kwargs=dict(GPT2, n_layer=2)),
    pairs=[],
    kd=None,  # sequence-level KD: cross-entropy on the teacher's text is the whole signal
    data=Data(name="pydoc", block_size=128, train_root=SYNTHETIC),
    train=Train(epochs=4, batch_size=32, lr=3e-3, warmup_epochs=0.5, weight_decay=0.1, seed=0),
)
