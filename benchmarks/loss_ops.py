"""Operator calls and host syncs of one ContextrastLoss forward + backward (CPU profiler).

    python benchmarks/loss_ops.py

The case of issue 14: the four features of ``hrnetv2_w18_small`` for a 2×3×256×512 batch, 19
classes, a blocky random target. Counts every ``aten::`` event (nested ones included) and the
host synchronisations among them (``_local_scalar_dense``, ``nonzero``, ``unique``,
``masked_select``). Counts are deterministic; no timing.
"""

import torch
from torch.profiler import ProfilerActivity, profile

from contextrast import ContextrastLoss, create_model

torch.manual_seed(0)
model = create_model("hrnetv2_w18_small", 19)
x = torch.randn(2, 3, 256, 512)
with torch.no_grad():
    out = model(x)
feats = [f.detach().requires_grad_() for f in out.features]
ch = [f.shape[1] for f in feats]
g = torch.Generator().manual_seed(0)
target = torch.randint(0, 19, (2, 1, 8, 16), generator=g).float()
target = torch.nn.functional.interpolate(target, size=(256, 512), mode="nearest")[:, 0].long()
logits = out.logits.detach()
PAPER = dict(
    hard_negatives="only",
    max_positives=None,
    max_negatives=None,
    normalize_anchors=False,
    embed_dim=256,
)
for name, kw in [
    ("default", {}),
    ("paper-literal (old default)", PAPER),
    ("default, K=0", dict(bane_ratio=0.0)),
]:
    loss = ContextrastLoss(19, ch, **kw)
    loss(feats, logits, target).backward()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loss(feats, logits, target).backward()
    ev = [e for e in prof.events() if e.name.startswith("aten::")]
    sync = sum(
        1
        for e in ev
        if e.name
        in (
            "aten::_local_scalar_dense",
            "aten::nonzero",
            "aten::unique",
            "aten::_unique2",
            "aten::masked_select",
        )
    )
    print(f"{name}: {len(ev)} aten calls, {sync} host syncs")
