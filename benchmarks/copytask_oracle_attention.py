"""Where the shipped copy-task CSA model loses: the search or the decoder?

The trained generator is run on held-out copy-task samples three ways, everything else unchanged:
its own CSA layer; a layer that pastes, into every hole cell, the feature of the cell CSA chose (a pure
copy: no blend with the previous hole cell, which CSA's chain adds); and a layer that pastes the feature
of the *true* copy (an oracle search). If the oracle search is far better than the layer, the search is
the limit; if it is not, the decoder is (it does not turn a copied feature into the copied colours).

    python benchmarks/copytask_oracle_attention.py            # pretrained:copytask, 256 samples, seed 777
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class PasteSources(nn.Module):
    """An attention layer that copies, per image of the batch, ``x[:, :, source[t]]`` into hole cell ``t``
    (``sources`` long ``[N, h*w]``, -1 = leave the cell as it is); batches are taken in order."""

    def __init__(self, sources: Tensor):
        super().__init__()
        self.sources, self.next = sources, 0

    def forward(self, x: Tensor, hole: Tensor, return_attention: bool = False):
        B, C, H, W = x.shape
        src = self.sources[self.next:self.next + B].to(x.device)
        self.next += B
        flat = x.reshape(B, C, H * W)
        out = flat.clone()
        for b in range(B):
            cells = (src[b] >= 0).nonzero().flatten()
            out[b, :, cells] = flat[b, :, src[b, cells]]
        y = out.view(B, C, H, W)
        return (y, None) if return_attention else y


def main(argv=None) -> int:
    from csa_lib.ablation import copytask_batch, generator_fill, hole_scores
    from csa_lib.attention_stats import layer_sources
    from csa_lib.config import Preset
    from csa_lib.copytask import CopyTask, copy_source_cells
    from csa_lib.pretrained import load_pretrained

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="copytask", help="a pretrained name")
    ap.add_argument("-n", type=int, default=256)
    ap.add_argument("--seed", type=int, default=777)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    G = load_pretrained(args.model).float().eval()
    # the task the model was trained on: its card records the training preset
    ds = CopyTask.from_config(Preset.from_dict(G.card["preset"]).data, args.n, seed=args.seed)
    images, masks, _ = copytask_batch(ds)
    true = torch.full((args.n, (ds.image_size // 8) ** 2), -1, dtype=torch.long)  # one entry per 1/8 cell
    for i in range(args.n):
        hole, source = copy_source_cells(ds, i)
        true[i, hole] = source
    chosen, _, _ = layer_sources(G, images, masks)
    level = next(lvl for lvl in G.refine_net.levels if lvl.attention is not None)  # the 1/8 level
    own = level.attention
    rows = [("its CSA layer", None), ("CSA's own sources, pasted (no chain blend)", chosen),
            ("the true copies' sources, pasted (oracle search)", true)]
    print(f"{args.model}, {args.n} held-out copy-task samples (seed {args.seed}), hole PSNR:")
    for name, sources in rows:
        level.attention = own if sources is None else PasteSources(sources)
        try:
            psnr = hole_scores(generator_fill(G, images, masks, batch_size=args.n), images, masks)["psnr"]
        finally:
            level.attention = own
        print(f"  {name}: {float(psnr.mean()):.2f} dB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
