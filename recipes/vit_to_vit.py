"""ViT teacher -> smaller plain ViT student with a different patch size and width, distilling attention.

What it shows: attention-map distillation on models that compute attention with fused
scaled_dot_product_attention. The pair names each model's attention module; featdistill hooks its fused
qkv linear and recomputes softmax(q k^T * scale) per head, leaving the model untouched. The 'attention'
adapter mixes the student's heads into the teacher's (a learned convex combination) and resamples the
student's 4x4 patch grid onto the teacher's 8x8 one; the class token is left out of the comparison.
Measured on digits (benchmarks/RESULTS.md). The pairs were chosen at the shipped 30 epochs on seeds 0-4: the
attention maps of the last two blocks beat logit KD alone; the last block's map alone or with its token
features, and token features alone, did not. On the fresh seeds 60-69 they win: +2.22 points [+0.70, +3.74],
with an earlier teacher. At long schedules they do not help: on seeds 70-75 they give -0.17 [-1.17, +0.83] at
120 epochs and -0.42 [-0.98, +0.14] at 240 (behind on 4 seeds, level on 2; the logit-KD student reaches
98.60%, above its 96.13% teacher). Both are within noise. No configuration has been shown to win at long
schedules, and these pairs cost 1.26x logit KD's epoch time. Chosen again at 240 epochs on seeds 80-82 among
five levers (weights 0.25 and 4, the last block's map alone, token features instead of maps), every lever was
behind logit KD and these pairs tied for the best, so the confirmation on seeds 70-75 is the -0.42 above: the
recipe keeps them for the shipped schedule, where they win.

Default: the embedded digits data (no download) and the same cached ViT teacher as vit_to_deit.py. For real
models, e.g. `vit_base_patch16_224` (pretrained=True) -> `vit_tiny_patch16_224`, pair `blocks.11.attn` with
`blocks.11.attn` (or use pairs=AutoPairs() for block outputs chosen by relative depth).
"""

from dataclasses import replace
from pathlib import Path

from featdistill import LogitKD, Pair
from featdistill.recipe import Model, load_recipe

base = load_recipe(Path(__file__).with_name("vit_to_deit.py"))

recipe = replace(
    base,
    student=Model(
        "vit_tiny_patch16_224",
        kwargs=dict(img_size=16, patch_size=4, depth=3, embed_dim=48, num_heads=2),
    ),
    pairs=[
        Pair(student="blocks.1.attn", teacher="blocks.1.attn", capture="attention", loss="attention_kl", weight=1.0),
        Pair(student="blocks.2.attn", teacher="blocks.2.attn", capture="attention", loss="attention_kl", weight=1.0),
    ],
    kd=LogitKD(temperature=4.0, alpha=0.5),
)
